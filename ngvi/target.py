"""The target of the algorithms, :class:`Target`: ``l(z) = -log p(x, z)`` on a
flat vector (and, for Gauss-Newton, per-example log-likelihoods), and how it
is built from a NumPyro model over a guide's flat unconstrained latent vector."""

import warnings
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer.util import _unconstrain_reparam, potential_energy
from numpyro.primitives import Messenger, _subsample_fn

__all__ = [
    "Target", "make_target", "draw_subsamples", "substitute_subsamples", "with_control_variate", "check_initial_point",
    "model_param_sites", "nonfinite_sites",
]


class Target(NamedTuple):
    """``potential(z) = l(z) = -log p(x, z)`` on the flat latent vector;
    ``log_likelihood(z)``, if given, ``(terms, scales)``: the per-example
    log-likelihoods of the observed sites and the weight of each in ``log p(x | z)``
    (the subsample scale ``N / batch``; 1 without subsampling), so that
    ``log p(x | z) = sum(scales * terms)``. Only ``estimator="gauss_newton"`` reads it.
    ``draw_sharding``, if given, a ``jax.sharding.Sharding`` of a step's
    ``(num_samples, p)`` draws: the estimators constrain their draws to it, so
    that the compiled step evaluates the model at them spread over devices.
    ``subsampled``: ``potential`` is an unbiased estimate on one data subsample,
    a fresh one each step, so that losses of different steps are not comparable."""

    potential: Callable
    log_likelihood: Optional[Callable] = None
    draw_sharding: Optional[Any] = None
    subsampled: bool = False


def nonfinite_sites(trace):
    """Names of the sample sites of ``trace`` whose log density is not finite."""
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not bool(jnp.all(jnp.isfinite(site["fn"].log_prob(site["value"]))))
    ]


def _observed_log_likelihood(model, args, kwargs, params):
    """``(terms, scales)`` of the observed sites' per-example log-likelihoods, raveled."""
    substituted = handlers.substitute(model, substitute_fn=partial(_unconstrain_reparam, params))
    trace = handlers.trace(substituted).get_trace(*args, **kwargs)
    terms, scales = [], []
    for site in trace.values():
        if site["type"] == "sample" and site["is_observed"]:
            log_prob = jnp.ravel(site["fn"].log_prob(site["value"]))
            scale = 1.0 if site["scale"] is None else site["scale"]
            terms.append(log_prob)
            scales.append(jnp.broadcast_to(jnp.asarray(scale, log_prob.dtype), log_prob.shape))
    if not terms:
        raise ValueError("estimator='gauss_newton' needs observed sites; the model has none.")
    return jnp.concatenate(terms), jnp.concatenate(scales)


class substitute_subsamples(Messenger):
    """Give each plate named in ``subsamples`` those indices as its data
    subsample, instead of drawing them in every evaluation of the model."""

    def __init__(self, fn=None, subsamples=None):
        self.subsamples = subsamples
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["name"] in self.subsamples:
            msg["value"] = self.subsamples[msg["name"]]


def _subsample(rng_key, size, subsample_size):
    """``subsample_size`` distinct indices of ``range(size)``, a uniformly random
    subset: those of the largest of ``size`` uniforms (``O(size)`` vectorised
    work), or, for data over 256 times the subsample, NumPyro's own draw
    (``O(subsample_size)`` sequential steps; on CPU ~6 us a step against ~25 ns
    an element for the first)."""
    if size > 256 * subsample_size:
        return _subsample_fn(size, subsample_size, rng_key)
    return jax.lax.top_k(jax.random.uniform(rng_key, (size,)), subsample_size)[1]


def draw_subsamples(plates, rng_key, sharding=None):
    """``{name: indices}``: one subsample of each of ``plates`` (``{name: (size,
    subsample_size)}``, :func:`_subsample`), constrained to ``sharding`` if
    given (so that XLA's partitioner splits the model's per-observation work
    over its devices)."""
    keys = jax.random.split(rng_key, max(len(plates), 1))
    subsamples = {name: _subsample(key, size, n) for (name, (size, n)), key in zip(plates.items(), keys)}
    if sharding is not None:
        subsamples = {name: jax.lax.with_sharding_constraint(idx, sharding) for name, idx in subsamples.items()}
    return subsamples


def with_control_variate(potential, full_potential, anchor):
    """``l_n(z) + (grad l(a) - grad l_n(a)) . (z - a)`` for a subsample's
    estimate ``l_n`` of ``l``, at the anchor ``a``: the same expectation over
    subsamples, ``l(z)``, with the gradient's subsample noise that of
    ``grad l_n(z) - grad l_n(a)`` (small for ``z`` within a few posterior sds
    of ``a``), not of ``grad l_n(z)``. Costs one full-data gradient and one
    subsample gradient, once for all the draws of a step."""
    correction = jax.lax.stop_gradient(jax.grad(full_potential)(anchor) - jax.grad(potential)(anchor))
    return lambda z: potential(z) + jnp.dot(correction, z - anchor)


