"""The matrix Lie group interface shared by every structured precision factor.

A group describes the factor ``B`` of the precision ``S = B B^T`` of a Gaussian
``q(z) = N(mu, S^-1)`` (MATH.md sec. 2). Elements of the group and of its
sub-algebra ``m`` share one compact pytree storage; a group object is static
configuration and never holds arrays of the optimisation state.

Every method works on one vector of length ``p``; use ``jax.vmap`` for batches.
"""

import abc

import jax
import jax.numpy as jnp

__all__ = ["Group", "tree_axpy", "symmetric_part", "triangular_rotation", "whitened_sum"]


def tree_axpy(a, x, y):
    """``a * x + y`` leaf by leaf (elements of one sub-algebra form a vector space)."""
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def symmetric_part(a):
    """``(A + A^T) / 2``."""
    return 0.5 * (a + a.T)


def triangular_rotation(a):
    """The orthogonal ``Q`` with ``a Q`` lower triangular with a positive
    diagonal (from the QR factorisation of ``a^T``; ``O(k^3)`` for ``k x k``)."""
    q, r = jnp.linalg.qr(a.T)
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(a.dtype)


def whitened_sum(group, b, curvature, fn):
    """``sum_c fn(W_c, U_c)`` over blocks of the whitened factors ``(W, U) =
    (P B^-T, Q B^-T)``, ``B^-1 H B^-T = sym(W^T U)``
    (:meth:`ngvi.curvature.Curvature.factor_sum`; ``fn`` adds up over rows):
    the entries of ``X`` a group needs, with the factors never held at once.
    Cost: two solves per factor row, plus ``fn``."""
    solve = jax.vmap(lambda v: group.solve(b, v))
    return curvature.factor_sum(lambda p_block, q_block: fn(solve(p_block), solve(q_block)))


