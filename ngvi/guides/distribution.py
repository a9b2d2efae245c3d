"""``StructuredNormal``: the Gaussian ``N(mu, (B B^T)^-1)`` as a NumPyro distribution."""

import math

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints

__all__ = ["StructuredNormal"]


class StructuredNormal(Distribution):
    """``N(loc, S^-1)`` with precision ``S = B B^T`` and ``B`` in ``group``.

    Sampling ``z = loc + B^-T eps`` and ``log q(z) = log|det B| - ||B^T (z - loc)||^2 / 2
    - p log(2 pi) / 2`` cost what the group's solves and products cost.
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = ["loc", "factor"]
    pytree_data_fields = ("loc", "factor")
    pytree_aux_fields = ("group",)

    def __init__(self, loc, factor, group, *, validate_args=None):
        self.loc, self.factor, self.group = loc, factor, group
        super().__init__(batch_shape=(), event_shape=jnp.shape(loc)[-1:], validate_args=validate_args)

    def _map(self, fn, x):
        """Apply a vector function over all leading dimensions of ``x``."""
        flat = x.reshape(-1, x.shape[-1])
        return jax.vmap(fn)(flat).reshape(x.shape[:-1] + (-1,))

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + self.event_shape, jnp.result_type(self.loc))
        return self.loc + self._map(lambda e: self.group.rsolve(self.factor, e), eps)

    def log_prob(self, value):
        whitened = self._map(lambda d: self.group.rmatvec(self.factor, d), value - self.loc)
        dim = self.event_shape[0]
        return self.group.logdet(self.factor) - 0.5 * jnp.sum(whitened**2, -1) - 0.5 * dim * math.log(2 * math.pi)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self.group.covariance_diagonal(self.factor)

    def entropy(self):
        dim = self.event_shape[0]
        return 0.5 * dim * (1.0 + math.log(2 * math.pi)) - self.group.logdet(self.factor)
