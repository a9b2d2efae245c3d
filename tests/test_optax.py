"""ngvi.optax.structured_ngd: the structured natural-gradient optax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import ngvi.optax as ngd
from ngvi.curvature import DenseCurvature, LowRankCurvature, SumCurvature
from ngvi.optax import _example_rows, _factor_step, _group_of, parameter_group


def least_squares(n=200, d=6, dtype=jnp.float64):
    key_x, key_y = jax.random.split(jax.random.PRNGKey(0))
    scales = jnp.array([1.0, 2.0, 5.0, 10.0, 0.5, 3.0], dtype)[:d]
    x = jax.random.normal(key_x, (n, d), dtype) * scales
    y = x @ jnp.arange(d, dtype=dtype) + 0.1 * jax.random.normal(key_y, (n,), dtype)
    return x, y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_with_the_identity_curvature_it_is_sgd_exactly(dtype):
    key = jax.random.PRNGKey(1)
    params = {"w": jax.random.normal(key, (5, 3), dtype), "b": jnp.zeros(3, dtype), "c": jnp.ones((2, 2, 4), dtype)}
    opt = ngd.structured_ngd(0.1, block_size=2, damping=1.0, max_update_norm=None)
    state, update, sgd = opt.init(params), jax.jit(opt.update), params
    for t in range(5):
        grads = jax.tree.map(lambda x: jnp.sin(x + t), params)
        zeros = jax.tree.map(lambda x: jnp.zeros((7,) + x.shape, dtype), params)  # H = damping * I = I
        updates, state = update(grads, state, params, curvature_grads=zeros)
        params = optax.apply_updates(params, updates)
        sgd = jax.tree.map(lambda w, g: w - 0.1 * g, sgd, grads)
        for leaf, ref in zip(jax.tree.leaves(params), jax.tree.leaves(sgd)):
            assert leaf.dtype == dtype
            np.testing.assert_array_equal(leaf, ref)


def test_on_linear_least_squares_its_step_is_the_gauss_newton_step():
    """Per-example output gradients give the Gauss-Newton matrix ``X^T X / n``:
    with a dense factor the precision reaches it (rate 0.5, 60 refreshes, the
    mean held by a zero learning rate), and one step of size 1 then lands on
    the least-squares solution, as Gauss-Newton does on a linear model."""
    x, y = least_squares()
    loss = lambda w: 0.5 * jnp.mean((x @ w["w"][:, 0] - y) ** 2)
    outputs = jax.vmap(jax.grad(lambda w, xi: xi @ w["w"][:, 0]), (None, 0))
    params = {"w": jnp.zeros((x.shape[1], 1))}
    schedule = lambda count: jnp.where(count < 60, 0.0, 1.0)
    opt = ngd.structured_ngd(schedule, factor_step_size=0.5, block_size=x.shape[1], damping=0.0, max_update_norm=None)
    state, update = opt.init(params), jax.jit(opt.update)
    for _ in range(61):
        updates, state = update(jax.grad(loss)(params), state, params, curvature_grads=outputs(params, x))
        params = optax.apply_updates(params, updates)
    factor = state.factors["w"]
    b = _group_of(factor).to_dense(factor)
    np.testing.assert_allclose(b @ b.T, x.T @ x / x.shape[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(params["w"][:, 0], np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [0, 1, 3])
def test_the_factor_step_with_damping_equals_the_kronecker_groups_step_on_the_damped_curvature(block_size):
    """The damping's partial traces (``damping tr(S_2^-1) I``, ``damping tr(S_1^-1) I``)
    against the Kronecker group's own step on ``H + damping I`` as a p x p curvature."""
    shape, n, damping, rate = (4, 3), 5, 0.3, 0.2
    group = parameter_group(shape, block_size)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    b = group.init(12)
    b = group.retract(b, jax.tree.map(lambda leaf: 0.3 * jax.random.normal(keys[0], leaf.shape), b))
    grads = jax.random.normal(keys[1], (n, *shape))
    ours = jax.jit(lambda b, grads: _factor_step(group, b, _example_rows(grads), damping, rate, max_factor_step=10.0))(
        b, grads)

    @jax.jit
    def reference(b, grads):
        rows = grads.reshape(n, -1) / np.sqrt(n)
        curvature = SumCurvature(LowRankCurvature(rows, rows), DenseCurvature(damping * jnp.eye(12)))
        m = jax.tree.map(lambda leaf: rate * leaf, group.natural_direction(group.local_gradient(b, curvature, 1.0)))
        return group.retract(b, m)

    reference = reference(b, grads)
    np.testing.assert_allclose(group.to_dense(ours), group.to_dense(reference), rtol=1e-10, atol=1e-12)


