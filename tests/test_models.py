"""Tests for the model zoo in ``models/`` and its NUTS reference posteriors."""

import importlib

import numpy as np
import pytest
from numpyro import handlers
from scipy import stats

from ngvi.models import linear_regression
from ngvi.models.reference import load_reference

LATENT_DIMS = {"eight_schools": 10, "logistic_regression": 31, "linear_regression": 5}


def get_trace(model, **kwargs):
    return handlers.trace(handlers.seed(model, 0)).get_trace(**kwargs)


@pytest.mark.parametrize("name", sorted(LATENT_DIMS))
def test_model_trace(name):
    module = importlib.import_module(f"ngvi.models.{name}")
    kwargs = module.data()
    tr = get_trace(module.model, **kwargs)

    observed = [k for k, s in tr.items() if s["type"] == "sample" and s["is_observed"]]
    assert observed == ["obs"]
    np.testing.assert_array_equal(tr["obs"]["value"], kwargs["y"])

    latent = [s for s in tr.values() if s["type"] == "sample" and not s["is_observed"]]
    assert sum(np.size(s["value"]) for s in latent) == LATENT_DIMS[name]


@pytest.mark.parametrize("name", sorted(LATENT_DIMS))
def test_reference_layout_and_diagnostics(name):
    module = importlib.import_module(f"ngvi.models.{name}")
    ref = load_reference(name)
    unconstrained = ref["unconstrained"]
    dim = LATENT_DIMS[name]

    # AutoContinuous flattens the latent sites in model-trace order.
    tr = get_trace(module.model, **module.data())
    latent = [
        k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    assert [s["name"] for s in unconstrained["sites"]] == latent
    assert [s["size"] for s in unconstrained["sites"]] == [
        np.size(tr[k]["value"]) for k in latent
    ]
    assert unconstrained["dim"] == dim
    assert np.shape(unconstrained["mean"]) == (dim,)
    cov = np.asarray(unconstrained["cov"])
    assert cov.shape == (dim, dim)
    np.testing.assert_allclose(cov, cov.T)
    assert np.all(np.linalg.eigvalsh(cov) > 0)

    assert ref["diagnostics"]["num_divergences"] == 0
    assert ref["diagnostics"]["r_hat_max"] < 1.01
    assert ref["diagnostics"]["ess_min"] > 1000


def test_eight_schools_deterministic_theta():
    from ngvi.models import eight_schools

    tr = get_trace(eight_schools.model, **eight_schools.data())
    assert tr["theta"]["type"] == "deterministic"
    expected = tr["mu"]["value"] + tr["tau"]["value"] * tr["theta_tilde"]["value"]
    np.testing.assert_allclose(tr["theta"]["value"], expected, rtol=1e-6)

    ref = load_reference("eight_schools")
    log_tau = np.asarray(ref["unconstrained"]["mean"])[1]
    assert ref["unconstrained"]["sites"][1]["name"] == "tau"
    assert log_tau < np.log(ref["constrained"]["tau"]["mean"])  # Jensen


def test_logistic_regression_subsampling():
    from ngvi.models import logistic_regression

    kwargs = logistic_regression.data()
    assert kwargs["x"].shape == (569, 30)
    np.testing.assert_allclose(np.mean(kwargs["x"], 0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.std(kwargs["x"], 0), 1.0, atol=1e-4)

    tr = get_trace(logistic_regression.model, subsample_size=32, **kwargs)
    idx = np.asarray(tr["data"]["value"])
    assert idx.shape == (32,)
    np.testing.assert_array_equal(tr["obs"]["value"], np.asarray(kwargs["y"])[idx])


def test_linear_regression_exact_posterior_matches_nuts():
    kwargs = linear_regression.data()
    mean, cov = linear_regression.exact_posterior(kwargs["x"], kwargs["y"])
    ref = load_reference("linear_regression")

    ref_mean = np.asarray(ref["unconstrained"]["mean"])
    ref_sd = np.sqrt(np.diag(ref["unconstrained"]["cov"]))
    np.testing.assert_allclose(ref_mean, mean, atol=0.05)
    np.testing.assert_allclose(ref_sd, np.sqrt(np.diag(cov)), rtol=0.05)
    np.testing.assert_allclose(ref["constrained"]["w"]["mean"], ref_mean)


def test_linear_regression_log_evidence():
    """log p(y) = log p(y|w) + log p(w) - log p(w|y) at any w."""
    kwargs = linear_regression.data()
    x = np.asarray(kwargs["x"], dtype=np.float64)
    y = np.asarray(kwargs["y"], dtype=np.float64)
    mean, cov = linear_regression.exact_posterior(x, y)
    expected = linear_regression.log_evidence(x, y)

    rng = np.random.default_rng(0)
    for w in [mean, np.zeros(5), rng.standard_normal(5)]:
        log_lik = stats.norm.logpdf(y, x @ w, linear_regression.NOISE_SD).sum()
        log_prior = stats.norm.logpdf(w).sum()
        log_post = stats.multivariate_normal.logpdf(w, mean, cov)
        assert log_lik + log_prior - log_post == pytest.approx(expected, abs=1e-6)
