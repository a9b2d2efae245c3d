"""The structured Gaussian family ``q(z) = N(mu, S^-1)``, ``S = B B^T`` with ``B``
in a group (MATH.md sec. 2): draws, log density and entropy, at the cost of the
group's structured solves and products. Every other module (the estimators,
the algorithms, the guides' NumPyro distribution) draws and scores through
these functions.
"""

import math

import jax
import jax.numpy as jnp

__all__ = ["from_standard", "standardise", "log_prob", "log_prob_standard", "mixture_log_prob", "neg_entropy", "sample", "antithetic_normals", "orthogonal_normals"]


def from_standard(group, loc, factor, eps):
    """``z = mu + B^-T eps`` for each row of ``eps`` (``eps ~ N(0, I)`` gives ``z ~ q``)."""
    flat = eps.reshape(-1, eps.shape[-1])
    return loc + jax.vmap(lambda e: group.rsolve(factor, e))(flat).reshape(eps.shape)


def standardise(group, loc, factor, z):
    """``B^T (z - mu)`` for each row of ``z``: the inverse of :func:`from_standard`."""
    centred = z - loc
    flat = centred.reshape(-1, centred.shape[-1])
    return jax.vmap(lambda v: group.rmatvec(factor, v))(flat).reshape(centred.shape)


def log_prob(group, loc, factor, z):
    """``log q(z) = log|det B| - ||B^T (z - mu)||^2 / 2 - p log(2 pi) / 2`` for each row of ``z``."""
    whitened = standardise(group, loc, factor, z)
    dim = z.shape[-1]
    return group.logdet(factor) - 0.5 * jnp.sum(whitened**2, -1) - 0.5 * dim * math.log(2 * math.pi)


def log_prob_standard(group, factor, eps):
    """``log q(z)`` at ``z = mu + B^-T eps`` for each row of ``eps``: ``log|det B| - |eps|^2 / 2 - p log(2 pi) / 2``."""
    return group.logdet(factor) - 0.5 * jnp.sum(eps**2, -1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi)


def mixture_log_prob(group, locs, factors, log_weights, z):
    """``log sum_c pi_c q_c(z)`` for each row of ``z``, ``pi = softmax(log_weights)``
    (components stacked on a leading axis of ``locs`` and the factor leaves)."""
    per_component = jax.vmap(lambda loc, factor: log_prob(group, loc, factor, z), out_axes=-1)(locs, factors)
    return jax.nn.logsumexp(per_component + jax.nn.log_softmax(log_weights), axis=-1)


def neg_entropy(group, factor, dim):
    """``E_q[log q] = -p (1 + log 2 pi) / 2 + log |det B|``."""
    return -0.5 * dim * (1.0 + math.log(2 * math.pi)) + group.logdet(factor)


def sample(key, group, loc, factor, sample_shape=()):
    """Independent draws ``z = mu + B^-T eps`` of shape ``sample_shape + (p,)``."""
    eps = jax.random.normal(key, tuple(sample_shape) + loc.shape[-1:], loc.dtype)
    return from_standard(group, loc, factor, eps)


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


def antithetic_normals(key, num, dim, dtype):
    """``num`` standard normal draws in antithetic pairs ``eps_2i, eps_2i+1 = -eps_2i``,
    the pairs' directions orthogonal (:func:`orthogonal_normals`)."""
    half = orthogonal_normals(key, (num + 1) // 2, dim, dtype)
    return jnp.stack([half, -half], axis=1).reshape(-1, dim)[:num]
