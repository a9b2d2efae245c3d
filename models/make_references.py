"""Generate the NUTS reference posteriors in ``models/reference/*.json``.

Run from the repository root::

    python -m ngvi.models.make_references [model ...]

Each JSON file holds the sampler settings and diagnostics, the posterior mean
and sd of every latent and deterministic site in the constrained space, and
the mean vector and covariance matrix of the flattened unconstrained latent
vector, ordered like ``numpyro.infer.autoguide.AutoContinuous`` (latent sites
in model-trace order, each raveled).
"""

import importlib
import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import numpyro  # noqa: E402
from numpyro.diagnostics import summary  # noqa: E402
from numpyro.distributions.transforms import biject_to  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from ngvi.models.reference import REFERENCE_DIR  # noqa: E402

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
}
NUM_CHAINS = 4


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
    """Run sequential NUTS chains; return grouped samples and divergence count."""
    mcmc = MCMC(
        NUTS(model, target_accept_prob=target_accept_prob),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=NUM_CHAINS,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",), **kwargs)
    grouped = mcmc.get_samples(group_by_chain=True)
    samples = {k: np.asarray(v) for k, v in grouped.items()}
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    return samples, divergences


def make_reference(name):
    """Sample model ``name`` with NUTS and summarise the posterior as a dict."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kwargs = module.data()
    settings = SETTINGS[name]
    latent, deterministic = trace_sites(module.model, kwargs)
    samples, divergences = run_nuts(module.model, kwargs, **settings)

    stats = summary(samples)
    constrained = {}
    for site in list(latent) + deterministic:
        draws = samples[site].reshape((-1,) + samples[site].shape[2:])
        constrained[site] = {
            "kind": "latent" if site in latent else "deterministic",
            "shape": list(draws.shape[1:]),
            "mean": draws.mean(0).tolist(),
            "sd": draws.std(0, ddof=1).tolist(),
        }

    flat, layout = [], []
    for site, info in latent.items():
        transform = biject_to(info["fn"].support)
        draws = np.asarray(transform.inv(samples[site]))
        draws = draws.reshape(NUM_CHAINS * settings["num_samples"], -1)
        shape = list(np.shape(info["value"]))
        layout.append({"name": site, "shape": shape, "size": draws.shape[1]})
        flat.append(draws)
    flat = np.concatenate(flat, axis=1)

    return {
        "model": name,
        "settings": {
            "sampler": "NUTS",
            "num_chains": NUM_CHAINS,
            "chain_method": "sequential",
            **settings,
            "x64": True,
            "numpyro_version": numpyro.__version__,
            "jax_version": jax.__version__,
        },
        "diagnostics": {
            "num_divergences": divergences,
            "r_hat_max": float(max(np.max(s["r_hat"]) for s in stats.values())),
            "ess_min": float(min(np.min(s["n_eff"]) for s in stats.values())),
        },
        "constrained": constrained,
        "unconstrained": {
            "dim": flat.shape[1],
            "sites": layout,
            "mean": flat.mean(0).tolist(),
            "cov": np.atleast_2d(np.cov(flat, rowvar=False)).tolist(),
        },
    }


def main(names):
    for name in names or SETTINGS:
        start = time.perf_counter()
        reference = make_reference(name)
        with open(REFERENCE_DIR / f"{name}.json", "w") as f:
            json.dump(reference, f, indent=1)
        elapsed = time.perf_counter() - start
        print(f"{name}: {elapsed:.1f}s {reference['diagnostics']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
