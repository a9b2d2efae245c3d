"""Lower-triangular Toeplitz factors, for stationary or time-ordered latents."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngvi.groups.base import Group, whitened_sum

__all__ = ["TriangularToeplitz", "ToeplitzFactor"]


class ToeplitzFactor(NamedTuple):
    """``B = sum_j coef[j] T_j`` with ``T_j`` the ``j``-th sub-diagonal shift."""

    coef: jax.Array


_FFT_MIN_SIZE = 64


def _causal_conv(a, b):
    """First ``p`` terms of the convolution ``a * b`` (a product of power
    series mod ``x^p``): by FFT, ``O(p log p)``, from ``p = 64`` on; directly below."""
    p = a.shape[-1]
    if p < _FFT_MIN_SIZE:  # the lower-triangular Toeplitz matrix of a, times b
        lag = jnp.arange(p)[:, None] - jnp.arange(p)[None, :]
        return jnp.where(lag >= 0, a[jnp.clip(lag, 0)], 0.0) @ b
    n = 2 * p
    return jnp.fft.irfft(jnp.fft.rfft(a, n) * jnp.fft.rfft(b, n), n)[:p].astype(a.dtype)


def _correlate(a, c):
    """``sum_j c_j a_{i+j}`` for each ``i``: the transpose of ``_causal_conv(c, .)``."""
    return jnp.flip(_causal_conv(c, jnp.flip(a)))


def _series_inverse(c):
    """``g`` with ``c * g = 1 mod x^p``, by Newton's iteration ``g <- g (2 - c g)``,
    which doubles the number of correct terms each time."""
    p = c.shape[0]
    g = jnp.zeros_like(c).at[0].set(1.0 / c[0])
    for _ in range(max(1, p - 1).bit_length() + 1):
        g = 2.0 * g - _causal_conv(g, _causal_conv(c, g))
    return g


def _subdiagonal_sums(w, u):
    """``s_j = sum_i Y_{i+j, i}`` of ``Y = sym(W^T U)`` for ``j < p``: with
    ``Y_{i+j, i} = (w_{i+j} u_i + u_{i+j} w_i) / 2`` per row pair, two
    cross-correlations, ``O(n p log p)`` for ``n`` rows."""
    return 0.5 * jnp.sum(jax.vmap(_correlate)(w, u) + jax.vmap(_correlate)(u, w), axis=0)


class TriangularToeplitz(Group):
    """Lower-triangular Toeplitz ``B = sum_j c_j T_j``, ``c_0 != 0``.

    The sub-algebra is the same span; the metric is diagonal in ``T_j`` with
    weights ``2p`` (``j = 0``) and ``p - j``, so ``C ⊙ kappa(X)`` has
    ``m_0 = mean(diag X) / 2`` and ``m_j = mean(j-th sub-diagonal of X)``
    (MATH.md sec. 4). Products and solves are FFT convolutions, ``O(p log p)``;
    the sub-diagonal sums come from the curvature factors by cross-correlation.
    """

    name = "toeplitz"

    def identity(self, p, dtype=jnp.float32):
        return ToeplitzFactor(jnp.zeros(p, dtype).at[0].set(1.0))

    def matvec(self, b, v):
        return _causal_conv(b.coef, v)

    def rmatvec(self, b, v):
        return _correlate(v, b.coef)

    def solve(self, b, v):
        return _causal_conv(_series_inverse(b.coef), v)

    def rsolve(self, b, v):
        return _correlate(v, _series_inverse(b.coef))

    def logdet(self, b):
        return b.coef.shape[0] * jnp.log(jnp.abs(b.coef[0]))

    def mul(self, b, c):
        return ToeplitzFactor(_causal_conv(b.coef, c.coef))

    def to_dense(self, b):
        p = b.coef.shape[0]
        lag = jnp.arange(p)[:, None] - jnp.arange(p)[None, :]
        return jnp.where(lag >= 0, b.coef[jnp.clip(lag, 0)], 0.0)

    def covariance_diagonal(self, b):
        """Column norms of ``B^-1``, the lower-triangular Toeplitz matrix of
        ``g = 1 / c``: ``sum_{i < p - j} g_i^2`` for column ``j``, ``O(p log p)``."""
        return jnp.flip(jnp.cumsum(_series_inverse(b.coef) ** 2))

    def local_gradient(self, b, curvature, gamma):
        """``kappa(X)``: the mean of each sub-diagonal of ``X``, the sums
        accumulated over blocks of the whitened factors (:func:`_subdiagonal_sums`)."""
        p = b.coef.shape[0]
        means = whitened_sum(self, b, curvature, _subdiagonal_sums) / jnp.arange(p, 0, -1, dtype=b.coef.dtype)
        return ToeplitzFactor(means.at[0].add(-gamma))

    def natural_direction(self, x):
        return ToeplitzFactor(x.coef.at[0].multiply(0.5))

    def fisher_norm_sq(self, m):
        p = m.coef.shape[0]
        weights = jnp.arange(p, 0, -1, dtype=m.coef.dtype).at[0].set(2.0 * p)
        return jnp.sum(weights * m.coef**2)
