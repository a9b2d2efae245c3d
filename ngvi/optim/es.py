"""Structured evolution strategies: black-box minimisation of ``f(w)`` from values only.

The search distribution is ``q = N(mu, S^-1)``, ``S = B B^T`` with ``B`` in a
group (MATH.md sec. 2, 4). Each generation draws ``n`` points
``w_n = mu + B^-T eps_n`` (antithetic, orthogonal pairs), shapes their values
into coefficients ``c_n`` with ``sum_n c_n = 0`` (xNES's rank utilities by
default, or the mean as baseline), and takes the natural-gradient step of
MATH.md sec. 3 with the zeroth-order estimate of sec. 5 and ``gamma = 0``
(stochastic relaxation of ``f``, no entropy term; sec. 7):

    X  = B^-1 H B^-T = sum_n c_n eps_n eps_n^T,       B  <- B h(eta_B C ⊙ kappa(X))
    mu <- mu - eta_mu S^-1 g_mu = mu - eta_mu B^-T sum_n c_n eps_n.

With ``Dense``, ``C ⊙ kappa(X) = X / 2 = -G_M / 2`` for xNES's
``G_M = sum_n u_n (eps_n eps_n^T - I)`` (``c_n = -u_n``), so the covariance
factor ``A = B^-T`` moves as ``A <- A h(-eta_B G_M / 2)^-1``, xNES's
``A exp(eta_B G_M / 2)`` to second order: Dense ``structured_es`` is xNES
(Glasmachers et al., GECCO 2010) with ``h`` for the matrix exponential. A
structured group gives the same step projected onto its sub-algebra, at the
group's cost (``O(k^2 p)`` memory and time per draw for ``BlockUpperTriangular(k)``).

References: Wierstra et al., "Natural evolution strategies" (JMLR 2014);
Lin, Nielsen, Khan, Schmidt (ICML 2021).
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngvi.estimators import baseline_coefficients, draw_weights, gaussian_samples, zeroth_order_estimate

__all__ = [
    "ESState",
    "ESInfo",
    "EvolutionStrategy",
    "structured_es",
    "rank_utilities",
    "rank_coefficients",
    "xnes_population_size",
    "xnes_factor_step_size",
]


class ESState(NamedTuple):
    """``mean`` and ``factor`` (``B``, ``S = B B^T``) of the search distribution, the
    best point evaluated so far and its value, and the evaluations of ``f`` used."""

    mean: jax.Array
    factor: Any
    best_position: jax.Array
    best_value: jax.Array
    num_evaluations: jax.Array


class ESInfo(NamedTuple):
    """One generation: the best value so far and in this generation, the
    evaluations used so far, and the factor the trust region scaled ``M`` by."""

    best_value: jax.Array
    generation_best: jax.Array
    num_evaluations: jax.Array
    factor_scale: jax.Array


class EvolutionStrategy(NamedTuple):
    """``init(mean, scale) -> state``; ``step(rng_key, state) -> (state, info)``;
    ``run(rng_key, state, num_generations) -> (state, info)`` with ``info``
    stacked over the generations (one ``lax.scan``; ``num_generations`` static)."""

    init: Callable
    step: Callable
    run: Callable


def xnes_population_size(p):
    """xNES's default ``n = 4 + floor(3 log p)``."""
    return 4 + int(math.floor(3 * math.log(p)))


def xnes_factor_step_size(d):
    """xNES's ``eta_sigma = eta_B = (9 + 3 log d) / (5 d^{3/2})``."""
    return (9 + 3 * math.log(d)) / (5 * d**1.5)


def rank_utilities(n, dtype=jnp.float32):
    """xNES's utilities by rank ``i = 1..n`` (best first):
    ``u_i = max(0, log(n/2 + 1) - log i) / sum_j max(0, log(n/2 + 1) - log j) - 1/n``;
    they sum to zero."""
    raw = np.maximum(0.0, np.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    return jnp.asarray(raw / raw.sum() - 1.0 / n, dtype)


def rank_coefficients(values, weights):
    """Fitness shaping for minimisation: ``c_n = -u_{rank(n)}`` (:func:`rank_utilities`),
    the lowest value ranked first and non-finite values last. Invariant under
    monotone transformations of ``f``; ``weights`` is unused (every draw keeps its rank)."""
    del weights
    ranks = jnp.argsort(jnp.argsort(jnp.where(jnp.isfinite(values), values, jnp.inf)))
    return -rank_utilities(values.shape[0], values.dtype)[ranks]


SHAPINGS = {"rank": rank_coefficients, "baseline": baseline_coefficients}


def _check_start(group, mean, scale):
    if not isinstance(mean, jax.core.Tracer):
        mean = np.asarray(mean)
        if mean.ndim != 1:
            raise ValueError(f"structured_es needs a flat start vector (shape (p,)), got shape {mean.shape}.")
        if not np.all(np.isfinite(mean)):
            bad = np.flatnonzero(~np.isfinite(mean)).tolist()
            raise ValueError(f"structured_es needs a finite start; the mean has non-finite entries at {bad}.")
    if not isinstance(scale, jax.core.Tracer) and not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"structured_es needs a finite scale > 0, got scale={scale}.")
    group.check(mean.shape[0])


