"""The Gaussian family's KL optimum on zoo models: the target of
``bench/zoo.py --target kl`` where no Gaussian reaches the NUTS moments.

    python bench/kl_optima.py [--models a,b,...] [--tol 0.02] [--max-steps 60000]

Per model: NGVI ``run(key, None)`` at ``tol`` (a tighter stopping rule than the
default 0.03: errors at most ``tol`` posterior sds and ``tol`` relative in
every coordinate, at 99%), key 1 (``bench/zoo.py``'s runs use key 0), every
other setting at its default, on ``StructuredGaussian`` with ``Dense()``
(``BlockUpperTriangular(8)`` for p > 200, as ``bench/zoo.py``), float32, from
``init_to_median``. The answer is the family's optimum to within ``tol``;
``tests/test_zoo_fits.py`` checks independently (the optimum's first-order
conditions by plain autodiff) that such answers are at it. Results (means and
sds of the unconstrained latent, steps, convergence, wall time with
compilation) are merged into ``bench/results/kl_optima.json``.

    python bench/kl_optima.py --method sample-average --models eight_schools,funnel,horseshoe_regression

computes the dense family's optimum without the library instead
(``tests/fitting.py``'s ``kl_optimum_dense``: the sample-average negative ELBO
on fixed antithetic draws, whitened, minimised by scipy's L-BFGS in float64
from the NUTS moments), at two seeds of ``--draws`` draws each; the answer is
their average, and their largest disagreement (in the optimum's sds) is
stored with it. It is the yardstick where the library's own optimum would be
checking itself, as on models whose scales the step's fixed point biases
(``docs/maths.md``, Stopping, 3.): the funnel, the horseshoe, the eight schools.
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
import numpy as np  # noqa: E402
from numpyro.infer import init_to_median  # noqa: E402

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


def sample_average_optimum(name, num_draws, seeds=(0, 1)):
    """The dense family's optimum on zoo model ``name`` at each seed of
    ``kl_optimum_dense`` (float64): a JSON-ready dict of their average."""
    spec = importlib.util.spec_from_file_location("fitting", Path(__file__).parents[1] / "tests" / "fitting.py")
    fitting = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fitting)
    module = importlib.import_module(f"ngvi.models.{name}")
    reference = load_reference(name)["unconstrained"]
    start = time.perf_counter()
    fn = fitting.potential(module.model, module.data())
    first = (np.asarray(reference["mean"]), np.asarray(reference["cov"]))
    answers = []
    for seed in seeds:
        mean, cov = fitting.kl_optimum_dense(fn, first, num_draws=num_draws, seed=seed)
        answers.append((mean, np.sqrt(np.diagonal(cov))))
    (mean, sd), spread = np.mean(answers, axis=0), np.ptp(answers, axis=0)
    return {
        "mean": mean.tolist(), "sd": sd.tolist(), "group": "Dense()",
        "method": f"sample average, {num_draws} draws, seeds {list(seeds)}",
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
    args = parser.parse_args()
    if args.method == "sample-average":
        jax.config.update("jax_enable_x64", True)
    for name in args.models.split(","):
        if args.method == "sample-average":
            optimum = sample_average_optimum(name, args.draws)
        else:
            optimum = kl_optimum(name, args.tol, args.max_steps)
        optima = json.loads(KL_OPTIMA.read_text()) if KL_OPTIMA.exists() else {}
        optima[name] = optimum
        KL_OPTIMA.write_text(json.dumps(optima, indent=1) + "\n")
        how = optimum.get("method") or f"{optimum['steps']} steps, converged {optimum['converged']}"
        print(f"{name}: {how}, {optimum['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
