"""Bayesian logistic regression on the Wisconsin breast-cancer data.

    alpha ~ Normal(0, 5)
    beta  ~ Normal(0, 1)^30                     (single vector site)
    obs   ~ Bernoulli(logits=alpha + x @ beta)  (plate "data", n = 569)

Features are scikit-learn's ``load_breast_cancer()`` columns standardised to
zero mean and unit (population) sd, stored in ``data/breast_cancer.csv``.
Passing ``subsample_size`` to :func:`model` subsamples the data plate.

Unconstrained latent space: alpha (1) + beta (30) = 31.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "breast_cancer.csv"


def model(x, y=None, subsample_size=None):
    """Logistic regression of ``y`` (0/1) on features ``x`` of shape (n, d)."""
    n, d = x.shape
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", n, subsample_size=subsample_size) as idx:
        logits = alpha + x[idx] @ beta
        numpyro.sample(
            "obs", dist.Bernoulli(logits=logits), obs=None if y is None else y[idx]
        )


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"x": jnp.asarray(table[:, :-1]), "y": jnp.asarray(table[:, -1])}
