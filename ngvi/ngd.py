"""The local-parameterisation natural-gradient step (MATH.md sec. 3 and 8), as
pure functions of ``(mu, B)``:

    B  <- B h(beta C ⊙ kappa(X)),      X = B^-1 E_q[hess l] B^-T - gamma I
    mu <- mu - beta S_new^-1 g_mu,     S_new = B_new B_new^T

The mean step uses the updated precision, as in VON and the Bayesian learning
rule (it differs from using ``S`` by ``O(beta^2)``): once the precision has
caught up with the curvature, the mean takes a full Newton-like step.

Step control (MATH.md sec. 8): each half of the step has length
``min(beta, t*)``, ``t*`` the minimiser of a quadratic model of ``L`` along it
(see :func:`_line_minimiser` and :func:`_factor_line_minimiser`); this is what
keeps structured groups stable where the curvature has directions the group
cannot represent. The factor step ``M`` is then scaled down to
spectral norm at most ``trust_radius`` (power iteration with the group's
structured products), so one step stretches ``B`` by at most ``h(r)`` and
shrinks it by at most ``1 / 2`` in any direction, however the curvature is
spread over the coordinates. The
mean step is also bounded by
``loc_trust_radius * sqrt(p)`` in the local (whitened) coordinates of ``S_new``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["StepInfo", "natural_gradient_step", "is_finite"]


class StepInfo(NamedTuple):
    """Diagnostics of one step: the unclipped sizes of the two local steps
    (the mean's in the Fisher metric, the factor's in spectral norm) and the
    factors the trust region scaled them by."""

    loc_norm: jax.Array
    factor_norm: jax.Array
    loc_scale: jax.Array
    factor_scale: jax.Array


def _clip(norm, radius):
    return jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))


def _line_minimiser(estimate, direction):
    """``alpha* = g^T d / d^T H d``: the minimiser of the quadratic model of
    ``E_q[l](mu - alpha d)`` along ``d = S_new^-1 g_mu`` (infinite where
    ``d^T H d <= 0``); ``alpha* = 1`` when ``S_new`` equals the curvature, less
    when a structured ``S_new`` misses curvature the step runs into."""
    curvature = jnp.vdot(direction, estimate.curvature.matvec(direction))
    gain = jnp.vdot(estimate.grad_loc, direction)
    return jnp.where(curvature > 0, gain / jnp.where(curvature > 0, curvature, 1.0), jnp.inf)


def _factor_line_minimiser(key, group, factor, curvature, direction, num_probes):
    """``t* = <X, N> / f''(0)`` for ``f(t) = L(B h(t N))`` under the quadratic
    model ``E_q[l] ~ tr(H S^-1) / 2``: with ``Y = B^-1 H B^-T``,

        f'(0) = -<X, N>_F = -<N, N>_Fisher,   f''(0) = tr(Y N^T N) + tr(Y N^2)

    (``log det h(tN)`` has no second-order term). The traces are Hutchinson
    estimates with ``num_probes`` Rademacher vectors ``v``: ``u^T Y u + v^T Y N^2 v``
    with ``u = N^T v``, ``2 num_probes`` curvature products in one batch.
    ``t* = 1`` for a dense factor at ``Y = I``; it is small where ``Y`` has
    curvature the group cannot represent, and a step of ``beta > t*`` overshoots.
    """
    probes = jax.random.rademacher(key, (num_probes, group.dim(factor)), jax.tree.leaves(factor)[0].dtype)
    us = jax.vmap(lambda v: group.algebra_rmatvec(direction, v))(probes)
    n2v = jax.vmap(lambda v: group.algebra_matvec(direction, group.algebra_matvec(direction, v)))(probes)
    rsolved = jax.vmap(lambda v: group.rsolve(factor, v))(jnp.concatenate([us, probes]))
    whitened = jax.vmap(lambda v: group.solve(factor, v))(curvature.matmat(rsolved))  # rows Y u, Y v
    y_u, y_v = whitened[:num_probes], whitened[num_probes:]
    first = group.fisher_norm_sq(direction)
    second = jnp.mean(jnp.sum(us * y_u, -1) + jnp.sum(y_v * n2v, -1))
    return jnp.where(second > 0, first / jnp.where(second > 0, second, 1.0), jnp.inf)


def natural_gradient_step(
    key,
    group,
    loc,
    factor,
    estimate,
    step_size,
    gamma,
    trust_radius=1.0,
    loc_trust_radius=10.0,
    num_probes=4,
    loc_line_search=True,
):
    """One natural-gradient step from an :class:`ngvi.estimators.Estimate`.

    Cost: one solve pair for the mean, the group's ``local_gradient``, one
    retraction (``O(k^2 p)`` for block groups; no ``p x p`` matrix is formed
    for a structured group), and ``1 + 2 num_probes`` curvature products for
    the two line minimisers (``num_probes = 0`` leaves out the factor's,
    ``loc_line_search=False`` the mean's, whose step is then ``beta``: for a
    caller that tests the step on ``l`` itself). Returns ``(loc, factor, StepInfo)``.
    """
    root_dim = jnp.sqrt(jnp.asarray(loc.shape[-1], loc.dtype))
    direction = group.natural_direction(group.local_gradient(factor, estimate.curvature, gamma))
    factor_step = step_size
    if num_probes:
        t_star = _factor_line_minimiser(key, group, factor, estimate.curvature, direction, num_probes)
        factor_step = jnp.minimum(step_size, t_star)
    factor_norm = factor_step * group.spectral_norm(direction)
    factor_scale = _clip(factor_norm, trust_radius)
    scaled = jax.tree.map(lambda m: (factor_scale * factor_step) * m, direction)
    new_factor = group.retract(factor, scaled)
    direction_loc = group.rsolve(new_factor, group.solve(new_factor, estimate.grad_loc))  # S_new^-1 g_mu
    loc_step = jnp.minimum(step_size, _line_minimiser(estimate, direction_loc)) if loc_line_search else step_size
    loc_norm = loc_step * jnp.linalg.norm(group.rmatvec(new_factor, direction_loc))
    loc_scale = _clip(loc_norm, loc_trust_radius * root_dim)
    new_loc = loc - (loc_scale * loc_step) * direction_loc
    return new_loc, new_factor, StepInfo(loc_norm, factor_norm, loc_scale, factor_scale)


def is_finite(*trees):
    """True when every leaf of every tree is finite."""
    leaves = jax.tree.leaves(trees)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
