"""Shared helpers for the recovery and accuracy tests: an NGVI fit that records
its iterates, the model's log density written independently of the library,
and ELBO estimates from common random numbers."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer import init_to_median
from numpyro.infer.util import potential_energy

from ngvi import NGVI, StructuredGaussian


def gaussian_model(loc, precision):
    """A Gaussian target ``z ~ N(loc, precision^-1)``; its log evidence is 0."""
    numpyro.sample("z", dist.MultivariateNormal(loc, precision_matrix=precision))


def dense_covariance(group, factor):
    """``S^-1 = (B B^T)^-1`` as a dense matrix (small ``p`` only)."""
    b = group.to_dense(factor)
    return jnp.linalg.inv(b @ b.T)


class Fit(NamedTuple):
    guide: StructuredGaussian
    ngvi: NGVI
    state: Any
    losses: np.ndarray  # (num_steps,) negative-ELBO estimates
    locs: np.ndarray  # (window, p) means of the last `window` iterates
    covs: np.ndarray  # (window, p, p) their dense covariances

    @property
    def mean(self):
        """The mean averaged over the recorded iterates."""
        return self.locs.mean(0)

    @property
    def cov(self):
        """The covariance averaged over the recorded iterates."""
        return self.covs.mean(0)

    @property
    def sd(self):
        return np.sqrt(np.diag(self.cov))


def make_ngvi(model, group, **ngvi_kwargs):
    """A ``StructuredGaussian`` guide (``init_to_median``, ``init_scale=0.1``) and its driver."""
    guide = StructuredGaussian(model, group=group, init_loc_fn=init_to_median, init_scale=0.1)
    return guide, NGVI(model, guide, **ngvi_kwargs)


def run(model, data, group, num_steps, seed=0, **ngvi_kwargs):
    """``NGVI.run``; returns ``(ngvi, result, posterior, dense covariance)``
    with the posterior read back through ``guide.get_posterior``."""
    guide, ngvi = make_ngvi(model, group, **ngvi_kwargs)
    result = ngvi.run(jax.random.PRNGKey(seed), num_steps, progress_bar=False, **data)
    assert int(result.state.num_rejected) == 0
    posterior = guide.get_posterior(result.params)
    return ngvi, result, posterior, np.asarray(dense_covariance(posterior.group, posterior.factor))


def fit(model, data, group, num_steps, window=1, seed=0, **ngvi_kwargs):
    """``num_steps`` steps of ``NGVI.update`` (one jit-compiled scan, as in
    ``NGVI.run``) on ``model(**data)``, recording the mean and dense covariance
    of the last ``window`` iterates (for iterate averaging and drift checks)."""
    guide, ngvi = make_ngvi(model, group, **ngvi_kwargs)
    state = ngvi.init(jax.random.PRNGKey(seed), **data)

    def step(state, _):
        state, loss = ngvi.update(state, **data)
        return state, (loss, state.vi_state.loc, state.vi_state.factor)

    state, (losses, locs, factors) = jax.jit(lambda s: jax.lax.scan(step, s, None, num_steps))(state)
    assert int(state.num_rejected) == 0
    tail = jax.tree.map(lambda x: x[num_steps - window :], factors)
    covs = jax.vmap(lambda f: dense_covariance(group, f))(tail)
    return Fit(guide, ngvi, state, np.asarray(losses), np.asarray(locs[num_steps - window :]), np.asarray(covs))


def potential(model, data):
    """``z -> -log p(x, z)`` on the flat unconstrained vector (latent sites in
    trace order, each raveled, Jacobians included), via NumPyro's
    ``potential_energy``."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(**data)
    layout = [(k, jnp.shape(s["value"])) for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]
    splits = np.cumsum([int(np.prod(shape)) for _, shape in layout])[:-1]

    def fn(z):
        parts = jnp.split(z, splits)
        return potential_energy(model, (), data, {k: x.reshape(shape) for (k, shape), x in zip(layout, parts)})

    return fn


