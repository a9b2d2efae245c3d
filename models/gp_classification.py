"""Gaussian-process classification of the two-moons data, in the whitened
(non-centred) form, with learned amplitude and length scale.

    amplitude   ~ HalfNormal(2)
    lengthscale ~ InverseGamma(5, 5)
    z           ~ Normal(0, 1)^50                      (plate "data")
    K           = amplitude^2 (exp(-|x_i - x_j|^2 / (2 lengthscale^2)) + JITTER I)
    f           = cholesky(K) @ z                      (deterministic site "f")
    obs         ~ Bernoulli(logits = f)

The Cholesky factor of the 50 x 50 kernel matrix is computed inside the model
at every evaluation; ``JITTER`` = 1e-4 keeps it well defined in float32.

``data/moons.csv`` holds 50 points with 0/1 labels, generated once (values
written with six significant digits) by scikit-learn's
``make_moons(n_samples=50, noise=0.3, random_state=0)``.

Unconstrained latent space: log(amplitude) (1) + log(lengthscale) (1) + z (50)
= 52.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "moons.csv"
JITTER = 1e-4


def rbf_cholesky(x, amplitude, lengthscale):
    """Cholesky factor of the squared-exponential kernel matrix of ``x`` (n, d)."""
    sq_dist = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    corr = jnp.exp(-0.5 * sq_dist / lengthscale**2)
    eye = jnp.eye(x.shape[0], dtype=corr.dtype)
    return amplitude * jnp.linalg.cholesky(corr + JITTER * eye)


def model(x, y=None):
    """GP classification of labels ``y`` (0/1) at inputs ``x`` of shape (n, d)."""
    amplitude = numpyro.sample("amplitude", dist.HalfNormal(2.0))
    lengthscale = numpyro.sample("lengthscale", dist.InverseGamma(5.0, 5.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        f = numpyro.deterministic("f", rbf_cholesky(x, amplitude, lengthscale) @ z)
        numpyro.sample("obs", dist.Bernoulli(logits=f), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    table = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"x": jnp.asarray(table[:, :-1]), "y": jnp.asarray(table[:, -1])}
