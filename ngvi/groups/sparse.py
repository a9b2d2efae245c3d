"""Sparse lower-triangular factors with a fixed pattern closed under products."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngvi.groups.base import Group, whitened_sum

__all__ = ["SparseCholesky", "SparseFactor"]


class SparseFactor(NamedTuple):
    """The nonzero values of ``B``, in the pattern's row-major order."""

    values: jax.Array


def _substitution_steps(keys, items, order, width):
    """The steps of a triangular substitution along ``order``: the ``items``
    whose key is ``i``, ``width`` per step (padded with -1), at least one step
    per ``i``. Returns ``(entries, targets, last)``: ``(S, width)`` items, the
    ``i`` of each step, and whether it is the last of its ``i``;
    ``S <= p + len(items) / width``, so a few long rows (an arrow pattern)
    cost no ``p x (widest row)`` table."""
    sorted_items = items[np.argsort(keys, kind="stable")]
    bounds = np.searchsorted(np.sort(keys), np.arange(len(order) + 1))
    entries, targets, last = [], [], []
    for i in order:
        own = sorted_items[bounds[i] : bounds[i + 1]]
        chunks = [own[s : s + width] for s in range(0, len(own), width)] or [own]
        for n, chunk in enumerate(chunks):
            entries.append(np.pad(chunk, (0, width - len(chunk)), constant_values=-1))
            targets.append(i)
            last.append(n == len(chunks) - 1)
    return np.asarray(entries, np.int32).reshape(-1, width), np.asarray(targets, np.int32), np.asarray(last)


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
    Mat-vecs and triangular solves cost ``O(nnz)`` (solves in ``p + nnz / w``
    sequential steps, ``w`` the mean row width), products ``O(nnz w_max)``
    (``w_max`` the widest row); ``X`` on the pattern costs ``O(n nnz)`` from
    ``n`` rows of the curvature factors.
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
        # Entries of row i left of the diagonal and of column i below it, the
        # mean number per row at a time.
        width = max(1, -(-offdiag.size // self.p))
        order = np.arange(self.p)
        self.row_steps = _substitution_steps(self.rows[offdiag], offdiag, order, width)
        self.col_steps = _substitution_steps(self.cols[offdiag], offdiag, order[::-1], width)
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

    def _substitute(self, b, v, steps, others):
        """Solve a triangular system one coordinate at a time: the steps of ``i``
        (:func:`_substitution_steps`) add up ``sum_e B_e x_{others[e]}`` over its
        entries ``e``, and its last one sets ``x_i = (v_i - sum) / B_ii``.
        ``O(p + nnz)`` work in ``p + nnz / width`` sequential steps."""
        v, values = jnp.asarray(v), jnp.append(b.values, 0.0)  # index -1 reads a zero
        others, diagonal = jnp.asarray(others), b.values[self.diag_index]

        def step(carry, s):
            x, total = carry
            e, i, last = s
            total = total + jnp.sum(values[e] * x[others[jnp.maximum(e, 0)]])
            x = x.at[i].set(jnp.where(last, (v[i] - total) / diagonal[i], x[i]))
            return (x, jnp.where(last, 0.0, total)), None

        return jax.lax.scan(step, (jnp.zeros_like(v), jnp.zeros((), v.dtype)), steps)[0][0]

    def solve(self, b, v):
        return self._substitute(b, v, self.row_steps, self.cols)

    def rsolve(self, b, v):
        return self._substitute(b, v, self.col_steps, self.rows)

    def logdet(self, b):
        return jnp.sum(jnp.log(jnp.abs(b.values[self.diag_index])))

    def mul(self, b, c):
        e, a, k = self.triples
        return SparseFactor(jax.ops.segment_sum(b.values[a] * c.values[k], e, self.nnz))

    def to_dense(self, b):
        return jnp.zeros((self.p, self.p), b.values.dtype).at[self.rows, self.cols].set(b.values)

    def local_gradient(self, b, curvature, gamma):
        """``X_rc = sym(W^T U)_rc - gamma [r = c]`` on the pattern, summed over
        blocks of the whitened factors: ``O(n nnz)`` for ``n`` rows."""
        r, c = self.rows, self.cols
        entries = lambda w, u: 0.5 * jnp.sum(w[:, r] * u[:, c] + u[:, r] * w[:, c], axis=0)
        y = whitened_sum(self, b, curvature, entries)
        return SparseFactor(y - gamma * jnp.asarray(self.is_diag, y.dtype))

    def natural_direction(self, x):
        return SparseFactor(jnp.where(self.is_diag, 0.5, 1.0) * x.values)

    def fisher_norm_sq(self, m):
        return jnp.sum(jnp.where(self.is_diag, 2.0, 1.0) * m.values**2)
