"""The Laplace warm start (``NGVI(..., warm_start="laplace")``): the MAP and the
group's closest match to the Hessian there, checked against closed forms and
against a MAP and Hessian computed without the library."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import init_to_median

from fitting import dense_covariance, gaussian_model, make_ngvi, potential
from group_cases import CASES, IDS, algebra_basis, random_element
from ngvi.models import linear_regression, logistic_regression
from ngvi import NGVI, StructuredGaussianMixture, groups
from ngvi.laplace import LaplaceStart, check_laplace_start


def laplace_init(model, data, group, seed=0):
    """The warm-started state and its precision ``B B^T`` as a dense matrix."""
    _, ngvi = make_ngvi(model, group, warm_start="laplace")
    state = ngvi.init(jax.random.PRNGKey(seed), **data)
    b = np.asarray(group.to_dense(state.vi_state.factor))
    return state, b @ b.T


@pytest.mark.parametrize("group, p", CASES, ids=IDS)
def test_exact_on_gaussians_in_the_family(group, p):
    """Target N(m, (B* B*^T)^-1), B* a random element of the group: the warm
    start is the target itself (mean to 1e-6 sd, precision to 1e-6 relative)."""
    key_b, key_m = jax.random.split(jax.random.PRNGKey(p))
    b = np.asarray(group.to_dense(random_element(group, p, key_b)))
    precision, mean = b @ b.T, 3.0 * np.asarray(jax.random.normal(key_m, (p,)))
    state, q_precision = laplace_init(gaussian_model, {"loc": mean, "precision": precision}, group)

    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    assert np.max(np.abs(np.asarray(state.vi_state.loc) - mean) / sd) < 1e-6
    np.testing.assert_allclose(q_precision, precision, rtol=1e-6, atol=1e-6 * np.abs(precision).max())


def test_exact_on_conjugate_linear_regression():
    """A Gaussian posterior: the Dense warm start is the exact posterior."""
    data = linear_regression.data()
    state, q_precision = laplace_init(linear_regression.model, data, groups.Dense())
    exact_mean, exact_cov = linear_regression.exact_posterior(**data)
    np.testing.assert_allclose(state.vi_state.loc, exact_mean, rtol=1e-6, atol=1e-6 * np.abs(exact_mean).max())
    np.testing.assert_allclose(np.linalg.inv(q_precision), exact_cov, rtol=1e-6, atol=1e-6 * np.abs(exact_cov).max())


@pytest.fixture(scope="module")
def logistic_mode():
    """MAP of breast-cancer logistic regression by plain Newton iterations
    (exact Hessians by ``jax.hessian``; the log density is concave), and the
    Hessian there."""
    data = logistic_regression.data()
    fn = jax.jit(potential(logistic_regression.model, data))
    grad, hess = jax.jit(jax.grad(fn)), jax.jit(jax.hessian(fn))
    z = np.zeros(31)
    for _ in range(30):
        z = z - np.linalg.solve(hess(z), grad(z))
    assert np.linalg.norm(grad(z)) < 1e-9
    return data, z, np.asarray(hess(z))


def kl_to_laplace(precision, hessian):
    """``KL(N(m, precision^-1) || N(m, hessian^-1))``."""
    p = hessian.shape[0]
    cov = np.linalg.inv(precision)
    return 0.5 * (np.trace(hessian @ cov) - p + np.linalg.slogdet(precision)[1] - np.linalg.slogdet(hessian)[1])


def test_logistic_regression_dense_and_diagonal(logistic_mode):
    """Dense: the MAP (to 1e-5 sd) and the Hessian there (1e-6 relative).
    Diagonal: the same mean and the mean-field optimum ``diag(H)``."""
    data, mode, hess = logistic_mode
    sd = np.sqrt(np.diag(np.linalg.inv(hess)))
    for group, expected in ((groups.Dense(), hess), (groups.Diagonal(), np.diag(np.diag(hess)))):
        state, q_precision = laplace_init(logistic_regression.model, data, group)
        assert np.max(np.abs(np.asarray(state.vi_state.loc) - mode) / sd) < 1e-5
        np.testing.assert_allclose(q_precision, expected, rtol=1e-6, atol=1e-6 * np.abs(hess).max())


def test_structured_start_is_the_closest_member_of_the_group(logistic_mode):
    """BlockUpperTriangular(4) on logistic regression: the warm start's
    precision ``S`` minimises ``KL(N(m, S^-1) || N(m, H^-1))`` over the group:
    moving ``B`` to ``B (I + t E)`` along any basis direction ``E`` of the group's
    algebra (written out independently) does not lower it, and it lies between
    Dense's (0) and Diagonal's."""
    data, _, hess = logistic_mode
    group = groups.BlockUpperTriangular(4)
    state, q_precision = laplace_init(logistic_regression.model, data, group)
    b = np.asarray(group.to_dense(state.vi_state.factor))
    kl = kl_to_laplace(q_precision, hess)
    kl_diagonal = kl_to_laplace(np.diag(np.diag(hess)), hess)
    assert 0.0 < kl < kl_diagonal

    moved = []
    for e in algebra_basis(group, 31):
        for t in (-1e-4, 1e-4):
            bt = b @ (np.eye(31) + t * e)
            moved.append(kl_to_laplace(bt @ bt.T, hess))
    # A first-order change would be ~1e-4 |grad|; a stationary point leaves ~1e-8 t^2 terms.
    assert np.min(moved) - kl > -1e-9


def test_float32(logistic_mode):
    """In float32 the start is as good as float32 allows: mean to 1e-2 sd,
    precision to 1e-3 relative."""
    data, mode, hess = logistic_mode
    data32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), data)
    with jax.enable_x64(False):
        state, q_precision = laplace_init(logistic_regression.model, data32, groups.Dense())
        assert state.vi_state.loc.dtype == jnp.float32
    sd = np.sqrt(np.diag(np.linalg.inv(hess)))
    assert np.max(np.abs(np.asarray(state.vi_state.loc, np.float64) - mode) / sd) < 1e-2
    np.testing.assert_allclose(q_precision, hess, rtol=1e-3, atol=1e-3 * np.abs(hess).max())


def unbounded_model():
    """``l(x) = x - x^2 / 2``: no mode."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("push", x**2 - x)


