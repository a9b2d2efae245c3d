"""``StructuredNormal``: the Gaussian ``N(mu, (B B^T)^-1)`` as a NumPyro distribution."""

from functools import partial

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints

from ngvi import gaussian

__all__ = ["StructuredNormal"]


class StructuredNormal(Distribution):
    """``N(loc, S^-1)`` with precision ``S = B B^T`` and ``B`` in ``group``.

    Draws, ``log q`` and the entropy are those of :mod:`ngvi.gaussian` and cost
    what the group's solves and products cost. An optional batch of components
    (``loc`` of shape ``(K, p)``, factor leaves with a leading ``K``) makes it
    the component distribution of a mixture.
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

    def _map(self, fn, x, out_axis):
        """``fn(loc, factor, x)`` per component, ``x`` of shape ``(..., *batch, p)``."""
        if not self.batch_shape:
            return fn(self.loc, self.factor, x)
        x = jnp.broadcast_to(x, x.shape[:-2] + self.batch_shape + self.event_shape)
        return jax.vmap(fn, in_axes=(0, 0, -2), out_axes=out_axis)(self.loc, self.factor, x)

    def _per_component(self, fn):
        return jax.vmap(fn)(self.factor) if self.batch_shape else fn(self.factor)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        eps = jax.random.normal(key, shape, jnp.result_type(self.loc))
        return self._map(partial(gaussian.from_standard, self.group), eps, -2)

    def log_prob(self, value):
        return self._map(partial(gaussian.log_prob, self.group), value, -1)

    @property
    def has_rsample(self):
        """Draws are ``loc + B^-T eps``: reparameterised in ``loc`` and every factor leaf."""
        return True

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return self._per_component(self.group.covariance_diagonal)

    def entropy(self):
        return -self._per_component(lambda factor: gaussian.neg_entropy(self.group, factor, self.event_shape[0]))
