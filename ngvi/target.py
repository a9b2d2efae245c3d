"""From a NumPyro model to the functions of the flat unconstrained latent vector
that the estimators use: ``l(z) = -log p(x, z)`` and per-example log-likelihoods."""

from functools import partial

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.util import _unconstrain_reparam, potential_energy

from ngvi.estimators import Target

__all__ = ["make_target", "check_initial_point", "nonfinite_sites"]


def nonfinite_sites(trace):
    """Names of the sample sites of ``trace`` whose log density is not finite."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not bool(jnp.all(jnp.isfinite(site["fn"].log_prob(site["value"]))))
    ]


def _observed_log_likelihood(model, args, kwargs, params):
    """Per-example log-likelihoods of the observed sites (subsample-scaled), raveled."""
    substituted = handlers.substitute(model, substitute_fn=partial(_unconstrain_reparam, params))
    trace = handlers.trace(substituted).get_trace(*args, **kwargs)
    terms = []
    for site in trace.values():
        if site["type"] == "sample" and site["is_observed"]:
            log_prob = site["fn"].log_prob(site["value"])
            if site["scale"] is not None:
                log_prob = site["scale"] * log_prob
            terms.append(jnp.ravel(log_prob))
    if not terms:
        raise ValueError("estimator='gauss_newton' needs observed sites; the model has none.")
    return jnp.concatenate(terms)


def make_target(guide, rng_key, args, kwargs):
    """The :class:`~ngvi.estimators.Target` of ``guide.model`` at ``args``; the
    model is seeded with ``rng_key`` (one data subsample per key, as in SVI)."""
    model = handlers.seed(guide.model, rng_key)
    unpack = guide._unpack_latent
    return Target(
        potential=lambda z: potential_energy(model, args, kwargs, unpack(z)),
        log_likelihood=lambda z: _observed_log_likelihood(model, args, kwargs, unpack(z)),
    )


def check_initial_point(guide, rng_key, loc, args, kwargs):
    """Raise ``ValueError`` naming the sites whose log density is not finite at ``loc``."""
    target = make_target(guide, rng_key, args, kwargs)
    value, grad = jax.value_and_grad(target.potential)(loc)
    if bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(grad))):
        return
    params = guide._unpack_latent(loc)
    substituted = handlers.substitute(
        handlers.seed(guide.model, rng_key), substitute_fn=partial(_unconstrain_reparam, params)
    )
    trace = handlers.trace(substituted).get_trace(*args, **kwargs)
    bad = nonfinite_sites(trace)
    where = f"at site(s) {', '.join(repr(b) for b in bad)}" if bad else "(its gradient is not finite)"
    raise ValueError(
        f"The model's log density is not finite at the initial point {where}; check the data and the "
        "supports, or pass another init_loc_fn to the guide (e.g. numpyro.infer.init_to_median)."
    )