def flat_direction_model():
    """``l(x) = (x_1 + x_2)^2 / 2``: a line of modes, singular Hessian."""
    x = numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    numpyro.factor("flatten", 0.5 * jnp.sum(x**2) - 0.5 * jnp.sum(x) ** 2)


@pytest.mark.parametrize("model", [unbounded_model, flat_direction_model], ids=["unbounded", "singular"])
def test_posteriors_without_a_laplace_approximation_are_named(model):
    _, ngvi = make_ngvi(model, groups.Dense(), warm_start="laplace")
    with pytest.raises(ValueError, match="not positive definite"):
        ngvi.init(jax.random.PRNGKey(0))


def test_unconverged_map_search_is_named():
    """A start whose end point is still 0.5 sd from a stationary point is refused."""
    one = jnp.ones(())
    start = LaplaceStart(jnp.zeros(2), jnp.eye(2), 1000 * one, 5 * one, 0.5 * one, 1e-8 * one)
    with pytest.raises(ValueError, match="did not converge in 1000 L-BFGS iterations"):
        check_laplace_start(start)


def test_bad_options():
    with pytest.raises(ValueError, match="warm_start must be None or 'laplace'"):
        make_ngvi(gaussian_model, groups.Dense(), warm_start="map")
    mixture = StructuredGaussianMixture(gaussian_model, num_components=2, init_loc_fn=init_to_median)
    with pytest.raises(ValueError, match="needs a StructuredGaussian guide"):
        NGVI(gaussian_model, mixture, warm_start="laplace")
