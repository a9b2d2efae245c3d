"""A multimodal target: an equal-weight mixture of multivariate Student-t
components (2 degrees of freedom) in ``d`` dimensions (the 80-dimensional
experiment of Lin, Nielsen, Khan and Schmidt, ICML 2021).

Component ``c`` has mean ``m_c ~ Uniform[-20, 20]^d`` and precision
``P_c = A_c^T A_c + I`` with ``(A_c)_ij ~ N(0, (0.1 d)^2)``; the draws come from
``numpy.random.default_rng(seed)``. The latent ``z`` lives in R^d (unconstrained);
``target(...)`` is the exact distribution, with an exact sampler.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DIM, NUM_COMPONENTS, DF, SEED = 80, 10, 2.0, 0


def components(dim=DIM, num_components=NUM_COMPONENTS, seed=SEED):
    """Means ``(K, d)`` and precisions ``(K, d, d)`` (float64)."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-20.0, 20.0, size=(num_components, dim))
    a = rng.normal(0.0, 0.1 * dim, size=(num_components, dim, dim))
    precisions = np.einsum("kji,kjl->kil", a, a) + np.eye(dim)
    return means, precisions


def target(means, scale_tril, df=DF):
    """The exact equal-weight mixture of multivariate t distributions, with
    ``scale_tril`` the Cholesky factors of the inverse precisions."""
    t = dist.MultivariateStudentT(df, jnp.asarray(means), jnp.asarray(scale_tril))
    weights = jnp.full(means.shape[0], 1.0 / means.shape[0])
    return dist.MixtureSameFamily(dist.Categorical(probs=weights), t)


def marginal_scales(precisions):
    """``sqrt(diag(P_c^-1))`` of every component, ``(K, d)``."""
    return np.sqrt(np.diagonal(np.linalg.inv(precisions), axis1=-2, axis2=-1))


def model(means, scale_tril):
    numpyro.sample("z", target(means, scale_tril))


def data(dim=DIM, num_components=NUM_COMPONENTS, seed=SEED):
    means, precisions = components(dim, num_components, seed)
    return {"means": means, "scale_tril": np.linalg.cholesky(np.linalg.inv(precisions))}
