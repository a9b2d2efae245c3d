"""Structured second-order optimisation: the natural-gradient step of MATH.md
sec. 3 at the mean (sec. 7; Lin, Nielsen, Khan and Schmidt, ICML 2021), with
``gamma = 1`` and the expectations replaced by values at ``mu``:

    mu <- mu - beta S^-1 grad l(mu),   B <- B h(beta C ⊙ kappa(B^-1 hess l(mu) B^-T - I)),   S = B B^T.

The step is :func:`ngvi.ngd.natural_gradient_step` on an
:class:`ngvi.estimators.Estimate` made at the single point ``mu``; for ``R^T``
in the group it is invariant under ``w = R y``. ``h(M) = I + M + M^2 / 2`` has
eigenvalues ``>= 1/2`` on the symmetric and diagonal blocks of every
sub-algebra here, so ``B`` stays invertible where ``hess l`` is indefinite; the
non-convexity is handled by accepting a step only if ``l`` does not increase
(else the point stays, and ``beta`` and both trust radii halve, as in
:func:`ngvi.vi.structured_gaussian.step`).

    opt = optim.structured_newton(loss_fn, group=groups.BlockLowerTriangular(5))
    state = opt.init(params)
    params, state, info = jax.jit(opt.update)(rng_key, state)
    result = opt.run(rng_key, state, 300)              # result.losses: l at the start and after each iteration
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ngvi.estimators import Estimate, auto_probes, hessian_curvature, whitened_probes
from ngvi.groups import Dense
from ngvi.ngd import StepInfo, is_finite, natural_gradient_step
from ngvi.vi.base import keep_if, step_size_at
from ngvi.vi.structured_gaussian import next_radius

__all__ = [
    "StructuredNewtonState",
    "StructuredNewtonInfo",
    "StructuredNewtonRunResult",
    "StructuredNewton",
    "init",
    "update",
    "run",
    "structured_newton",
]


class StructuredNewtonState(NamedTuple):
    """``params`` is ``mu``, ``factor`` the group's storage of ``B``; ``loss`` and
    ``grad`` are ``l`` and its gradient at ``params`` (the next step's gradient is
    the last step's acceptance test); ``count`` the iterations taken; ``radius``
    in ``(0, 1]`` the factor that ``beta`` and the trust radii are scaled by."""

    params: jax.Array
    factor: Any
    loss: jax.Array
    grad: jax.Array
    count: jax.Array
    radius: jax.Array


class StructuredNewtonInfo(NamedTuple):
    """Diagnostics of one iteration: ``loss``, ``l`` at the returned ``params``;
    ``rejected``, the step raised ``l`` or was not finite and the point was kept;
    ``step_size``, ``beta`` times the radius; ``step``, the step control's
    :class:`ngvi.ngd.StepInfo` (``loc_norm``, ``factor_norm``, ``loc_scale``,
    ``factor_scale``); ``num_hvp``, the Hessian-vector products taken, and
    ``num_grads = 1 + 2 num_hvp``, gradient evaluations with a product
    counted as two."""

    loss: jax.Array
    rejected: jax.Array
    step_size: jax.Array
    step: StepInfo
    num_hvp: jax.Array
    num_grads: jax.Array


class StructuredNewtonRunResult(NamedTuple):
    """``losses``: ``l`` at the start and after each iteration (``num_steps + 1``);
    ``info``: the per-iteration :class:`StructuredNewtonInfo`, stacked."""

    params: jax.Array
    state: StructuredNewtonState
    losses: jax.Array
    info: StructuredNewtonInfo


class StructuredNewton(NamedTuple):
    """Pure functions closed over ``loss_fn``, the group and the settings:
    ``init(params, scale=1.0, factor=None) -> state`` (eager: it checks its input),
    ``update(rng_key, state) -> (params, state, info)`` and
    ``run(rng_key, state, num_steps) -> StructuredNewtonRunResult`` (both jit-able)."""

    init: Callable
    update: Callable
    run: Callable


def init(params, loss_fn, group, scale=1.0, factor=None):
    """``mu = params``, ``B = I / scale`` (``S = I / scale^2``) or ``B = factor``;
    one gradient of ``l``. Raises ``ValueError`` if ``params`` is not a flat
    floating-point vector, ``group`` does not fit ``p``, ``loss_fn`` is not
    scalar, or ``l`` or its gradient is not finite at ``params``."""
    params = jnp.asarray(params)
    if params.ndim != 1 or not jnp.issubdtype(params.dtype, jnp.floating):
        raise ValueError(f"params must be a flat floating-point vector (p,), got shape {params.shape} {params.dtype}.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    group.check(params.shape[0])
    out = jax.eval_shape(loss_fn, params)
    if getattr(out, "shape", None) != ():
        shape = getattr(out, "shape", type(out))
        raise ValueError(f"loss_fn must return a scalar, got {shape} at params of shape {params.shape}.")
    loss, grad = jax.value_and_grad(loss_fn)(params)
    if not (jnp.isfinite(loss) and jnp.all(jnp.isfinite(grad))):
        raise ValueError(f"loss_fn or its gradient is not finite at the start (loss {loss}); start elsewhere.")
    factor = group.init(params.shape[0], scale, params.dtype) if factor is None else factor
    one = jnp.ones((), params.dtype)
    return StructuredNewtonState(params, factor, loss, grad, jnp.zeros((), jnp.int32), one)


def _probes(group, p, num_probes):
    """``num_probes``, with ``"auto"`` as :func:`ngvi.estimators.auto_probes` chooses."""
    return auto_probes(group, p) if num_probes == "auto" else num_probes


def update(
    rng_key,
    state,
    loss_fn,
    group,
    step_size=1.0,
    trust_radius=1.0,
    loc_trust_radius=10.0,
    num_probes="auto",
    line_probes=0,
    line_search=True,
):
    """One iteration: the curvature ``hess l(mu)`` as an operator
    (:func:`ngvi.estimators.hessian_curvature` at the one point ``mu``; with
    ``num_probes`` an int, ``diag(H)`` from that many whitened Hutchinson
    probes, :func:`ngvi.estimators.whitened_probes`), then
    :func:`ngvi.ngd.natural_gradient_step` with ``gamma = 1`` and ``beta`` and
    both trust radii times ``state.radius``, then ``l`` and its gradient at the
    new point. The step is kept if it is finite and ``l`` did not increase (the
    radius grows back by ``RADIUS_GROWTH`` towards 1), else the point stays and
    the radius halves (down to ``MIN_RADIUS``).

    Cost: one gradient plus the products the group asks of the curvature:
    a full-matrix group forms ``H`` (``p`` products, ``O(p^3)``); a block
    group takes ``k`` products for its dense rows (``k1 + k2`` for
    ``Hierarchical``), ``num_probes`` for ``diag(H)`` (``p`` if ``None``), one
    for the mean's line minimiser (none with ``line_search=False``: the mean
    step is then ``beta S^-1 grad l``, checked only by the acceptance test) and
    ``2 line_probes`` for the factor's (:mod:`ngvi.ngd`), at ``O(k^2 p)``
    further work: ``k + 1`` products with ``num_probes=1, line_search=False``. Returns
    ``(params, state, StructuredNewtonInfo)``."""
    probe_key, step_key = jax.random.split(rng_key)
    dtype, p = state.params.dtype, state.params.shape[0]
    num_probes = _probes(group, p, num_probes)
    probes = None if num_probes is None else whitened_probes(probe_key, group, state.factor, num_probes)
    curvature = hessian_curvature(loss_fn, state.params[None], group, probes)
    zero = jnp.zeros((), dtype)
    estimate = Estimate(state.loss, zero, state.grad, curvature, 0, jnp.zeros((), jnp.int32))
    beta = state.radius * jnp.asarray(step_size_at(step_size, state.count), dtype)
    loc, factor, step_info = natural_gradient_step(
        step_key, group, state.params, state.factor, estimate, beta, 1.0,
        state.radius * trust_radius, state.radius * loc_trust_radius, line_probes, line_search,
    )
    loss, grad = jax.value_and_grad(loss_fn)(loc)
    accept = is_finite(loc, factor, loss, grad) & (loss <= state.loss)
    new, old = (loc, factor, loss, grad), (state.params, state.factor, state.loss, state.grad)
    loc, factor, loss, grad = keep_if(accept, new, old)
    radius = next_radius(accept, state.radius)
    new_state = StructuredNewtonState(loc, factor, loss, grad, state.count + 1, radius.astype(dtype))
    num_hvp = curvature.num_grads // 2
    counts = jnp.asarray(num_hvp, jnp.int32), jnp.asarray(1 + 2 * num_hvp, jnp.int32)
    return loc, new_state, StructuredNewtonInfo(loss, ~accept, beta, step_info, *counts)


def run(rng_key, state, num_steps, update_fn):
    """``num_steps`` iterations of ``update_fn(rng_key, state)`` in one
    ``jax.lax.scan``; returns a :class:`StructuredNewtonRunResult`."""

    def body(state, key):
        _, state, info = update_fn(key, state)
        return state, info

    final, info = jax.lax.scan(body, state, jax.random.split(rng_key, num_steps))
    losses = jnp.concatenate([state.loss[None], info.loss])
    return StructuredNewtonRunResult(final.params, final, losses, info)


def structured_newton(
    loss_fn,
    group=None,
    step_size=1.0,
    trust_radius=1.0,
    loc_trust_radius=10.0,
    num_probes="auto",
    line_probes=0,
    line_search=True,
):
    """Structured natural-gradient Newton minimisation of ``loss_fn`` on flat vectors.

    :param group: a :mod:`ngvi.groups` group for ``B`` (default :class:`~ngvi.groups.Dense`).
    :param step_size: ``beta``, a float or a schedule ``count -> float``.
    :param trust_radius: bound on the spectral norm of the local factor step.
    :param loc_trust_radius: bound on the mean step in the local coordinates
        of the updated ``S``, per ``sqrt(p)``.
    :param num_probes: whitened Hutchinson probes for ``diag(hess l)``; ``None``
        takes it exactly (``p`` products); ``"auto"``: exact for a full-matrix
        group or ``p <= 128``, else 4.
    :param line_probes: probes of the factor's line minimiser
        (:func:`ngvi.ngd.natural_gradient_step`; ``0`` leaves it out).
    :param line_search: the mean's line minimiser on the quadratic model (one
        product); without it the mean step is ``beta S^-1 grad l``.
    :returns: a :class:`StructuredNewton` ``(init, update, run)``; ``update`` and
        ``run`` take a PRNG key, which draws the probes.
    """
    group = Dense() if group is None else group
    settings = dict(
        step_size=step_size, trust_radius=trust_radius, loc_trust_radius=loc_trust_radius,
        num_probes=num_probes, line_probes=line_probes, line_search=line_search,
    )
    update_fn = lambda rng_key, state: update(rng_key, state, loss_fn, group, **settings)
    return StructuredNewton(
        init=lambda params, scale=1.0, factor=None: init(params, loss_fn, group, scale, factor),
        update=update_fn,
        run=lambda rng_key, state, num_steps: run(rng_key, state, num_steps, update_fn),
    )