def test_the_update_is_bounded_in_the_metric():
    """``alpha sqrt(g^T S^-1 g)`` is cut to ``max_update_norm`` over all parameters; smaller steps are untouched."""
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((3, 2), 2.0), "b": jnp.ones(2)}
    opt = ngd.structured_ngd(0.5, init_precision=4.0, max_update_norm=0.1)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    metric = sum(float(4.0 * jnp.vdot(u, u)) for u in jax.tree.leaves(updates))  # S = 4 I
    np.testing.assert_allclose(np.sqrt(metric), 0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["w"] / updates["w"][0, 0], grads["w"] / 2.0)  # same direction
    small = ngd.structured_ngd(1e-3, init_precision=4.0, max_update_norm=0.1)
    updates, _ = jax.jit(small.update)(grads, small.init(params), params)
    np.testing.assert_allclose(updates["b"], -1e-3 * grads["b"] / 4.0, rtol=1e-6)


def test_a_non_finite_curvature_leaves_the_factors_as_they_were():
    params = {"w": jnp.ones((3, 2))}
    opt = ngd.structured_ngd(0.1)
    state = opt.init(params)
    bad = {"w": jnp.full((4, 3, 2), jnp.nan)}
    _, new = opt.update({"w": jnp.ones((3, 2))}, state, params, curvature_grads=bad)
    for old, leaf in zip(jax.tree.leaves(state.factors), jax.tree.leaves(new.factors)):
        np.testing.assert_array_equal(old, leaf)


