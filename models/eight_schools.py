"""Non-centred eight schools model (Rubin, 1981).

    mu          ~ Normal(0, 5)
    tau         ~ HalfCauchy(5)
    theta_tilde ~ Normal(0, 1)            (plate of 8 schools)
    theta       = mu + tau * theta_tilde  (deterministic site "theta")
    obs         ~ Normal(theta, sigma)

Unconstrained latent space: mu (1) + log(tau) (1) + theta_tilde (8) = 10.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def model(sigma, y=None):
    """Eight schools with known per-school standard errors ``sigma``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", sigma.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    return {"sigma": jnp.asarray(SIGMA), "y": jnp.asarray(Y)}
