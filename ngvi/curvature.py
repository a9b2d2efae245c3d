"""Estimates of the expected Hessian ``H = E_q[hess l]`` as linear operators.

Groups read ``H`` only through these operators (MATH.md sec. 5), asking each
for exactly the entries of ``X = B^-1 H B^-T - gamma I`` they need:

* ``matvec(v)``, ``matmat(vs)``: ``H v`` (one Hessian-vector product per vector
  for :class:`HessianCurvature`);
* ``diagonal()``: ``diag(H)``, exactly or by an unbiased probe estimate;
* ``factor_sum(fn)``: ``sum_c fn(P_c, Q_c)`` over blocks of rows of factors
  ``(P, Q)`` with ``H = sym(P^T Q) = (P^T Q + Q^T P) / 2``, for ``fn`` a sum over
  the rows it is given: how the groups that need sums over many entries
  (Kronecker partial traces, Toeplitz diagonals, sparse patterns) read ``H``
  without its factors held at once. An exact ``H`` streams ``(I, H)`` a block
  of basis vectors at a time, so no ``p x p`` array is formed.

``factors()`` returns the whole ``(P, Q)`` (``p x p`` for an exact ``H``): for
tests, small ``p`` and a curvature read many times (:meth:`Curvature.evaluated`).

Each operator also keeps ``num_grads``: the gradient evaluations of ``l`` its
products have cost so far (a Hessian-vector product at ``m`` points counts as
``2 m``), tallied as the step is traced, so that the algorithms can report
the cost of a step honestly.
"""

import abc

import jax
import jax.numpy as jnp

__all__ = ["Curvature", "DenseCurvature", "EvaluatedCurvature", "HessianCurvature", "LowRankCurvature", "SumCurvature"]

# Rows up to which the low-rank diagonal is one vectorised sum (see _factor_diagonal).
_DIAGONAL_ROWS = 8
# Floats of Hessian-vector products an exact curvature takes at once: a block of
# c basis vectors at m points holds c * m * p of them.
_BLOCK_FLOATS = 2**16


def _tree_sum(trees):
    """The leafwise sum of a sequence of pytrees of one structure."""
    return jax.tree.map(lambda *leaves: sum(leaves), *trees)


def _factor_diagonal(p_factor, q_factor):
    """``diag(sym(P^T Q)) = sum_n P_n ⊙ Q_n``, ``O(n p)``: one vectorised sum for
    up to 8 rows, a loop over the rows beyond (XLA on CPU sums a long leading
    axis 2-8 times slower than the loop; ``bench/structured_cost.py diagonal``)."""
    if p_factor.shape[0] <= _DIAGONAL_ROWS:
        return jnp.sum(p_factor * q_factor, axis=0)
    step = lambda i, total: total + p_factor[i] * q_factor[i]
    return jax.lax.fori_loop(0, p_factor.shape[0], step, jnp.zeros(p_factor.shape[1:], p_factor.dtype))


def _basis_sum(fn, products, dim, dtype, block):
    """``sum_c fn(E_c, products(E_c))`` over blocks ``E_c`` of ``block`` rows of
    ``I_dim`` (the last one shorter): ``fn`` over the factors ``(I, H)`` of an
    exact ``H`` with memory ``O(block p)`` instead of ``O(p^2)``."""
    rows = lambda start, size: jax.nn.one_hot(start + jnp.arange(size), dim, dtype=dtype)
    term = lambda basis: fn(basis, products(basis))
    full, rest = divmod(dim, block)  # block <= dim, so full >= 1
    total = term(rows(0, block))
    if rest:
        total = _tree_sum([total, term(rows(full * block, rest))])
    add = lambda total, start: (_tree_sum([total, term(rows(start, block))]), None)
    return jax.lax.scan(add, total, jnp.arange(1, full) * block)[0]


class Curvature(abc.ABC):
    """A symmetric ``p x p`` curvature estimate ``H``, never stored densely."""

    @abc.abstractmethod
    def matvec(self, v):
        """``H v``."""

    def matmat(self, vectors):
        """``H v`` for each row ``v`` of ``vectors``."""
        return jax.vmap(self.matvec)(vectors)

    @abc.abstractmethod
    def factor_sum(self, fn):
        """``sum_c fn(P_c, Q_c)`` (a pytree) over blocks ``c`` of rows of factors
        ``(P, Q)``, ``H = sym(P^T Q)``. ``fn`` must add up over rows (its value on
        stacked blocks is the sum of its values on each), so that the blocking,
        which the operator chooses, does not change the result."""

    def diagonal(self):
        """``diag(H) = sum_n P_n ⊙ Q_n``."""
        return self.factor_sum(_factor_diagonal)

    @abc.abstractmethod
    def factors(self):
        """``(P, Q)``, each ``(n, p)``, with ``H = (P^T Q + Q^T P) / 2``, as arrays."""

    @property
    def num_grads(self):
        """Gradient evaluations spent on this estimate's products so far (none
        for the estimates made of gradients already counted)."""
        return 0

    def evaluated(self):
        """The same ``H`` with ``diagonal()`` and ``factors()`` computed once, for
        a curvature read many times (the Laplace start's fixed-point iteration);
        under jit, whichever of them the reader never calls is dropped."""
        return EvaluatedCurvature(self, self.diagonal(), self.factors())


