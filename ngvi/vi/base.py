"""What every algorithm of :mod:`ngvi.vi` shares: the :class:`VIAlgorithm`
tuple its top-level factory returns, and the small helpers of its step."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ngvi.target import Target

__all__ = ["VIAlgorithm", "as_target", "step_size_at", "check_num_samples", "keep_if"]


class VIAlgorithm(NamedTuple):
    """Pure functions closed over a target and static settings:

    * ``init(position, ...) -> state``;
    * ``step(rng_key, state) -> (state, info)``: one natural-gradient step;
    * ``sample(rng_key, state, num_draws) -> (num_draws, p)`` draws of ``q``;
    * ``loss(rng_key, state) -> L``: an estimate of the negative ELBO at ``state``.
    """

    init: Callable
    step: Callable
    sample: Callable
    loss: Callable


def as_target(potential_fn, log_likelihood_fn=None):
    """A :class:`ngvi.target.Target` from ``l(z) = -log p(z)`` and, optionally,
    ``log_likelihood_fn(z)``, the vector of per-example log-likelihoods (each of
    weight 1 in ``l``); a ``Target`` is returned as it is."""
    if isinstance(potential_fn, Target):
        return potential_fn
    if log_likelihood_fn is None:
        return Target(potential_fn)
    with_unit_scales = lambda z: (log_likelihood_fn(z), jnp.ones_like(log_likelihood_fn(z)))
    return Target(potential_fn, with_unit_scales)


def step_size_at(step_size, step):
    """``beta`` at step ``step``: a float, or a schedule ``step -> float`` (e.g. from optax)."""
    return step_size(step) if callable(step_size) else step_size


def check_num_samples(num_samples):
    """Raise ``ValueError`` unless ``num_samples`` is a positive integer."""
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")


def keep_if(accept, new, old):
    """``new`` where ``accept``, else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
