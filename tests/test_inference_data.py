"""ArviZ output (API.md, "ArviZ"): the groups of ``to_inference_data``, their values
against independent computations, ArviZ functions side by side with
``az.from_numpyro``, the netCDF round trip and the importance diagnostics."""

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density
from scipy import stats

from ngvi.models import eight_schools, linear_regression
from ngvi.models.reference import load_reference
from ngvi import StructuredGaussian, to_inference_data
from ngvi.inference_data import importance_diagnostics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DRAWS = 400


@pytest.fixture(scope="module")
def fit():
    """A dense guide of eight schools set to the NUTS reference's unconstrained mean
    and covariance, a loss trace, and their InferenceData."""
    data = eight_schools.data()
    guide = StructuredGaussian(eight_schools.model)
    handlers.seed(guide, 0)(**data)
    reference = load_reference("eight_schools")["unconstrained"]
    factor = np.linalg.cholesky(np.linalg.inv(reference["cov"]))
    params = {"auto_loc": jnp.asarray(reference["mean"]), "auto_factor_matrix": jnp.asarray(factor)}
    losses = jnp.linspace(60.0, 31.0, 25)
    idata = to_inference_data(guide, params, num_samples=DRAWS, rng_key=jax.random.PRNGKey(1), losses=losses, **data)
    return guide, data, params, losses, idata


@pytest.fixture(scope="module")
def idata_nuts():
    mcmc = MCMC(NUTS(eight_schools.model), num_warmup=200, num_samples=200, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(2), **eight_schools.data())
    return az.from_numpyro(mcmc)


def test_groups_and_shapes(fit):
    """The InferenceData has the promised groups; the posterior has one chain of
    ``DRAWS`` constrained draws of every latent and deterministic site."""
    _, data, _, losses, idata = fit
    assert isinstance(idata, az.InferenceData)
    groups = {"posterior", "posterior_predictive", "log_likelihood", "observed_data", "sample_stats", "optimization_trace"}
    assert groups <= set(idata.groups())
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "tau", "theta_tilde", "theta"}
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == DRAWS
    assert post["theta"].shape == (1, DRAWS, 8) and np.all(post["tau"] > 0)
    np.testing.assert_allclose(post["theta"], post["mu"] + post["tau"] * post["theta_tilde"], rtol=1e-10)
    assert idata.posterior_predictive["obs"].shape == (1, DRAWS, 8)
    assert idata.log_likelihood["obs"].shape == (1, DRAWS, 8)
    np.testing.assert_array_equal(idata.observed_data["obs"], data["y"])
    np.testing.assert_array_equal(idata.optimization_trace["loss"], losses)


def test_posterior_is_the_guide(fit):
    """Posterior draws have the guide's unconstrained mean (``tau`` through ``log``)."""
    guide, _, params, _, idata = fit
    q = guide.get_posterior(params)
    post = idata.posterior
    flat = np.column_stack([post["mu"][0], np.log(post["tau"][0]), post["theta_tilde"][0]])
    assert np.all(np.abs(flat.mean(0) - q.mean) < 5 * np.sqrt(q.variance / DRAWS))


def test_log_likelihood_and_predictive_values(fit):
    """``log_likelihood`` is ``Normal(theta, sigma).logpdf(y)`` per draw and school;
    ``posterior_predictive`` scatters around ``theta`` with sd ``sigma``."""
    _, data, _, _, idata = fit
    theta, sigma, y = idata.posterior["theta"].values, np.asarray(data["sigma"]), np.asarray(data["y"])
    np.testing.assert_allclose(idata.log_likelihood["obs"], stats.norm(theta, sigma).logpdf(y), rtol=1e-10)
    residual = (idata.posterior_predictive["obs"].values - theta)[0]
    np.testing.assert_allclose(residual.std(0) / sigma, 1.0, atol=0.15)


