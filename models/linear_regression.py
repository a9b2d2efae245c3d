"""Conjugate Bayesian linear regression with known noise sd 0.5.

    w   ~ Normal(0, 1)^5             (single vector site)
    obs ~ Normal(x @ w, 0.5)         (plate "data", n = 50)

The posterior over ``w`` and the marginal likelihood are Gaussian and
available in closed form (:func:`exact_posterior`, :func:`log_evidence`).
The unconstrained latent is ``w`` itself: dimension 5.

``data/linear_regression.csv`` was generated once (values written with six
significant digits) by::

    rng = np.random.default_rng(0)
    w = np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    x = rng.standard_normal((50, 5))
    y = x @ w + 0.5 * rng.standard_normal(50)
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "linear_regression.csv"
NOISE_SD = 0.5


def model(x, y=None):
    """Linear regression of ``y`` on features ``x`` of shape (n, d)."""
    n, d = x.shape
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Normal(x @ w, NOISE_SD), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"x": jnp.asarray(table[:, :-1]), "y": jnp.asarray(table[:, -1])}


def exact_posterior(x, y):
    """Posterior mean and covariance of ``w`` (numpy float64)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    precision = np.eye(x.shape[1]) + x.T @ x / NOISE_SD**2
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ (x.T @ y) / NOISE_SD**2
    return mean, cov


def log_evidence(x, y):
    """Exact log p(y | x) from the marginal y ~ N(0, x x^T + NOISE_SD^2 I)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    cov = x @ x.T + NOISE_SD**2 * np.eye(n)
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, y)
    return float(
        -0.5 * z @ z - np.log(np.diag(chol)).sum() - 0.5 * n * np.log(2 * np.pi)
    )
