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
# The largest noise (standard error) a probed diagonal leaves in a whitened
# entry X_jj (HessianCurvature.diagonal): the step beta X_jj / 2 carries at most beta / 8.
NOISE_BOUND = 0.25


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


def _half_mean_and_weight(terms, omega, all_omega, scale):
    """``(mean, weight)`` of one half of the probe terms: their weighted mean,
    and ``min(1, NOISE_BOUND scale / sd)`` with ``sd`` the standard error of
    the mean of all terms that their spread implies (weight 1 where it tells
    nothing: fewer than two terms worth)."""
    total = jnp.sum(omega)
    tiny = jnp.finfo(terms.dtype).tiny
    mean = omega @ terms / jnp.maximum(total, tiny)
    count = total**2 / jnp.maximum(jnp.sum(omega**2), tiny)
    spread = omega @ (terms - mean) ** 2 / jnp.maximum(total, tiny) * count / jnp.maximum(count - 1.0, 1.0)
    variance = jnp.where(count > 1.5, spread, 0.0) * jnp.sum(all_omega**2)
    return mean, jnp.minimum(1.0, NOISE_BOUND * scale / jnp.maximum(jnp.sqrt(variance), tiny))


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
    ``probes`` a pair ``(U, V)`` of ``(m, p)`` arrays whose rows have
    ``E[u v^T] = I`` they are the unbiased Hutchinson estimates
    ``diag(H) ~ mean_i u_i ⊙ H v_i`` and ``H ~ sym(mean_i u_i (H v_i)^T)``
    (``m`` products): ``U = V = R`` Rademacher, or whitened,
    ``(U, V) = (R B^T, R B^-1)``, whose estimate of ``B^-1 H B^-T`` is
    ``sym(mean_i r_i (B^-1 H B^-T r_i)^T)``, exact on the diagonal wherever
    ``B^-1 H B^-T = I`` (:func:`ngvi.estimators.whitened_probes`). ``num_points``
    is the number of points ``hvp`` averages over (each product costs
    ``2 num_points`` gradient evaluations).

    Probes of each point: ``(U, V)`` of shape ``(n, m, p)`` with
    ``point_products(V)`` the products ``hess l(z_n) V_n`` at each of the ``n``
    points and ``weights`` their ``w_n`` (``H = sum_n w_n hess l(z_n)``): the
    same ``n m`` single-point products as ``m`` shared probes cost, but
    ``n m`` independent ones, whose spread also measures the noise
    (:meth:`diagonal`).

    ``shrink_to=gamma`` (whitened probes) shrinks their diagonal towards
    ``gamma diag(S)``, where the step leaves ``S`` as it is, by its noise
    (:meth:`diagonal`).
    """

    def __init__(
        self, hvp, dim, dtype, probes=None, num_points=1, block_size=None, point_products=None, weights=None,
        shrink_to=None,
    ):
        self.hvp, self.dim, self.dtype, self.num_points = hvp, dim, dtype, num_points
        self._block_size = block_size
        self._num_evaluations = 0  # Hessian-vector products at single points
        self.shrink_to = shrink_to
        if probes is not None and probes[0].ndim == 2:  # shared by all points: one "point", the mean
            probes = tuple(x[None] for x in probes)
            point_products, weights = (lambda vs: self._products(vs[0])[None]), jnp.ones(1, dtype)
        elif probes is not None:
            self._point_products = point_products
            point_products = self._products_at_points
        self.probes, self._probe_products, self.probe_weights = probes, point_products, weights

    @property
    def num_grads(self):
        return 2 * self._num_evaluations

    @property
    def block_size(self):
        """Basis vectors per block of the exact curvature's products."""
        size = _BLOCK_FLOATS // (self.num_points * self.dim) if self._block_size is None else self._block_size
        return max(1, min(self.dim, size))

    def _products(self, vectors):
        self._num_evaluations += self.num_points * vectors.shape[0]
        return jax.vmap(self.hvp)(vectors)

    def _products_at_points(self, vectors):
        self._num_evaluations += vectors.shape[0] * vectors.shape[1]
        return self._point_products(vectors)

    def matvec(self, v):
        self._num_evaluations += self.num_points
        return self.hvp(v)

    def matmat(self, vectors):
        return self._products(vectors)

    def _probe_terms(self):
        """``(U, H V, omega)``: the ``n m`` probe pairs with their products as rows,
        and the weight ``omega = w_n / m`` of each in the estimates."""
        left, right = self.probes
        num, per_point, dim = left.shape
        omega = jnp.repeat(self.probe_weights / per_point, per_point)
        products = self._probe_products(right).reshape(-1, dim)
        return left.reshape(-1, dim), jnp.where(omega[:, None] > 0, products, 0.0), omega  # a left-out point's: 0

    def factor_sum(self, fn):
        if self.probes is None:
            self._num_evaluations += self.num_points * self.dim
            return _basis_sum(fn, jax.vmap(self.hvp), self.dim, self.dtype, self.block_size)
        return fn(*self._probe_factors())

    def _probe_factors(self):
        left, products, omega = self._probe_terms()
        root = jnp.sqrt(omega)[:, None]
        return root * left, root * products

    def diagonal(self):
        """``diag(H)``: exact, or the probes' weighted mean ``d = sum_t omega_t
        u_t ⊙ H v_t``.

        With ``shrink_to=gamma`` each entry of the probes' mean moves from
        ``s_j = gamma S_jj`` (``S_jj = sum_t omega_t u_tj^2`` for whitened probes
        ``u = B r``: exact where row ``j`` of ``B`` is diagonal, as on the
        diagonal part of the block groups) towards ``d_j`` by ``w_j = min(1,
        NOISE_BOUND / se(X_jj))``, ``se(X_jj) = se(d_j) / S_jj`` the standard
        error of the whitened entry ``X_jj = d_j / S_jj - gamma``, so that
        ``w_j X_jj`` carries a noise of at most ``NOISE_BOUND``. Where
        ``B^-1 H B^-T`` has couplings the group does not hold (a diagonal part
        on a chain of correlated coordinates), the probes' noise in ``X_jj``
        does not vanish at the optimum, and through the retraction (``h(m) >=
        1/2`` is bounded below but not above, so noise makes ``E[log h(m)] >
        0``) it inflates the precision step after step, which in turn inflates
        the noise (in float32 a stochastic volatility fit went to precisions of
        10^20 this way). Entries below the bound are left exactly as they are:
        a weight that varies with the state biases a noisy iteration's average
        (a weight of ``1 / (1 + var(X_jj) / 0.25)``, 0.98 on the 10^4-latent
        crossed-effects model, left its random effects' sds 0.75% wide and a
        variance component 0.85 posterior sds off). Cross-fitted: the probe
        pairs are split in two halves (by points, or by probes at one point),
        each half's mean shrunk by the weight of the other half's spread, so
        that no weight depends on the terms it scales.
        """
        if self.probes is None:
            return super().diagonal()
        left, products, omega = self._probe_terms()
        terms = left * products
        if self.shrink_to is None:
            return omega @ terms
        scale = jnp.maximum(omega @ left**2, jnp.finfo(left.dtype).tiny)
        prior = self.shrink_to * scale
        half = terms.shape[0] // 2
        means, weights = zip(*(_half_mean_and_weight(terms[h], omega[h], omega, scale) for h in (slice(0, half), slice(half, None))))
        total = lambda h: jnp.sum(omega[:half] if h == 0 else omega[half:])  # noqa: E731
        return prior + total(0) * weights[1] * (means[0] - prior) + total(1) * weights[0] * (means[1] - prior)

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
