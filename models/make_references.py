"""Generate the reference posteriors in ``models/reference/*.json``.

Run from the repository root::

    python -m ngvi.models.make_references [model ...]

(all models of :data:`SETTINGS` and :data:`EXACT` when none is named). Each JSON
file holds the sampler settings, its wall time and diagnostics, the posterior
mean, sd and 5/25/50/75/95% quantiles of every latent and deterministic site in
the constrained space, and the mean vector and covariance matrix of the
flattened unconstrained latent vector, ordered like
``numpyro.infer.autoguide.AutoContinuous`` (latent sites in model-trace order,
each raveled).

NUTS references run ``NUM_CHAINS`` sequential chains. The diagnostics are
ArviZ's rank-normalised split R-hat and bulk (and tail) effective sample size
of every coordinate of every latent site; a model whose largest R-hat is not
below ``R_HAT_MAX`` or whose smallest bulk ESS is not above ``ESS_MIN`` gets no
file, and the script exits with status 1 after the other models.

The models of :data:`EXACT` have a known joint law: their reference is computed
from it (``"exact": true`` in the file) instead of by NUTS.
"""

import importlib
import json
import math
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from numpyro.distributions.transforms import biject_to  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from ngvi.models.reference import REFERENCE_DIR  # noqa: E402

DEFAULT = dict(num_warmup=1000, num_samples=1000, target_accept_prob=0.8)
SETTINGS = {
    "eight_schools": dict(
        num_warmup=2000, num_samples=5000, target_accept_prob=0.95, seed=0
    ),
    "logistic_regression": dict(
        num_warmup=1000, num_samples=2000, target_accept_prob=0.8, seed=1
    ),
    "linear_regression": dict(
        num_warmup=1000, num_samples=2000, target_accept_prob=0.8, seed=2
    ),
    "radon_centred": dict(DEFAULT, seed=3),
    "radon_noncentred": dict(DEFAULT, seed=4),
    "poisson_glm": dict(DEFAULT, seed=5),
    # Divergences at lower acceptance targets: smaller steps.
    "horseshoe_regression": dict(DEFAULT, target_accept_prob=0.99, seed=6),
    # 0.99 against divergences near phi -> 1; 2000 draws for R-hat margin.
    "stochastic_volatility": dict(
        DEFAULT, num_samples=2000, target_accept_prob=0.99, seed=7
    ),
    # The non-centred walk has divergences up to 0.9 (77 at 0.9) and a
    # bulk ESS of sigma_level near 650 with 1000 draws.
    "local_level": dict(DEFAULT, num_samples=2000, target_accept_prob=0.99, seed=8),
    "irt_2pl": dict(DEFAULT, seed=9),
    "gp_classification": dict(DEFAULT, target_accept_prob=0.9, seed=10),
    "lgcp": dict(DEFAULT, target_accept_prob=0.95, seed=11),
    "bnn": dict(DEFAULT, target_accept_prob=0.99, seed=12),
}
# Models whose reference comes from exact draws and moments, not from NUTS.
EXACT = {"funnel": dict(num_samples=1000, seed=13)}
NUM_CHAINS = 4
CHAIN_METHOD = "sequential"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
R_HAT_MAX, ESS_MIN = 1.01, 400


