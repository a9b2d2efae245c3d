"""The Gaussian family's KL optimum on zoo models: the yardstick of
``tests/test_zoo_fits.py`` and the target of ``bench/zoo.py --target kl``
(where no Gaussian reaches the NUTS moments), stored in
``models/reference/kl_optima.json`` (``ngvi.models.reference.load_kl_optimum``).

    python bench/kl_optima.py --method sample-average --models a,b,... [--draws 32768] [--rows N]

computes the dense family's optimum without the library
(``tests/fitting.py``'s ``kl_optimum_dense``: the sample-average negative ELBO
on fixed antithetic draws, whitened, minimised by scipy's L-BFGS in float64
from the NUTS moments), at two seeds of ``--draws`` draws each; the answer is
their average, and their largest disagreement (in the optimum's sds) is
stored with it. With ``--rows N`` the data are cut to their first ``N`` rows
(the test size of the GP models in ``tests/test_zoo_fits.py``), the optimum
starts at ``N(0, 0.01 I)`` and is stored as ``name[:N]``.

    python bench/kl_optima.py --models a,b,... [--tol 0.02] [--max-steps 60000]

is the library's own optimum, for the block groups (p > 200), which the dense
sample average does not reach: NGVI ``run(key, None)`` at ``tol`` (errors at
most ``tol`` posterior sds and ``tol`` relative in every coordinate, at 99%),
key 1 (``bench/zoo.py``'s runs use key 0), every other setting at its
default, on ``StructuredGaussian`` with ``Dense()`` (``BlockUpperTriangular(8)``
for p > 200, as ``bench/zoo.py``), float32, from ``init_to_median``;
``tests/test_zoo_fits.py`` checks those fits by the optimum's first-order
conditions instead.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
import numpy as np  # noqa: E402
from numpyro.infer import init_to_median  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

from ngvi import NGVI, StructuredGaussian  # noqa: E402
from ngvi.models.reference import load_reference  # noqa: E402
from zoo import KL_OPTIMA, group_for  # noqa: E402


def kl_optimum(name, tol, max_steps):
    """``run(key, None)`` at ``tol`` on zoo model ``name``: a JSON-ready dict."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kw = module.data()
    dim = load_reference(name)["unconstrained"]["dim"]
    group = group_for(dim)
    guide = StructuredGaussian(module.model, group=group, init_loc_fn=init_to_median)
    start = time.perf_counter()
    result = NGVI(module.model, guide, tol=tol, max_steps=max_steps).run(jax.random.PRNGKey(1), None, **kw)
    q = guide.get_posterior(result.params)
    return {
        "mean": np.asarray(q.mean, np.float64).tolist(), "sd": np.sqrt(np.asarray(q.variance, np.float64)).tolist(),
        "group": str(group), "tol": tol, "steps": int(result.losses.shape[0]), "converged": bool(result.converged),
        "wall_s": time.perf_counter() - start,
    }


def sample_average_optimum(name, num_draws, rows=None, seeds=(0, 1)):
    """The dense family's optimum on zoo model ``name`` (its data cut to the
    first ``rows`` rows, if given: a test size) at each seed of
    ``kl_optimum_dense`` (float64): a JSON-ready dict of their average. It
    starts at the NUTS moments, or, with ``rows``, at ``N(0, 0.01 I)``."""
    spec = importlib.util.spec_from_file_location("fitting", Path(__file__).parents[1] / "tests" / "fitting.py")
    fitting = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fitting)
    module = importlib.import_module(f"ngvi.models.{name}")
    data = {key: value[:rows] for key, value in module.data().items()} if rows else module.data()
    start = time.perf_counter()
    fn = fitting.potential(module.model, data)
    if rows:
        p = ravel_pytree(initialize_model(jax.random.PRNGKey(0), module.model, model_kwargs=data).param_info.z)[0].size
        first = (np.zeros(p), 0.01 * np.eye(p))
    else:
        reference = load_reference(name)["unconstrained"]
        first = (np.asarray(reference["mean"]), np.asarray(reference["cov"]))
    answers = []
    for seed in seeds:
        mean, cov = fitting.kl_optimum_dense(fn, first, num_draws=num_draws, seed=seed)
        answers.append((mean, np.sqrt(np.diagonal(cov))))
    (mean, sd), spread = np.mean(answers, axis=0), np.ptp(answers, axis=0)
    return {
        "mean": mean.tolist(), "sd": sd.tolist(), "group": "Dense()",
        "method": f"sample average, {num_draws} draws, seeds {list(seeds)}" + (f", first {rows} rows" if rows else ""),
        "seeds_differ": {"mean": float(np.max(spread[0] / sd)), "sd": float(np.max(spread[1] / sd))},
        "wall_s": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated zoo models")
    parser.add_argument("--tol", type=float, default=0.02)
    parser.add_argument("--max-steps", type=int, default=60_000)
    parser.add_argument("--method", choices=["ngvi", "sample-average"], default="ngvi")
    parser.add_argument("--draws", type=int, default=32_768, help="per seed, for --method sample-average")
    parser.add_argument("--rows", type=int, help="for --method sample-average: the data's first rows only, "
                        "stored as 'name[:rows]' (the test size of tests/test_zoo_fits.py)")
    args = parser.parse_args()
    if args.method == "sample-average":
        jax.config.update("jax_enable_x64", True)
    for name in args.models.split(","):
        if args.method == "sample-average":
            optimum = sample_average_optimum(name, args.draws, args.rows)
        else:
            optimum = kl_optimum(name, args.tol, args.max_steps)
        optima = json.loads(KL_OPTIMA.read_text()) if KL_OPTIMA.exists() else {}
        optima[f"{name}[:{args.rows}]" if args.rows else name] = optimum
        KL_OPTIMA.write_text(json.dumps(optima, indent=1) + "\n")
        how = optimum.get("method") or f"{optimum['steps']} steps, converged {optimum['converged']}"
        print(f"{name}: {how}, {optimum['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
