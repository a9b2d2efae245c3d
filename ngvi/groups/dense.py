"""Groups stored as a full ``p x p`` matrix: dense GL(p) and triangular groups."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from ngvi.groups.base import Group, symmetric_part, triangular_rotation, whitened_sum

__all__ = ["Dense", "LowerTriangular", "UpperTriangular", "MatrixFactor"]


class MatrixFactor(NamedTuple):
    """``B`` (or an element of ``m``) as a ``p x p`` matrix."""

    matrix: jax.Array


class _MatrixGroup(Group):
    """Shared storage and algebra of the full-matrix groups (cost ``O(p^3)``)."""

    dense_curvature = True

    def identity(self, p, dtype=jnp.float32):
        return MatrixFactor(jnp.eye(p, dtype=dtype))

    def matvec(self, b, v):
        return b.matrix @ v

    def rmatvec(self, b, v):
        return b.matrix.T @ v

    def mul(self, b, c):
        return MatrixFactor(b.matrix @ c.matrix)

    def to_dense(self, b):
        return b.matrix

    def local_gradient(self, b, curvature, gamma):
        y = symmetric_part(whitened_sum(self, b, curvature, lambda w, u: w.T @ u))
        return MatrixFactor(y - gamma * jnp.eye(y.shape[-1], dtype=y.dtype))

    def fisher_norm_sq(self, m):
        return 0.5 * jnp.sum((m.matrix + m.matrix.T) ** 2)


class Dense(_MatrixGroup):
    """GL(p) with the symmetric sub-algebra: ``C ⊙ kappa(X) = X / 2`` (MATH.md sec. 3).

    With ``gamma = 1`` the step is the Newton / VON update
    ``S <- (1 - beta) S + beta E[hess l] + O(beta^2)``. Cost ``O(p^3)``.
    """

    name = "dense"

    def solve(self, b, v):
        return jnp.linalg.solve(b.matrix, v)

    def rsolve(self, b, v):
        return jnp.linalg.solve(b.matrix.T, v)

    def logdet(self, b):
        return jnp.linalg.slogdet(b.matrix)[1]

    def natural_direction(self, x):
        return MatrixFactor(0.5 * symmetric_part(x.matrix))

    def canonical(self, b):
        """``B Q`` lower triangular with a positive diagonal: the Cholesky factor
        of ``S``, from a QR factorisation of ``B^T`` (``O(p^3)``, as the step)."""
        return MatrixFactor(b.matrix @ triangular_rotation(b.matrix))


class LowerTriangular(_MatrixGroup):
    """Lower-triangular ``B`` with nonzero diagonal (a Cholesky factor of ``S``).

    ``C ⊙ kappa(X) = strict_lower(X) + diag(X) / 2``; solves ``O(p^2)``.
    """

    name = "lower"
    lower = True

    def _triangle(self, x):
        return jnp.tril(x) if self.lower else jnp.triu(x)

    def solve(self, b, v):
        return solve_triangular(b.matrix, v, lower=self.lower)

    def rsolve(self, b, v):
        return solve_triangular(b.matrix, v, lower=self.lower, trans="T")

    def logdet(self, b):
        return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(b.matrix))))

    def natural_direction(self, x):
        diag = jnp.diagonal(x.matrix)
        return MatrixFactor(self._triangle(x.matrix) - 0.5 * jnp.diag(diag))

    def local_gradient(self, b, curvature, gamma):
        return MatrixFactor(self._triangle(super().local_gradient(b, curvature, gamma).matrix))


class UpperTriangular(LowerTriangular):
    """Upper-triangular ``B`` with nonzero diagonal (the transpose pattern).

    ``C ⊙ kappa(X) = strict_upper(X) + diag(X) / 2``; solves ``O(p^2)``.
    """

    name = "upper"
    lower = False
