"""The table of groups the tests run over, with each sub-algebra ``m`` written
out independently of the library as a list of dense basis matrices (MATH.md
sec. 4)."""

import jax
import jax.numpy as jnp
import numpy as np

from ngvi import groups


def _unit(p, i, j):
    e = np.zeros((p, p))
    e[i, j] = 1.0
    return e


def _sym_block(p, idx):
    return [_unit(p, i, j) + _unit(p, j, i) if i != j else _unit(p, i, i) for a, i in enumerate(idx) for j in idx[a:]]


def _free(p, rows, cols):
    return [_unit(p, i, j) for i in rows for j in cols]


def _diag(p, idx):
    return [_unit(p, i, i) for i in idx]


def _hierarchical_basis(p, k1, k2):
    a, d, t = range(k1), range(k1, p - k2), range(p - k2, p)
    return (
        _sym_block(p, list(a))
        + _free(p, d, a)
        + _diag(p, d)
        + _free(p, t, list(a) + list(d))
        + _sym_block(p, list(t))
    )


def closed_pattern(p, edges):
    """The transitive closure of ``edges`` ``(i, j)``, ``i > j``, plus the diagonal:
    a lower-triangular pattern closed under products."""
    pattern = np.eye(p, dtype=bool)
    for i, j in edges:
        pattern[i, j] = True
    for k in range(p):
        pattern |= pattern[:, [k]] & pattern[[k], :]
    return pattern


def arrow_pattern(p):
    """Diagonal plus a dense last row: closed under products."""
    pattern = np.eye(p, dtype=bool)
    pattern[-1, :] = True
    return pattern


def algebra_basis(group, p):
    """Dense basis of the sub-algebra ``m`` of ``group`` at dimension ``p``."""
    table = {
        groups.Dense: lambda: _sym_block(p, list(range(p))),
        groups.Diagonal: lambda: _diag(p, range(p)),
        groups.LowerTriangular: lambda: [_unit(p, i, j) for i in range(p) for j in range(i + 1)],
        groups.UpperTriangular: lambda: [_unit(p, i, j) for i in range(p) for j in range(i, p)],
        groups.BlockUpperTriangular: lambda: _sym_block(p, list(range(group.k)))
        + _free(p, range(group.k), range(group.k, p))
        + _diag(p, range(group.k, p)),
        groups.BlockLowerTriangular: lambda: _hierarchical_basis(p, group.k, 0),
        groups.Hierarchical: lambda: _hierarchical_basis(p, group.k1, group.k2),
        groups.TriangularToeplitz: lambda: [np.eye(p, k=-j) for j in range(p)],
        groups.SparseCholesky: lambda: [_unit(p, i, j) for i, j in zip(group.rows, group.cols)],
    }
    return table[type(group)]()


# (group, p): small shapes, every group and the edge cases k = 0, k = p.
CASES = [
    (groups.Dense(), 4),
    (groups.Diagonal(), 5),
    (groups.LowerTriangular(), 4),
    (groups.UpperTriangular(), 4),
    (groups.BlockUpperTriangular(2), 5),
    (groups.BlockUpperTriangular(0), 3),
    (groups.BlockUpperTriangular(3), 3),
    (groups.BlockLowerTriangular(2), 5),
    (groups.Hierarchical(2, 1), 6),
    (groups.Hierarchical(1, 2), 5),
    (groups.Kronecker(groups.Dense(), groups.Diagonal(), shape=(2, 3)), 6),
    (groups.Kronecker(groups.BlockUpperTriangular(1), groups.LowerTriangular(), shape=(3, 2)), 6),
    (groups.TriangularToeplitz(), 5),
    (groups.SparseCholesky(closed_pattern(6, [(2, 0), (3, 2), (4, 1), (5, 4), (5, 3)])), 6),
    (groups.SparseCholesky(arrow_pattern(4)), 4),
]
IDS = [f"{g!r}-p{p}" for g, p in CASES]
SINGLE_CASES = [(g, p) for g, p in CASES if not isinstance(g, groups.Kronecker)]
SINGLE_IDS = [f"{g!r}-p{p}" for g, p in SINGLE_CASES]
KRONECKER_CASES = [(g, p) for g, p in CASES if isinstance(g, groups.Kronecker)]
KRONECKER_IDS = [f"{g!r}-p{p}" for g, p in KRONECKER_CASES]


def random_element(group, p, key, spread=0.3, dtype=jnp.float64):
    """A random element: the identity retracted along three random directions of
    ``m`` (so it is generic, not symmetric, and on the group's pattern)."""
    b = group.identity(p, dtype)
    for k in jax.random.split(key, 3):
        leaves, treedef = jax.tree.flatten(b)
        noise = [spread * jax.random.normal(kk, x.shape, dtype) for x, kk in zip(leaves, jax.random.split(k, len(leaves)))]
        b = group.retract(b, group.natural_direction(jax.tree.unflatten(treedef, noise)))
    return b
