"""ngvi.optim.structured_newton: the natural-gradient step at the mean (MATH.md sec. 7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from ngvi import groups
from ngvi.groups.dense import MatrixFactor
from ngvi.optim import structured_newton


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _spd(key, p):
    a = jax.random.normal(key, (p, p), jnp.float64)
    return a @ a.T + p * jnp.eye(p)


@pytest.mark.timeout(300)
def test_dense_quadratic_one_step():
    """With S = hess l, one step of size 1 lands on the minimiser of a quadratic;
    from S = I the retraction's second-order term makes S_1 != hess l, so it takes a few."""
    p = 6
    a, b = _spd(jax.random.PRNGKey(0), p), jnp.arange(1.0, p + 1.0)
    loss = lambda x: 0.5 * x @ a @ x - b @ x
    opt, x_star = structured_newton(loss, groups.Dense(), step_size=1.0), jnp.linalg.solve(a, b)
    start = x_star + 0.5  # a whitened distance of ~5, inside the mean's trust region (10 sqrt(p))
    params, _, info = opt.update(jax.random.PRNGKey(1), opt.init(start, factor=MatrixFactor(jnp.linalg.cholesky(a))))
    assert jnp.max(jnp.abs(params - x_star)) < 1e-10
    assert not info.rejected and info.num_hvp == p
    result = jax.jit(opt.run, static_argnums=2)(jax.random.PRNGKey(1), opt.init(start), 30)
    assert jnp.max(jnp.abs(result.params - x_star)) < 1e-10
    assert jnp.all(jnp.diff(result.losses) <= 0)


def _group_element(group, key, p):
    """``R^T = h(M)`` in the group for a random ``M`` of the sub-algebra's storage, scaled to 0.3
    (``h(M)`` is invertible: its eigenvalues ``1 + l + l^2 / 2`` stay near 1)."""
    leaves, tree = jax.tree.flatten(group.identity(p, jnp.float64))
    keys = jax.random.split(key, len(leaves))
    m = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])
    return group.h(m)


