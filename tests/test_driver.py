"""The ``NGVI`` driver (API.md, "Driver"): ``run`` against step-by-step use, the
progress-bar path, schedules, the four estimators, error reporting, rejection
of non-finite steps, data subsampling and float32/float64."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
import scipy.stats
from numpyro.infer import init_to_value

from ngvi.models import eight_schools, linear_regression, logistic_regression
from ngvi import NGVI, StructuredGaussian, estimators, gaussian, groups
from ngvi.curvature import DenseCurvature
from ngvi.target import Target

KEY = jax.random.PRNGKey(0)
STEPS, FROZEN = 40, 5


@pytest.fixture(scope="module")
def es():
    """A dense fit of eight schools, ``STEPS`` steps without a progress bar; the step
    size is an optax schedule that drops to zero for the last ``FROZEN`` steps."""
    data = eight_schools.data()
    schedule = optax.schedules.piecewise_constant_schedule(0.5, {STEPS - FROZEN: 0.0})
    ngvi = NGVI(eight_schools.model, StructuredGaussian(eight_schools.model), step_size=schedule)
    return ngvi, data, ngvi.run(KEY, STEPS, progress_bar=False, **data)


@pytest.fixture(scope="module")
def logistic():
    """A dense Hessian fit of the full-data logistic regression."""
    data = logistic_regression.data()
    guide = StructuredGaussian(logistic_regression.model)
    result = NGVI(logistic_regression.model, guide).run(KEY, 30, progress_bar=False, **data)
    return guide, data, result


def assert_same_tree(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


def test_run_returns_params_state_losses(es):
    """``run`` returns ``(params, state, losses, info, converged, stop_reason)``:
    the guide's params, ``STEPS`` finite losses that fall from the initial point
    to the optimum, no rejected steps, the algorithm's per-step diagnostics
    (``info.loss`` is ``losses``), and with ``num_steps`` given no verdict on
    convergence."""
    ngvi, _, result = es
    params, state, losses, info, converged, stop_reason = result
    assert (converged, stop_reason) == (None, "num_steps")
    assert set(params) == {"auto_loc", "auto_factor_matrix"}
    assert params["auto_loc"].shape == (10,) and params["auto_factor_matrix"].shape == (10, 10)
    assert losses.shape == (STEPS,) and np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:3]) - 10.0
    assert int(state.vi_state.step) == STEPS and int(state.num_rejected) == 0
    assert_same_tree(ngvi.get_params(state), params, rtol=0)
    np.testing.assert_array_equal(info.loss, losses)
    assert info.num_grads.shape == (STEPS,) and np.all(info.num_grads == 8 + 2 * 8 * 10)  # n + 2 n p (Dense)
    assert not np.any(info.rejected) and np.all(np.isfinite(info.factor_norm))


def test_step_by_step_matches_run(es):
    """``init`` then ``STEPS`` calls of ``update`` from the same key reproduce ``run``
    (losses, mean and factor); the schedule is read at every step (zero step size:
    the state stays put while ``step`` counts on); ``get_params`` and ``evaluate``
    read the state."""
    ngvi, data, result = es
    state = ngvi.init(KEY, **data)
    update = jax.jit(lambda s: ngvi.update(s, **data))
    losses, locs = [], []
    for _ in range(STEPS):
        state, loss = update(state)
        losses.append(loss)
        locs.append(state.vi_state.loc)
    np.testing.assert_allclose(np.array(losses), result.losses, rtol=1e-8)
    assert_same_tree(ngvi.get_params(state), result.params, rtol=1e-8, atol=1e-10)
    assert_same_tree(state, result.state, rtol=1e-8, atol=1e-10)
    assert np.all(np.asarray(locs[-FROZEN:]) == np.asarray(locs[-FROZEN - 1]))
    assert np.all(np.abs(locs[-FROZEN - 1] - locs[-FROZEN - 2]) > 0)
    neg_elbo = ngvi.evaluate(state, **data)
    assert np.isfinite(neg_elbo) and abs(neg_elbo - np.mean(result.losses[-10:])) < 5.0


def test_progress_bar_run_matches(es, capsys):
    """``run(progress_bar=True)`` scans in chunks with a bar and gives the same result."""
    ngvi, data, result = es
    with_bar = ngvi.run(KEY, STEPS, progress_bar=True, **data)
    np.testing.assert_allclose(with_bar.losses, result.losses, rtol=1e-10)
    assert_same_tree(with_bar.params, result.params, rtol=1e-10, atol=1e-12)
    assert f"{STEPS}/{STEPS}" in capsys.readouterr().err


@pytest.mark.parametrize("x64, dtype", [(False, jnp.float32), (True, jnp.float64)], ids=["float32", "float64"])
def test_dtypes_with_schedule(x64, dtype):
    """With x64 off the fit runs in float32 (params, losses, state), with it on in
    float64; both reach the exact conjugate posterior, with an optax schedule."""
    with jax.enable_x64(x64):
        data = linear_regression.data()
        guide = StructuredGaussian(linear_regression.model)
        schedule = optax.schedules.exponential_decay(0.5, transition_steps=10, decay_rate=0.5)
        result = NGVI(linear_regression.model, guide, step_size=schedule).run(KEY, 25, progress_bar=False, **data)
        for leaf in jax.tree.leaves((result.params, result.losses, result.state.vi_state.loc, result.state.vi_state.factor)):
            assert leaf.dtype == dtype
        posterior = guide.get_posterior(result.params)
        mean, var = np.asarray(posterior.mean), np.asarray(posterior.variance)
    exact_mean, exact_cov = linear_regression.exact_posterior(**linear_regression.data())
    exact_sd = np.sqrt(np.diag(exact_cov))
    assert np.all(np.isfinite(result.losses))
    np.testing.assert_allclose((mean - exact_mean) / exact_sd, 0.0, atol=0.2)
    np.testing.assert_allclose(np.sqrt(var) / exact_sd, 1.0, atol=0.2)


@pytest.mark.parametrize("estimator", ["hessian", "stein", "gauss_newton", "zeroth_order"])
def test_estimators_on_logistic_regression(estimator, logistic):
    """Every estimator runs a few steps on the 31-dimensional logistic regression
    (Gauss-Newton through the per-example likelihood of ``obs``) with finite
    parameters and a falling loss. Values alone ("zeroth_order") need a smaller
    step (MATH.md sec. 5): at the default 0.5 its loss rose over 10 steps at 2
    of 8 seeds; at 0.1 the mean of the last 5 of 20 losses was 0.04-0.23 of the
    first at all 8."""
    guide, data, result = logistic
    if estimator != "hessian":
        guide = StructuredGaussian(logistic_regression.model)
        settings = {"step_size": 0.1} if estimator == "zeroth_order" else {}
        optimiser = NGVI(logistic_regression.model, guide, estimator=estimator, **settings)
        result = optimiser.run(KEY, 20 if settings else 10, progress_bar=False, **data)
    assert all(np.all(np.isfinite(v)) for v in result.params.values())
    losses = result.losses
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.5 * losses[0]


@pytest.mark.parametrize("group", [groups.Dense(), groups.BlockUpperTriangular(2)], ids=["dense", "block_upper"])
@pytest.mark.parametrize("curvature_samples", [None, 2, 3])
def test_hessian_curvature_from_the_first_draws(group, curvature_samples):
    """"hessian" with ``curvature_samples=m``: ``g_mu`` is the mean gradient over
    all draws, ``H`` the mean Hessian over the first ``m`` (antithetic pairs
    adjacent); a full-matrix group gets ``H`` as a matrix, other groups as products."""
    potential = lambda z: jnp.sum(jnp.cosh(z)) + 0.5 * z[0] * z[1] ** 2
    key, p, n = jax.random.PRNGKey(3), 5, 6
    loc = jnp.linspace(-0.5, 0.5, p)
    factor = group.init(p, 0.7)
    estimate = estimators.hessian(key, Target(potential), group, loc, factor, n, 1.0, curvature_samples=curvature_samples)
    _, z = estimators.gaussian_samples(jax.random.split(key)[0], group, loc, factor, n)
    np.testing.assert_allclose(z[0::2] + z[1::2] - 2 * loc, 0.0, atol=1e-6)
    np.testing.assert_allclose(estimate.grad_loc, jnp.mean(jax.vmap(jax.grad(potential))(z), axis=0), rtol=1e-5, atol=1e-12)
    hessian = jnp.mean(jax.vmap(jax.hessian(potential))(z[: curvature_samples or n]), axis=0)
    assert isinstance(estimate.curvature, DenseCurvature) == isinstance(group, groups.Dense)
    np.testing.assert_allclose(estimate.curvature.matmat(jnp.eye(p)), hessian, rtol=1e-5, atol=1e-12)
    for bad in (0, n + 1, 1.5):
        with pytest.raises(ValueError, match="curvature_samples"):
            estimators.hessian(key, Target(potential), group, loc, factor, n, 1.0, curvature_samples=bad)


def test_orthogonal_normals_are_standard_normal():
    """Orthogonal Monte Carlo draws: orthonormal directions within a block of
    ``min(num, dim)`` draws, and every draw exactly N(0, I) (moments over 4000
    keys, and a Kolmogorov-Smirnov test of one coordinate)."""
    num, dim = 5, 3
    draws = jax.vmap(lambda k: gaussian.orthogonal_normals(k, num, dim, jnp.float32))(
        jax.random.split(jax.random.PRNGKey(0), 4000)
    )
    directions = draws / jnp.linalg.norm(draws, axis=-1, keepdims=True)
    for block in (directions[:, :3], directions[:, 3:]):
        gram = jnp.einsum("nip,njp->nij", block, block)
        np.testing.assert_allclose(gram, jnp.broadcast_to(jnp.eye(block.shape[1]), gram.shape), atol=1e-5)
    flat = draws.reshape(-1, num * dim)
    np.testing.assert_allclose(jnp.mean(flat, axis=0), 0.0, atol=0.07)  # 4.4 standard errors
    np.testing.assert_allclose(jnp.cov(flat.T), jnp.eye(num * dim), atol=0.1)  # draws uncorrelated, too
    assert scipy.stats.kstest(np.asarray(draws[:, 4, 1]), "norm").pvalue > 1e-3


def test_orthogonal_draws_halve_the_stein_curvature_noise(monkeypatch):
    """On a quadratic target "stein" with ``2p`` draws (``p`` orthogonal antithetic
    pairs) is unbiased and about half as far from ``H`` as with independent
    pairs (measured 0.54 against 1.00 relative Frobenius error)."""
    p, reps = 6, 400
    rng = np.random.default_rng(0)
    a = rng.normal(size=(p, p))
    h, m = jnp.asarray(a @ a.T / p + np.eye(p), jnp.float32), jnp.asarray(rng.normal(size=p), jnp.float32)
    target = Target(lambda z: 0.5 * (z - m) @ h @ (z - m))
    group, loc = groups.Dense(), jnp.zeros(p)
    factor = group.init(p, 0.8)
    keys = jax.random.split(jax.random.PRNGKey(1), reps)
    curvatures = jax.vmap(
        lambda key: estimators.stein(key, target, group, loc, factor, 2 * p, 1.0).curvature.matmat(jnp.eye(p))
    )
    ortho = curvatures(keys)
    monkeypatch.setattr(gaussian, "orthogonal_normals", lambda key, num, dim, dtype: jax.random.normal(key, (num, dim), dtype))
    iid = curvatures(keys)
    relative = lambda e: jnp.linalg.norm(e - h, axis=(-2, -1)) / jnp.linalg.norm(h)
    assert relative(jnp.mean(ortho, axis=0)) < 0.1  # unbiased: ~4 standard errors
    assert jnp.mean(relative(ortho)) < 0.7 * jnp.mean(relative(iid))


def test_bad_driver_arguments():
    """An unknown estimator, a non-positive number of samples or an option the
    estimator does not take raises ValueError."""
    guide = StructuredGaussian(eight_schools.model)
    with pytest.raises(ValueError, match="newton"):
        NGVI(eight_schools.model, guide, estimator="newton")
    with pytest.raises(ValueError, match="num_samples"):
        NGVI(eight_schools.model, guide, num_samples=0)
    with pytest.raises(ValueError, match="'stein' does not take.*probes"):
        NGVI(eight_schools.model, guide, estimator="stein", probes=4)


def unobserved_model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


def test_gauss_newton_without_observed_sites():
    """Gauss-Newton on a model without observed sites raises ValueError saying so."""
    ngvi = NGVI(unobserved_model, StructuredGaussian(unobserved_model), estimator="gauss_newton")
    with pytest.raises(ValueError, match="observed"):
        ngvi.run(KEY, 2, progress_bar=False)


def negative_exponential_obs():
    numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Exponential(1.0), obs=-1.0)


def log_of_negative_data(data):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(x, 1.0), obs=jnp.log(data))


@pytest.mark.parametrize(
    "model, args",
    [(negative_exponential_obs, ()), (log_of_negative_data, (jnp.array([2.0, -1.0]),))],
    ids=["exponential", "log"],
)
def test_nonfinite_initial_point_names_the_site(model, args):
    """A log density that is not finite at the initial point raises ValueError naming the site."""
    with pytest.raises(ValueError, match="'y'"):
        NGVI(model, StructuredGaussian(model)).init(KEY, *args)


def walled_model():
    """A likelihood pulling ``x`` towards 3 (posterior sd 0.3) and a log density that
    is NaN beyond ``|x| = 3``: many Monte-Carlo samples land past the wall."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("wall", jnp.where(jnp.abs(x) < 3.0, 0.0, jnp.nan))
    numpyro.sample("obs", dist.Normal(x, 0.3), obs=3.0)


