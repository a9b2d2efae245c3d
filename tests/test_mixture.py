"""``StructuredGaussianMixture`` with NGVI and with stock SVI (MATH.md sec. 6):
the one-component case against ``StructuredGaussian``, Gaussian and two-mode
targets, the 20-dimensional mixture of Student-t, the set-up errors, the
mixture density, ``Predictive`` and ArviZ output."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Predictive, Trace_ELBO, init_to_median
from scipy.special import logsumexp

from ngvi.models import eight_schools
from ngvi.models import mixture_t as mt
from ngvi import NGVI, MixtureELBO, StructuredGaussian, StructuredGaussianMixture, find_modes, groups, to_inference_data, vi

KEY = jax.random.PRNGKey(0)

# A 3-d Gaussian target (log Z = 0) and a 2-d target with modes of weights 0.3 / 0.7.
GAUSS_LOC = jnp.array([1.0, -2.0, 0.5])
GAUSS_PRECISION = jnp.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
MODE_WEIGHTS = jnp.array([0.3, 0.7])
MODE_LOCS = jnp.array([[-4.0, 1.0], [4.0, -1.0]])
MODE_COVS = jnp.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, -0.2], [-0.2, 1.5]]])


def gaussian_model():
    numpyro.sample("z", dist.MultivariateNormal(GAUSS_LOC, precision_matrix=GAUSS_PRECISION))


def two_mode_model():
    components = dist.MultivariateNormal(MODE_LOCS, covariance_matrix=MODE_COVS)
    numpyro.sample("z", dist.MixtureSameFamily(dist.Categorical(probs=MODE_WEIGHTS), components))


def fit(model, guide, num_steps, seed=0, **ngvi_kwargs):
    """``num_steps`` NGVI updates in one compiled scan; returns the NGVI object,
    the final state and the losses."""
    ngvi = NGVI(model, guide, **ngvi_kwargs)
    state = ngvi.init(jax.random.PRNGKey(seed))
    state, losses = jax.jit(lambda s: jax.lax.scan(lambda c, _: ngvi.update(c), s, None, length=num_steps))(state)
    return ngvi, state, np.asarray(losses)


def weights_of(guide, params):
    return np.asarray(jax.nn.softmax(guide.unpack_params(params)[2]))


def covariances(guide, params):
    locs, factors, _ = guide.unpack_params(params)
    dense = jax.vmap(guide.group.to_dense)(factors)
    return np.linalg.inv(np.asarray(dense @ jnp.swapaxes(dense, -1, -2)))


def two_mode_guide(**kwargs):
    """Starts between and beside the modes, not on them."""
    init_locs = jnp.array([[-1.0, -2.0], [1.5, 2.0]])
    return StructuredGaussianMixture(two_mode_model, num_components=2, init_locs=init_locs, init_scale=0.5, **kwargs)


def assert_modes_covered(guide, params):
    """Every mode has a component within 0.5 of its standard deviations in every coordinate."""
    locs = np.asarray(guide.unpack_params(params)[0])
    sd = np.sqrt(np.diagonal(np.asarray(MODE_COVS), axis1=-2, axis2=-1))
    worst = np.max(np.abs(locs[:, None] - np.asarray(MODE_LOCS)[None]) / sd[None], axis=-1)  # (component, mode)
    assert np.all(worst.min(0) < 0.5), worst


# --- K = 1 is the single-Gaussian step -----------------------------------------
def one_component_pair(group, step_size):
    data = eight_schools.data()
    kwargs = dict(group=group, init_loc_fn=init_to_median, init_scale=0.5)
    single_guide = StructuredGaussian(eight_schools.model, **kwargs)
    single = NGVI(eight_schools.model, single_guide, step_size, estimator="hessian")
    mixture = NGVI(
        eight_schools.model,
        StructuredGaussianMixture(eight_schools.model, num_components=1, init_locs="spread", init_spread=0.0, **kwargs),
        step_size,
        estimator="hessian",
    )
    return data, single, mixture


def assert_same_steps(data, single, mixture, num_steps=5):
    s1, s2 = single.init(KEY, **data), mixture.init(KEY, **data)
    step1, step2 = jax.jit(lambda s: single.update(s, **data)), jax.jit(lambda s: mixture.update(s, **data))
    for _ in range(num_steps):
        (s1, _), (s2, _) = step1(s1), step2(s2)
        np.testing.assert_allclose(s2.vi_state.loc[0], s1.vi_state.loc, rtol=0, atol=1e-10)
        for a, b in zip(jax.tree.leaves(s1.vi_state.factor), jax.tree.leaves(s2.vi_state.factor)):
            np.testing.assert_allclose(b[0], a, rtol=0, atol=1e-10)
    assert float(jnp.max(jnp.abs(s1.vi_state.loc - single.init(KEY, **data).vi_state.loc))) > 0.1  # the steps did move


@pytest.mark.parametrize("group", [groups.Dense(), groups.BlockUpperTriangular(2), groups.Diagonal()], ids=repr)
def test_one_component_takes_the_single_gaussian_step(group):
    """Exact while the factor line minimiser does not bind (``t* > step_size``)."""
    assert_same_steps(*one_component_pair(group, step_size=0.1))


def test_one_component_takes_the_single_gaussian_step_when_the_line_minimiser_binds():
    assert_same_steps(*one_component_pair(groups.Dense(), step_size=0.5))


# --- a Gaussian target: the components converge to it, loss -> -log Z = 0 -------
def test_gaussian_target_identical_components_converge_to_it():
    """Components that start together stay together and converge to the target."""
    guide = StructuredGaussianMixture(gaussian_model, num_components=3, init_locs="spread", init_spread=0.0, init_scale=0.5)
    ngvi, state, losses = fit(gaussian_model, guide, 100, estimator="hessian", step_size=0.5)
    cov = np.linalg.inv(np.asarray(GAUSS_PRECISION))
    np.testing.assert_allclose(np.asarray(state.vi_state.loc), np.broadcast_to(GAUSS_LOC, (3, 3)), atol=1e-6)
    np.testing.assert_allclose(covariances(guide, ngvi.get_params(state)), np.broadcast_to(cov, (3, 3, 3)), atol=1e-6)
    assert abs(np.mean(losses[-20:])) < 1e-6 < losses[0]


def test_gaussian_target_spread_components_and_the_loss():
    """From spread-out starts every component is pulled onto the target and the
    mixture matches it; the loss (negative ELBO) reaches -log Z = 0 within Monte-Carlo
    error. (Moving the components apart while shrinking them keeps the mixture's
    mean and covariance, so their last bit of spread is a nearly flat direction.)"""
    init_locs = GAUSS_LOC + 2.0 * jnp.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [-1.0, 1.0, 1.0]])
    guide = StructuredGaussianMixture(gaussian_model, num_components=3, init_locs=init_locs, init_scale=0.5)
    ngvi, state, losses = fit(gaussian_model, guide, 300, estimator="hessian", step_size=0.5)
    params = ngvi.get_params(state)
    cov = np.linalg.inv(np.asarray(GAUSS_PRECISION))
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(np.asarray(state.vi_state.loc) - np.asarray(GAUSS_LOC)) < sd)  # from 2 to < 1 sd
    z = guide.get_posterior(params).sample(KEY, (20_000,))
    np.testing.assert_allclose(np.mean(z, 0), GAUSS_LOC, atol=0.03)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), cov, atol=0.05)
    # An independent estimate of the negative ELBO from the draws, and NGVI's own losses.
    log_p = dist.MultivariateNormal(GAUSS_LOC, precision_matrix=GAUSS_PRECISION).log_prob(z)
    neg_elbo = np.asarray(guide.get_posterior(params).log_prob(z) - log_p)
    assert abs(neg_elbo.mean()) < 4 * neg_elbo.std() / np.sqrt(neg_elbo.size) + 1e-4
    assert abs(np.mean(losses[-50:])) < 1e-3 and losses[0] > 1.0


# --- two well-separated modes of weights 0.3 / 0.7 -----------------------------
def test_learned_weights_match_the_modes():
    guide = two_mode_guide(group=groups.Dense(), learn_weights=True)
    ngvi, state, _ = fit(two_mode_model, guide, 300, estimator="hessian", step_size=0.5)
    params = ngvi.get_params(state)
    assert_modes_covered(guide, params)
    order = np.argsort(np.asarray(state.vi_state.loc)[:, 0])  # component on the left mode first
    np.testing.assert_allclose(weights_of(guide, params)[order], MODE_WEIGHTS, atol=0.05)


def test_fixed_equal_weights_still_cover_both_modes():
    guide = two_mode_guide(group=groups.Dense())
    ngvi, state, _ = fit(two_mode_model, guide, 300, estimator="hessian", step_size=0.5)
    params = ngvi.get_params(state)
    assert_modes_covered(guide, params)
    np.testing.assert_allclose(weights_of(guide, params), [0.5, 0.5])


def test_stock_svi_with_mixture_elbo_learns_the_weights():
    guide = two_mode_guide(group=groups.Dense(), learn_weights=True)
    svi = SVI(two_mode_model, guide, optax.adam(0.05), MixtureELBO(num_particles=4))
    result = svi.run(KEY, 1500, progress_bar=False)
    assert_modes_covered(guide, result.params)
    order = np.argsort(np.asarray(guide.unpack_params(result.params)[0])[:, 0])
    np.testing.assert_allclose(weights_of(guide, result.params)[order], MODE_WEIGHTS, atol=0.1)


def test_trace_elbo_is_refused_for_learned_weights_with_a_pointer_to_mixture_elbo():
    svi = SVI(two_mode_model, two_mode_guide(learn_weights=True), optax.adam(0.01), Trace_ELBO())
    state = svi.init(KEY)
    with pytest.raises(ValueError, match=r"learn_weights=True.*biased gradients.*MixtureELBO"):
        svi.update(state)


def test_trace_elbo_gradient_with_fixed_weights_is_unbiased():
    """With fixed weights the component draw does not depend on the parameters,
    so differentiating through the draw (Trace_ELBO) is unbiased: its mean
    gradient over many keys equals the stratified MixtureELBO's within 5
    standard errors, for the means and the factors."""
    guide = two_mode_guide(group=groups.Dense())
    svi = SVI(two_mode_model, guide, optax.adam(0.01), Trace_ELBO())
    params = svi.get_params(svi.init(KEY))

    def gradients(elbo, num):
        grad = jax.grad(lambda p, k: elbo.loss(k, p, two_mode_model, guide))
        return jax.vmap(lambda k: grad(params, k))(jax.random.split(KEY, num))

    mean_and_se = lambda g: (np.mean(g, 0), np.std(g, 0) / np.sqrt(len(g)))
    trace = gradients(Trace_ELBO(), 20_000)
    stratified = gradients(MixtureELBO(num_particles=64), 500)
    for name in params:
        (a, se_a), (b, se_b) = mean_and_se(trace[name]), mean_and_se(stratified[name])
        assert np.all(np.abs(a - b) < 5 * np.hypot(se_a, se_b)), name
        assert np.max(np.abs(b) / np.hypot(se_a, se_b)) > 10, name  # the gradient is not zero


# --- multi-start mode finding ---------------------------------------------------
def test_find_modes_merges_the_starts_into_the_two_modes():
    starts = np.random.default_rng(1).uniform(-8.0, 8.0, (40, 2))
    modes = find_modes(two_mode_model, starts, num_steps=500, learning_rate=0.3)
    assert len(modes.locs) == 2 and modes.counts.sum() == 40 and np.all(modes.counts > 0)
    # best first: the heavier mode (0.7) has the lower potential; far apart, the modes are the component means
    np.testing.assert_allclose(np.asarray(modes.locs), np.asarray(MODE_LOCS)[::-1], atol=1e-3)
    assert float(modes.potential[0]) < float(modes.potential[1])


def test_multistart_fits_are_the_modes_and_their_masses():
    """Diagonal fits from 20 starts merge into the two modes, best (heavier)
    first; the fits' ELBO weights are ``pi_c exp(-KL_c)`` normalised, within
    0.005, with ``KL_c = -log(1 - rho_c^2) / 2`` the gap of a diagonal Gaussian
    to mode ``c`` of correlation ``rho_c`` (0.72 / 0.28 for masses 0.7 / 0.3);
    every start is counted once, and the cost is reported."""
    target = dist.MixtureSameFamily(
        dist.Categorical(probs=MODE_WEIGHTS), dist.MultivariateNormal(MODE_LOCS, covariance_matrix=MODE_COVS)
    )
    starts = jax.random.uniform(jax.random.PRNGKey(1), (20, 2), minval=-6.0, maxval=6.0)
    fits = vi.multistart(lambda z: -target.log_prob(z), starts, KEY)
    np.testing.assert_allclose(np.asarray(fits.locs), np.asarray(MODE_LOCS)[::-1], atol=0.1)
    covs = np.asarray(MODE_COVS)
    rho = covs[:, 0, 1] / np.sqrt(covs[:, 0, 0] * covs[:, 1, 1])
    expected = np.asarray(MODE_WEIGHTS) * np.sqrt(1.0 - rho**2)
    np.testing.assert_allclose(np.asarray(fits.weights), (expected / expected.sum())[::-1], atol=0.005)
    assert fits.counts.sum() == 20 and fits.num_grads > 0
    with pytest.raises(ValueError, match=r"starts must have shape \(n, p\)"):
        vi.multistart(lambda z: -target.log_prob(z), starts[0], KEY)


def test_find_modes_checks_the_shape_of_the_starts():
    with pytest.raises(ValueError, match=r"starts must have shape \(n, 2\)"):
        find_modes(two_mode_model, np.zeros((4, 3)))


# --- the 20-dimensional mixture of Student-t ----------------------------------
@pytest.mark.slow
def test_mixture_of_student_t_20d_components_are_found():
    """The benchmark's recipe at test size: modes found from 100 uniform starts,
    one component per mode, NGVI. (One of the 20-d modes draws about 1% of
    uniform starts, so 9 of 10 is what 100 starts guarantee across seeds.)"""
    dim = 20
    data = mt.data(dim=dim)
    means, precisions = mt.components(dim)
    scales = mt.marginal_scales(precisions)
    starts = np.random.default_rng([0, 2021]).uniform(-20.0, 20.0, (100, dim))  # not mt's default_rng(0)
    modes = find_modes(mt.model, starts, num_steps=1000, **data)
    guide = StructuredGaussianMixture(
        mt.model, num_components=len(modes.locs), group=groups.BlockUpperTriangular(5),
        init_locs=modes.locs, init_scale=0.1,
    )
    ngvi = NGVI(mt.model, guide, estimator="stein", num_samples=8, step_size=0.1)
    state = ngvi.init(KEY, **data)
    state, _ = jax.jit(lambda s: jax.lax.scan(lambda c, _: ngvi.update(c, **data), s, None, length=300))(state)
    worst = np.max(np.abs(np.asarray(state.vi_state.loc)[:, None] - means[None]) / scales[None], axis=-1)
    assert len(modes.locs) <= 10  # no mode counted twice
    assert np.sum(worst.min(0) < 3.0) >= 9, worst.min(0)
    assert int(state.num_rejected) == 0


# --- set-up errors ---------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_components=0), "num_components"),
        (dict(num_components=2.5), "num_components"),
        (dict(num_components=2, weights=[0.6, 0.6]), "simplex"),
        (dict(num_components=2, weights=[1.2, -0.2]), "simplex"),
        (dict(num_components=2, weights=[0.2, 0.3, 0.5]), "shape"),
    ],
)
def test_bad_components_or_weights(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredGaussianMixture(gaussian_model, **kwargs)


def test_bad_init_locs_shape():
    guide = StructuredGaussianMixture(gaussian_model, num_components=2, init_locs=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"init_locs must have shape \(2, 3\)"):
        NGVI(gaussian_model, guide).init(KEY)


def test_group_that_does_not_fit():
    guide = StructuredGaussianMixture(gaussian_model, num_components=2, group=groups.BlockUpperTriangular(5))
    with pytest.raises(ValueError, match="latent dimension is p=3"):
        NGVI(gaussian_model, guide).init(KEY)


# --- the mixture as a NumPyro distribution ---------------------------------------
@pytest.fixture(scope="module")
def fitted_two_modes():
    guide = two_mode_guide(group=groups.BlockUpperTriangular(1), learn_weights=True)
    ngvi, state, _ = fit(two_mode_model, guide, 100, estimator="hessian", step_size=0.5)
    return guide, ngvi.get_params(state)


def test_get_posterior_is_the_mixture_density(fitted_two_modes):
    guide, params = fitted_two_modes
    posterior = guide.get_posterior(params)
    assert isinstance(posterior, dist.MixtureSameFamily)
    z = jnp.asarray(np.random.default_rng(0).normal(0.0, 4.0, (50, 2)))
    locs = np.asarray(guide.unpack_params(params)[0])
    covs = covariances(guide, params)
    log_w = np.log(weights_of(guide, params))
    by_hand = logsumexp(
        [log_w[c] + dist.MultivariateNormal(locs[c], covs[c]).log_prob(z) for c in range(2)], axis=0
    )
    np.testing.assert_allclose(posterior.log_prob(z), by_hand, rtol=1e-10, atol=1e-10)


def test_predictive_draws_the_mixture(fitted_two_modes):
    guide, params = fitted_two_modes
    draws = Predictive(two_mode_model, guide=guide, params=params, num_samples=4000, return_sites=["z"])(KEY)["z"]
    assert draws.shape == (4000, 2)
    locs, weights = np.asarray(guide.unpack_params(params)[0]), weights_of(guide, params)
    np.testing.assert_allclose(np.mean(draws, 0), weights @ locs, atol=0.25)
    assert np.mean(draws[:, 0] > 0) == pytest.approx(weights[np.argmax(locs[:, 0])], abs=0.03)


def test_predictive_and_inference_data_on_a_model_with_data():
    data = eight_schools.data()
    guide = StructuredGaussianMixture(eight_schools.model, num_components=2, group=groups.Diagonal(), init_locs="spread", init_spread=0.5)
    ngvi = NGVI(eight_schools.model, guide, estimator="hessian", step_size=0.3)
    result = ngvi.run(KEY, 50, progress_bar=False, **data)
    predictive = Predictive(eight_schools.model, guide=guide, params=result.params, num_samples=300)(KEY, data["sigma"])
    assert predictive["obs"].shape == (300, 8) and predictive["theta"].shape == (300, 8)
    idata = to_inference_data(guide, result.params, num_samples=300, losses=result.losses, **data)
    assert idata.posterior["theta_tilde"].shape == (1, 300, 8)
    assert np.all(idata.posterior["tau"].values > 0)
    assert idata.posterior_predictive["obs"].shape == (1, 300, 8)
    assert np.all(np.isfinite(idata.sample_stats["log_importance_ratio"].values))
    assert idata.optimization_trace["loss"].shape == (50,)
