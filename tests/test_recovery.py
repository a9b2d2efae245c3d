"""Targets whose best Gaussian is known in closed form are recovered exactly.

For a Gaussian target ``l(z) = (z - m)^T Lambda (z - m) / 2 + c`` the Hessian
estimator is exact: antithetic pairs cancel the noise in ``E_q[grad l]`` (linear
in ``z``) and ``E_q[hess l] = Lambda`` for every sample. So a constant-step run
converges to the KL-optimal member of the family up to round-off, and the
tolerances below (1e-3 to 1e-4) are far above float64 error yet far below any
real fault.
"""

import jax
import numpy as np
import pytest

from fitting import fit, gaussian_model, log_weights, run
from group_cases import closed_pattern, random_element
from ngvi.models import linear_regression, logistic_regression
from ngvi import groups


def test_conjugate_linear_regression_is_exact():
    """Dense NGVI on conjugate linear regression reaches the exact posterior and
    its ELBO equals the exact log evidence."""
    data = linear_regression.data()
    ngvi, result, posterior, cov = run(linear_regression.model, data, groups.Dense(), 200)
    exact_mean, exact_cov = linear_regression.exact_posterior(**data)
    log_z = linear_regression.log_evidence(**data)

    np.testing.assert_allclose(posterior.loc, exact_mean, rtol=1e-4, atol=1e-4 * np.abs(exact_mean).max())
    np.testing.assert_allclose(cov, exact_cov, rtol=1e-4, atol=1e-4 * np.abs(exact_cov).max())

    # At the exact posterior log p(x, z) - log q(z) = log Z for every z.
    eps = np.random.default_rng(0).standard_normal((1000, exact_mean.size))
    np.testing.assert_allclose(log_weights(linear_regression.model, data, posterior.loc, cov, eps), log_z, atol=1e-6)

    # The library's estimate is mean_n [l(z_n) + log q(z_n)]: at the exact posterior
    # l + log q = -log Z at every draw, so the estimate is exact, step after step.
    assert abs(-float(ngvi.evaluate(result.state, **data)) - log_z) < 1e-5
    np.testing.assert_allclose(-np.asarray(result.losses[-100:]), log_z, atol=1e-5)


# Every group on a Gaussian target whose precision factor lies in the group.
GROUPS = [
    (groups.Dense(), 5),
    (groups.Diagonal(), 5),
    (groups.LowerTriangular(), 5),
    (groups.UpperTriangular(), 5),
    (groups.BlockUpperTriangular(2), 5),
    (groups.BlockLowerTriangular(2), 5),
    (groups.Hierarchical(1, 1), 5),
    (groups.TriangularToeplitz(), 5),
    (groups.Kronecker(groups.Dense(), groups.Diagonal(), shape=(2, 3)), 6),
    (groups.SparseCholesky(closed_pattern(6, [(2, 0), (3, 2), (4, 1), (5, 4), (5, 3)])), 6),
]


@pytest.mark.parametrize("group, p", GROUPS, ids=[f"{g!r}-p{p}" for g, p in GROUPS])
def test_gaussian_in_family_is_recovered(group, p):
    """Target N(m, (B* B*^T)^-1), B* a random element of the group: NGVI with
    that group recovers m and the covariance (errors in units of the target's
    sds: mean error / sd_i and covariance error / (sd_i sd_j), both < 1e-3),
    and the ELBO is log Z = 0."""
    key_b, key_m = jax.random.split(jax.random.PRNGKey(p))
    b = np.asarray(group.to_dense(random_element(group, p, key_b)))
    precision = b @ b.T
    cov, mean = np.linalg.inv(precision), 3.0 * np.asarray(jax.random.normal(key_m, (p,)))
    data = {"loc": mean, "precision": precision}
    _, _, posterior, q_cov = run(gaussian_model, data, group, 200)

    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(posterior.loc - mean) / sd) < 1e-3
    assert np.max(np.abs(q_cov - cov) / np.outer(sd, sd)) < 1e-3
    assert np.max(np.abs(np.sqrt(posterior.variance) / sd - 1)) < 1e-3
    eps = np.random.default_rng(0).standard_normal((100, p))
    np.testing.assert_allclose(log_weights(gaussian_model, data, posterior.loc, q_cov, eps), 0.0, atol=1e-6)


def test_diagonal_on_correlated_gaussian_is_kl_optimal():
    """Mean-field on N(m, Lambda^-1) with correlations up to 0.92: the KL(q||p)
    optimum has mean m and precision diag(Lambda) exactly (the mean converges
    linearly, the precision at once)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 6))
    precision, mean = a @ a.T + 0.1 * np.eye(6), 3.0 * rng.standard_normal(6)
    _, _, posterior, _ = run(gaussian_model, {"loc": mean, "precision": precision}, groups.Diagonal(), 1000)

    q_sd = np.sqrt(posterior.variance)
    assert np.max(np.abs(posterior.loc - mean) / q_sd) < 1e-4
    np.testing.assert_allclose(1.0 / q_sd**2, np.diag(precision), rtol=1e-4)


def _batch_means_z(a, b, num_batches=10):
    """z-scores of ``mean(a) - mean(b)`` per coordinate; the standard error
    comes from batch means (the iterates are autocorrelated), pooled over the
    two windows."""
    batches = [x.reshape(num_batches, -1, x.shape[-1]).mean(1) for x in (a, b)]
    var = 0.5 * (batches[0].var(0, ddof=1) + batches[1].var(0, ddof=1))
    return (a.mean(0) - b.mean(0)) / np.sqrt(2 * var / num_batches)


@pytest.mark.slow
def test_optimum_is_a_fixed_point():
    """Logistic regression, Dense, constant step 0.5: converged after 100 steps,
    the next 200 iterates fluctuate around a fixed point: the window means of
    steps 100-200 and 200-300 agree within 5 standard errors in every
    coordinate (the iterates' autocorrelation is ~0.5 at lag 1 and ~0.05 at
    lag 5, so batch means over batches of 10 give honest standard errors)."""
    f = fit(logistic_regression.model, logistic_regression.data(), groups.Dense(), 300, window=200)
    z = _batch_means_z(f.locs[:100], f.locs[100:])
    drift = np.abs(f.locs[:100].mean(0) - f.locs[100:].mean(0)) / f.sd
    print(f"max |z| {np.abs(z).max():.2f}, max drift {drift.max():.3f} sd")
    assert np.abs(z).max() < 5.0
