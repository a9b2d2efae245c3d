"""Monte-Carlo estimators of the gradients the natural-gradient step needs.

For ``q = N(mu, (B B^T)^-1)``, ``z = mu + B^-T eps`` with ``eps ~ N(0, I)`` drawn
in antithetic pairs ``(eps, -eps)`` (adjacent) along orthogonal directions, each
estimator returns (MATH.md sec. 3, 5)

* ``loss``: ``L = E_q[l] + gamma E_q[log q]`` (the negative ELBO for ``gamma = 1``),
* ``grad_loc``: ``g_mu = E_q[grad l]``,
* ``curvature``: an operator for ``H = E_q[hess l]`` (:mod:`ngvi.curvature`).

``target`` is a :class:`Target`: ``l(z)`` and, for Gauss-Newton, the split of
``l`` into a prior part and per-example negative log-likelihoods.
"""

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ngvi.curvature import Curvature, DenseCurvature, HessianCurvature, LowRankCurvature, SumCurvature

__all__ = [
    "Target", "Estimate", "ESTIMATORS", "hessian", "stein", "gauss_newton", "zeroth_order",
    "gaussian_samples", "orthogonal_normals", "hessian_curvature",
]


class Target(NamedTuple):
    """``potential(z) = l(z) = -log p(x, z)`` on the flat unconstrained latent
    vector; ``log_likelihood(z)``, if given, the per-example log-likelihoods of
    the observed sites (a vector summing to ``log p(x | z)`` with any subsample
    scaling applied)."""

    potential: Callable
    log_likelihood: Optional[Callable] = None


class Estimate(NamedTuple):
    loss: jax.Array
    grad_loc: jax.Array
    curvature: Curvature


