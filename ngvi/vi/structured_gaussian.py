"""Structured-Gaussian VI on a plain potential ``l(z) = -log p(z)``: the
local-parameterisation natural-gradient step of MATH.md sec. 3 on
``q(z) = N(mu, (B B^T)^-1)``, ``B`` in a group (Lin, Nielsen, Khan and
Schmidt, ICML 2021).

    algo = vi.structured_gaussian(potential_fn, group=groups.Dense())
    state = algo.init(position, scale=0.1)            # mu = position, B = I / scale
    state, info = jax.jit(algo.step)(rng_key, state)
    draws = algo.sample(rng_key, state, 1000)

``init``, ``step``, ``sample`` and ``loss`` below are the pure pieces, with
every setting an argument; :func:`as_top_level_api` closes over them.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ngvi import gaussian
from ngvi.estimators import gaussian_samples, loss_change, resolve, sample_loss
from ngvi.groups import Dense
from ngvi.ngd import is_finite, natural_gradient_step
from ngvi.vi.base import VIAlgorithm, as_target, check_num_samples, keep_if, step_size_at

__all__ = ["StructuredGaussianState", "StructuredGaussianInfo", "init", "step", "sample", "loss", "as_top_level_api"]


class StructuredGaussianState(NamedTuple):
    """``loc`` is ``mu``, ``factor`` the group's storage of ``B``; ``step`` counts
    the steps taken (the step-size schedules read it). ``backup`` is the last
    state whose loss was accepted, ``(loc, factor, loss, loss_se)``, and
    ``radius`` in ``(0, 1]`` the factor the step sizes are scaled by: a loss
    that jumps above the backup's returns the state to it and halves the
    radius (:func:`step`). Both ``None`` switch this off (a mixture's components)."""

    loc: jax.Array
    factor: Any
    step: jax.Array
    backup: Any = None
    radius: Any = None


class StructuredGaussianInfo(NamedTuple):
    """Diagnostics of one step.

    * ``loss``: the estimate of ``L = E_q[l] + gamma E_q[log q]`` at the state
      before the step (the negative ELBO for ``gamma = 1``); where it is not
      finite, the loss of the backup the step returns to;
    * ``rejected``: the step was not finite and the state was kept;
    * ``step_size``: ``beta``;
    * ``loc_norm``, ``factor_norm``: the unclipped sizes of the mean step (in
      the Fisher metric) and of the factor step (spectral norm);
    * ``loc_scale``, ``factor_scale``: the factors the trust region scaled them
      by (``< 1``: clipped);
    * ``num_grads``: gradient evaluations of ``l`` the step used (a value of
      ``l`` counts as one, a Hessian-vector product as two);
    * ``num_dropped``: draws left out of the averages because ``l`` or its
      gradient was not finite there (whole antithetic pairs,
      :func:`ngvi.estimators.draw_weights`).
    """

    loss: jax.Array
    rejected: jax.Array
    step_size: jax.Array
    loc_norm: jax.Array
    factor_norm: jax.Array
    loc_scale: jax.Array
    factor_scale: jax.Array
    num_grads: jax.Array
    num_dropped: jax.Array


def init(position, group, scale=1.0, factor=None):
    """``mu = position``, ``B = I / scale`` (so every standard deviation is
    ``scale``), or ``B = factor`` if given. Raises ``ValueError`` if ``group``
    does not fit ``p = len(position)``."""
    position = jnp.asarray(position)
    if position.ndim != 1:
        raise ValueError(f"position must be a flat vector (p,), got shape {position.shape}.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    factor = group.init(position.shape[0], scale, position.dtype) if factor is None else factor
    infinite = jnp.asarray(jnp.inf, position.dtype)
    backup = (position, factor, infinite, jnp.zeros((), position.dtype))
    return StructuredGaussianState(position, factor, jnp.zeros((), jnp.int32), backup, jnp.ones((), position.dtype))


# A loss estimate more than LOSS_JUMP_SE of the backup's standard errors plus
# LOSS_JUMP_NATS above the backup's loss undoes the last move (the backup's error,
# not the new one: a move into heavy tails has a large error of its own); the
# radius grows back by RADIUS_GROWTH. It never falls below MIN_RADIUS: halving
# alone would reach exactly 0 after ~150 rejections and freeze the state for good.
LOSS_JUMP_SE, LOSS_JUMP_NATS, RADIUS_GROWTH, MIN_RADIUS = 10.0, 10.0, 1.25, 2.0**-10


def next_radius(accept, radius):
    """The step control's radius after a step: grown by ``RADIUS_GROWTH`` towards 1
    if ``accept``, else halved, never below ``MIN_RADIUS``."""
    return jnp.where(accept, jnp.minimum(1.0, RADIUS_GROWTH * radius), jnp.maximum(MIN_RADIUS, 0.5 * radius))


def step(
    rng_key,
    state,
    target,
    group,
    estimator,
    num_samples=8,
    step_size=0.5,
    gamma=1.0,
    trust_radius=1.0,
    loc_trust_radius=10.0,
):
    """One step: ``estimator`` (a function of :mod:`ngvi.estimators`' signature)
    estimates ``g_mu`` and ``E_q[hess l]`` from ``num_samples`` draws, then
    :func:`ngvi.ngd.natural_gradient_step` moves ``(mu, B)`` with its step
    control, ``beta`` and both trust radii scaled by ``state.radius``.

    Draws where ``l`` is not finite are left out of the averages
    (``info.num_dropped``). The step is rejected (``info.rejected``) when its
    result is not finite, and when the loss estimate at the state is not finite
    or jumped more than ``LOSS_JUMP_SE`` of the backup's standard errors plus
    ``LOSS_JUMP_NATS`` above the backup's loss: then the state returns to the backup (the last move
    is undone) and the radius halves; an accepted step makes the state the
    backup and grows the radius back towards 1. On a ``target.subsampled``
    target the jump is :func:`ngvi.estimators.loss_change` from the backup on
    this step's subsample and fresh common draws, against its own standard
    error (``2 num_samples`` more values of ``l``).
    Returns ``(state, StructuredGaussianInfo)``."""
    estimate_key, step_key = jax.random.split(rng_key)
    radius = 1.0 if state.radius is None else state.radius
    beta = jnp.asarray(step_size_at(step_size, state.step), state.loc.dtype)
    estimate = estimator(estimate_key, target, group, state.loc, state.factor, num_samples, gamma)
    loc, factor, step_info = natural_gradient_step(
        step_key, group, state.loc, state.factor, estimate, radius * beta, gamma,
        radius * trust_radius, radius * loc_trust_radius,
    )
    accept = is_finite(loc, factor, estimate.loss)
    if state.backup is None:
        loc, factor = keep_if(accept, (loc, factor), (state.loc, state.factor))
        new_state = StructuredGaussianState(loc, factor, state.step + 1)
    else:
        backup_loc, backup_factor, backup_loss, backup_se = state.backup
        if target.subsampled:  # the backup's loss was on another subsample: compare on this one
            change_key = jax.random.fold_in(rng_key, 2)
            change, change_se = loss_change(
                change_key, target, group, (state.loc, state.factor), (backup_loc, backup_factor), num_samples, gamma
            )
            jumped = change > LOSS_JUMP_SE * change_se + LOSS_JUMP_NATS
        else:
            jumped = estimate.loss > backup_loss + LOSS_JUMP_SE * backup_se + LOSS_JUMP_NATS
        undo = ~jnp.isfinite(estimate.loss) | jumped
        accept = accept & ~undo
        fallback = keep_if(undo, (backup_loc, backup_factor), (state.loc, state.factor))
        loc, factor = keep_if(accept, (loc, factor), fallback)
        backup = keep_if(accept, (state.loc, state.factor, estimate.loss, estimate.loss_se), state.backup)
        radius = next_radius(accept, radius)
        new_state = StructuredGaussianState(loc, factor, state.step + 1, backup, radius)
        estimate = estimate._replace(loss=jnp.where(jnp.isfinite(estimate.loss), estimate.loss, backup_loss))
    num_grads = jnp.asarray(estimate.num_grads + estimate.curvature.num_grads, jnp.int32)
    info = StructuredGaussianInfo(estimate.loss, ~accept, beta, *step_info, num_grads, estimate.num_dropped)
    return new_state, info


def loss(rng_key, state, target, group, num_samples=8, gamma=1.0):
    """``L = mean_n [l(z_n) + gamma log q(z_n)]`` from ``num_samples`` antithetic draws
    (:func:`ngvi.estimators.sample_loss`)."""
    eps, z = gaussian_samples(rng_key, group, state.loc, state.factor, num_samples)
    return sample_loss(jax.vmap(target.potential)(z), eps, group, state.factor, gamma)[0]


def sample(rng_key, state, group, num_draws):
    """``num_draws`` independent draws of ``q``, shape ``(num_draws, p)``."""
    return gaussian.sample(rng_key, group, state.loc, state.factor, (num_draws,))


def as_top_level_api(
    potential_fn,
    group=None,
    estimator="auto",
    num_samples=8,
    step_size=0.5,
    gamma=1.0,
    trust_radius=1.0,
    loc_trust_radius=10.0,
    log_likelihood_fn=None,
    **estimator_options,
):
    """Structured-Gaussian VI of ``potential_fn(z) = -log p(z)`` on flat vectors.

    :param group: a :mod:`ngvi.groups` group (default :class:`~ngvi.groups.Dense`).
    :param estimator: ``"auto"`` (:func:`ngvi.estimators.auto`: exact Hessian
        products for a full-matrix group, whitened Hutchinson for the diagonal of
        a structured one), ``"hessian"``, ``"stein"``, ``"gauss_newton"`` (needs
        ``log_likelihood_fn``, the per-example log-likelihoods) or
        ``"zeroth_order"`` (:mod:`ngvi.estimators`); ``estimator_options`` go to it.
    :param num_samples: Monte-Carlo draws per step (antithetic pairs).
    :param step_size: ``beta``, a float or a schedule ``step -> float``.
    :param gamma: the weight of ``E_q[log q]`` (1 for VI).
    :param trust_radius: bound on the spectral norm of the local factor step.
    :param loc_trust_radius: bound on the mean step, in standard deviations of
        the updated ``q`` per ``sqrt(p)``.
    :returns: a :class:`ngvi.vi.VIAlgorithm` whose ``init(position, scale=1.0)``
        starts at ``mu = position``, ``B = I / scale``.
    """
    group = Dense() if group is None else group
    estimate = resolve(estimator, **estimator_options)
    check_num_samples(num_samples)
    target = as_target(potential_fn, log_likelihood_fn)
    settings = dict(
        num_samples=num_samples, step_size=step_size, gamma=gamma,
        trust_radius=trust_radius, loc_trust_radius=loc_trust_radius,
    )
    return VIAlgorithm(
        init=lambda position, scale=1.0: init(position, group, scale),
        step=lambda rng_key, state: step(rng_key, state, target, group, estimate, **settings),
        sample=lambda rng_key, state, num_draws: sample(rng_key, state, group, num_draws),
        loss=lambda rng_key, state: loss(rng_key, state, target, group, num_samples, gamma),
    )