def test_the_factors_refresh_every_update_every_steps_and_stay_without_curvature_grads():
    params = {"w": jnp.ones((3, 2))}
    grads = {"w": jnp.ones((3, 2))}
    curvature = {"w": jax.random.normal(jax.random.PRNGKey(3), (4, 3, 2))}
    opt = ngd.structured_ngd(0.1, update_every=2)
    state, update = opt.init(params), jax.jit(opt.update)
    dense = lambda s: _group_of(s.factors["w"]).to_dense(s.factors["w"])
    seen = [dense(state)]
    for _ in range(4):
        _, state = update(grads, state, params, curvature_grads=curvature)
        seen.append(dense(state))
    changed = [not np.array_equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changed == [True, False, True, False]
    _, same = opt.update(grads, state, params)
    np.testing.assert_array_equal(dense(same), dense(state))


def test_sampled_params_have_the_inverse_precision_as_covariance():
    params = {"w": jnp.zeros((3, 2))}
    group = parameter_group((3, 2), 1)
    b = group.retract(group.init(6), jax.tree.map(lambda x: 0.4 * jnp.ones_like(x), group.init(6)))
    state = ngd.StructuredNGDState(jnp.zeros((), jnp.int32), {"w": b})
    draws = jax.vmap(lambda k: ngd.sample_params(k, params, state, scale=0.5)["w"].reshape(-1))(
        jax.random.split(jax.random.PRNGKey(4), 40_000))
    dense = group.to_dense(b)
    expected = 0.25 * np.linalg.inv(dense @ dense.T)
    np.testing.assert_allclose(np.cov(draws.T), expected, atol=0.03 * np.max(np.abs(expected)))


@pytest.mark.parametrize("block_size", [0, 2])
def test_the_variational_curvature_is_unbiased(block_size):
    """On a quadratic ``l(w) = vec(w)^T A vec(w) / 2`` the factor step from the
    gradient at ``w = sample_params(key, params, state, sigma)``
    (``sampled_params=w``), averaged over draws, is the step from the exact
    ``H = A`` (per-example rows of ``A^(1/2)``), to first order in the step
    size: Stein's lemma, ``E[Sigma^-1 (w - mu) g^T] = A``. A ``noise_scale``
    off by 2 would give ``A / 4``, far outside the tolerance."""
    shape, sigma, rate, num_pairs = (3, 2), 0.3, 1e-4, 20_000
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    root = jax.random.normal(keys[0], (6, 6)) / 2 + jnp.eye(6)
    a = root @ root.T
    params = {"w": jax.random.normal(keys[1], shape)}
    opt = ngd.structured_ngd(0.1, factor_step_size=rate, block_size=block_size, damping=0.0, max_factor_step=10.0,
                             noise_scale=sigma)
    state = opt.init(params)
    group = _group_of(state.factors["w"])
    b = group.retract(state.factors["w"], jax.tree.map(lambda x: 0.2 * jax.random.normal(keys[2], x.shape),
                                                       state.factors["w"]))
    state = state._replace(factors={"w": b})
    dense = lambda s: group.to_dense(s.factors["w"])
    grad = lambda w: {"w": (a @ w["w"].reshape(-1)).reshape(shape)}

    def noise_step(key):  # an antithetic pair of draws, their steps averaged
        w = ngd.sample_params(key, params, state, sigma)
        mirror = jax.tree.map(lambda m, x: 2 * m - x, params, w)
        steps = [dense(opt.update(grad(x), state, params, sampled_params=x)[1]) for x in (w, mirror)]
        return 0.5 * (steps[0] + steps[1])

    averaged = jax.jit(jax.vmap(noise_step))(jax.random.split(keys[3], num_pairs)).mean(0)
    exact_rows = {"w": np.sqrt(6.0) * np.real(scipy.linalg.sqrtm(np.asarray(a))).reshape(6, *shape)}
    exact = dense(opt.update(grad(params), state, params, curvature_grads=exact_rows)[1])
    change, expected = (averaged - dense(state)) / rate, (exact - dense(state)) / rate
    np.testing.assert_allclose(change, expected, atol=0.05 * np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("curvature", ["per_example", "weight_noise"])
def test_an_mlp_on_digits_beats_its_initial_loss_by_a_margin(curvature):
    """Per-example gradients of a batch of 64, or the variational estimate from
    the gradient at one weight draw of scale ``1 / sqrt(N)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = jnp.asarray(digits.data[:1000] / 16.0, jnp.float32)
    y = jnp.asarray(digits.target[:1000])
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32), "b2": jnp.zeros(10),
    }

    def example_loss(params, xi, yi):
        logits = jnp.tanh(xi @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return -jax.nn.log_softmax(logits)[yi]

    loss = lambda params: jnp.mean(jax.vmap(example_loss, (None, 0, 0))(params, x, y))
    sigma = 1.0 / np.sqrt(x.shape[0])
    opt = ngd.structured_ngd(0.05, block_size=4, damping=1e-2, noise_scale=sigma)

    @jax.jit
    def step(params, state, t):
        if curvature == "weight_noise":
            w = ngd.sample_params(jax.random.fold_in(key, t), params, state, sigma)
            updates, state = opt.update(jax.grad(loss)(w), state, params, sampled_params=w)
        else:
            idx = jnp.arange(64) + 64 * (t % 15)
            example = jax.vmap(jax.grad(example_loss), (None, 0, 0))(params, x[idx], y[idx])
            updates, state = opt.update(jax.grad(loss)(params), state, params, curvature_grads=example)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    initial = float(loss(params))
    for t in range(100):
        params, state = step(params, state, t)
    assert float(loss(params)) < 0.25 * initial
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((params, state)))


def test_bad_input_gets_a_clear_error():
    params = {"w": jnp.ones((3, 2))}
    opt = ngd.structured_ngd(0.1)
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"curvature_grads\['w'\] has shape \(3, 2\).*\(num_examples, \*\(3, 2\)\)"):
        opt.update(params, state, params, curvature_grads={"w": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match="tree structure"):
        opt.update(params, state, params, curvature_grads={"v": jnp.ones((4, 3, 2))})
    with pytest.raises(ValueError, match=r"parameter \['w'\] has non-finite"):
        opt.init({"w": jnp.array([[1.0, jnp.nan]])})
    with pytest.raises(ValueError, match="damping"):
        ngd.structured_ngd(0.1, damping=-1.0)
    with pytest.raises(ValueError, match="update_every"):
        ngd.structured_ngd(0.1, update_every=0)
    with pytest.raises(ValueError, match="noise_scale"):
        opt.update(params, state, params, sampled_params=params)
    with pytest.raises(ValueError, match="not both"):
        opt.update(params, state, params, curvature_grads={"w": jnp.ones((4, 3, 2))}, sampled_params=params)
    with pytest.raises(ValueError, match="noise_scale must be"):
        ngd.structured_ngd(0.1, noise_scale=0.0)
    with pytest.raises(ValueError, match="block_size"):
        ngd.structured_ngd(0.1, block_size=-2).init(params)