def _bfgs_iterates(fn, x0, num):
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    fun = lambda x: tuple(np.asarray(v) for v in value_and_grad(jnp.asarray(x)))
    iterates = [np.asarray(x0)]
    scipy.optimize.minimize(fun, np.asarray(x0), jac=True, method="BFGS", callback=lambda x: iterates.append(x.copy()),
                            options=dict(maxiter=num))
    return np.stack(iterates[: num + 1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "group, num_probes",
    [(groups.BlockUpperTriangular(2), None), (groups.BlockUpperTriangular(2), 3), (groups.BlockLowerTriangular(2), None),
     (groups.Hierarchical(1, 2), None)],
)
def test_invariance_under_group_reparameterisation(group, num_probes):
    """``l_y(y) = l(R y)`` with ``R^T`` in the group, from ``y0 = R^-1 w0`` and ``B_y = R^T B_w``:
    the iterates map to those of ``l`` (``w_t = R y_t``); scipy's BFGS iterates do not.
    (With whitened probes only the block-upper group is exactly invariant: the block-lower
    and hierarchical steps combine exact rows with the probes' estimate of ``diag(H)``.)"""
    p, num = 8, 12
    rt = _group_element(group, jax.random.PRNGKey(3), p)
    r = group.to_dense(rt).T
    w0 = jax.random.uniform(jax.random.PRNGKey(4), (p,), jnp.float64, -2.0, 2.0)
    y0 = jnp.linalg.solve(r, w0)
    loss_y = lambda y: rosenbrock(r @ y)
    opt_w = structured_newton(rosenbrock, group, num_probes=num_probes, line_probes=2)
    opt_y = structured_newton(loss_y, group, num_probes=num_probes, line_probes=2)
    state_w = opt_w.init(w0, scale=0.5)
    state_y = opt_y.init(y0, factor=group.mul(rt, state_w.factor))
    key = jax.random.PRNGKey(5)
    run_w = jax.jit(opt_w.run, static_argnums=2)(key, state_w, num)
    run_y = jax.jit(opt_y.run, static_argnums=2)(key, state_y, num)
    assert run_w.losses[-1] < 0.5 * run_w.losses[0]  # the run moves
    np.testing.assert_array_equal(run_w.info.rejected, run_y.info.rejected)
    np.testing.assert_allclose(r @ run_y.params, run_w.params, rtol=0, atol=1e-8)
    np.testing.assert_allclose(run_y.losses, run_w.losses, rtol=1e-8, atol=1e-10)
    s_w = group.to_dense(run_w.state.factor) @ group.to_dense(run_w.state.factor).T
    s_y = group.to_dense(run_y.state.factor) @ group.to_dense(run_y.state.factor).T
    np.testing.assert_allclose(r.T @ s_w @ r, s_y, rtol=1e-8, atol=1e-8 * float(jnp.max(jnp.abs(s_y))))
    # BFGS (H_0 = I) is invariant only under orthogonal R: its iterates on l(R y) do not map to those on l.
    bfgs_w, bfgs_y = _bfgs_iterates(rosenbrock, w0, num), _bfgs_iterates(loss_y, y0, num)
    steps = min(len(bfgs_w), len(bfgs_y))
    gap = np.max(np.abs(bfgs_y[:steps] @ np.asarray(r).T - bfgs_w[:steps]))
    assert gap > 0.1, gap


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group, budget", [(groups.Dense(), 150), (groups.Hierarchical(1, 1), 1500)])
def test_rosenbrock_20(group, budget):
    """20-dimensional Rosenbrock from a start uniform in [-2, 2] to ``f <= 1e-8``
    (Dense: 78 iterations to 1e-10; Hierarchical(1, 1): 1110)."""
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (20,), jnp.float64, -2.0, 2.0)
    opt = structured_newton(rosenbrock, group)
    result = jax.jit(opt.run, static_argnums=2)(jax.random.PRNGKey(1), opt.init(x0), budget)
    assert result.losses[-1] <= 1e-8, result.losses[-1]
    assert jnp.all(jnp.diff(result.losses) <= 0)
    np.testing.assert_allclose(result.params, 1.0, atol=1e-4)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "group, rows, num_probes, line_search",
    [(groups.BlockUpperTriangular(3), 3, 2, True), (groups.Hierarchical(1, 2), 3, 2, True),
     (groups.BlockLowerTriangular(3), 3, 1, False)],
)
def test_products_per_iteration_and_indefinite_start(group, rows, num_probes, line_search):
    """``k`` products for the dense rows, ``num_probes`` for the diagonal, one for the
    mean's line minimiser if on (``k + 1`` in all with one probe and none); from a start
    where ``hess l`` is indefinite, ``B`` stays invertible and ``l`` never increases."""
    p = 12
    x0 = jnp.zeros(p).at[1::2].set(1.0)  # H_00 = 1200 x_0^2 - 400 x_1 + 2 < 0
    assert jnp.linalg.eigvalsh(jax.hessian(rosenbrock)(x0))[0] < 0
    opt = structured_newton(rosenbrock, group, num_probes=num_probes, line_search=line_search)
    result = jax.jit(opt.run, static_argnums=2)(jax.random.PRNGKey(0), opt.init(x0), 40)
    products = rows + num_probes + int(line_search)
    np.testing.assert_array_equal(result.info.num_hvp, products)
    np.testing.assert_array_equal(result.info.num_grads, 1 + 2 * products)
    assert jnp.all(jnp.diff(result.losses) <= 0) and result.losses[-1] < 0.1 * result.losses[0]
    assert jnp.isfinite(group.logdet(result.state.factor))


@pytest.mark.timeout(300)
def test_bad_input():
    opt = structured_newton(rosenbrock, groups.BlockUpperTriangular(4))
    with pytest.raises(ValueError, match="scalar"):
        structured_newton(lambda x: x**2).init(jnp.ones(3))
    with pytest.raises(ValueError, match="not finite"):
        opt.init(jnp.array([1.0, jnp.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="not finite"):
        structured_newton(lambda x: jnp.sum(jnp.log(x))).init(-jnp.ones(3))
    with pytest.raises(ValueError, match=r"BlockUpperTriangular\(k=4\).*p=3"):
        opt.init(jnp.ones(3))
    with pytest.raises(ValueError, match="flat"):
        opt.init(jnp.ones((2, 3)))
