"""The local-parameterisation natural-gradient step (MATH.md sec. 3 and 8), as
pure functions of ``(mu, B)``:

    B  <- B h(beta C ⊙ kappa(X)),      X = B^-1 E_q[hess l] B^-T - gamma I
    mu <- mu - beta S_new^-1 g_mu,     S_new = B_new B_new^T

The mean step uses the updated precision, as in VON and the Bayesian learning
rule (it differs from using ``S`` by ``O(beta^2)``): once the precision has
caught up with the curvature, the mean takes a full Newton-like step.

Step control (MATH.md sec. 8): the factor step is scaled down to Fisher norm
at most ``trust_radius * sqrt(p)`` (root-mean-square ``trust_radius`` per
coordinate; each step then changes ``B`` by a factor of at most ``h(r)``). The
mean step is scaled by the same factor, because a clipped factor step means the
precision does not yet match the curvature, and is itself bounded by
``loc_trust_radius * sqrt(p)`` in the local (whitened) coordinates of ``S_new``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["StepInfo", "natural_gradient_step", "is_finite"]


class StepInfo(NamedTuple):
    """Diagnostics of one step: the unclipped Fisher norms of the two local
    steps and the factors the trust region scaled them by."""

    loc_norm: jax.Array
    factor_norm: jax.Array
    loc_scale: jax.Array
    factor_scale: jax.Array


def _clip(norm, radius):
    return jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))


def natural_gradient_step(group, loc, factor, estimate, step_size, gamma, trust_radius=1.0, loc_trust_radius=10.0):
    """One natural-gradient step from an :class:`ngvi.estimators.Estimate`.

    Cost: one solve pair for the mean, the group's ``local_gradient`` and one
    retraction (``O(k^2 p)`` for block groups; no ``p x p`` matrix is formed
    for a structured group). Returns ``(loc, factor, StepInfo)``.
    """
    root_dim = jnp.sqrt(jnp.asarray(loc.shape[-1], loc.dtype))
    direction = group.natural_direction(group.local_gradient(factor, estimate.curvature, gamma))
    factor_norm = step_size * jnp.sqrt(group.fisher_norm_sq(direction))
    factor_scale = _clip(factor_norm, trust_radius * root_dim)
    scaled = jax.tree.map(lambda m: (factor_scale * step_size) * m, direction)
    new_factor = group.retract(factor, scaled)
    local_loc = step_size * group.solve(new_factor, estimate.grad_loc)
    loc_norm = jnp.linalg.norm(local_loc)
    loc_scale = jnp.minimum(factor_scale, _clip(loc_norm, loc_trust_radius * root_dim))
    new_loc = loc - loc_scale * group.rsolve(new_factor, local_loc)
    return new_loc, new_factor, StepInfo(loc_norm, factor_norm, loc_scale, factor_scale)


def is_finite(*trees):
    """True when every leaf of every tree is finite."""
    leaves = jax.tree.leaves(trees)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
