"""Sparse linear regression with the regularised horseshoe prior (Piironen and
Vehtari, 2017), non-centred.

    sigma        ~ HalfNormal(2)
    alpha        ~ Normal(0, 5)
    tau          ~ HalfCauchy(TAU0)                    TAU0 = p0 / (d - p0) / sqrt(n)
    lambda       ~ HalfCauchy(1)^d
    c2           ~ InverseGamma(2, 8)                  (slab: nu = 4, s = 2)
    z            ~ Normal(0, 1)^d
    g            = sigma * tau                         (global scale)
    lambda_tilde = sqrt(c2 lambda^2 / (c2 + g^2 lambda^2))
    beta         = g * lambda_tilde * z                (deterministic site "beta")
    obs          ~ Normal(alpha + x @ beta, sigma)     (plate "data", n = 100)

with d = 40 coefficients and a prior guess of p0 = 5 non-zero ones, so that
the global scale ``g`` has the paper's prior HalfCauchy(p0 / (d - p0) * sigma /
sqrt(n)).

``data/horseshoe_regression.csv`` is simulated, generated once (values written
with six significant digits) by::

    rng = np.random.default_rng(3)
    beta = np.zeros(40); beta[:5] = [3.0, -2.5, 2.0, -1.5, 1.0]
    x = rng.standard_normal((100, 40))
    y = x @ beta + rng.standard_normal(100)

Unconstrained latent space: log(sigma) (1) + alpha (1) + log(tau) (1) +
log(lambda) (40) + log(c2) (1) + z (40) = 84.
"""

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "horseshoe_regression.csv"
EXPECTED_NONZERO = 5
SLAB_DF, SLAB_SCALE = 4.0, 2.0


def model(x, y=None):
    """Regularised-horseshoe regression of ``y`` on features ``x`` of shape (n, d)."""
    n, d = x.shape
    tau0 = EXPECTED_NONZERO / (d - EXPECTED_NONZERO) / math.sqrt(n)
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(tau0))
    lam = numpyro.sample("lambda", dist.HalfCauchy(jnp.ones(d)).to_event(1))
    c2 = numpyro.sample(
        "c2", dist.InverseGamma(0.5 * SLAB_DF, 0.5 * SLAB_DF * SLAB_SCALE**2)
    )
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    g = sigma * tau
    lam_tilde = jnp.sqrt(c2 * lam**2 / (c2 + g**2 * lam**2))
    beta = numpyro.deterministic("beta", g * lam_tilde * z)
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Normal(alpha + x @ beta, sigma), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"x": jnp.asarray(table[:, :-1]), "y": jnp.asarray(table[:, -1])}
