"""Matrix Lie groups for the precision factor ``B`` of ``S = B B^T`` (MATH.md sec. 4)."""

from ngvi.groups.base import Group
from ngvi.groups.block import BlockLowerTriangular, BlockUpperTriangular, Hierarchical
from ngvi.groups.dense import Dense, LowerTriangular, UpperTriangular
from ngvi.groups.diagonal import Diagonal
from ngvi.groups.kronecker import Kronecker
from ngvi.groups.sparse import SparseCholesky
from ngvi.groups.toeplitz import TriangularToeplitz

__all__ = [
    "Group",
    "Dense",
    "Diagonal",
    "LowerTriangular",
    "UpperTriangular",
    "BlockUpperTriangular",
    "BlockLowerTriangular",
    "Hierarchical",
    "Kronecker",
    "TriangularToeplitz",
    "SparseCholesky",
]
