"""The diagonal group: mean-field Gaussians, cost ``O(p)``."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngvi.groups.base import Group

__all__ = ["Diagonal", "DiagonalFactor"]


class DiagonalFactor(NamedTuple):
    """``B = diag(diag)``."""

    diag: jax.Array


class Diagonal(Group):
    """``B = diag(d)``, ``d > 0``; ``C ⊙ kappa(X) = diag(X) / 2`` with
    ``X_ii = H_ii / d_i^2 - gamma`` (MATH.md sec. 4). Cost ``O(p)``."""

    reads_products = True
    name = "diagonal"

    def identity(self, p, dtype=jnp.float32):
        return DiagonalFactor(jnp.ones(p, dtype))

    def matvec(self, b, v):
        return b.diag * v

    rmatvec = matvec

    def solve(self, b, v):
        return v / b.diag

    rsolve = solve

    def logdet(self, b):
        return jnp.sum(jnp.log(jnp.abs(b.diag)))

    def mul(self, b, c):
        return DiagonalFactor(b.diag * c.diag)

    def to_dense(self, b):
        return jnp.diag(b.diag)

    def covariance_diagonal(self, b):
        return b.diag**-2

    def local_gradient(self, b, curvature, gamma):
        return DiagonalFactor(curvature.diagonal() / b.diag**2 - gamma)

    def natural_direction(self, x):
        return DiagonalFactor(0.5 * x.diag)

    def spectral_norm(self, m):
        return jnp.max(jnp.abs(m.diag))

    def fisher_norm_sq(self, m):
        return 2.0 * jnp.sum(m.diag**2)
