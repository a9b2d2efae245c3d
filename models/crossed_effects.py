"""Crossed random-effects logistic regression on simulated data: a binary
outcome of many pairs of two kinds of units (e.g. users and items), each unit
with its own effect, observed through a subsampled plate.

    beta0    ~ Normal(0, 2)
    beta     ~ Normal(0, 1)                              (num_features)
    sigma_a  ~ HalfNormal(1),   sigma_b ~ HalfNormal(1)
    z_a      ~ Normal(0, 1)                              (plate "a", num_a units)
    z_b      ~ Normal(0, 1)                              (plate "b", num_b units)
    y_n      ~ Bernoulli(logit = beta0 + x_n beta + sigma_a z_a[a_n] + sigma_b z_b[b_n])
                                                         (plate "obs", num_obs, subsample_size)

The data are simulated by :func:`simulate` from a seed (nothing is stored):
each observation's two units are drawn uniformly, its ``num_features``
covariates are standard normal, and the outcome is drawn from the model at the
generating values :func:`simulate` returns (``beta0 = -0.5``, ``beta`` evenly
spaced in ``[-1, 1]``, ``sigma_a = 1``, ``sigma_b = 0.5``, unit effects drawn
from their prior). :func:`data` has 49,996 units of each kind and 10^6
observations (20 per unit), so that with 5 covariates the unconstrained latent
space has exactly 10^5 dimensions, its first 8 the global parameters:

    beta0 (1) + beta (5) + log(sigma_a) (1) + log(sigma_b) (1) + z_a (num_a) + z_b (num_b).

``subsample_size`` observations per evaluation (10^4 in :func:`data`; ``None``
for all of them) are drawn by NumPyro's plate, which scales their
log-likelihood by ``num_obs / subsample_size``.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist


def model(a, b, x, num_a, num_b, y=None, subsample_size=None):
    """``a`` and ``b`` hold each observation's unit indices into ``num_a`` and ``num_b``."""
    beta0 = numpyro.sample("beta0", dist.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(1.0))
    with numpyro.plate("a", num_a):
        z_a = numpyro.sample("z_a", dist.Normal(0.0, 1.0))
    with numpyro.plate("b", num_b):
        z_b = numpyro.sample("z_b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", x.shape[0], subsample_size=subsample_size) as idx:
        logits = beta0 + x[idx] @ beta + sigma_a * z_a[a[idx]] + sigma_b * z_b[b[idx]]
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=None if y is None else y[idx])


def simulate(num_a=49_996, num_b=49_996, num_obs=1_000_000, num_features=5, subsample_size=10_000, seed=0):
    """``(data, truth)``: keyword arguments for :func:`model` and the generating
    values ``{"beta0", "beta", "sigma_a", "sigma_b", "z_a", "z_b"}``, from ``seed``."""
    rng = np.random.default_rng(seed)
    truth = {
        "beta0": -0.5,
        "beta": np.linspace(-1.0, 1.0, num_features),
        "sigma_a": 1.0,
        "sigma_b": 0.5,
        "z_a": rng.standard_normal(num_a),
        "z_b": rng.standard_normal(num_b),
    }
    a = rng.integers(num_a, size=num_obs)
    b = rng.integers(num_b, size=num_obs)
    x = rng.standard_normal((num_obs, num_features))
    logits = (
        truth["beta0"] + x @ truth["beta"] + truth["sigma_a"] * truth["z_a"][a] + truth["sigma_b"] * truth["z_b"][b]
    )
    y = rng.random(num_obs) < 1.0 / (1.0 + np.exp(-logits))
    data = {
        "a": jnp.asarray(a, jnp.int32),
        "b": jnp.asarray(b, jnp.int32),
        "x": jnp.asarray(x, jnp.float32),
        "num_a": num_a,
        "num_b": num_b,
        "y": jnp.asarray(y, jnp.float32),
        "subsample_size": subsample_size,
    }
    return data, truth


def data(**kwargs):
    """Keyword arguments for :func:`model`: :func:`simulate`'s data (``kwargs`` as it takes them)."""
    return simulate(**kwargs)[0]


def unconstrained_truth(truth):
    """:func:`simulate`'s generating values as one vector in the model's
    unconstrained latent layout (the scales as logs)."""
    return np.concatenate([
        [truth["beta0"]], truth["beta"], [np.log(truth["sigma_a"])], [np.log(truth["sigma_b"])], truth["z_a"],
        truth["z_b"],
    ])


TEST_SIZE = dict(num_a=4_996, num_b=4_996, num_obs=100_000, subsample_size=10_000, seed=0)
"""The 10^4-latent version (10 observations per latent dimension, a subsample of
a tenth per step) whose full-data fit is stored in
``reference/crossed_effects_full_data_fit.npz`` (:mod:`ngvi.models.make_full_data_fit`)."""
