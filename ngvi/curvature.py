"""Estimates of the expected Hessian ``H = E_q[hess l]`` as linear operators.

Groups read ``H`` only through these operators (MATH.md sec. 5), so that each
group computes just the entries of ``X = B^-1 H B^-T - gamma I`` it needs:

* ``matvec(v)``: ``H v`` (one Hessian-vector product per call for
  :class:`HessianCurvature`);
* ``diagonal()``: ``diag(H)``, exactly or by an unbiased probe estimate;
* ``factors()``: ``(P, Q)`` with ``H = sym(P^T Q) = (P^T Q + Q^T P) / 2``, the
  form used by groups that need sums over many entries (Kronecker partial
  traces, Toeplitz diagonals, sparse patterns).

Each operator also keeps ``num_grads``: the gradient evaluations of ``l`` its
products have cost so far (a Hessian-vector product at ``m`` points counts as
``2 m``), tallied as the step is traced, so that the algorithms can report
the cost of a step honestly.
"""

import abc

import jax
import jax.numpy as jnp

__all__ = ["Curvature", "DenseCurvature", "EvaluatedCurvature", "HessianCurvature", "LowRankCurvature", "SumCurvature"]


class Curvature(abc.ABC):
    """A symmetric ``p x p`` curvature estimate ``H``, never stored densely."""

    @abc.abstractmethod
    def matvec(self, v):
        """``H v``."""

    def matmat(self, vectors):
        """``H v`` for each row ``v`` of ``vectors``."""
        return jax.vmap(self.matvec)(vectors)

    @abc.abstractmethod
    def diagonal(self):
        """``diag(H)``."""

    @abc.abstractmethod
    def factors(self):
        """``(P, Q)``, each ``(n, p)``, with ``H = (P^T Q + Q^T P) / 2``."""

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

    def diagonal(self):
        # A loop over the n rows: XLA reduces a short leading axis slowly on CPU.
        p_factor, q_factor = self.p_factor, self.q_factor
        step = lambda i, total: total + p_factor[i] * q_factor[i]
        return jax.lax.fori_loop(0, p_factor.shape[0], step, jnp.zeros_like(p_factor[0]))

    def factors(self):
        return self.p_factor, self.q_factor


class DenseCurvature(Curvature):
    """``H`` as an explicit ``p x p`` matrix: for the full-matrix groups, whose
    step reads every entry of ``H`` anyway (``O(p^3)``), so the step control's
    products cost no further Hessian-vector products."""

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

    def factors(self):
        return jnp.eye(self.matrix.shape[-1], dtype=self.matrix.dtype), self.matrix


class HessianCurvature(Curvature):
    """``H`` given by a Hessian-vector-product function ``hvp(v) = H v``.

    With ``probes=None`` the diagonal and the factors are exact (``p`` products,
    computed one at a time for the diagonal so that memory stays ``O(p)``);
    with ``probes`` an ``(n, p)`` array of Rademacher vectors they are the
    unbiased Hutchinson estimates ``diag(H) ~ mean_i r_i ⊙ H r_i`` and
    ``H ~ sym(mean_i r_i (H r_i)^T)`` (``n`` products). ``num_points`` is the
    number of points ``hvp`` averages over (each product costs ``2 num_points``
    gradient evaluations).
    """

    def __init__(self, hvp, dim, dtype, probes=None, num_points=1):
        self.hvp, self.dim, self.dtype, self.probes, self.num_points = hvp, dim, dtype, probes, num_points
        self._num_products = 0

    @property
    def num_grads(self):
        return 2 * self.num_points * self._num_products

    def _products(self, vectors):
        self._num_products += vectors.shape[0]
        return jax.vmap(self.hvp)(vectors)

    def matvec(self, v):
        self._num_products += 1
        return self.hvp(v)

    def matmat(self, vectors):
        return self._products(vectors)

    def diagonal(self):
        if self.probes is None:
            basis = lambda i: jax.nn.one_hot(i, self.dim, dtype=self.dtype)
            self._num_products += self.dim
            return jax.lax.map(lambda i: self.hvp(basis(i))[i], jnp.arange(self.dim))
        return jnp.mean(self.probes * self._products(self.probes), axis=0)

    def factors(self):
        if self.probes is None:
            eye = jnp.eye(self.dim, dtype=self.dtype)
            return eye, self._products(eye)
        scaled = self.probes / jnp.sqrt(self.probes.shape[0])
        return scaled, self._products(scaled)


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

    def factors(self):
        p_factors, q_factors = zip(*(part.factors() for part in self.parts))
        return jnp.concatenate(p_factors), jnp.concatenate(q_factors)