def trace_sites(model, kwargs):
    """Latent sample sites (in trace order) and deterministic sites of a model."""
    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(**kwargs)
    latent = {
        name: site
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    deterministic = [k for k, site in tr.items() if site["type"] == "deterministic"]
    return latent, deterministic


def run_nuts(model, kwargs, num_warmup, num_samples, target_accept_prob, seed):
    """Run NUTS chains; return grouped samples and divergence count."""
    mcmc = MCMC(
        NUTS(model, target_accept_prob=target_accept_prob),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_CHAINS,
        chain_method=CHAIN_METHOD,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",), **kwargs)
    grouped = mcmc.get_samples(group_by_chain=True)
    samples = {k: np.asarray(v) for k, v in grouped.items()}
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return samples, divergences


def diagnostics(samples, latent):
    """Worst R-hat and ESS over all coordinates of the latent sites' draws
    ``(chain, draw, ...)``."""
    posterior = az.convert_to_dataset({k: samples[k] for k in latent})

    def extreme(dataset, reduce):
        return float(reduce([reduce(dataset[k].values) for k in latent]))

    return {
        "r_hat_max": extreme(az.rhat(posterior, method="rank"), np.max),
        "ess_min": extreme(az.ess(posterior, method="bulk"), np.min),
        "ess_tail_min": extreme(az.ess(posterior, method="tail"), np.min),
        "method": "arviz rank-normalised split R-hat, bulk and tail ESS over all latent coordinates",
    }


def summarise_site(draws, kind):
    """Mean, sd and quantiles of a site's draws ``(num_draws, ...)``."""
    quantiles = np.quantile(draws, QUANTILES, axis=0)
    return {
        "kind": kind,
        "shape": list(draws.shape[1:]),
        "mean": draws.mean(0).tolist(),
        "sd": draws.std(0, ddof=1).tolist(),
        "quantiles": {f"{q:g}": v.tolist() for q, v in zip(QUANTILES, quantiles)},
    }


def unconstrained_draws(samples, latent):
    """Flattened unconstrained draws ``(num_draws, dim)`` and their layout."""
    flat, layout = [], []
    for site, info in latent.items():
        transform = biject_to(info["fn"].support)
        draws = np.asarray(transform.inv(samples[site]))
        num_draws = math.prod(np.shape(samples[site])[:2])
        draws = draws.reshape(num_draws, -1)
        shape = list(np.shape(info["value"]))
        layout.append({"name": site, "shape": shape, "size": draws.shape[1]})
        flat.append(draws)
    return np.concatenate(flat, axis=1), layout


def make_reference(name):
    """Sample model ``name`` with NUTS and summarise the posterior as a dict."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kwargs = module.data()
    settings = SETTINGS[name]
    latent, deterministic = trace_sites(module.model, kwargs)
    start = time.perf_counter()
    samples, divergences = run_nuts(module.model, kwargs, **settings)
    wall_time = time.perf_counter() - start

    constrained = {}
    for site in list(latent) + deterministic:
        draws = samples[site].reshape((-1,) + samples[site].shape[2:])
        kind = "latent" if site in latent else "deterministic"
        constrained[site] = summarise_site(draws, kind)
    flat, layout = unconstrained_draws(samples, latent)

    return {
        "model": name,
        "exact": False,
        "settings": {
            "sampler": "NUTS",
            "num_chains": NUM_CHAINS,
            "chain_method": CHAIN_METHOD,
            **settings,
            "x64": True,
            "numpyro_version": numpyro.__version__,
            "jax_version": jax.__version__,
        },
        "wall_time_s": wall_time,
        "diagnostics": {"num_divergences": divergences, **diagnostics(samples, latent)},
        "constrained": constrained,
        "unconstrained": {
            "dim": flat.shape[1],
            "sites": layout,
            "mean": flat.mean(0).tolist(),
            "cov": np.atleast_2d(np.cov(flat, rowvar=False)).tolist(),
        },
    }


def make_exact_reference(name):
    """The reference of a model of :data:`EXACT` from its known law: means, sd,
    covariance and quantiles in closed form (``module.exact_moments`` and
    ``module.exact_quantiles``), diagnostics of ``NUM_CHAINS`` x
    ``num_samples`` independent exact draws (``module.sample``) as a check."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kwargs = module.data()
    settings = EXACT[name]
    latent, deterministic = trace_sites(module.model, kwargs)
    if deterministic:
        raise NotImplementedError(f"{name}: exact references without deterministic sites only")
    start = time.perf_counter()
    num_draws = NUM_CHAINS * settings["num_samples"]
    draws = module.sample(jax.random.PRNGKey(settings["seed"]), num_draws)
    samples = {
        k: np.asarray(v).reshape((NUM_CHAINS, settings["num_samples"]) + np.shape(v)[1:])
        for k, v in draws.items()
    }
    mean, cov = module.exact_moments()
    quantiles = module.exact_quantiles(QUANTILES)
    flat, layout = unconstrained_draws(samples, latent)
    wall_time = time.perf_counter() - start
    if not np.allclose(flat, np.concatenate([samples[k].reshape(num_draws, -1) for k in latent], 1)):
        raise NotImplementedError(f"{name}: exact references of unconstrained latent sites only")

    constrained, offset = {}, 0
    for entry in layout:
        site, size = entry["name"], entry["size"]
        shape = tuple(entry["shape"])
        sd = np.sqrt(np.diag(cov)[offset : offset + size])
        constrained[site] = {
            "kind": "latent",
            "shape": list(shape),
            "mean": mean[offset : offset + size].reshape(shape).tolist(),
            "sd": sd.reshape(shape).tolist(),
            "quantiles": {
                f"{q:g}": np.asarray(v).reshape(shape).tolist()
                for q, v in zip(QUANTILES, quantiles[site])
            },
        }
        offset += size

    return {
        "model": name,
        "exact": True,
        "note": (
            "Exact reference: means, sd, covariance and quantiles from the known joint "
            "law (module.exact_moments, module.exact_quantiles); the diagnostics are those "
            "of independent exact draws (module.sample), not of a Markov chain."
        ),
        "settings": {
            "sampler": "exact",
            "num_chains": NUM_CHAINS,
            **settings,
            "x64": True,
            "numpyro_version": numpyro.__version__,
            "jax_version": jax.__version__,
        },
        "wall_time_s": wall_time,
        "diagnostics": {"num_divergences": 0, **diagnostics(samples, latent)},
        "constrained": constrained,
        "unconstrained": {
            "dim": flat.shape[1],
            "sites": layout,
            "mean": mean.tolist(),
            "cov": np.atleast_2d(cov).tolist(),
        },
    }


def check(reference):
    """Problems with a reference's diagnostics (an empty list if none)."""
    stats = reference["diagnostics"]
    problems = []
    if not stats["r_hat_max"] < R_HAT_MAX:
        problems.append(f"R-hat {stats['r_hat_max']:.4f} >= {R_HAT_MAX}")
    if not stats["ess_min"] > ESS_MIN:
        problems.append(f"bulk ESS {stats['ess_min']:.0f} <= {ESS_MIN}")
    return problems


def _dumps(value, indent=0):
    """JSON with one line per list of numbers (a matrix: one line per row) and
    floats to 7 significant digits (float32's; the Monte-Carlo error of the
    NUTS moments is far larger), which keeps a 500 x 500 covariance small."""
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + _dumps(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    if isinstance(value, list):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.7g}"
    return json.dumps(value)


def main(names):
    failed = []
    for name in names or [*SETTINGS, *EXACT]:
        if name not in SETTINGS and name not in EXACT:
            raise SystemExit(f"unknown model {name!r}: add it to SETTINGS or EXACT")
        start = time.perf_counter()
        reference = (make_exact_reference if name in EXACT else make_reference)(name)
        elapsed = time.perf_counter() - start
        problems = check(reference)
        print(f"{name}: {elapsed:.1f}s {reference['diagnostics']}", flush=True)
        if problems:
            print(f"{name}: FAILED ({'; '.join(problems)}); reference not written", flush=True)
            failed.append(name)
            continue
        with open(REFERENCE_DIR / f"{name}.json", "w") as f:
            f.write(_dumps(reference) + "\n")
    if failed:
        print(f"references failing the diagnostics: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # OpenBLAS, which runs XLA's CPU triangular solves (e.g. in the gradient of
    # a Cholesky factor inside a GP model), is several times slower with more
    # than one thread on a small shared machine, and reads its thread count only
    # when it is loaded: restart once with it set.
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "ngvi.models.make_references", *sys.argv[1:]])
    main(sys.argv[1:])