def test_importance_ratio_and_pareto_k(fit):
    """``sample_stats.log_importance_ratio`` is ``log p(y, z) - log q(z)`` in the
    unconstrained space (Jacobian of ``tau = exp(z_1)`` included) and
    ``attrs['pareto_k']`` is PSIS's ``k`` of those ratios."""
    guide, data, params, _, idata = fit
    log_ratio = idata.sample_stats["log_importance_ratio"].values
    assert log_ratio.shape == (1, DRAWS) and np.all(np.isfinite(log_ratio))
    q = guide.get_posterior(params)
    post = idata.posterior
    for i in range(5):
        draw = {name: jnp.asarray(post[name].values[0, i]) for name in ("mu", "tau", "theta_tilde")}
        log_joint = log_density(eight_schools.model, (), data, draw)[0] + jnp.log(draw["tau"])
        z = jnp.concatenate([draw["mu"][None], jnp.log(draw["tau"])[None], draw["theta_tilde"]])
        np.testing.assert_allclose(log_ratio[0, i], log_joint - q.log_prob(z), rtol=1e-8)
    _, k = az.psislw(log_ratio[0] - log_ratio.max())
    assert isinstance(idata.attrs["pareto_k"], float)
    np.testing.assert_allclose(idata.attrs["pareto_k"], float(k), rtol=1e-10)


@pytest.mark.parametrize("scale, k_range", [(1.6, (-np.inf, 0.5)), (0.35, (0.7, np.inf))], ids=["wide", "narrow"])
def test_importance_diagnostics_on_conjugate_posterior(scale, k_range):
    """On the conjugate linear regression the log ratios of the exact posterior equal
    the log evidence; a guide wider than the posterior has a small Pareto ``k``, a
    narrower one ``k > 0.7``."""
    data = linear_regression.data()
    guide = StructuredGaussian(linear_regression.model)
    handlers.seed(guide, 0)(**data)
    mean, cov = linear_regression.exact_posterior(**data)
    log_evidence = linear_regression.log_evidence(**data)
    for s in (1.0, scale):
        b = np.linalg.cholesky(np.linalg.inv(cov * s**2))
        params = {"auto_loc": jnp.asarray(mean), "auto_factor_matrix": jnp.asarray(b)}
        latent = guide.get_posterior(params).sample(jax.random.PRNGKey(3), (2000,))
        log_ratio, k = importance_diagnostics(guide, params, jax.random.PRNGKey(4), latent, **data)
        if s == 1.0:
            np.testing.assert_allclose(log_ratio, log_evidence, rtol=1e-10)
    assert k_range[0] < k < k_range[1]


def test_arviz_side_by_side_with_nuts(fit, idata_nuts):
    """``az.summary``, ``az.loo``, ``az.compare`` and ``az.plot_forest`` accept the NGVI
    InferenceData next to ``az.from_numpyro``, and the two posteriors agree on ``mu``."""
    idata = fit[-1]
    summary, summary_nuts = az.summary(idata), az.summary(idata_nuts)
    assert {"mu", "tau", "theta[0]", "theta_tilde[7]"} <= set(summary.index)
    assert set(summary.index) == set(summary_nuts.index)
    assert abs(summary.loc["mu", "mean"] - summary_nuts.loc["mu", "mean"]) < 0.5 * summary_nuts.loc["mu", "sd"]
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_samples == DRAWS
    comparison = az.compare({"ngvi": idata, "nuts": idata_nuts})
    assert set(comparison.index) == {"ngvi", "nuts"} and np.all(np.isfinite(comparison["elpd_loo"]))
    ax = np.ravel(az.plot_forest([idata, idata_nuts], model_names=["ngvi", "nuts"], var_names=["mu", "tau"]))[0]
    assert {t.get_text() for t in ax.get_yticklabels()} == {"mu", "tau"}
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"ngvi", "nuts"}
    plt.close("all")


def test_netcdf_round_trip(fit, tmp_path):
    """``to_netcdf`` then ``az.from_netcdf`` gives back every group, value and attribute."""
    idata = fit[-1]
    path = tmp_path / "ngvi.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    assert set(loaded.groups()) == set(idata.groups())
    for group in idata.groups():
        original, back = idata[group], loaded[group]
        assert set(back.data_vars) == set(original.data_vars)
        for name in original.data_vars:
            np.testing.assert_array_equal(back[name].values, original[name].values)
    assert loaded.attrs["pareto_k"] == idata.attrs["pareto_k"]
