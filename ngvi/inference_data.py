"""ArviZ output: the fitted guide as ``arviz.InferenceData``, side by side with
``az.from_numpyro(mcmc)``."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers
from numpyro.infer.util import log_likelihood

from ngvi.target import make_target

__all__ = ["to_inference_data", "importance_diagnostics"]


def _observed_sites(model, rng_key, sample, args, kwargs):
    """The observed sites of one run of ``model`` with latents set to ``sample``."""
    seeded = handlers.seed(handlers.substitute(model, data=sample), rng_key)
    trace = handlers.trace(seeded).get_trace(*args, **kwargs)
    return {name: site for name, site in trace.items() if site["type"] == "sample" and site["is_observed"]}


def _posterior_predictive(model, rng_key, samples, args, kwargs):
    def one(key, sample):
        trace_key, draw_key = jax.random.split(key)
        sites = _observed_sites(model, trace_key, sample, args, kwargs)
        keys = jax.random.split(draw_key, max(1, len(sites)))
        return {name: site["fn"].sample(k) for k, (name, site) in zip(keys, sites.items())}

    num = jax.tree.leaves(samples)[0].shape[0]
    return jax.vmap(one)(jax.random.split(rng_key, num), samples)


def _log_ratio(guide, params, rng_key, latent, args, kwargs):
    """``log p(x, z) - log q(z)`` at the flat latent draws (traceable)."""
    target = make_target(_fitted_model(guide, params), guide, rng_key, args, kwargs)
    return -jax.vmap(target.potential)(latent) - guide.get_posterior(params).log_prob(latent)


def _pareto_k(log_ratio):
    _, pareto_k = az.psislw(log_ratio - log_ratio.max())
    return float(pareto_k)


def importance_diagnostics(guide, params, rng_key, latent, *args, **kwargs):
    """Log importance ratios ``log p(x, z) - log q(z)`` at flat latent draws and
    the Pareto ``k`` of their PSIS smoothing (``k > 0.7``: the guide misses
    mass of the posterior; Yao et al., 2018)."""
    compute = jax.jit(lambda params, key, latent: _log_ratio(guide, params, key, latent, args, kwargs))
    log_ratio = np.asarray(compute(params, rng_key, latent), dtype=np.float64)
    return log_ratio, _pareto_k(log_ratio)


def _fitted_model(guide, params):
    """The guide's model with its own ``numpyro.param`` sites at their fitted values in ``params``."""
    return handlers.substitute(guide.model, data=params)


def _with_chain(tree):
    return {name: np.asarray(value)[None] for name, value in tree.items()}


def to_inference_data(guide, params, *args, num_samples=1000, rng_key=None, losses=None, **kwargs):
    """Draw ``num_samples`` from the fitted guide and return ``arviz.InferenceData``
    with groups ``posterior`` (constrained latent and deterministic sites, one
    chain), ``posterior_predictive``, ``log_likelihood`` and ``observed_data``
    for the observed sites, ``sample_stats`` with the log importance ratios
    ``log p(x, z) - log q(z)`` (``attrs['pareto_k']`` their PSIS diagnostic) and,
    with ``losses``, the optimisation trace in the group ``optimization_trace``.

    ``args`` and ``kwargs`` are the model's, as passed to ``NGVI.run``.
    """
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    model = _fitted_model(guide, params)

    @jax.jit  # one compiled program instead of one per operation
    def draws(params, rng_key):
        latent_key, predictive_key, weight_key, observed_key = jax.random.split(rng_key, 4)
        latent = guide.get_posterior(params).sample(latent_key, (num_samples,))
        posterior = guide._unpack_and_constrain(latent, params)
        observed = _observed_sites(model, observed_key, jax.tree.map(lambda x: x[0], posterior), args, kwargs)
        predictive = _posterior_predictive(model, predictive_key, posterior, args, kwargs)
        log_lik = log_likelihood(model, posterior, *args, **kwargs)
        log_ratio = _log_ratio(guide, params, weight_key, latent, args, kwargs)
        return posterior, {name: site["value"] for name, site in observed.items()}, predictive, log_lik, log_ratio

    posterior, observed_data, predictive, log_lik, log_ratio = draws(params, rng_key)
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    pareto_k = _pareto_k(log_ratio)
    observed_data = {name: np.asarray(value) for name, value in observed_data.items()}
    idata = az.from_dict(
        posterior=_with_chain(posterior),
        posterior_predictive=_with_chain(predictive),
        log_likelihood=_with_chain(log_lik),
        observed_data=observed_data,
        sample_stats={"log_importance_ratio": log_ratio[None]},
        attrs={"inference_library": "ngvi", "pareto_k": pareto_k},
    )
    if losses is not None:
        idata.add_groups({"optimization_trace": xr.Dataset({"loss": ("step", np.asarray(losses))})})
    return idata
