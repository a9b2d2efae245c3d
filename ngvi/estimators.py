"""Monte-Carlo estimators of the gradients the natural-gradient step needs.

For ``q = N(mu, (B B^T)^-1)``, ``z = mu + B^-T eps`` with ``eps ~ N(0, I)`` drawn
in antithetic pairs ``(eps, -eps)`` (adjacent) along orthogonal directions, each
estimator returns (MATH.md sec. 3, 5)

* ``loss``: ``L = E_q[l] + gamma E_q[log q]`` (the negative ELBO for ``gamma = 1``),
  as ``mean_n [l(z_n) + gamma log q(z_n)]`` (:func:`sample_loss`),
* ``grad_loc``: ``g_mu = E_q[grad l]``,
* ``curvature``: an operator for ``H = E_q[hess l]`` (:mod:`ngvi.curvature`).

``target`` is a :class:`ngvi.target.Target`: ``l(z)`` and, for Gauss-Newton,
the split of ``l`` into a prior part and per-example log-likelihoods. Each
estimator has the signature
``(key, target, group, loc, factor, num_samples, gamma, **options) -> Estimate``.
"""

import inspect
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngvi.curvature import Curvature, DenseCurvature, HessianCurvature, LowRankCurvature, SumCurvature
from ngvi.gaussian import antithetic_normals, from_standard, log_prob_standard

__all__ = [
    "Estimate", "ESTIMATORS", "resolve", "auto", "draw_weights", "sample_loss", "hessian", "stein", "gauss_newton", "zeroth_order", "gaussian_samples",
    "baseline_coefficients", "zeroth_order_estimate",
    "hessian_curvature", "whitened_probes", "auto_probes", "loss_change",
]


class Estimate(NamedTuple):
    """``num_grads``: the gradient (or value) evaluations of ``l`` the estimate
    made itself (its curvature operator counts the products it is asked for);
    ``num_dropped``: draws left out because ``l`` or its gradient was not finite
    there (:func:`draw_weights`); ``loss_se``: a standard error of ``loss``
    (from the draws' spread, ignoring the antithetic pairing: an upper bound)."""

    loss: jax.Array
    loss_se: jax.Array
    grad_loc: jax.Array
    curvature: Curvature
    num_grads: int
    num_dropped: jax.Array


def gaussian_samples(key, group, loc, factor, num_samples, sharding=None):
    """Antithetic orthogonal ``eps`` (:func:`ngvi.gaussian.antithetic_normals`)
    and ``z = mu + B^-T eps``; with a ``sharding`` of the ``(num_samples, p)``
    draws (:attr:`ngvi.target.Target.draw_sharding`) the compiled step
    evaluates them spread over its devices, as the sharding places them."""
    eps = antithetic_normals(key, num_samples, loc.shape[-1], loc.dtype)
    if sharding is not None:
        eps = jax.lax.with_sharding_constraint(eps, sharding)
    return eps, from_standard(group, loc, factor, eps)


def _values_and_grads(potential, z):
    return jax.vmap(jax.value_and_grad(potential))(z)