class LowRankCurvature(Curvature):
    """``H = sym(P^T Q)``: the gradient-only (Stein), Gauss-Newton and
    zeroth-order estimators (MATH.md sec. 5). Cost ``O(n p)`` per product."""

    def __init__(self, p_factor, q_factor):
        self.p_factor, self.q_factor = p_factor, q_factor

    def matvec(self, v):
        return 0.5 * (self.p_factor.T @ (self.q_factor @ v) + self.q_factor.T @ (self.p_factor @ v))

    def matmat(self, vectors):
        return 0.5 * ((vectors @ self.q_factor.T) @ self.p_factor + (vectors @ self.p_factor.T) @ self.q_factor)

    def factor_sum(self, fn):
        return fn(self.p_factor, self.q_factor)

    def factors(self):
        return self.p_factor, self.q_factor


class DenseCurvature(Curvature):
    """``H`` as an explicit ``p x p`` matrix: for the full-matrix groups, whose
    step reads every entry of ``H`` anyway (``O(p^3)``), so the step control's
    products cost no further Hessian-vector products; also a Kronecker group's
    small factor curvatures."""

    def __init__(self, matrix, num_grads=0):
        self.matrix = 0.5 * (matrix + matrix.T)
        self._num_grads = num_grads

    @property
    def num_grads(self):
        return self._num_grads

    def matvec(self, v):
        return self.matrix @ v

    def matmat(self, vectors):
        return vectors @ self.matrix

    def diagonal(self):
        return jnp.diagonal(self.matrix)

    def factor_sum(self, fn):
        return fn(*self.factors())

    def factors(self):
        return jnp.eye(self.matrix.shape[-1], dtype=self.matrix.dtype), self.matrix


class HessianCurvature(Curvature):
    """``H`` given by a Hessian-vector-product function ``hvp(v) = H v``.

    With ``probes=None`` the diagonal and the factors ``(I, H)`` are exact:
    ``p`` products, taken ``block_size`` basis vectors at a time (by default
    ``2^16 / (num_points p)``, at least one) so that ``diagonal()`` and
    ``factor_sum`` need memory ``O(block_size p)`` per point, never ``p x p``. With
    ``probes`` a pair ``(U, V)`` of ``(n, p)`` arrays whose rows have
    ``E[u v^T] = I`` they are the unbiased Hutchinson estimates
    ``diag(H) ~ mean_i u_i ⊙ H v_i`` and ``H ~ sym(mean_i u_i (H v_i)^T)``
    (``n`` products): ``U = V = R`` Rademacher, or whitened,
    ``(U, V) = (R B^T, R B^-1)``, whose estimate of ``B^-1 H B^-T`` is
    ``sym(mean_i r_i (B^-1 H B^-T r_i)^T)``, exact on the diagonal wherever
    ``B^-1 H B^-T = I`` (:func:`ngvi.estimators.whitened_probes`). ``num_points``
    is the number of points ``hvp`` averages over (each product costs
    ``2 num_points`` gradient evaluations).
    """

    def __init__(self, hvp, dim, dtype, probes=None, num_points=1, block_size=None):
        self.hvp, self.dim, self.dtype, self.probes, self.num_points = hvp, dim, dtype, probes, num_points
        self._block_size = block_size
        self._num_products = 0

    @property
    def num_grads(self):
        return 2 * self.num_points * self._num_products

    @property
    def block_size(self):
        """Basis vectors per block of the exact curvature's products."""
        size = _BLOCK_FLOATS // (self.num_points * self.dim) if self._block_size is None else self._block_size
        return max(1, min(self.dim, size))

    def _products(self, vectors):
        self._num_products += vectors.shape[0]
        return jax.vmap(self.hvp)(vectors)

    def matvec(self, v):
        self._num_products += 1
        return self.hvp(v)

    def matmat(self, vectors):
        return self._products(vectors)

    def _probe_factors(self):
        left, right = self.probes
        scale = 1.0 / jnp.sqrt(left.shape[0])
        return scale * left, self._products(scale * right)

    def factor_sum(self, fn):
        if self.probes is None:
            self._num_products += self.dim
            return _basis_sum(fn, jax.vmap(self.hvp), self.dim, self.dtype, self.block_size)
        return fn(*self._probe_factors())

    def diagonal(self):
        if self.probes is None:
            return super().diagonal()
        left, right = self.probes
        return jnp.mean(left * self._products(right), axis=0)

    def factors(self):
        if self.probes is None:
            eye = jnp.eye(self.dim, dtype=self.dtype)
            return eye, self._products(eye)
        return self._probe_factors()


class EvaluatedCurvature(Curvature):
    """Products by ``source``; its diagonal and factors given as arrays."""

    def __init__(self, source, diagonal, factors):
        self._source, self._diagonal, self._factors = source, diagonal, factors

    @property
    def num_grads(self):
        return self._source.num_grads

    def matvec(self, v):
        return self._source.matvec(v)

    def matmat(self, vectors):
        return self._source.matmat(vectors)

    def diagonal(self):
        return self._diagonal

    def factor_sum(self, fn):
        return fn(*self._factors)

    def factors(self):
        return self._factors


class SumCurvature(Curvature):
    """``H = H_1 + H_2 + ...`` (e.g. an exact prior Hessian plus a Gauss-Newton term)."""

    def __init__(self, *parts):
        self.parts = parts

    @property
    def num_grads(self):
        return sum(part.num_grads for part in self.parts)

    def matvec(self, v):
        return sum(part.matvec(v) for part in self.parts)

    def matmat(self, vectors):
        return sum(part.matmat(vectors) for part in self.parts)

    def diagonal(self):
        return sum(part.diagonal() for part in self.parts)

    def factor_sum(self, fn):
        """The parts' sums added: their factors stacked, never concatenated."""
        return _tree_sum([part.factor_sum(fn) for part in self.parts])

    def factors(self):
        p_factors, q_factors = zip(*(part.factors() for part in self.parts))
        return jnp.concatenate(p_factors), jnp.concatenate(q_factors)
