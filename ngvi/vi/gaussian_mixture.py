"""Mixture-of-structured-Gaussians VI on a plain potential (MATH.md sec. 6):
``q(z) = sum_c pi_c N(mu_c, (B_c B_c^T)^-1)``, every ``B_c`` in one group.

With the joint ``(z, c)`` Fisher matrix each component takes the
single-Gaussian step on ``f = l + gamma log q`` under its own ``q_c``. Written
as ``f = l_c + gamma log q_c`` with

    l_c(z) = l(z) + gamma (log q(z) - log q_c(z))      (q held at the current state)

it is exactly :func:`ngvi.vi.structured_gaussian.step` on the potential
``l_c``: the component's own entropy in closed form, ``E_{q_c}[hess l_c]`` the
curvature its step control sees, and for one component ``l_c = l``, the
single-Gaussian step itself. Learned weights move in the natural coordinates
``v_c = log(pi_c / pi_K)``: ``v_c <- v_c - beta (E_{q_c}[f] - E_{q_K}[f])``.
Expectations are stratified: ``num_samples`` draws from every component.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ngvi import gaussian
from ngvi.estimators import resolve
from ngvi.groups import Dense
from ngvi.vi import structured_gaussian as single
from ngvi.vi.base import VIAlgorithm, as_target, check_num_samples, keep_if, step_size_at
from ngvi.vi.structured_gaussian import StructuredGaussianInfo, StructuredGaussianState

__all__ = ["GaussianMixtureState", "GaussianMixtureInfo", "init", "step", "sample", "loss", "as_top_level_api"]


class GaussianMixtureState(NamedTuple):
    """``loc`` ``(K, p)`` and ``factor`` (leaves with a leading ``K``) stack the
    components; ``log_weights`` are ``v_c = log(pi_c / pi_K)`` (``v_K = 0``)."""

    loc: jax.Array
    factor: Any
    log_weights: jax.Array
    step: jax.Array


class GaussianMixtureInfo(NamedTuple):
    """``loss``: the mixture's ``L = sum_c pi_c E_{q_c}[f]`` before the step;
    ``rejected``: some component's step was rejected (which: ``components.rejected``); ``num_grads``: gradient evaluations of the
    whole step; ``components``: every component's
    :class:`~ngvi.vi.structured_gaussian.StructuredGaussianInfo` (leading axis ``K``)."""

    loss: jax.Array
    rejected: jax.Array
    num_grads: jax.Array
    components: StructuredGaussianInfo


def init(position, group, scale=1.0, weights=None):
    """Components at the rows of ``position`` (``(K, p)``), each ``B_c = I / scale``,
    weights ``weights`` (a simplex; equal by default)."""
    position = jnp.asarray(position)
    if position.ndim != 2:
        raise ValueError(f"position must have shape (K, p) (components x dimension), got {position.shape}.")
    num = position.shape[0]
    weights = jnp.full((num,), 1.0 / num, position.dtype) if weights is None else jnp.asarray(weights, position.dtype)
    if weights.shape != (num,):
        raise ValueError(f"weights must have shape ({num},), one per component, got {weights.shape}.")
    first = single.init(position[0], group, scale)
    factor = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (num,) + leaf.shape), first.factor)
    log_weights = jnp.log(weights) - jnp.log(weights[-1])
    return GaussianMixtureState(position, factor, log_weights, first.step)


def component_targets(state, target, group, gamma):
    """``c -> l_c`` with ``l_c(z) = l(z) + gamma (log q(z) - log q_c(z))``, ``q`` at ``state``."""
    log_q = lambda z: gaussian.mixture_log_prob(group, state.loc, state.factor, state.log_weights, z)

    def target_of(loc, factor):
        log_q_c = lambda z: gaussian.log_prob(group, loc, factor, z)
        return target._replace(potential=lambda z: target.potential(z) + gamma * (log_q(z) - log_q_c(z)))

    return target_of


def step(
    rng_key,
    state,
    target,
    group,
    estimator,
    num_samples=8,
    step_size=0.5,
    gamma=1.0,
    learn_weights=False,
    trust_radius=1.0,
    loc_trust_radius=10.0,
):
    """Every component's single-Gaussian step on its ``l_c`` (one ``vmap``), then
    the weights. A component whose step is not finite keeps its state; the
    weights move only when every component's loss is finite.
    Returns ``(state, GaussianMixtureInfo)``."""
    num = state.loc.shape[0]
    keys = rng_key[None] if num == 1 else jax.random.split(rng_key, num)
    target_of = component_targets(state, target, group, gamma)

    def component(key, loc, factor):
        return single.step(
            key, StructuredGaussianState(loc, factor, state.step), target_of(loc, factor), group, estimator, num_samples, step_size, gamma,
            trust_radius, loc_trust_radius,
        )

    moved, infos = jax.vmap(component)(keys, state.loc, state.factor)
    losses = infos.loss
    log_weights = state.log_weights
    if learn_weights:
        beta = step_size_at(step_size, state.step)
        log_weights = keep_if(jnp.all(jnp.isfinite(losses)), log_weights - beta * (losses - losses[-1]), log_weights)
    mixture_loss = jnp.sum(jax.nn.softmax(state.log_weights) * losses)
    new_state = GaussianMixtureState(moved.loc, moved.factor, log_weights, state.step + 1)
    return new_state, GaussianMixtureInfo(mixture_loss, jnp.any(infos.rejected), jnp.sum(infos.num_grads), infos)


def loss(rng_key, state, target, group, num_samples=8, gamma=1.0):
    """``L = sum_c pi_c E_{q_c}[l + gamma log q]``, ``num_samples`` draws per component."""
    num = state.loc.shape[0]
    target_of = component_targets(state, target, group, gamma)

    def component(key, loc, factor):
        component_state = StructuredGaussianState(loc, factor, state.step)
        return single.loss(key, component_state, target_of(loc, factor), group, num_samples, gamma)

    losses = jax.vmap(component)(jax.random.split(rng_key, num), state.loc, state.factor)
    return jnp.sum(jax.nn.softmax(state.log_weights) * losses)


def sample(rng_key, state, group, num_draws):
    """``num_draws`` draws of the mixture, shape ``(num_draws, p)``."""
    choice_key, draw_key = jax.random.split(rng_key)
    which = jax.random.categorical(choice_key, state.log_weights, shape=(num_draws,))
    eps = jax.random.normal(draw_key, (num_draws, state.loc.shape[-1]), state.loc.dtype)
    pick = lambda c, e: gaussian.from_standard(group, state.loc[c], jax.tree.map(lambda f: f[c], state.factor), e)
    return jax.vmap(pick)(which, eps)


def as_top_level_api(
    potential_fn,
    num_components,
    group=None,
    estimator="auto",
    num_samples=8,
    step_size=0.5,
    gamma=1.0,
    learn_weights=False,
    trust_radius=1.0,
    loc_trust_radius=10.0,
    log_likelihood_fn=None,
    **estimator_options,
):
    """Mixture VI of ``potential_fn(z) = -log p(z)`` with ``num_components``
    components; settings as :func:`ngvi.vi.structured_gaussian.as_top_level_api`,
    plus ``learn_weights``. ``init(position, scale=1.0, weights=None)`` takes
    the component means ``(K, p)``."""
    if int(num_components) != num_components or num_components < 1:
        raise ValueError(f"num_components must be a positive integer, got {num_components}.")
    group = Dense() if group is None else group
    estimate = resolve(estimator, **estimator_options)
    check_num_samples(num_samples)
    target = as_target(potential_fn, log_likelihood_fn)
    settings = dict(
        num_samples=num_samples, step_size=step_size, gamma=gamma, learn_weights=learn_weights,
        trust_radius=trust_radius, loc_trust_radius=loc_trust_radius,
    )

    def init_fn(position, scale=1.0, weights=None):
        state = init(position, group, scale, weights)
        if state.loc.shape[0] != num_components:
            raise ValueError(f"position must have {num_components} rows, one per component, got {state.loc.shape}.")
        return state

    return VIAlgorithm(
        init=init_fn,
        step=lambda rng_key, state: step(rng_key, state, target, group, estimate, **settings),
        sample=lambda rng_key, state, num_draws: sample(rng_key, state, group, num_draws),
        loss=lambda rng_key, state: loss(rng_key, state, target, group, num_samples, gamma),
    )