class Group(abc.ABC):
    """A matrix Lie group ``G`` with a sub-algebra ``m`` closed under ``h``.

    Subclasses implement the structured linear algebra and the natural-gradient
    projection ``C ⊙ kappa(X)`` of MATH.md sec. 3-4; the retraction
    ``B h(M)``, ``h(M) = I + M + M^2/2``, follows from ``identity`` and ``mul``.
    """

    name: str = "group"
    dense_curvature: bool = False
    """True when the step reads every entry of ``H`` (the full-matrix groups):
    the Hessian estimator then forms ``H`` once per step."""
    reads_products: bool = False
    """True when ``local_gradient`` reads ``H`` only through a few products
    ``H v`` and its diagonal (the diagonal and block groups), so that a rank-``n``
    ``H`` kept as factors costs it ``O(n p k)``."""

    # --- construction -----------------------------------------------------
    def check(self, p):
        """Raise ``ValueError`` if the group cannot act on dimension ``p``."""
        if p < 1:
            raise ValueError(f"{self!r} needs a latent dimension p >= 1, got p={p}.")

    @abc.abstractmethod
    def identity(self, p, dtype=jnp.float32):
        """The identity matrix in compact storage."""

    def init(self, p, scale=1.0, dtype=jnp.float32):
        """``B = I / scale``, i.e. ``S = I / scale^2`` (NumPyro's ``init_scale``)."""
        self.check(p)
        return jax.tree.map(lambda x: x / scale, self.identity(p, dtype))

    # --- structured linear algebra ----------------------------------------
    @abc.abstractmethod
    def matvec(self, b, v):
        """``B v``."""

    @abc.abstractmethod
    def rmatvec(self, b, v):
        """``B^T v``."""

    @abc.abstractmethod
    def solve(self, b, v):
        """``B^-1 v``."""

    @abc.abstractmethod
    def rsolve(self, b, v):
        """``B^-T v``."""

    @abc.abstractmethod
    def logdet(self, b):
        """``log |det B|``."""

    @abc.abstractmethod
    def mul(self, b, c):
        """The product ``B C`` of two elements of the group (or of ``m``)."""

    @abc.abstractmethod
    def to_dense(self, b):
        """The dense ``p x p`` matrix, for tests and small-``p`` diagnostics only."""

    def dim(self, b):
        """The dimension ``p`` the element acts on."""
        return jax.tree.leaves(b)[-1].shape[-1]

    def covariance_diagonal(self, b):
        """``diag(S^-1) = diag(B^-T B^-1)``: column norms of ``B^-1``, one solve per
        column (``O(p)`` memory; groups with a closed form override it)."""
        p, dtype = self.dim(b), jax.tree.leaves(b)[0].dtype
        column_norm = lambda i: jnp.sum(self.solve(b, jax.nn.one_hot(i, p, dtype=dtype)) ** 2)
        return jax.lax.map(column_norm, jnp.arange(p))

    # --- natural gradient --------------------------------------------------
    @abc.abstractmethod
    def local_gradient(self, b, curvature, gamma):
        """Pattern entries of ``X = B^-1 H B^-T - gamma I`` (MATH.md sec. 3).

        ``curvature`` is a :class:`ngvi.curvature.Curvature` estimate of
        ``H = E_q[hess l]``; only the entries that ``m`` needs are computed.
        """

    @abc.abstractmethod
    def natural_direction(self, x):
        """``C ⊙ kappa(X)``: the Fisher-metric projection of ``X`` onto ``m``."""

    @abc.abstractmethod
    def fisher_norm_sq(self, m):
        """``<M, M> = (1/2) ||M + M^T||_F^2``, the local Fisher metric on ``m``."""

    def algebra_matvec(self, m, v):
        """``M v`` for ``M`` in the sub-algebra (the same as ``matvec`` where
        ``m`` and ``G`` share one storage)."""
        return self.matvec(m, v)

    def algebra_rmatvec(self, m, v):
        """``M^T v`` for ``M`` in the sub-algebra."""
        return self.rmatvec(m, v)

    def spectral_norm(self, m, iterations=20):
        """``||M||_2`` by power iteration on ``M^T M`` with structured products
        (from a fixed random start, so deterministic). It bounds how much
        ``h(M)`` can stretch or shrink ``B`` in any direction."""
        v = jax.random.normal(jax.random.PRNGKey(0), (self.dim(m),), jax.tree.leaves(m)[0].dtype)

        def power(v, _):
            w = self.algebra_rmatvec(m, self.algebra_matvec(m, v))
            return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny), None

        v = jax.lax.scan(power, v / jnp.linalg.norm(v), None, length=iterations)[0]
        return jnp.linalg.norm(self.algebra_matvec(m, v))

    def h(self, m):
        """``h(M) = I + M + M^2 / 2``, which lies in ``G`` for every ``M`` in ``m``."""
        eye = self.identity(self.dim(m), jax.tree.leaves(m)[0].dtype)
        return tree_axpy(0.5, self.mul(m, m), tree_axpy(1.0, m, eye))

    def retract(self, b, m):
        """``B h(M)``."""
        return self.mul(b, self.h(m))

    def canonical(self, b):
        """The representative of ``B`` that averages of iterates use: ``B Q``
        (``Q`` orthogonal, ``B Q`` in the group) gives the same ``S = B B^T``, and
        the step moves ``B`` along such ``Q`` as it goes, so an average of raw
        factors shrinks ``S``. ``B`` itself here: the triangular and diagonal
        groups (positive diagonals) have one member per ``S``; a Kronecker
        factor's two parts keep their relative scale."""
        return b

    def _config(self):
        """The static configuration that identifies the group (for ``==`` and
        ``hash``, so that equal groups share compiled code)."""
        return ()

    def __eq__(self, other):
        return type(self) is type(other) and self._config() == other._config()

    def __hash__(self):
        return hash((type(self), self._config()))

    def __repr__(self):
        return f"{type(self).__name__}()"