def test_draws_past_a_nan_wall_are_left_out():
    """Samples that hit a NaN log density are left out of the step's averages in
    whole antithetic pairs (``info.num_dropped``, even), so the steps stay
    finite and still move the fit; nothing returned is NaN."""
    guide = StructuredGaussian(walled_model, init_loc_fn=init_to_value(values={"x": 0.0}))
    result = NGVI(walled_model, guide, step_size=5.0).run(KEY, 40, progress_bar=False)
    assert all(np.all(np.isfinite(v)) for v in result.params.values())
    dropped = np.asarray(result.info.num_dropped)
    assert dropped.sum() > 0 and np.all(dropped % 2 == 0)
    assert int(result.state.num_rejected) == int(np.sum(result.info.rejected)) < 40
    assert np.all(np.isfinite(result.losses))
    assert 1.5 < float(result.params["auto_loc"][0]) < 3.0


def test_subsampled_fit_matches_full_data(logistic):
    """``numpyro.plate(subsample_size=64)`` (one subsample of 64 of 569 rows per
    step) at the defaults: a first step of ``0.5 * 64 / 569`` (``info.step_size``),
    no step rejected though every step sees another subsample, and
    ``run(key, None)`` (2,000 steps) lands on the full-data fit: median mean
    difference under 0.1 posterior sd, none over 0.4 sd, and sds within 5%
    (measured: 0.034, 0.23, 2%)."""
    guide, data, full = logistic
    sub_guide = StructuredGaussian(logistic_regression.model)
    sub = NGVI(logistic_regression.model, sub_guide, max_steps=2000).run(
        jax.random.PRNGKey(1), None, progress_bar=False, subsample_size=64, **data
    )
    assert sub_guide.subsample_fraction == 64 / 569
    np.testing.assert_allclose(float(sub.info.step_size[0]), 0.5 * 64 / 569, rtol=1e-6)
    assert int(sub.state.num_rejected) == 0
    full_q, sub_q = guide.get_posterior(full.params), sub_guide.get_posterior(sub.params)
    z = np.abs(sub_q.mean - full_q.mean) / np.sqrt(full_q.variance)
    assert np.all(np.isfinite(sub.losses)) and np.median(z) < 0.1 and np.max(z) < 0.4
    np.testing.assert_allclose(np.sqrt(sub_q.variance / full_q.variance), 1.0, atol=0.05)