def _whole_plates(model, plates):
    """``model`` with each of ``plates`` (``{name: (size, subsample_size)}``) given all its data."""
    whole = substitute_subsamples(model, {name: jnp.arange(size) for name, (size, _) in plates.items()})

    def model_on_all_data(*args, **kwargs):
        with warnings.catch_warnings():  # NumPyro warns that the subsample is not subsample_size long
            warnings.filterwarnings("ignore", "subsample_size does not match", UserWarning)
            return whole(*args, **kwargs)

    return model_on_all_data


def make_target(model, guide, rng_key, args, kwargs, draw_sharding=None, subsample_sharding=None, anchor=None):
    """The :class:`Target` of ``model`` at ``args`` over ``guide``'s flat latent
    vector (the guide gives the layout and which plates subsample), seeded with
    ``rng_key``: one data subsample per key (as in SVI), drawn once for all the
    evaluations of the step (:func:`draw_subsamples`; NumPyro's plate would draw
    it again in each, at ``O(subsample_size)`` sequential work on CPU). Under
    subsampling with an ``anchor`` (a flat latent vector), the potential carries
    :func:`with_control_variate` at it."""
    subsample_key, rng_key = jax.random.split(rng_key)
    plates = guide.subsampled_plates
    subsamples = draw_subsamples(plates, subsample_key, subsample_sharding)
    seeded = handlers.seed(substitute_subsamples(model, subsamples), rng_key)
    unpack = guide._unpack_latent
    potential = lambda z: potential_energy(seeded, args, kwargs, unpack(z))  # noqa: E731
    if anchor is not None and plates:
        whole = handlers.seed(_whole_plates(model, plates), rng_key)
        potential = with_control_variate(potential, lambda z: potential_energy(whole, args, kwargs, unpack(z)), anchor)
    return Target(
        potential=potential,
        log_likelihood=lambda z: _observed_log_likelihood(seeded, args, kwargs, unpack(z)),
        draw_sharding=draw_sharding,
        subsampled=bool(plates),
    )


def _trace_at(model, guide, rng_key, loc, args, kwargs):
    """The trace of ``model`` with its latents at the flat vector ``loc``."""
    substituted = handlers.substitute(
        handlers.seed(model, rng_key), substitute_fn=partial(_unconstrain_reparam, guide._unpack_latent(loc))
    )
    return handlers.trace(substituted).get_trace(*args, **kwargs)


def model_param_sites(model, guide, rng_key, loc, args, kwargs):
    """``{name: (initial value, constraint)}`` of the model's ``numpyro.param``
    sites, from one trace with the latents at the flat vector ``loc``."""
    trace = _trace_at(model, guide, rng_key, loc, args, kwargs)
    return {
        name: (site["value"], site["kwargs"].get("constraint", constraints.real))
        for name, site in trace.items()
        if site["type"] == "param"
    }


def _check_every_direction_matters(guide, grads):
    """Raise ``ValueError`` naming the latent coordinates along which every row
    of ``grads`` is exactly zero: there the posterior is improper (e.g. an
    ``ImproperUniform`` site the likelihood does not see)."""
    flat = guide._unpack_latent(jnp.all(grads == 0, axis=0).astype(grads.dtype))
    bad = {name: np.flatnonzero(np.asarray(v)).tolist() for name, v in flat.items() if bool(jnp.any(v > 0))}
    if bad:
        where = "; ".join(f"site {name!r} (entries {idx} of its flattened value)" for name, idx in bad.items())
        raise ValueError(
            f"The model's log density does not change along {where}: the posterior is improper in that "
            "direction (a flat prior the likelihood does not see). Give the site a proper prior or observe it."
        )


def check_initial_point(model, guide, rng_key, loc, args, kwargs, num_points=3):
    """Raise ``ValueError`` naming the sites whose log density is not finite at
    ``loc`` (a flat latent vector, or one per row: a mixture's component means),
    or the latent coordinates along which it is exactly flat at the first row and
    at ``num_points`` standard-normal perturbations of it: there the posterior is
    improper (e.g. an ``ImproperUniform`` site the likelihood does not see).
    One compiled evaluation of ``l`` and its gradient at all these points."""
    locs = jnp.reshape(loc, (-1, jnp.shape(loc)[-1]))
    points = locs[0] + jax.random.normal(rng_key, (num_points, locs.shape[-1]), locs.dtype)
    target = make_target(model, guide, rng_key, args, kwargs)
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(target.potential)))(jnp.concatenate([locs, points]))
    num_locs = locs.shape[0]
    finite = np.asarray(jnp.isfinite(values) & jnp.all(jnp.isfinite(grads), axis=-1))[:num_locs]
    if finite.all():
        _check_every_direction_matters(guide, jnp.concatenate([grads[:1], grads[num_locs:]]))
        return
    bad = nonfinite_sites(_trace_at(model, guide, rng_key, locs[int(np.argmin(finite))], args, kwargs))
    where = f"at site(s) {', '.join(repr(b) for b in bad)}" if bad else "(its gradient is not finite)"
    raise ValueError(
        f"The model's log density is not finite at the initial point {where}; check the data and the "
        "supports, or pass another init_loc_fn to the guide (e.g. numpyro.infer.init_to_median)."
    )
