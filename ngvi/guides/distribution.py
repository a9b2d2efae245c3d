"""``StructuredNormal``: the Gaussian ``N(mu, (B B^T)^-1)`` as a NumPyro distribution."""

import math

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints

__all__ = ["StructuredNormal"]


class StructuredNormal(Distribution):
    """``N(loc, S^-1)`` with precision ``S = B B^T`` and ``B`` in ``group``.

    Sampling ``z = loc + B^-T eps`` and ``log q(z) = log|det B| - ||B^T (z - loc)||^2 / 2
    - p log(2 pi) / 2`` cost what the group's solves and products cost. An
    optional batch of components (``loc`` of shape ``(K, p)``, factor leaves with
    a leading ``K``) makes it the component distribution of a mixture.
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.real_vector
    reparametrized_params = ["loc", "factor"]
    pytree_data_fields = ("loc", "factor")
    pytree_aux_fields = ("group",)

    def __init__(self, loc, factor, group, *, validate_args=None):
        self.loc, self.factor, self.group = loc, factor, group
        shape = jnp.shape(loc)
        if len(shape) > 2:
            raise ValueError(f"StructuredNormal takes loc of shape (p,) or (K, p), got {shape}.")
        super().__init__(batch_shape=shape[:-1], event_shape=shape[-1:], validate_args=validate_args)

    def _apply(self, fn, x):
        """``fn(factor, v)`` for every vector ``v`` of ``x`` (shape ``(..., *batch, p)``)."""

        def single(factor, x):
            flat = x.reshape(-1, x.shape[-1])
            return jax.vmap(lambda v: fn(factor, v))(flat).reshape(x.shape)

        if not self.batch_shape:
            return single(self.factor, x)
        x = jnp.broadcast_to(x, x.shape[:-2] + self.batch_shape + self.event_shape)
        return jax.vmap(single, in_axes=(0, -2), out_axes=-2)(self.factor, x)

    def _per_component(self, fn):
        return jax.vmap(fn)(self.factor) if self.batch_shape else fn(self.factor)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, jnp.result_type(self.loc))
        return self.loc + self._apply(self.group.rsolve, eps)

    def log_prob(self, value):
        whitened = self._apply(self.group.rmatvec, value - self.loc)
        logdet = self._per_component(self.group.logdet)
        return logdet - 0.5 * jnp.sum(whitened**2, -1) - 0.5 * self.event_shape[0] * math.log(2 * math.pi)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self._per_component(self.group.covariance_diagonal)

    def entropy(self):
        logdet = self._per_component(self.group.logdet)
        return 0.5 * self.event_shape[0] * (1.0 + math.log(2 * math.pi)) - logdet
