"""Neal's funnel (Neal, 2003) in 10 + 1 dimensions, centred: a target with no
data whose scale varies by orders of magnitude across the latent space.

    v ~ Normal(0, 3)
    x ~ Normal(0, exp(v / 2))^10     (single vector site)

The joint law is known: :func:`exact_moments` gives its means and covariance
(v and x are uncorrelated, Var(x_i) = E[exp(v)] = exp(9 / 2)), and
:func:`sample` draws from it exactly. The unconstrained latent is (v, x):
dimension 11.
"""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DIM, V_SCALE = 10, 3.0


def model(dim=DIM):
    v = numpyro.sample("v", dist.Normal(0.0, V_SCALE))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(0.5 * v)).expand([dim]).to_event(1))


def data():
    """Keyword arguments for :func:`model`: none (the funnel has no data)."""
    return {}


def sample(key, num_samples, dim=DIM):
    """``num_samples`` exact draws ``{"v": (num,), "x": (num, dim)}``."""
    v_key, x_key = jax.random.split(key)
    v = V_SCALE * jax.random.normal(v_key, (num_samples,))
    x = jnp.exp(0.5 * v)[:, None] * jax.random.normal(x_key, (num_samples, dim))
    return {"v": v, "x": x}


def exact_moments(dim=DIM):
    """Mean vector and covariance matrix of the flattened (v, x) (numpy float64)."""
    mean = np.zeros(dim + 1)
    var = np.concatenate([[V_SCALE**2], np.full(dim, np.exp(0.5 * V_SCALE**2))])
    return mean, np.diag(var)


def exact_quantiles(probs, dim=DIM):
    """Quantiles ``{"v": (len(probs),), "x": (len(probs), dim)}`` of the marginal
    laws (numpy float64): v's in closed form, x_i's by bisection on its CDF
    E[Phi(x exp(-v / 2))], the expectation by Gauss-Hermite quadrature."""
    normal = NormalDist()
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    inv_scale = np.exp(-0.5 * V_SCALE * nodes)
    phi = np.vectorize(normal.cdf)

    def cdf(x):
        return float(weights @ phi(x * inv_scale))

    x_quantiles = []
    for p in probs:
        upper = max(p, 1.0 - p)  # by symmetry, solve for the upper quantile
        lo, hi = 0.0, 1e6
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cdf(mid) < upper else (lo, mid)
        x_quantiles.append(np.sign(p - 0.5) * 0.5 * (lo + hi))
    v = np.array([V_SCALE * normal.inv_cdf(p) for p in probs])
    return {"v": v, "x": np.repeat(np.array(x_quantiles)[:, None], dim, axis=1)}