def log_weights(model, data, loc, cov, eps):
    """``log p(x, z) - log q(z)`` at ``z = loc + chol(cov) eps`` for
    ``q = N(loc, cov)``. Their mean is an ELBO estimate; they all equal
    ``log Z`` when ``q`` is the exact posterior."""
    loc, cov, eps = jnp.asarray(loc), jnp.asarray(cov), jnp.asarray(eps)
    chol = jnp.linalg.cholesky(cov)
    log_q = -0.5 * jnp.sum(eps**2, -1) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * loc.shape[0] * np.log(2 * np.pi)
    return np.asarray(-jax.vmap(potential(model, data))(loc + eps @ chol.T) - log_q)


def sd_errors(loc, cov, ref_loc, ref_cov):
    """``(max |mean error| / ref sd, max |sd / ref sd - 1|)`` over coordinates."""
    ref_sd = np.sqrt(np.diag(ref_cov))
    return np.max(np.abs(loc - ref_loc) / ref_sd), np.max(np.abs(np.sqrt(np.diag(cov)) / ref_sd - 1))


def kl_optimum_dense(fn, start, num_draws=4096, seed=0):
    """The dense Gaussian family's KL optimum of ``exp(-fn)``, computed without
    the library: minimise the sample-average negative ELBO
    ``mean_n fn(mu + C eps_n) - sum_i log C_ii`` over ``mu`` and lower-triangular
    ``C`` (covariance ``C C^T``) by scipy's L-BFGS in float64, on fixed draws
    whitened to exactly zero mean and identity covariance (so the optimum is
    exact for a Gaussian target). Starts at ``start = (mean, cov)``; asserts
    that the gradient vanishes at the end, in the optimum's own units (a Poisson
    GLM's counts make the objective large: its raw gradient stopped at 1.3e-5).
    Returns ``(mean, cov)``."""
    from scipy.optimize import minimize

    mean0, cov0 = (np.asarray(x, np.float64) for x in start)
    p = mean0.shape[0]
    eps = np.random.default_rng(seed).standard_normal((num_draws // 2, p))
    eps = np.concatenate([eps, -eps])
    eps = eps @ np.linalg.inv(np.linalg.cholesky(eps.T @ eps / num_draws)).T
    rows, cols = np.tril_indices(p)
    diag = rows == cols
    eps, fn = jnp.asarray(eps), jax.vmap(fn)

    def unpack(x):
        entries = jnp.where(diag, jnp.exp(x[p:]), x[p:])
        return x[:p], jnp.zeros((p, p)).at[rows, cols].set(entries)

    def objective(x):
        loc, chol = unpack(x)
        return jnp.mean(fn(loc + eps @ chol.T)) - jnp.sum(jnp.where(diag, x[p:], 0.0))

    value_and_grad = jax.jit(jax.value_and_grad(objective))
    chol0 = np.linalg.cholesky(cov0)[rows, cols]
    x0 = np.concatenate([mean0, np.where(diag, np.log(np.abs(chol0)), chol0)])
    fun = lambda x: tuple(np.asarray(v, np.float64) for v in value_and_grad(jnp.asarray(x)))
    solution = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10, "ftol": 0.0})
    grad = fun(solution.x)[1]
    loc, chol = (np.asarray(a) for a in unpack(jnp.asarray(solution.x)))
    # The gradient in the optimum's own units: in a whitened shift u of the mean
    # (mu + C u) and in A of C (I + A), so that a model's scale does not decide.
    grad_chol = np.zeros((p, p))
    grad_chol[rows, cols] = np.where(diag, grad[p:] / np.diag(chol)[rows], grad[p:])
    local = np.concatenate([chol.T @ grad[:p], np.tril(chol.T @ grad_chol)[rows, cols]])
    assert np.max(np.abs(local)) < 1e-5, (solution.message, np.max(np.abs(local)))
    return loc, chol @ chol.T