def _check_objective(f, mean):
    out = jax.eval_shape(f, jax.ShapeDtypeStruct(mean.shape, mean.dtype))
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        raise ValueError(
            f"structured_es needs f to return a real scalar for a point of shape {mean.shape}, "
            f"got {getattr(out, 'shape', type(out))} of dtype {getattr(out, 'dtype', None)}."
        )


def structured_es(
    f,
    group,
    population_size=None,
    mean_step_size=1.0,
    factor_step_size=None,
    shaping="rank",
    trust_radius=1.0,
):
    """Structured natural evolution strategy minimising ``f`` (values only).

    ``f(w) -> scalar`` on a flat ``w``; ``group`` the structure of ``B``.
    ``population_size`` defaults to xNES's ``4 + floor(3 log p)``;
    ``mean_step_size`` is ``eta_mu`` (xNES: 1); ``factor_step_size`` is ``eta_B``,
    by default xNES's rate (:func:`xnes_factor_step_size`) at ``d = sqrt(#B)``,
    ``#B`` the number of stored entries of ``B`` (``d = p`` for ``Dense``,
    ``sqrt(p)`` for ``Diagonal``, ``sqrt(k p)`` roughly for block groups), so the rate
    follows the number of parameters the group adapts. ``shaping`` is ``"rank"``
    (:func:`rank_coefficients`), ``"baseline"`` (values minus their mean, as
    :func:`ngvi.estimators.zeroth_order`) or a function ``(values, weights) -> c``
    with ``sum c = 0``. ``trust_radius`` bounds ``||eta_B C ⊙ kappa(X)||_2``
    (group's ``spectral_norm``): ``h`` is monotone only on ``[-1, inf)``, so a
    larger step could shrink ``B`` in a direction the estimate says to grow.

    The step calls the group's ``local_gradient``, ``natural_direction`` and
    ``retract`` directly rather than :func:`ngvi.ngd.natural_gradient_step`:
    that step has one ``beta`` for mean and factor, where ES needs
    ``eta_mu = 1`` and a far smaller ``eta_B``, and its line minimisers take the
    estimate as the curvature of a quadratic model of ``E_q[l]``, which the shaped
    coefficients (ranks, not values of ``f``) are not. The mean moves with the
    old ``B``, as in xNES.

    Cost per generation: ``n`` evaluations of ``f``, ``n`` solves and products
    with ``B``, the group's ``local_gradient`` (a rank-``n`` curvature:
    ``O(n p^2)`` dense, ``O(n k p)`` block), a power iteration and one retraction.
    """
    if shaping in SHAPINGS:
        shaping = SHAPINGS[shaping]
    elif not callable(shaping):
        raise ValueError(f"shaping must be one of {sorted(SHAPINGS)} or a function, got {shaping!r}.")
    if population_size is not None and (int(population_size) != population_size or population_size < 2):
        raise ValueError(f"population_size must be an integer >= 2, got {population_size}.")

    def sizes(mean, factor):
        p = mean.shape[0]
        n = xnes_population_size(p) if population_size is None else int(population_size)
        if factor_step_size is not None:
            return n, factor_step_size
        stored = sum(leaf.size for leaf in jax.tree.leaves(factor))
        return n, xnes_factor_step_size(max(math.sqrt(stored), 1.0))

    def init(mean, scale=1.0):
        """``mu = mean``, ``B = I / scale``; ``ValueError`` for a non-flat or
        non-finite start, a group that does not fit ``p`` or an ``f`` that does
        not return a real scalar."""
        _check_start(group, mean, scale)
        mean = jnp.asarray(mean, dtype=jnp.result_type(float))
        _check_objective(f, mean)
        factor = group.init(mean.shape[0], scale, mean.dtype)
        inf = jnp.asarray(jnp.inf, mean.dtype)
        return ESState(mean, factor, mean, inf, jnp.zeros((), jnp.int32))

    def step(rng_key, state):
        """One generation (MATH.md sec. 3, 5)."""
        mean, factor = state.mean, state.factor
        n, eta_b = sizes(mean, factor)
        eps, points = gaussian_samples(rng_key, group, mean, factor, n)
        values = jax.vmap(f)(points)
        weights = draw_weights(values)
        estimate = zeroth_order_estimate(group, factor, eps, values, weights, shaping(values, weights), 0.0)
        direction = group.natural_direction(group.local_gradient(factor, estimate.curvature, 0.0))
        norm = eta_b * group.spectral_norm(direction)
        factor_scale = jnp.minimum(1.0, trust_radius / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        new_factor = group.retract(factor, jax.tree.map(lambda m: (factor_scale * eta_b) * m, direction))
        new_mean = mean - mean_step_size * group.rsolve(factor, group.solve(factor, estimate.grad_loc))
        finite_values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        best = jnp.argmin(finite_values)
        improved = finite_values[best] < state.best_value
        new_state = ESState(
            new_mean,
            new_factor,
            jnp.where(improved, points[best], state.best_position),
            jnp.where(improved, finite_values[best], state.best_value),
            state.num_evaluations + n,
        )
        info = ESInfo(new_state.best_value, finite_values[best], new_state.num_evaluations, factor_scale)
        return new_state, info

    def run(rng_key, state, num_generations):
        """``num_generations`` steps in one ``lax.scan``."""
        return jax.lax.scan(lambda s, key: step(key, s), state, jax.random.split(rng_key, num_generations))

    return EvolutionStrategy(init, step, run)
