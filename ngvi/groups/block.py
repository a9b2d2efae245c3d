"""Block-triangular groups with ``k`` dense rows or columns and a diagonal rest.

Cost ``O(k^2 p)`` per step: ``k`` curvature products plus ``diag(H)`` give
every entry the sub-algebra needs (MATH.md sec. 4).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ngvi.groups.base import Group, symmetric_part, triangular_rotation

__all__ = [
    "BlockUpperTriangular",
    "BlockLowerTriangular",
    "Hierarchical",
    "BlockUpperFactor",
    "HierarchicalFactor",
]


def _solve(a, v, transpose=False):
    """``a^-1 v`` (or ``a^-T v``) for a small dense block, empty blocks allowed."""
    if a.shape[0] == 0:
        return v
    return jnp.linalg.solve(a.T if transpose else a, v)


def _inverse(a):
    return _solve(a, jnp.eye(a.shape[0], dtype=a.dtype))


def _logabsdet(a):
    return jnp.linalg.slogdet(a)[1] if a.shape[0] else jnp.zeros((), a.dtype)


def _sym_norm_sq(a):
    """``(1/2) ||A + A^T||_F^2`` for a diagonal block of ``M``."""
    return 0.5 * jnp.sum((a + a.T) ** 2)


def _check_sizes(group, p, sizes):
    if any(int(s) != s or s < 0 for s in sizes):
        raise ValueError(f"{group!r}: block sizes must be non-negative integers, got {sizes}.")
    if sum(sizes) > p:
        raise ValueError(
            f"{group!r} needs {sum(sizes)} dense rows but the latent dimension is p={p}; "
            f"choose block sizes that add up to at most {p}."
        )


def _basis(indices, p, dtype):
    return jax.nn.one_hot(jnp.asarray(indices, dtype=jnp.int32), p, dtype=dtype)


class BlockUpperFactor(NamedTuple):
    """``B = [[head, cross], [0, diag(diag)]]`` with ``head`` ``k x k``."""

    head: jax.Array
    cross: jax.Array
    diag: jax.Array


class BlockUpperTriangular(Group):
    """``B_up(k) = [[B_A, B_B], [0, D]]``, ``B_A`` in GL(k), ``D`` diagonal > 0.

    The covariance ``S^-1 = B^-T B^-1`` is rank-``k`` plus diagonal.
    ``C ⊙ kappa(X) = [[X_AA / 2, X_AB], [0, diag(X_DD) / 2]]`` where the first
    ``k`` rows of ``X`` take ``k`` curvature products and
    ``X_jj = H_jj / d_j^2 - gamma`` for ``j >= k``. Cost ``O(k^2 p)``.
    """

    reads_products = True
    name = "block_upper"

    def __init__(self, k):
        self.k = k

    def __repr__(self):
        return f"BlockUpperTriangular(k={self.k})"

    def _config(self):
        return (self.k,)

    def check(self, p):
        super().check(p)
        _check_sizes(self, p, (self.k,))

    def identity(self, p, dtype=jnp.float32):
        k = self.k
        return BlockUpperFactor(jnp.eye(k, dtype=dtype), jnp.zeros((k, p - k), dtype), jnp.ones(p - k, dtype))

    def dim(self, b):
        return b.head.shape[0] + b.diag.shape[0]

    def matvec(self, b, v):
        v1, v2 = v[: self.k], v[self.k :]
        return jnp.concatenate([b.head @ v1 + b.cross @ v2, b.diag * v2])

    def rmatvec(self, b, v):
        v1, v2 = v[: self.k], v[self.k :]
        return jnp.concatenate([b.head.T @ v1, b.cross.T @ v1 + b.diag * v2])

    def solve(self, b, v):
        x2 = v[self.k :] / b.diag
        return jnp.concatenate([_solve(b.head, v[: self.k] - b.cross @ x2), x2])

    def rsolve(self, b, v):
        x1 = _solve(b.head, v[: self.k], transpose=True)
        return jnp.concatenate([x1, (v[self.k :] - b.cross.T @ x1) / b.diag])

    def logdet(self, b):
        return _logabsdet(b.head) + jnp.sum(jnp.log(jnp.abs(b.diag)))

    def canonical(self, b):
        """``B_A Q`` lower triangular with a positive diagonal (``O(k^3)``):
        ``B_A Q`` gives the same ``S`` for every orthogonal ``Q``."""
        return b._replace(head=b.head @ triangular_rotation(b.head))

    def mul(self, b, c):
        return BlockUpperFactor(b.head @ c.head, b.head @ c.cross + b.cross * c.diag, b.diag * c.diag)

    def to_dense(self, b):
        k, p = self.k, self.dim(b)
        top = jnp.concatenate([b.head, b.cross], axis=1)
        bottom = jnp.concatenate([jnp.zeros((p - k, k), b.diag.dtype), jnp.diag(b.diag)], axis=1)
        return jnp.concatenate([top, bottom], axis=0)

    def covariance_diagonal(self, b):
        """Column norms of ``B^-1 = [[A^-1, -A^-1 B_B D^-1], [0, D^-1]]``."""
        head_inv = _inverse(b.head)
        tail = (jnp.sum((head_inv @ b.cross) ** 2, axis=0) + 1.0) / b.diag**2
        return jnp.concatenate([jnp.sum(head_inv**2, axis=0), tail])

    def local_gradient(self, b, curvature, gamma):
        k, p = self.k, self.dim(b)
        dtype = b.diag.dtype
        # rows i < k of Y = B^-1 H B^-T are (B^-1 H B^-T e_i)^T: k products.
        probes = jax.vmap(lambda e: self.rsolve(b, e))(_basis(jnp.arange(k), p, dtype))
        rows = jax.vmap(lambda r: self.solve(b, r))(curvature.matmat(probes))
        head = symmetric_part(rows[:, :k]) - gamma * jnp.eye(k, dtype=dtype)
        diag = curvature.diagonal()[k:] / b.diag**2 - gamma
        return BlockUpperFactor(head, rows[:, k:], diag)

    def natural_direction(self, x):
        return BlockUpperFactor(0.5 * x.head, x.cross, 0.5 * x.diag)

    def fisher_norm_sq(self, m):
        return _sym_norm_sq(m.head) + jnp.sum(m.cross**2) + 2.0 * jnp.sum(m.diag**2)


class HierarchicalFactor(NamedTuple):
    """``B = [[head, 0, 0], [lower, diag(diag), 0], [tail_left, tail_mid, tail]]``."""

    head: jax.Array
    lower: jax.Array
    diag: jax.Array
    tail_left: jax.Array
    tail_mid: jax.Array
    tail: jax.Array


class Hierarchical(Group):
    """``B = [[B_A, 0, 0], [B_C1, D, 0], [B_C2, B_3, B_4]]`` (MATH.md sec. 4).

    ``B_A`` in GL(k1), ``D`` diagonal > 0 of size ``p - k1 - k2``, ``B_4`` in
    GL(k2). ``C ⊙ kappa(X)`` halves the symmetric blocks ``X_AA``, ``X_44`` and
    the diagonal ``diag(X_DD)`` and keeps the free blocks. The first ``k1``
    columns and last ``k2`` rows of ``X`` take ``k1 + k2`` curvature products;
    ``X_jj`` on ``D`` needs ``H[:, :k1]`` (recovered from the same products) and
    ``diag(H)``. Cost ``O((k1 + k2)^2 p)``.
    """

    reads_products = True
    name = "hierarchical"

    def __init__(self, k1, k2):
        self.k1, self.k2 = k1, k2

    def __repr__(self):
        return f"Hierarchical(k1={self.k1}, k2={self.k2})"

    def _config(self):
        return (self.k1, self.k2)

    def check(self, p):
        super().check(p)
        _check_sizes(self, p, (self.k1, self.k2))

    def identity(self, p, dtype=jnp.float32):
        k1, k2 = self.k1, self.k2
        m = p - k1 - k2
        zeros = lambda *shape: jnp.zeros(shape, dtype)
        return HierarchicalFactor(
            jnp.eye(k1, dtype=dtype), zeros(m, k1), jnp.ones(m, dtype), zeros(k2, k1), zeros(k2, m), jnp.eye(k2, dtype=dtype)
        )

    def dim(self, b):
        return self.k1 + b.diag.shape[0] + self.k2

    def _split(self, v):
        k1, k2 = self.k1, self.k2
        return v[:k1], v[k1 : v.shape[0] - k2], v[v.shape[0] - k2 :]

    def matvec(self, b, v):
        v1, v2, v3 = self._split(v)
        return jnp.concatenate(
            [b.head @ v1, b.lower @ v1 + b.diag * v2, b.tail_left @ v1 + b.tail_mid @ v2 + b.tail @ v3]
        )

    def rmatvec(self, b, v):
        v1, v2, v3 = self._split(v)
        return jnp.concatenate(
            [b.head.T @ v1 + b.lower.T @ v2 + b.tail_left.T @ v3, b.diag * v2 + b.tail_mid.T @ v3, b.tail.T @ v3]
        )

    def solve(self, b, v):
        v1, v2, v3 = self._split(v)
        x1 = _solve(b.head, v1)
        x2 = (v2 - b.lower @ x1) / b.diag
        x3 = _solve(b.tail, v3 - b.tail_left @ x1 - b.tail_mid @ x2)
        return jnp.concatenate([x1, x2, x3])

    def rsolve(self, b, v):
        v1, v2, v3 = self._split(v)
        x3 = _solve(b.tail, v3, transpose=True)
        x2 = (v2 - b.tail_mid.T @ x3) / b.diag
        x1 = _solve(b.head, v1 - b.lower.T @ x2 - b.tail_left.T @ x3, transpose=True)
        return jnp.concatenate([x1, x2, x3])

    def logdet(self, b):
        return _logabsdet(b.head) + jnp.sum(jnp.log(jnp.abs(b.diag))) + _logabsdet(b.tail)

    def canonical(self, b):
        """``B diag(Q_1, I, Q_4)`` with ``B_A Q_1`` and ``B_4 Q_4`` lower triangular
        with positive diagonals (``O((k1 + k2)^2 p)``): the same ``S`` for every
        orthogonal ``Q_1``, ``Q_4``."""
        q1, q4 = triangular_rotation(b.head), triangular_rotation(b.tail)
        return b._replace(head=b.head @ q1, lower=b.lower @ q1, tail_left=b.tail_left @ q1, tail=b.tail @ q4)

    def mul(self, b, c):
        return HierarchicalFactor(
            head=b.head @ c.head,
            lower=b.lower @ c.head + b.diag[:, None] * c.lower,
            diag=b.diag * c.diag,
            tail_left=b.tail_left @ c.head + b.tail_mid @ c.lower + b.tail @ c.tail_left,
            tail_mid=b.tail_mid * c.diag + b.tail @ c.tail_mid,
            tail=b.tail @ c.tail,
        )

    def to_dense(self, b):
        k1, k2, m = self.k1, self.k2, b.diag.shape[0]
        zeros = lambda r, c: jnp.zeros((r, c), b.diag.dtype)
        rows = [
            [b.head, zeros(k1, m), zeros(k1, k2)],
            [b.lower, jnp.diag(b.diag), zeros(m, k2)],
            [b.tail_left, b.tail_mid, b.tail],
        ]
        return jnp.block(rows)

    def _dense_indices(self, p):
        return jnp.concatenate([jnp.arange(self.k1), jnp.arange(p - self.k2, p)])

    def covariance_diagonal(self, b):
        """Column norms of ``B^-1``: ``k1 + k2`` solves, closed form on ``D``."""
        p, dtype = self.dim(b), b.diag.dtype
        dense_idx = self._dense_indices(p)
        columns = jax.vmap(lambda e: self.solve(b, e))(_basis(dense_idx, p, dtype))
        # B^-1 e_j for j in D is [0, e_j / d_j, -B_4^-1 B_3[:, j] / d_j].
        tail = _solve(b.tail, b.tail_mid)
        middle = (1.0 + jnp.sum(tail**2, axis=0)) / b.diag**2
        out = jnp.zeros(p, dtype).at[self.k1 : p - self.k2].set(middle)
        return out.at[dense_idx].set(jnp.sum(columns**2, axis=1))

    def local_gradient(self, b, curvature, gamma):
        k1, k2, p = self.k1, self.k2, self.dim(b)
        dtype = b.diag.dtype
        probes = jax.vmap(lambda e: self.rsolve(b, e))(_basis(self._dense_indices(p), p, dtype))
        h_probes = curvature.matmat(probes)  # (k1 + k2, p): H B^-T e_i
        rows = jax.vmap(lambda r: self.solve(b, r))(h_probes)  # rows of Y = B^-1 H B^-T
        first, last = rows[:k1], rows[k1:]
        # Y_jj on D with B^-T e_j = [a_j, e_j / d_j, 0], a_j = -A^-T C1_j^T / d_j,
        # and H[:, :k1] = (H B^-T E_k1) A^T.
        h_cols = h_probes[:k1].T @ b.head.T  # (p, k1)
        a = -(b.lower @ _inverse(b.head)) / b.diag[:, None]  # (m, k1): one small inverse, then a product
        h_aa, h_da = h_cols[:k1], h_cols[k1 : p - k2]
        h_dd = curvature.diagonal()[k1 : p - k2]
        y_dd = jnp.einsum("ja,ab,jb->j", a, h_aa, a) + 2.0 * jnp.sum(a * h_da, axis=1) / b.diag + h_dd / b.diag**2
        eye = lambda n: gamma * jnp.eye(n, dtype=dtype)
        return HierarchicalFactor(
            head=symmetric_part(first[:, :k1]) - eye(k1),
            lower=first[:, k1 : p - k2].T,
            diag=y_dd - gamma,
            tail_left=0.5 * (last[:, :k1] + first[:, p - k2 :].T),
            tail_mid=last[:, k1 : p - k2],
            tail=symmetric_part(last[:, p - k2 :]) - eye(k2),
        )

    def natural_direction(self, x):
        return x._replace(head=0.5 * x.head, diag=0.5 * x.diag, tail=0.5 * x.tail)

    def fisher_norm_sq(self, m):
        free = jnp.sum(m.lower**2) + jnp.sum(m.tail_left**2) + jnp.sum(m.tail_mid**2)
        return _sym_norm_sq(m.head) + 2.0 * jnp.sum(m.diag**2) + _sym_norm_sq(m.tail) + free


class BlockLowerTriangular(Hierarchical):
    """``B_low(k) = [[B_A, 0], [B_C, D]]``: the precision is rank-``k`` plus
    diagonal; ``C ⊙ kappa(X) = [[X_AA / 2, 0], [X_CA, diag(X_DD) / 2]]``.
    ``Hierarchical(k, 0)``; cost ``O(k^2 p)``."""

    name = "block_lower"

    def __init__(self, k):
        super().__init__(k, 0)
        self.k = k

    def __repr__(self):
        return f"BlockLowerTriangular(k={self.k})"