def orthogonal_normals(key, num, dim, dtype):
    """``num`` draws from ``N(0, I_dim)`` that are orthogonal in blocks of
    ``min(num, dim)`` (orthogonal Monte Carlo): Haar-random orthonormal directions
    (Gram-Schmidt on Gaussian vectors) times independent ``chi_dim`` lengths.
    Each draw is exactly ``N(0, I)``, so every estimate stays unbiased, but the
    draws cover the directions evenly: ``sum eps eps^T`` is diagonal in the
    drawn frame, which takes the cross-direction noise out of the Stein
    curvature and of the gradient mean. Cost ``O(num min(num, dim) dim)``."""
    block = min(num, dim)
    direction_key, radius_key = jax.random.split(key)
    gaussian = jax.random.normal(direction_key, (-(-num // block), block, dim), dtype)
    directions = jax.vmap(_orthonormal_rows)(gaussian).reshape(-1, dim)[:num]
    radii = jnp.sqrt(2.0 * jax.random.gamma(radius_key, dim / 2.0, (num,), dtype))
    return directions * radii[:, None]


def _orthonormal_rows(g):
    """Gram-Schmidt (twice per row) on the rows of ``g``, ``k <= p``."""

    def add_row(j, q):
        v = g[j] - q.T @ (q @ g[j])
        v = v - q.T @ (q @ v)
        return q.at[j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, g.shape[0], add_row, jnp.zeros_like(g))


def gaussian_samples(key, group, loc, factor, num_samples):
    """Antithetic ``eps`` (pairs ``eps_2i, eps_2i+1 = -eps_2i``, the pairs'
    directions orthogonal, :func:`orthogonal_normals`) and ``z = mu + B^-T eps``."""
    half = orthogonal_normals(key, (num_samples + 1) // 2, loc.shape[-1], loc.dtype)
    eps = jnp.stack([half, -half], axis=1).reshape(-1, loc.shape[-1])[:num_samples]
    return eps, loc + jax.vmap(lambda e: group.rsolve(factor, e))(eps)


def neg_entropy(group, factor, dim):
    """``E_q[log q] = -p (1 + log 2 pi) / 2 + log |det B|``."""
    return -0.5 * dim * (1.0 + math.log(2 * math.pi)) + group.logdet(factor)


def _values_and_grads(potential, z):
    return jax.vmap(jax.value_and_grad(potential))(z)


def _estimate(values, grad_loc, curvature, group, factor, gamma):
    loss = jnp.mean(values) + gamma * neg_entropy(group, factor, grad_loc.shape[-1])
    return Estimate(loss, grad_loc, curvature)


def _mean_hvp(fn, z):
    """``v -> mean_n hess fn(z_n) v`` by forward-over-reverse products."""
    grad = jax.grad(fn)
    return lambda v: jnp.mean(jax.vmap(lambda zi: jax.jvp(grad, (zi,), (v,))[1])(z), axis=0)


def hessian(key, target, group, loc, factor, num_samples, gamma, probes=None, curvature_samples=None):
    """Price's theorem: ``H`` through Hessian-vector products at the samples.

    ``curvature_samples`` (an int, default all ``num_samples``) takes the
    products at the first that many draws only (whole antithetic pairs when
    even): ``g_mu`` from many cheap gradients, ``H`` from a few draws, each of
    which costs ``p`` products for a full-matrix group. ``probes`` (an int)
    switches ``diag(H)`` and the curvature factors to Hutchinson estimates with
    that many Rademacher vectors; by default they are exact (``p`` products,
    only for groups that need them; a full-matrix group gets ``H`` formed once,
    :class:`ngvi.curvature.DenseCurvature`)."""
    sample_key, probe_key = jax.random.split(key)
    _, z = gaussian_samples(sample_key, group, loc, factor, num_samples)
    values, grads = _values_and_grads(target.potential, z)
    rademacher = None if probes is None else jax.random.rademacher(probe_key, (probes, loc.shape[-1]), loc.dtype)
    z_curvature = z[: _check_curvature_samples(curvature_samples, num_samples)]
    curvature = hessian_curvature(target.potential, z_curvature, group, rademacher)
    return _estimate(values, jnp.mean(grads, axis=0), curvature, group, factor, gamma)


def hessian_curvature(fn, z, group, probes=None):
    """``H = mean_n hess fn(z_n)`` as the operator ``group`` reads: a matrix
    (``p`` products per point) for a full-matrix group without ``probes``,
    otherwise products on demand (Hutchinson ``probes``, ``(n, p)``, if given)."""
    hvp, (dim,) = _mean_hvp(fn, z), z.shape[1:]
    if probes is None and group.dense_curvature:
        return DenseCurvature(jax.vmap(hvp)(jnp.eye(dim, dtype=z.dtype)))
    return HessianCurvature(hvp, dim, z.dtype, probes)


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
    eps, z = gaussian_samples(key, group, loc, factor, num_samples)
    values, grads = _values_and_grads(target.potential, z)
    b_eps = jax.vmap(lambda e: group.matvec(factor, e))(eps)
    curvature = LowRankCurvature(b_eps / num_samples, grads)
    return _estimate(values, jnp.mean(grads, axis=0), curvature, group, factor, gamma)


def gauss_newton(key, target, group, loc, factor, num_samples, gamma):
    """Gauss-Newton (VOGN): ``H = E[hess l_prior] + E[sum_i g_i g_i^T]`` with
    ``g_i`` the gradients of the per-example negative log-likelihoods; always
    positive semi-definite on the likelihood part."""
    _, z = gaussian_samples(key, group, loc, factor, num_samples)
    values, grads = _values_and_grads(target.potential, z)
    prior = lambda zi: target.potential(zi) + jnp.sum(target.log_likelihood(zi))
    per_example = jax.vmap(jax.jacrev(target.log_likelihood))(z)  # (n, N, p)
    per_example = per_example.reshape(-1, loc.shape[-1]) / math.sqrt(num_samples)
    curvature = SumCurvature(
        HessianCurvature(_mean_hvp(prior, z), loc.shape[-1], loc.dtype),
        LowRankCurvature(per_example, per_example),
    )
    return _estimate(values, jnp.mean(grads, axis=0), curvature, group, factor, gamma)


def zeroth_order(key, target, group, loc, factor, num_samples, gamma):
    """Log-density values only (evolution strategies), with the mean as baseline:
    ``g_mu = E[B eps (l - lbar)]`` and ``H = E[(B eps eps^T B^T - S)(l - lbar)]``;
    the ``S`` term vanishes because the centred values sum to zero."""
    eps, z = gaussian_samples(key, group, loc, factor, num_samples)
    values = jax.vmap(target.potential)(z)
    centred = values - jnp.mean(values)
    b_eps = jax.vmap(lambda e: group.matvec(factor, e))(eps)
    weighted = b_eps * centred[:, None] / num_samples
    curvature = LowRankCurvature(weighted, b_eps)
    return _estimate(values, jnp.sum(weighted, axis=0), curvature, group, factor, gamma)


ESTIMATORS = {"hessian": hessian, "stein": stein, "gauss_newton": gauss_newton, "zeroth_order": zeroth_order}
