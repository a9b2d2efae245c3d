"""Batch-and-Match (Cai, Modi, Pillaud-Vivien, Margossian, Gower, Blei and
Saul, ICML 2024): gradient-only dense-Gaussian VI with a closed-form update,
the baseline of the zoo benchmark (``bench/zoo.py``).

At ``q_t = N(mu, Sigma)`` with ``B`` draws ``z_b`` and scores
``g_b = grad log p(z_b)`` (means ``zbar``, ``gbar``, covariances ``C``, ``Gamma``),
and learning rate ``lambda_t = B D / (t + 1)``:

    U = lambda Gamma + lambda / (1 + lambda) gbar gbar^T
    V = Sigma + lambda C + lambda / (1 + lambda) (mu - zbar)(mu - zbar)^T
    Sigma' = 2 V^(1/2) (I + (I + 4 V^(1/2) U V^(1/2))^(1/2))^-1 V^(1/2)
    mu' = mu / (1 + lambda) + lambda / (1 + lambda) (Sigma' gbar + zbar)

(the symmetric form of ``Sigma' = 2 V (I + (I + 4 U V)^(1/2))^-1``). Cost: ``B``
gradients and two ``D x D`` eigendecompositions per step.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["BaMState", "init", "step"]


class BaMState(NamedTuple):
    loc: jax.Array
    cov: jax.Array
    t: jax.Array
    key: jax.Array


def init(key, loc, scale):
    """``q_0 = N(loc, scale^2 I)``."""
    dim = loc.shape[-1]
    return BaMState(loc, scale**2 * jnp.eye(dim, dtype=loc.dtype), jnp.zeros((), jnp.int32), key)


def _psd_power(matrix, power):
    values, vectors = jnp.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * jnp.maximum(values, 0.0) ** power) @ vectors.T


def step(state, potential, batch_size):
    """One Batch-and-Match step on ``log p = -potential``, ``batch_size`` draws."""
    key, draw_key = jax.random.split(state.key)
    dim = state.loc.shape[-1]
    root = jnp.linalg.cholesky(state.cov)
    z = state.loc + jax.random.normal(draw_key, (batch_size, dim), state.loc.dtype) @ root.T
    scores = -jax.vmap(jax.grad(potential))(z)
    zbar, gbar = z.mean(0), scores.mean(0)
    c = (z - zbar).T @ (z - zbar) / batch_size
    gamma = (scores - gbar).T @ (scores - gbar) / batch_size
    lam = jnp.asarray(batch_size * dim, state.loc.dtype) / (state.t + 1).astype(state.loc.dtype)
    shrink = lam / (1.0 + lam)
    u = lam * gamma + shrink * jnp.outer(gbar, gbar)
    v = state.cov + lam * c + shrink * jnp.outer(state.loc - zbar, state.loc - zbar)
    v_half = _psd_power(v, 0.5)
    inner = jnp.eye(dim, dtype=v.dtype) + _psd_power(jnp.eye(dim, dtype=v.dtype) + 4.0 * v_half @ u @ v_half, 0.5)
    cov = 2.0 * v_half @ jnp.linalg.solve(inner, v_half)
    cov = 0.5 * (cov + cov.T)
    loc = state.loc / (1.0 + lam) + shrink * (cov @ gbar + zbar)
    return BaMState(loc, cov, state.t + 1, key)
