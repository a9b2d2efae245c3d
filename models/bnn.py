"""Bayesian neural network classifier (one hidden layer of 4 tanh units) on the
Wisconsin breast-cancer data.

    w1  ~ Normal(0, 1)^(30 x 4),  b1 ~ Normal(0, 1)^4       (input layer)
    w2  ~ Normal(0, 1)^4 restricted to 0 < w2_1 < ... < w2_4 (output weights)
    b2  ~ Normal(0, 1)
    obs ~ Bernoulli(logits = tanh(x @ w1 + b1) @ w2 + b2)    (plate "data", n = 569)

With N(0, 1) priors on all weights the posterior is invariant under the
2^4 4! sign flips (w1_:k, b1_k, w2_k -> -w1_:k, -b1_k, -w2_k) and permutations
of the hidden units, and has as many copies of every mode. Restricting the
output weights to the positive ordered region keeps one copy: the prior of
``w2`` is the law of the sorted absolute values of four N(0, 1) draws
(:class:`SortedHalfNormal`, density 2^4 4! prod N(w2_k; 0, 1) on that region),
and the predictive distribution is that of the unrestricted network.

``x`` are the 30 features of scikit-learn's ``load_breast_cancer()``,
standardised, from ``data/breast_cancer.csv`` (the file of
:mod:`ngvi.models.logistic_regression`).

Unconstrained latent space: w1 (120) + b1 (4) + w2 (4, ordered log scale) +
b2 (1) = 129.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

DATA_FILE = Path(__file__).parent / "data" / "breast_cancer.csv"
NUM_HIDDEN = 4


class SortedHalfNormal(dist.Distribution):
    """The increasing order statistics of ``size`` i.i.d. HalfNormal(1) draws."""

    arg_constraints = {}
    support = constraints.positive_ordered_vector
    reparametrized_params = []

    def __init__(self, size, *, validate_args=None):
        self.size = size
        super().__init__(event_shape=(size,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        draws = jnp.abs(jax.random.normal(key, sample_shape + self.event_shape))
        return jnp.sort(draws, axis=-1)

    def log_prob(self, value):
        log_norm = math.lgamma(self.size + 1) + self.size * math.log(2.0)
        return jnp.sum(dist.Normal(0.0, 1.0).log_prob(value), axis=-1) + log_norm


def model(x, y=None, num_hidden=NUM_HIDDEN):
    """One-hidden-layer tanh network for labels ``y`` (0/1) at features ``x`` (n, d)."""
    n, d = x.shape
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([d, num_hidden]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([num_hidden]).to_event(1))
    w2 = numpyro.sample("w2", SortedHalfNormal(num_hidden))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0))
    logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"x": jnp.asarray(table[:, :-1]), "y": jnp.asarray(table[:, -1])}
