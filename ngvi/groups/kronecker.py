"""Kronecker-factored groups ``B = B_1 ⊗ B_2``, for matrix-shaped latents."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngvi.curvature import DenseCurvature, EvaluatedCurvature, LowRankCurvature
from ngvi.groups.base import Group

__all__ = ["Kronecker", "KroneckerFactor"]


def _factor_curvature(group, p_rows, q_rows):
    """One factor's partial curvature ``sum_n sym(P_n Q_n^T)`` from arrays
    ``(n, d, d_other)``: for a factor group that reads only products and the
    diagonal, the ``n d_other`` columns as low-rank factors with the diagonal
    summed directly; else the dense ``d x d``."""
    if not group.reads_products:
        return DenseCurvature(jnp.einsum("nac,nbc->ab", p_rows, q_rows))
    rows = lambda f: jnp.swapaxes(f, 1, 2).reshape(-1, f.shape[1])
    factors = rows(p_rows), rows(q_rows)
    return EvaluatedCurvature(LowRankCurvature(*factors), jnp.sum(p_rows * q_rows, axis=(0, 2)), factors)


class KroneckerFactor(NamedTuple):
    """``B = left ⊗ right``, each in its factor group's storage."""

    left: object
    right: object


class Kronecker(Group):
    """``B = B_1 ⊗ B_2`` with ``B_1`` in ``left`` (``p1 x p1``) and ``B_2`` in
    ``right`` (``p2 x p2``); ``z`` is read as a row-major ``p1 x p2`` matrix ``Z``
    and ``B z = vec(B_1 Z B_2^T)``.

    Gauge: ``a B_1 ⊗ B_2 / a`` is the same ``B``, so the joint Fisher matrix in
    ``(M_1, M_2)`` is singular. The step uses the block-diagonal Fisher matrix,
    each factor with the other held fixed (MATH.md sec. 4):

        B_1 <- B_1 h(beta C_1 ⊙ kappa_1(tr_2 X) / p2),
        B_2 <- B_2 h(beta C_2 ⊙ kappa_2(tr_1 X) / p1).

    The partial traces come from the curvature factors ``H = sym(P^T Q)``
    without forming a ``p x p`` matrix: ``tr_2 X = B_1^-1 H_1 B_1^-T - gamma p2 I``
    with ``H_1 = sym(sum_n P_n B_2^-T (Q_n B_2^-T)^T)`` (``P_n`` = row ``n`` of
    ``P`` as a ``p1 x p2`` matrix), and symmetrically for ``tr_1 X``; ``H_1`` and
    ``H_2`` are summed over blocks of the factors (``curvature.factor_sum``:
    ``p`` streamed rows for an exact ``H``) and each factor group reads its own
    as a :class:`~ngvi.curvature.DenseCurvature` and applies its projection.
    Cost: ``O(n p (p1 + p2))`` for ``n`` factor rows, plus the factor groups'
    steps on ``p1 x p1`` and ``p2 x p2`` curvatures; memory ``O(p1^2 + p2^2)``
    plus one block of rows.
    """

    name = "kronecker"

    def __init__(self, left, right, shape=None):
        self.left, self.right, self.shape = left, right, shape

    def __repr__(self):
        return f"Kronecker({self.left!r}, {self.right!r}, shape={self.shape})"

    def _config(self):
        return (self.left, self.right, None if self.shape is None else tuple(self.shape))

    def check(self, p):
        super().check(p)
        if self.shape is None:
            raise ValueError(f"{self!r} needs shape=(p1, p2) with p1 * p2 = p = {p}.")
        p1, p2 = self.shape
        if p1 * p2 != p:
            raise ValueError(f"{self!r}: factor sizes {p1} x {p2} = {p1 * p2} do not multiply to p={p}.")
        self.left.check(p1)
        self.right.check(p2)

    def identity(self, p, dtype=jnp.float32):
        p1, p2 = self.shape
        return KroneckerFactor(self.left.identity(p1, dtype), self.right.identity(p2, dtype))

    def init(self, p, scale=1.0, dtype=jnp.float32):
        self.check(p)
        p1, p2 = self.shape
        root = math.sqrt(scale)
        return KroneckerFactor(self.left.init(p1, root, dtype), self.right.init(p2, root, dtype))

    def dim(self, b):
        return self.left.dim(b.left) * self.right.dim(b.right)

    def _apply(self, left_op, right_op, b, v):
        """``vec(L Z R^T)`` for ``L = left_op(b.left)`` and ``R = right_op(b.right)``."""
        z = v.reshape(self.shape)
        z = jax.vmap(lambda col: left_op(b.left, col))(z.T).T  # columns as rows: vmapped operands stay row-major
        z = jax.vmap(lambda row: right_op(b.right, row))(z)
        return z.reshape(-1)

    def matvec(self, b, v):
        return self._apply(self.left.matvec, self.right.matvec, b, v)

    def rmatvec(self, b, v):
        return self._apply(self.left.rmatvec, self.right.rmatvec, b, v)

    def solve(self, b, v):
        return self._apply(self.left.solve, self.right.solve, b, v)

    def rsolve(self, b, v):
        return self._apply(self.left.rsolve, self.right.rsolve, b, v)

    def algebra_matvec(self, m, v):
        """``(M_1 ⊗ I + I ⊗ M_2) v``: the sub-algebra is a Kronecker sum."""
        identity = lambda _, x: x
        return self._apply(self.left.algebra_matvec, identity, m, v) + self._apply(identity, self.right.algebra_matvec, m, v)

    def algebra_rmatvec(self, m, v):
        identity = lambda _, x: x
        return self._apply(self.left.algebra_rmatvec, identity, m, v) + self._apply(identity, self.right.algebra_rmatvec, m, v)

    def logdet(self, b):
        p1, p2 = self.shape
        return p2 * self.left.logdet(b.left) + p1 * self.right.logdet(b.right)

    def mul(self, b, c):
        return KroneckerFactor(self.left.mul(b.left, c.left), self.right.mul(b.right, c.right))

    def h(self, m):
        """``h(M_1) ⊗ h(M_2)``: each factor retracted in its own group."""
        return KroneckerFactor(self.left.h(m.left), self.right.h(m.right))

    def to_dense(self, b):
        return jnp.kron(self.left.to_dense(b.left), self.right.to_dense(b.right))

    def covariance_diagonal(self, b):
        return jnp.kron(self.left.covariance_diagonal(b.left), self.right.covariance_diagonal(b.right))

    def _whitened(self, b, factor):
        """``(P_n B_2^-T, B_1^-1 P_n)`` for every row ``P_n`` of ``factor`` as a
        ``p1 x p2`` matrix: two arrays ``(n, p1, p2)``."""
        rows = factor.reshape(-1, *self.shape)
        right = jax.vmap(jax.vmap(lambda row: self.right.solve(b.right, row)))(rows)
        left = jax.vmap(lambda f: jax.vmap(lambda col: self.left.solve(b.left, col))(f.T).T)(rows)
        return right, left

    def _partial_curvatures(self, b, p_block, q_block):
        """``(H_1, H_2)`` of a block of factor rows before their symmetric parts
        (taken by ``DenseCurvature``): ``sum_n (P_n B_2^-T)(Q_n B_2^-T)^T`` and
        ``sum_n (B_1^-1 P_n)^T (B_1^-1 Q_n)``, ``O(n p (p1 + p2))``."""
        (right_p, left_p), (right_q, left_q) = self._whitened(b, p_block), self._whitened(b, q_block)
        return jnp.einsum("nac,nbc->ab", right_p, right_q), jnp.einsum("nca,ncb->ab", left_p, left_q)

    def partial_curvatures(self, b, curvature):
        """``(H_1, H_2)`` as curvature operators, with ``tr_2 X = B_1^-1 H_1 B_1^-T - gamma p2 I``
        and ``tr_1 X = B_2^-1 H_2 B_2^-T - gamma p1 I``: the curvature summed over
        the other factor's whitened coordinates.

        A curvature given by ``n`` factor rows (:class:`~ngvi.curvature.LowRankCurvature`:
        Stein, Gauss-Newton, per-example gradients) keeps them as factors for a factor
        group that reads only products and the diagonal (``H_1 = sym(P_1^T Q_1)`` with the ``n p2``
        columns of the ``P_n B_2^-T`` as rows; the diagonal summed directly), so a
        ``BlockLowerTriangular(k)`` factor costs ``O(n p k)``; otherwise (and for
        the other factor groups) ``H_1`` and ``H_2`` are formed, ``O(n p (p1 + p2))``.
        """
        if isinstance(curvature, LowRankCurvature):
            (right_p, left_p), (right_q, left_q) = (self._whitened(b, f) for f in curvature.factors())
            return (_factor_curvature(self.left, right_p, right_q),
                    _factor_curvature(self.right, jnp.swapaxes(left_p, 1, 2), jnp.swapaxes(left_q, 1, 2)))
        h_left, h_right = curvature.factor_sum(lambda p_block, q_block: self._partial_curvatures(b, p_block, q_block))
        return DenseCurvature(h_left), DenseCurvature(h_right)

    def local_gradient_from_partials(self, b, left_curvature, right_curvature, gamma):
        """Each factor group's pattern entries of its partial trace of ``X``
        from the curvatures of :meth:`partial_curvatures`."""
        p1, p2 = self.shape
        return KroneckerFactor(
            self.left.local_gradient(b.left, left_curvature, gamma * p2),
            self.right.local_gradient(b.right, right_curvature, gamma * p1),
        )

    def local_gradient(self, b, curvature, gamma):
        return self.local_gradient_from_partials(b, *self.partial_curvatures(b, curvature), gamma)

    def natural_direction(self, x):
        p1, p2 = self.shape
        scale = lambda a, tree: jax.tree.map(lambda leaf: leaf / a, tree)
        return KroneckerFactor(
            scale(p2, self.left.natural_direction(x.left)),
            scale(p1, self.right.natural_direction(x.right)),
        )

    def fisher_norm_sq(self, m):
        p1, p2 = self.shape
        return p2 * self.left.fisher_norm_sq(m.left) + p1 * self.right.fisher_norm_sq(m.right)