def test_an_init_state_of_another_float_type_is_refused():
    """A float32 ``init_state`` given to a float64 run (``jax_enable_x64`` on, as
    in these tests) is a ValueError naming the array and both types (it used to
    fail deep inside a compiled loop); the same state converted runs."""
    data = logistic_regression.data()
    fit = NGVI(logistic_regression.model, StructuredGaussian(logistic_regression.model, group=groups.Diagonal()))
    state = fit.init(KEY, **data)
    to32 = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    with pytest.raises(ValueError, match=r"init_state\.vi_state\.loc is float32, but this run computes in float64"):
        fit.run(KEY, 2, progress_bar=False, init_state=to32, **data)
    back = jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, to32)
    assert np.all(np.isfinite(fit.run(KEY, 2, progress_bar=False, init_state=back, **data).losses))


def test_a_subsample_larger_than_its_plate_is_refused():
    """``subsample_size`` above the plate's size (NumPyro would only warn and use
    the whole plate) raises ValueError naming the plate and both sizes."""
    data = logistic_regression.data()
    guide = StructuredGaussian(logistic_regression.model)
    with pytest.raises(ValueError, match="Plate 'data' has subsample_size=1000, larger than its size 569"):
        NGVI(logistic_regression.model, guide).init(KEY, subsample_size=1000, **data)