def draw_weights(*per_draw):
    """Weights ``w_n`` of the draws in the averages: equal over the antithetic
    pairs ``(2i, 2i + 1)`` whose every value in ``per_draw`` (arrays with a
    leading draw axis) is finite, zero on the others, so that one draw where
    the model cannot be evaluated (a failed Cholesky, an overflow) leaves its
    pair out instead of making the whole step non-finite. All zero (and the
    loss not finite) when no pair is finite."""
    num = per_draw[0].shape[0]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x.reshape(num, -1)), axis=-1) for x in per_draw]), axis=0)
    pair = jnp.arange(num) // 2
    kept = jax.ops.segment_min(finite.astype(jnp.int32), pair, num_segments=(num + 1) // 2)[pair] > 0
    return kept / jnp.maximum(jnp.sum(kept), 1).astype(per_draw[0].dtype)


def _weighted_sum(weights, x):
    """``sum_n w_n x_n``, with the left-out draws' values (maybe not finite) read as 0."""
    shaped = weights.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sum(shaped * jnp.where(shaped > 0, x, 0.0), axis=0)


def _estimate(values, eps, weights, grad_loc, curvature, group, factor, gamma, num_grads=None):
    loss, loss_se = sample_loss(values, eps, group, factor, gamma, weights)
    num_dropped = jnp.sum(weights == 0)
    num_grads = values.shape[0] if num_grads is None else num_grads
    return Estimate(loss, loss_se, grad_loc, curvature, num_grads, num_dropped)


def sample_loss(values, eps, group, factor, gamma, weights=None):
    """``L ~ sum_n w_n [l(z_n) + gamma log q(z_n)]`` at ``z_n = mu + B^-T eps_n``
    (``w_n = 1 / n`` by default) and its standard error: unbiased, and exact
    (no Monte-Carlo error) wherever ``l + gamma log q`` is constant, as at the
    optimum for a target in the family; ``log q(z_n)`` costs no product. Not
    finite when no draw is kept."""
    terms = values + gamma * log_prob_standard(group, factor, eps)
    return _mean_and_se(terms, draw_weights(values) if weights is None else weights)


def _mean_and_se(terms, weights):
    """``sum_n w_n t_n`` and its standard error from the kept draws' spread (not finite when none is kept)."""
    mean = _weighted_sum(weights, terms)
    spread = _weighted_sum(weights, (terms - mean) ** 2) / jnp.maximum(jnp.sum(weights > 0), 1)
    kept = jnp.any(weights > 0)
    return jnp.where(kept, mean, jnp.nan), jnp.where(kept, jnp.sqrt(spread), jnp.nan)


def loss_change(key, target, group, new, old, num_samples, gamma):
    """``L(new) - L(old)`` and its standard error, ``new`` and ``old`` each a
    ``(loc, factor)``, from the same ``eps`` and the same ``target``: with
    common random numbers the noise both share cancels, the draws' and, under
    data subsampling, the subsample's level, which makes losses of different
    steps incomparable. The error is the draws' spread. Costs
    ``2 num_samples`` values of ``l``."""
    eps, z_new = gaussian_samples(key, group, *new, num_samples, target.draw_sharding)
    z_old = from_standard(group, *old, eps)
    terms = lambda z, factor: jax.vmap(target.potential)(z) + gamma * log_prob_standard(group, factor, eps)  # noqa: E731
    change = terms(z_new, new[1]) - terms(z_old, old[1])
    return _mean_and_se(change, draw_weights(change))


def _mean_hvp(fn, z, weights=None):
    """``v -> sum_n w_n hess fn(z_n) v`` by forward-over-reverse products (``w_n = 1 / n`` by default)."""
    grad = jax.grad(fn)
    weights = jnp.full(z.shape[:1], 1.0 / z.shape[0], z.dtype) if weights is None else weights
    return lambda v: _weighted_sum(weights, jax.vmap(lambda zi: jax.jvp(grad, (zi,), (v,))[1])(z))


def hessian(key, target, group, loc, factor, num_samples, gamma, probes=None, curvature_samples=None):
    """Price's theorem: ``H`` through Hessian-vector products at the samples.

    ``curvature_samples`` (an int, default all ``num_samples``) takes the
    products at the first that many draws only (whole antithetic pairs when
    even): ``g_mu`` from many cheap gradients, ``H`` from a few draws, each of
    which costs ``p`` products for a full-matrix group. ``probes`` (an int)
    switches ``diag(H)`` and the curvature factors to Hutchinson estimates with
    that many whitened Rademacher vectors (:func:`whitened_probes`); by default
    they are exact (``p`` products,
    only for groups that need them; a full-matrix group gets ``H`` formed once,
    :class:`ngvi.curvature.DenseCurvature`)."""
    sample_key, probe_key = jax.random.split(key)
    eps, z = gaussian_samples(sample_key, group, loc, factor, num_samples, target.draw_sharding)
    values, grads = _values_and_grads(target.potential, z)
    weights = draw_weights(values, grads)
    m = _check_curvature_samples(curvature_samples, num_samples)
    probe_pairs = None if probes is None else jax.vmap(lambda k: whitened_probes(k, group, factor, probes))(
        jax.random.split(probe_key, m)
    )
    curvature_weights = weights[:m] / jnp.maximum(jnp.sum(weights[:m]), jnp.finfo(loc.dtype).tiny)
    curvature = hessian_curvature(target.potential, z[:m], group, probe_pairs, curvature_weights, gamma)
    return _estimate(values, eps, weights, _weighted_sum(weights, grads), curvature, group, factor, gamma)


def whitened_probes(key, group, factor, num_probes):
    """Probe pairs ``(R B^T, R B^-1)`` for Hutchinson estimates of ``H``
    (:class:`ngvi.curvature.HessianCurvature`), ``R`` ``num_probes`` Rademacher
    rows: they estimate the whitened ``B^-1 H B^-T`` by
    ``sym(mean_i r_i (B^-1 H B^-T r_i)^T)``, so that the error of a diagonal
    entry is ``sum_{j != i} (B^-1 H B^-T)_ij^2`` per probe, which vanishes as
    ``q`` fits ``H`` (unwhitened probes keep the raw ``sum_j H_ij^2``, the
    couplings a structured ``B`` has already captured). Cost: one product with
    ``B`` and one solve per probe."""
    r = jax.random.rademacher(key, (num_probes, group.dim(factor)), jax.tree.leaves(factor)[0].dtype)
    return jax.vmap(lambda v: group.matvec(factor, v))(r), jax.vmap(lambda v: group.rsolve(factor, v))(r)


def hessian_curvature(fn, z, group, probes=None, weights=None, gamma=1.0):
    """``H = sum_n w_n hess fn(z_n)`` (``w_n = 1 / n`` by default) as the operator
    ``group`` reads: a matrix (``p`` products per point) for a full-matrix group
    without ``probes``, otherwise products on demand, with the diagonal from
    whitened Hutchinson ``probes`` if given (:func:`whitened_probes`: a pair of
    ``(m, p)`` arrays shared by the points, or ``(n, m, p)`` for each point its
    own), shrunk towards ``gamma diag(S)`` by its noise
    (:meth:`ngvi.curvature.HessianCurvature.diagonal`)."""
    (num, dim), grad = z.shape, jax.grad(fn)
    weights = jnp.full(num, 1.0 / num, z.dtype) if weights is None else weights
    hvp = _mean_hvp(fn, z, weights)
    if probes is None and group.dense_curvature:
        return DenseCurvature(jax.vmap(hvp)(jnp.eye(dim, dtype=z.dtype)), num_grads=2 * num * dim)
    at_points = jax.vmap(lambda zi, vs: jax.vmap(lambda v: jax.jvp(grad, (zi,), (v,))[1])(vs))
    return HessianCurvature(
        hvp, dim, z.dtype, probes, num_points=num, point_products=lambda vs: at_points(z, vs), weights=weights,
        shrink_to=gamma,
    )


def _check_curvature_samples(curvature_samples, num_samples):
    if curvature_samples is None:
        return num_samples
    if int(curvature_samples) != curvature_samples or not 1 <= curvature_samples <= num_samples:
        raise ValueError(
            f"curvature_samples must be an integer from 1 to num_samples={num_samples}, got {curvature_samples}."
        )
    return int(curvature_samples)


def stein(key, target, group, loc, factor, num_samples, gamma):
    """Bonnet and Stein, gradients only: ``E[hess l] = E[S (z - mu) grad l(z)^T]``
    with ``S (z - mu) = B eps``, so ``H = sym(mean_n (B eps_n) g_n^T)``."""
    eps, z = gaussian_samples(key, group, loc, factor, num_samples, target.draw_sharding)
    values, grads = _values_and_grads(target.potential, z)
    weights = draw_weights(values, grads)
    b_eps = jax.vmap(lambda e: group.matvec(factor, e))(eps)
    kept_grads = jnp.where(weights[:, None] > 0, grads, 0.0)
    curvature = LowRankCurvature(b_eps * weights[:, None], kept_grads)
    return _estimate(values, eps, weights, _weighted_sum(weights, grads), curvature, group, factor, gamma)


def gauss_newton(key, target, group, loc, factor, num_samples, gamma, probes=None):
    """Gauss-Newton (VOGN): ``H = E[hess l_prior] + E[sum_i s_i g_i g_i^T]`` with
    ``g_i`` the gradients of the per-example log-likelihoods and ``s_i`` their
    weights in ``l`` (``N / batch`` under subsampling, which makes the
    subsample's sum unbiased for the full data's); positive semi-definite on
    the likelihood part. Cost per draw: one gradient, ``min(N, p)`` passes for
    the per-example Jacobian (forward passes if ``p < N``, else reverse passes),
    and the prior's Hessian-vector products: ``p`` where the group reads the
    diagonal or the factors of ``H``, unless ``probes`` (an int) takes the
    prior part's by whitened Hutchinson as in :func:`hessian` (that many products)."""
    eps, z = gaussian_samples(key, group, loc, factor, num_samples, target.draw_sharding)
    values, grads = _values_and_grads(target.potential, z)
    terms = lambda zi: target.log_likelihood(zi)[0]
    scales = target.log_likelihood(loc)[1]  # fixed by the model's plates
    prior = lambda zi: target.potential(zi) + jnp.sum(scales * terms(zi))
    num_examples, dim = jax.eval_shape(terms, loc).shape[0], loc.shape[-1]
    # The per-example Jacobian (N, p) by p forward passes or N reverse passes, whichever is fewer.
    jacobian = jax.jacfwd(terms) if dim < num_examples else jax.jacrev(terms)
    per_example = jax.vmap(jacobian)(z)  # (n, N, p)
    weights = draw_weights(values, grads, per_example)
    per_example = jnp.where(weights[:, None, None] > 0, per_example, 0.0)
    per_example = per_example * jnp.sqrt(scales[None, :, None] * weights[:, None, None])
    per_example = per_example.reshape(-1, dim)
    # fold_in leaves the draws of the default (exact) estimator as they are.
    probe_pairs = None if probes is None else whitened_probes(jax.random.fold_in(key, 1), group, factor, probes)
    curvature = SumCurvature(
        HessianCurvature(_mean_hvp(prior, z, weights), dim, loc.dtype, probe_pairs, num_points=num_samples),
        LowRankCurvature(per_example, per_example),
    )
    num_grads = num_samples * (1 + min(num_examples, dim))
    return _estimate(values, eps, weights, _weighted_sum(weights, grads), curvature, group, factor, gamma, num_grads)


def baseline_coefficients(values, weights):
    """``c_n = w_n (l_n - lbar)``, ``lbar = sum_n w_n l_n``: the values with the
    mean as baseline (0 on the left-out draws), so that ``sum_n c_n = 0``."""
    return jnp.where(weights > 0, weights * (values - _weighted_sum(weights, values)), 0.0)


def zeroth_order_estimate(group, factor, eps, values, weights, coefficients, gamma, curvature_coefficients=None):
    """The zeroth-order estimate from the draws' values and coefficients ``c_n``
    with ``sum_n c_n = 0`` (a baseline, :func:`baseline_coefficients`, or shaped
    fitness): ``g_mu = sum_n c_n B eps_n``, ``H = sym(sum_n c'_n (B eps_n)(B eps_n)^T)``
    with ``c'_n`` the ``curvature_coefficients`` (default ``c_n``); the ``-S``
    term of ``E[(B eps eps^T B^T - S) l]`` vanishes because the coefficients sum
    to zero. Cost: one product with ``B`` per draw."""
    b_eps = jax.vmap(lambda e: group.matvec(factor, e))(eps)
    weighted = b_eps * coefficients[:, None]
    curvature_coefficients = coefficients if curvature_coefficients is None else curvature_coefficients
    curvature = LowRankCurvature(b_eps * curvature_coefficients[:, None], b_eps)
    return _estimate(values, eps, weights, jnp.sum(weighted, axis=0), curvature, group, factor, gamma)


def _baseline_bias(weights):
    """``sum_n w_n (w_n + w_n')``, ``n'`` the antithetic partner of draw ``n``
    (none for an odd last draw): the mean baseline ``lbar = sum_m w_m l_m``
    shares ``eps_n eps_n^T`` with draw ``n`` through ``l_n`` and ``l_n'``, so
    that ``E[sum_n w_n (l_n - lbar) A_n] = (1 - sum_n w_n (w_n + w_n')) E[(A - S) l]``
    for ``A_n = B eps_n eps_n^T B^T`` (``2 / n`` for ``n`` equal weights)."""
    num = weights.shape[0]
    partner = jnp.arange(num) ^ 1
    partner_weights = jnp.where(partner < num, weights[jnp.minimum(partner, num - 1)], 0.0)
    return jnp.sum(weights * (weights + partner_weights))


def zeroth_order(key, target, group, loc, factor, num_samples, gamma):
    """Log-density values only (evolution strategies), with the mean as baseline:
    ``g_mu = E[B eps (l - lbar)]`` and ``H = E[(B eps eps^T B^T - S)(l - lbar)]``
    (:func:`zeroth_order_estimate`), the curvature's coefficients divided by
    ``1 - 2 / n``, the share of the baseline's correlation with each draw
    (:func:`_baseline_bias`; without it the fixed point's precision is
    ``1 - 2 / n`` times too small). Needs ``num_samples >= 3``: with one
    antithetic pair the mean baseline cancels the curvature."""
    if num_samples < 3:
        raise ValueError(f'estimator="zeroth_order" needs num_samples >= 3, got {num_samples}.')
    eps, z = gaussian_samples(key, group, loc, factor, num_samples, target.draw_sharding)
    values = jax.vmap(target.potential)(z)
    weights = draw_weights(values)
    coefficients = baseline_coefficients(values, weights)
    kept = 1.0 - _baseline_bias(weights)
    unbiased = jnp.where(kept > 0, coefficients / jnp.where(kept > 0, kept, 1.0), 0.0)
    return zeroth_order_estimate(group, factor, eps, values, weights, coefficients, gamma, unbiased)


# The "auto" estimator's Hutchinson probes, and the dimension up to which it
# takes the diagonal exactly (at most that many products per draw, no noise).
AUTO_PROBES, AUTO_EXACT_DIM = 4, 128


def auto(key, target, group, loc, factor, num_samples, gamma):
    """The default: :func:`hessian`, exact for a full-matrix group (whose step
    reads every entry of ``H`` and costs ``O(p^3)`` anyway) and for
    ``p <= 128``; above, the group's ``k`` dense rows exact and ``diag(H)`` and
    the factor sums from ``AUTO_PROBES = 4`` whitened probes
    (:func:`whitened_probes`), so that a structured step costs ``k + 4``
    Hessian-vector products per draw, never ``p``. (Probes' noise is the
    whitened couplings the group does not hold; a diagonal group on a strongly
    coupled posterior settles a few percent off with it, which the exact
    diagonal avoids where ``p`` products are cheap.)"""
    return hessian(key, target, group, loc, factor, num_samples, gamma, probes=auto_probes(group, loc.shape[-1]))


def auto_probes(group, p):
    """The "auto" curvature work: ``None`` (exact) for a full-matrix group or
    ``p <= AUTO_EXACT_DIM``, else ``AUTO_PROBES`` whitened Hutchinson probes."""
    return None if group.dense_curvature or p <= AUTO_EXACT_DIM else AUTO_PROBES


ESTIMATORS = {"auto": auto, "hessian": hessian, "stein": stein, "gauss_newton": gauss_newton, "zeroth_order": zeroth_order}


def resolve(estimator, **options):
    """The estimator named ``estimator`` (a key of :data:`ESTIMATORS`, or a
    function of the estimators' signature) with its ``options`` bound; a
    ``ValueError`` names an unknown estimator or an option it does not take."""
    if not callable(estimator):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}.")
        estimator_name, estimator = estimator, ESTIMATORS[estimator]
    else:
        estimator_name = getattr(estimator, "__name__", repr(estimator))
    try:
        inspect.signature(estimator).bind_partial(**options)
    except TypeError as err:
        raise ValueError(f"estimator={estimator_name!r} does not take {sorted(options)}: {err}.") from None
    return partial(estimator, **options) if options else estimator
