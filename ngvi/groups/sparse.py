"""Sparse lower-triangular factors with a fixed pattern closed under products."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngvi.groups.base import Group, whitened_factors

__all__ = ["SparseCholesky", "SparseFactor"]


class SparseFactor(NamedTuple):
    """The nonzero values of ``B``, in the pattern's row-major order."""

    values: jax.Array


def _padded_lists(keys, items, p):
    """For each ``i < p`` the ``items`` whose key is ``i``, padded with -1."""
    groups = [items[keys == i] for i in range(p)]
    width = max(1, max(len(g) for g in groups))
    out = -np.ones((p, width), dtype=np.int32)
    for i, g in enumerate(groups):
        out[i, : len(g)] = g
    return out


def _validate_pattern(pattern):
    pattern = np.asarray(pattern, dtype=bool)
    if pattern.ndim != 2 or pattern.shape[0] != pattern.shape[1]:
        raise ValueError(f"SparseCholesky: the pattern must be a square boolean matrix, got shape {pattern.shape}.")
    if np.any(np.triu(pattern, 1)):
        i, j = np.argwhere(np.triu(pattern, 1))[0]
        raise ValueError(f"SparseCholesky: the pattern must be lower-triangular, but entry ({i}, {j}) is set.")
    if not np.all(np.diagonal(pattern)):
        i = int(np.argmin(np.diagonal(pattern)))
        raise ValueError(f"SparseCholesky: the pattern must contain the diagonal, but ({i}, {i}) is missing.")
    product = (pattern.astype(np.int64) @ pattern.astype(np.int64)) > 0
    if np.any(product & ~pattern):
        i, j = np.argwhere(product & ~pattern)[0]
        raise ValueError(
            f"SparseCholesky: the pattern is not closed under products (entry ({i}, {j}) of B B' is "
            "nonzero but not in the pattern); use its transitive closure: (i, k) and (k, j) in the "
            "pattern must imply (i, j) in the pattern."
        )
    return pattern


class SparseCholesky(Group):
    """Lower-triangular ``B`` with a fixed sparsity ``pattern`` that contains the
    diagonal and is closed under products (so ``h(M)`` stays on the pattern).

    ``C ⊙ kappa(X)`` is ``X`` on the off-diagonal pattern and ``diag(X) / 2``.
    Mat-vecs cost ``O(nnz)``, triangular solves ``O(p w)`` (``w`` the widest row),
    products ``O(nnz w)``; ``X`` on the pattern costs ``O(n nnz)`` from the
    curvature factors.
    """

    name = "sparse_cholesky"

    def __init__(self, pattern):
        pattern = _validate_pattern(pattern)
        self.p = pattern.shape[0]
        self.rows, self.cols = (a.astype(np.int32) for a in np.nonzero(pattern))
        self.nnz = self.rows.size
        index = -np.ones(pattern.shape, dtype=np.int64)
        index[self.rows, self.cols] = np.arange(self.nnz)
        self.diag_index = np.diagonal(index).astype(np.int32)
        self.is_diag = self.rows == self.cols
        offdiag = np.nonzero(~self.is_diag)[0]
        # Entries of row i left of the diagonal and of column i below it.
        self.row_entries = _padded_lists(self.rows[offdiag], offdiag, self.p)
        self.col_entries = _padded_lists(self.cols[offdiag], offdiag, self.p)
        # (B C)_e = sum over triples (e, a, c) of B_a C_c, with a = (i, k), c = (k, j).
        triples = [
            (e, index[i, k], index[k, j])
            for e, (i, j) in enumerate(zip(self.rows, self.cols))
            for k in range(j, i + 1)
            if index[i, k] >= 0 and index[k, j] >= 0
        ]
        self.triples = np.asarray(triples, dtype=np.int32).T

    def __repr__(self):
        return f"SparseCholesky(p={self.p}, nnz={self.nnz})"

    def _config(self):
        return (self.p, self.rows.tobytes(), self.cols.tobytes())

    def check(self, p):
        super().check(p)
        if p != self.p:
            raise ValueError(f"{self!r}: the pattern is {self.p} x {self.p} but the latent dimension is p={p}.")

    def identity(self, p, dtype=jnp.float32):
        self.check(p)
        return SparseFactor(jnp.asarray(self.is_diag, dtype))

    def dim(self, b):
        return self.p

    def matvec(self, b, v):
        return jax.ops.segment_sum(b.values * v[self.cols], self.rows, self.p)

    def rmatvec(self, b, v):
        return jax.ops.segment_sum(b.values * v[self.rows], self.cols, self.p)

    def _substitute(self, b, v, entries, others, order):
        """Solve a triangular system one coordinate at a time along ``order``:
        ``x_i = (v_i - sum_e B_e x_{others[e]}) / B_ii`` over ``e`` in ``entries[i]``."""
        v, values = jnp.asarray(v), jnp.append(b.values, 0.0)  # index -1 reads a zero
        entries, others, diag_index = (jnp.asarray(a) for a in (entries, others, self.diag_index))

        def step(x, i):
            e = entries[i]
            x_i = (v[i] - jnp.sum(values[e] * x[others[jnp.maximum(e, 0)]])) / b.values[diag_index[i]]
            return x.at[i].set(x_i), None

        return jax.lax.scan(step, jnp.zeros_like(v), order)[0]

    def solve(self, b, v):
        return self._substitute(b, v, self.row_entries, self.cols, jnp.arange(self.p))

    def rsolve(self, b, v):
        return self._substitute(b, v, self.col_entries, self.rows, jnp.arange(self.p)[::-1])

    def logdet(self, b):
        return jnp.sum(jnp.log(jnp.abs(b.values[self.diag_index])))

    def mul(self, b, c):
        e, a, k = self.triples
        return SparseFactor(jax.ops.segment_sum(b.values[a] * c.values[k], e, self.nnz))

    def to_dense(self, b):
        return jnp.zeros((self.p, self.p), b.values.dtype).at[self.rows, self.cols].set(b.values)

    def local_gradient(self, b, curvature, gamma):
        w, u = whitened_factors(self, b, curvature)
        r, c = self.rows, self.cols
        y = 0.5 * jnp.sum(w[:, r] * u[:, c] + u[:, r] * w[:, c], axis=0)
        return SparseFactor(y - gamma * jnp.asarray(self.is_diag, y.dtype))

    def natural_direction(self, x):
        return SparseFactor(jnp.where(self.is_diag, 0.5, 1.0) * x.values)

    def fisher_norm_sq(self, m):
        return jnp.sum(jnp.where(self.is_diag, 2.0, 1.0) * m.values**2)
