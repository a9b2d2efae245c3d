"""The algorithm layer (API.md, "The algorithm layer"): ``ngvi.vi`` on plain
potentials, no NumPyro. In-family Gaussians are recovered for every group;
the steps equal ``NGVI``'s on the equivalent model, key for key; ``vmap`` over
keys and starts equals separate runs; ``info`` reports what the step did,
including the gradient evaluations it used, counted independently here."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import init_to_value

from group_cases import CASES, IDS, random_element
from ngvi import NGVI, StructuredGaussian, StructuredGaussianMixture, groups, vi
from ngvi import curvature
from ngvi import estimators as ngvi_estimators
from ngvi.target import Target

KEY = jax.random.PRNGKey(0)


def gaussian_potential(mean, precision):
    return lambda z: 0.5 * (z - mean) @ precision @ (z - mean)


def in_family_target(group, p):
    """``N(m, (B* B*^T)^-1)`` with ``B*`` a random element of ``group``."""
    key_b, key_m = jax.random.split(jax.random.PRNGKey(p))
    b = np.asarray(group.to_dense(random_element(group, p, key_b)))
    return 3.0 * np.asarray(jax.random.normal(key_m, (p,))), b @ b.T


def run(algo, state, num_steps, key=KEY):
    step = jax.jit(algo.step)
    infos = []
    for k in jax.random.split(key, num_steps):
        state, info = step(k, state)
        infos.append(info)
    return state, jax.tree.map(lambda *x: np.stack(x), *infos)


@pytest.mark.parametrize("group, p", CASES, ids=IDS)
def test_gaussian_in_family_is_recovered_on_a_plain_potential(group, p):
    """Every group recovers a Gaussian whose precision factor lies in it:
    mean within 1e-3 sd, covariance within 1e-3 of sd_i sd_j."""
    mean, precision = in_family_target(group, p)
    algo = vi.structured_gaussian(gaussian_potential(mean, precision), group=group)
    state, info = run(algo, algo.init(jnp.zeros(p), scale=0.1), 200)
    cov = np.linalg.inv(precision)
    sd = np.sqrt(np.diag(cov))
    b = np.asarray(group.to_dense(state.factor))
    q_cov = np.linalg.inv(b @ b.T)
    assert np.max(np.abs(np.asarray(state.loc) - mean) / sd) < 1e-3
    assert np.max(np.abs(q_cov - cov) / np.outer(sd, sd)) < 1e-3
    assert not info.rejected.any() and np.all(np.isfinite(info.loss))
    # At the optimum l + log q = -log Z at every draw (log Z = log((2 pi)^(p/2) |precision|^(-1/2))
    # for this unnormalised potential), so every loss estimate is exact.
    log_z = 0.5 * p * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(precision)[1]
    np.testing.assert_allclose(info.loss[-50:], -log_z, atol=1e-5)


def gaussian_model(mean, precision):
    numpyro.sample("z", dist.MultivariateNormal(mean, precision_matrix=precision))


@pytest.mark.parametrize("estimator", ["hessian", "stein"])
def test_same_steps_as_ngvi_on_the_equivalent_model(estimator):
    """``NGVI.update`` is the algorithm's step with the key the state's key
    splits off (``rng_key, model_key, step_key = split(state.rng_key, 3)``)."""
    group, p = groups.BlockUpperTriangular(2), 5
    mean, precision = in_family_target(group, p)
    start = jnp.linspace(-1.0, 1.0, p)
    guide = StructuredGaussian(gaussian_model, group=group, init_loc_fn=init_to_value(values={"z": start}), init_scale=0.3)
    ngvi = NGVI(gaussian_model, guide, estimator=estimator)
    algo = vi.structured_gaussian(gaussian_potential(mean, precision), group=group, estimator=estimator)
    state = ngvi.init(KEY, mean, precision)
    vi_state = algo.init(start, scale=0.3)
    update, step = jax.jit(lambda s: ngvi.update(s, mean, precision)), jax.jit(algo.step)
    for _ in range(5):
        step_key = jax.random.split(state.rng_key, 3)[2]
        state, _ = update(state)
        vi_state, _ = step(step_key, vi_state)
        np.testing.assert_allclose(state.vi_state.loc, vi_state.loc, rtol=1e-10, atol=1e-12)
        for a, b in zip(jax.tree.leaves(state.vi_state.factor), jax.tree.leaves(vi_state.factor)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(np.asarray(vi_state.loc - start))) > 0.1


@pytest.mark.parametrize("mixture", [False, True], ids=["gaussian", "mixture"])
def test_vmap_over_keys_and_starts_equals_separate_runs(mixture):
    group, p = groups.Dense(), 3
    mean, precision = in_family_target(group, p)
    potential = gaussian_potential(mean, precision)
    starts = jax.random.normal(jax.random.PRNGKey(5), (4, 2, p) if mixture else (4, p))
    if mixture:
        algo = vi.gaussian_mixture(potential, num_components=2, group=group, learn_weights=True)
    else:
        algo = vi.structured_gaussian(potential, group=group)
    keys = jax.random.split(KEY, 4)

    def steps(key, state):
        return jax.lax.scan(lambda s, k: algo.step(k, s), state, jax.random.split(key, 10))

    init = lambda start: algo.init(start, scale=0.5)
    batched, batched_info = jax.jit(jax.vmap(lambda k, x: steps(k, init(x))))(keys, starts)
    one = jax.jit(lambda k, x: steps(k, init(x)))
    for i in range(4):
        state, info = one(keys[i], starts[i])
        for a, b in zip(jax.tree.leaves((state, info)), jax.tree.leaves((batched, batched_info))):
            np.testing.assert_allclose(a, b[i], rtol=1e-9, atol=1e-12)


def test_jit_step_compiles_once_per_shape():
    mean, precision = in_family_target(groups.Dense(), 4)
    algo = vi.structured_gaussian(gaussian_potential(mean, precision), step_size=lambda t: 0.5 / (1 + t))
    traces = []

    def traced_step(key, state):
        traces.append(1)  # runs once per trace, not per call
        return algo.step(key, state)

    step = jax.jit(traced_step)
    state = algo.init(jnp.zeros(4), scale=0.5)
    for k in jax.random.split(KEY, 5):
        state, _ = step(k, state)
    assert len(traces) == 1


def test_sample_draws_the_fitted_gaussian():
    mean, precision = in_family_target(groups.Dense(), 3)
    algo = vi.structured_gaussian(gaussian_potential(mean, precision))
    state, _ = run(algo, algo.init(jnp.zeros(3), scale=0.1), 60)
    draws = np.asarray(algo.sample(KEY, state, 40_000))
    assert draws.shape == (40_000, 3)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), np.linalg.inv(precision), atol=0.05)


def test_mixture_algorithm_on_a_plain_potential_finds_both_modes_and_their_weights():
    """Two separated Gaussian modes with weights 0.3 / 0.7: the learned weights
    reach them and the mixture's draws reproduce the target's mean, at the
    default settings."""
    locs, weights = jnp.array([[-4.0, 0.0], [4.0, 1.0]]), jnp.array([0.3, 0.7])
    target = dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.MultivariateNormal(locs, jnp.eye(2)))
    algo = vi.gaussian_mixture(lambda z: -target.log_prob(z), num_components=2, learn_weights=True)
    state, info = run(algo, algo.init(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), scale=0.5), 300)
    order = np.argsort(np.asarray(state.loc)[:, 0])
    np.testing.assert_allclose(np.asarray(state.loc)[order], locs, atol=0.05)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(state.log_weights))[order], weights, atol=0.03)
    assert abs(float(np.mean(info.loss[-50:]))) < 1e-3  # -log Z = 0 for a normalised target
    draws = np.asarray(algo.sample(KEY, state, 20_000))
    np.testing.assert_allclose(draws.mean(0), weights @ locs, atol=0.1)


def test_conditioned_model_is_the_target():
    """``NGVI(model, guide)`` fits ``model`` even when the guide was built on
    another model with the same latent layout: x ~ N(0, 1), y ~ N(x, 1),
    conditioned on y = 3 the posterior is N(1.5, 1/2)."""

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0))

    guide = StructuredGaussian(handlers.condition(model, {"y": 1.0}))
    result = NGVI(handlers.condition(model, {"y": 3.0}), guide).run(KEY, 50, progress_bar=False)
    posterior = guide.get_posterior(result.params)
    np.testing.assert_allclose(posterior.loc, [1.5], atol=1e-6)
    np.testing.assert_allclose(posterior.variance, [0.5], rtol=1e-6)


def test_rejected_step_reports_itself_and_keeps_the_state():
    """A potential that is not finite far out: from a wide start every draw is
    there, the step is rejected, the state stays and ``info.rejected`` says so."""
    potential = lambda z: jnp.where(jnp.sum(z**2) < 1.0, 0.5 * jnp.sum(z**2), jnp.nan)
    algo = vi.structured_gaussian(potential)
    state = algo.init(jnp.full(3, 5.0), scale=0.1)
    new, info = jax.jit(algo.step)(KEY, state)
    assert bool(info.rejected) and not np.isfinite(info.loss)
    np.testing.assert_array_equal(new.loc, state.loc)
    np.testing.assert_array_equal(new.factor.matrix, state.factor.matrix)
    assert int(new.step) == 1


def test_a_subsampled_target_compares_losses_on_its_own_subsample():
    """Data subsampling moves the level of ``l`` by far more than the draws' noise
    from step to step; here ``l_t = l + c_t`` with ``c_t ~ N(0, 1000^2)`` fresh each
    step. Compared across steps (``subsampled=False``) the losses jump and steps
    are undone; a ``Target(subsampled=True)`` compares the state with its backup
    on the same ``l_t`` and common draws, where ``c_t`` cancels: no step is undone,
    and the in-family Gaussian is recovered as without the noise."""
    mean, precision = in_family_target(groups.Dense(), 4)
    potential = gaussian_potential(mean, precision)
    estimator = ngvi_estimators.resolve("auto")

    def fit(subsampled):
        def one(state, key):
            level_key, step_key = jax.random.split(key)
            level = 1000.0 * jax.random.normal(level_key)
            target = Target(lambda z: potential(z) + level, subsampled=subsampled)
            return vi.structured_gaussian.step(step_key, state, target, groups.Dense(), estimator)

        start = vi.structured_gaussian.init(jnp.zeros(4), groups.Dense(), 1.0)
        return jax.jit(lambda s: jax.lax.scan(one, s, jax.random.split(KEY, 60)))(start)

    state, info = fit(subsampled=True)
    assert not np.any(info.rejected)
    np.testing.assert_allclose(state.loc, mean, atol=1e-4)
    b = np.asarray(state.factor.matrix)
    np.testing.assert_allclose(b @ b.T, precision, rtol=1e-4, atol=1e-4)
    assert np.mean(fit(subsampled=False)[1].rejected) > 0.2


def test_step_size_radius_has_a_floor_under_repeated_rejections():
    """Every step rejected (the same not-finite region as above): the radius
    halves down to ``MIN_RADIUS`` and stays there, so that the state can still
    move once a step is accepted (halving alone reaches exactly 0: a frozen fit)."""
    potential = lambda z: jnp.where(jnp.sum(z**2) < 1.0, 0.5 * jnp.sum(z**2), jnp.nan)
    algo = vi.structured_gaussian(potential)
    state, _ = jax.lax.scan(lambda s, k: algo.step(k, s), algo.init(jnp.full(3, 5.0), scale=0.1),
                            jax.random.split(KEY, 20))
    assert float(state.radius) == vi.structured_gaussian.MIN_RADIUS


def test_clipped_steps_report_clip_factors_below_one_and_move_by_the_trust_radius():
    """A nearly flat, steep slope (``l = c^T z + 1e-6 |z|^2 / 2``) from a sharp
    start: the quadratic model wants long steps in both halves, so the trust
    region binds: the clip factors are below 1 and the step moves exactly by
    the radii (the mean by ``loc_trust_radius sqrt(p)`` whitened units of the
    new precision, the factor by ``h(M)`` with spectral norm ``||M|| = trust_radius``)."""
    p, radius, loc_radius = 4, 0.3, 2.0
    slope = jnp.array([1000.0, -500.0, 200.0, 100.0])
    algo = vi.structured_gaussian(
        lambda z: slope @ z + 0.5e-6 * z @ z, trust_radius=radius, loc_trust_radius=loc_radius, step_size=1.0
    )
    state = algo.init(jnp.zeros(p), scale=0.1)
    new, info = jax.jit(algo.step)(KEY, state)
    assert float(info.loc_scale) < 1 and float(info.factor_scale) < 1 and not bool(info.rejected)
    np.testing.assert_allclose(info.factor_norm * info.factor_scale, radius, rtol=1e-8)
    b_old, b_new = np.asarray(state.factor.matrix), np.asarray(new.factor.matrix)
    np.testing.assert_allclose(np.linalg.norm(b_new.T @ np.asarray(new.loc - state.loc)), loc_radius * np.sqrt(p), rtol=1e-8)
    # B_new = B_old h(M) with M symmetric: the eigenvalues of h(M) are 1 + m + m^2 / 2, m those of M
    local = np.linalg.solve(b_old, b_new)
    lam = np.linalg.eigvalsh(0.5 * (local + local.T))
    np.testing.assert_allclose(np.max(np.abs(-1.0 + np.sqrt(2.0 * lam - 1.0))), radius, rtol=1e-3)


def test_the_steps_fixed_point_bias_on_neal_funnel_falls_with_the_draws():
    """Neal's funnel, ``v ~ N(0, 3)``, ``x_i ~ N(0, exp(v / 2))`` (d = 10): its
    Gaussian KL optimum is known in closed form. With ``x`` independent of
    ``v`` under ``q``, ``E_q[-log p] - H(q)`` is minimised in ``sd_x`` at
    ``sd_x^2 = exp(m_v - sd_v^2 / 2)``, which leaves ``m_v^2 / 18 + sd_v^2 (1 / 18
    + d / 4) - log sd_v``: ``m_v = 0``, ``sd_v = (1 / 9 + d / 2)^(-1/2)``,
    ``sd_x = exp(-sd_v^2 / 4)``. From there, at the stopping rule's smallest step
    (``beta = 1 / 32``), the iterates averaged over 20,000 steps sit ``O(beta /
    N)`` off it: a draw with a large ``exp(-v) |x|^2`` has both a large
    curvature and a gradient that pushes ``v`` up, and the mean step's
    precision is updated from the same draws. With 8 draws ``m_v`` is 0.42
    ``sd_v`` low; with 64 (where ``run(key, None)`` takes its draws, ngvi.convergence)
    within 0.1 ``sd_v`` and every sd within 2%, and the offset at least 4 times smaller."""
    d, beta, num_steps = 10, 1.0 / 32, 40_000
    sd_v = (1.0 / 9.0 + d / 2.0) ** -0.5
    sd = np.concatenate([[sd_v], np.full(d, np.exp(-(sd_v**2) / 4.0))])

    def potential(z):
        v, x = z[0], z[1:]
        return v**2 / 18.0 + 0.5 * jnp.exp(-v) * x @ x + 0.5 * d * v

    def averaged_iterates(num_samples):
        group = groups.Dense()
        algo = vi.structured_gaussian(potential, group=group, step_size=beta, num_samples=num_samples)
        state = algo.init(jnp.zeros(d + 1))._replace(factor=groups.dense.MatrixFactor(jnp.diag(1.0 / jnp.asarray(sd))))

        def step(state, key):
            state, _ = algo.step(key, state)
            return state, (state.loc[0], jnp.sqrt(group.covariance_diagonal(state.factor)))

        _, (m_v, sds) = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(KEY, num_steps)))(state)
        return float(jnp.mean(m_v[num_steps // 2:])), np.mean(np.asarray(sds[num_steps // 2:]), axis=0)

    (few, _), (many, sds) = averaged_iterates(8), averaged_iterates(64)
    print(f"m_v / sd_v: {few / sd_v:.3f} with 8 draws, {many / sd_v:.3f} with 64")
    assert abs(many) < 0.1 * sd_v and abs(many) < abs(few) / 4, (few / sd_v, many / sd_v)
    np.testing.assert_allclose(sds, sd, rtol=0.02)


def counted_potential(mean, precision):
    """The Gaussian potential with every evaluation counted in numpy callbacks,
    one call per point (``vmap_method="sequential"``): values, gradients and
    Hessian-vector products apart."""
    calls = {"value": 0, "grad": 0, "hvp": 0}
    mean, precision = np.asarray(mean), np.asarray(precision)

    def counting(kind, fn):
        def call(*xs):
            calls[kind] += 1
            return fn(*(np.asarray(x) for x in xs))

        return call

    def callback(kind, fn, *xs):
        shape = jax.ShapeDtypeStruct(xs[0].shape if kind != "value" else (), xs[0].dtype)
        return jax.pure_callback(counting(kind, fn), shape, *xs, vmap_method="sequential")

    @jax.custom_jvp
    def grad_fn(z):
        return callback("grad", lambda z: precision @ (z - mean), z)

    @grad_fn.defjvp
    def _(primals, tangents):
        (z,), (v,) = primals, tangents
        return grad_fn(z), callback("hvp", lambda z, v: precision @ v, z, v)

    @jax.custom_jvp
    def potential(z):
        return callback("value", lambda z: 0.5 * (z - mean) @ precision @ (z - mean), z)

    @potential.defjvp
    def _(primals, tangents):
        (z,), (v,) = primals, tangents
        return potential(z), grad_fn(z) @ v

    return potential, calls


CASES_COUNTED = [
    (groups.Dense(), "hessian", {}),
    (groups.Diagonal(), "hessian", {}),
    (groups.BlockUpperTriangular(2), "hessian", {}),
    (groups.BlockUpperTriangular(2), "hessian", {"probes": 3}),
    (groups.Dense(), "hessian", {"curvature_samples": 2}),
    (groups.Dense(), "stein", {}),
    (groups.BlockUpperTriangular(2), "stein", {}),
    (groups.Diagonal(), "zeroth_order", {}),
]


@pytest.mark.parametrize("group, estimator, options", CASES_COUNTED, ids=[f"{g!r}-{e}-{o}" for g, e, o in CASES_COUNTED])
def test_num_grads_counts_the_evaluations_the_step_made(group, estimator, options):
    """``info.num_grads`` equals the evaluations counted inside the potential:
    a gradient or a lone value is one, a Hessian-vector product two."""
    p = 5
    mean, precision = in_family_target(groups.Dense(), p)
    potential, calls = counted_potential(mean, precision)
    algo = vi.structured_gaussian(potential, group=group, estimator=estimator, num_samples=6, **options)
    _, info = jax.jit(algo.step)(KEY, algo.init(jnp.ones(p), scale=0.5))
    counted = calls["grad"] + 2 * calls["hvp"] if calls["grad"] else calls["value"]
    assert int(info.num_grads) == counted, calls


def test_bounded_probe_noise_does_not_inflate_the_diagonal_precision(monkeypatch):
    """A diagonal Gaussian on ``H = I + 1 1^T`` (p = 100, whitened couplings
    1/2: the probes' noise in each ``X_jj`` has sd ~5 at the optimum ``S_jj =
    H_jj``) with 4 whitened probes per draw at a constant step of 0.5: with the
    noise unbounded (``NOISE_BOUND`` huge) the retraction turns it into too much
    precision, 22% in the median of the averaged precisions (sds 10% too
    small); bounded (:meth:`ngvi.curvature.HessianCurvature.diagonal`), 3.6%,
    the constant step's remaining bias (``run(key, None)`` halves it away)."""
    p = 100
    h = jnp.eye(p) + jnp.ones((p, p))

    def excess_precision():
        algo = vi.structured_gaussian(lambda z: 0.5 * z @ h @ z, group=groups.Diagonal(), estimator="hessian", probes=4)

        def body(state, key):
            state, _ = algo.step(key, state)
            return state, state.factor.diag**2

        keys = jax.random.split(jax.random.PRNGKey(0), 3000)
        _, precisions = jax.jit(lambda s: jax.lax.scan(body, s, keys))(algo.init(jnp.ones(p), scale=0.1))
        return np.median(np.asarray(precisions[1000:]).mean(0) / np.diag(h)) - 1.0

    bounded = excess_precision()
    monkeypatch.setattr(curvature, "NOISE_BOUND", 1e12)
    unbounded = excess_precision()
    assert unbounded > 0.15 and abs(bounded) < unbounded / 4, (bounded, unbounded)
