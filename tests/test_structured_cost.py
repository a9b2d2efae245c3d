"""What one step of a structured group costs (MATH.md sec. 4: "never form a
p×p matrix for a structured group"). For every group that is not a
full-matrix one (those read every entry of ``H`` and hold ``B`` as a
matrix), and for every estimator:

* no value in the traced step (sub-programs of scan, while, cond and jit
  included) has ``p^2 / 4`` entries or more, at ``p = 600``;
* the Hessian-vector products of a step with ``probes=k`` and with the
  default ``estimator="auto"`` do not grow with ``p``, and exact curvature (``probes=None``) costs ``p`` more per point
  when ``p`` doubles: each of these groups reads exact diagonals or factors;
* exact curvature, streamed a block of basis vectors at a time, gives the
  local gradient of the dense formula ``B^-1 H B^-T - gamma I`` to 1e-10.
"""

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from group_cases import CASES, closed_pattern, random_element
from ngvi import estimators, groups, vi
from ngvi.curvature import HessianCurvature, LowRankCurvature, SumCurvature
from ngvi.groups.base import Group
from ngvi.vi.base import as_target
from test_groups import expected_direction

jax.config.update("jax_enable_x64", True)

JIT = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
KEY = jax.random.PRNGKey(0)
P = 600
ESTIMATORS = [
    ("auto", {}),
    ("hessian", {}),
    ("hessian", {"probes": 4}),
    ("stein", {}),
    ("gauss_newton", {}),
    ("gauss_newton", {"probes": 4}),
    ("zeroth_order", {}),
]
ESTIMATOR_IDS = [f"{name}-{options}" for name, options in ESTIMATORS]


def block_pattern(p, width=3):
    """Dense lower-triangular blocks of ``width`` on the diagonal and a dense
    last row: closed under products, ``O(p width)`` entries."""
    edges = [(i, i - 1) for i in range(1, p) if i % width] + [(p - 1, j) for j in range(p - 1)]
    return closed_pattern(p, edges)


def structured_groups(p, shape):
    """One group of every structured kind at dimension ``p`` (``shape`` for Kronecker)."""
    return [
        groups.Diagonal(),
        groups.BlockUpperTriangular(8),
        groups.BlockLowerTriangular(4),
        groups.Hierarchical(3, 2),
        groups.Kronecker(groups.Dense(), groups.Diagonal(), shape=shape),
        groups.Kronecker(groups.BlockUpperTriangular(2), groups.TriangularToeplitz(), shape=shape),
        groups.TriangularToeplitz(),
        groups.SparseCholesky(block_pattern(p)),
    ]


LARGE = list(zip(structured_groups(P, (20, 30)), structured_groups(2 * P, (40, 30))))


def test_every_structured_group_is_covered():
    """The cases below hold every group class of ngvi.groups that does not
    read a dense curvature."""
    structured = {
        cls for cls in vars(groups).values() if isinstance(cls, type) and issubclass(cls, Group) and cls is not Group
    }
    structured = {cls for cls in structured if not cls.dense_curvature}
    assert {type(g) for g, _ in LARGE} == structured


# --- no p x p value in a traced step -----------------------------------------------------
def logistic_target(p, num_examples=5, seed=0):
    """A logistic regression with a Gaussian prior: ``l`` and its per-example
    log-likelihoods (for Gauss-Newton), with no ``p x p`` array anywhere. Few
    examples, so that the values linear in the ``n = draws x examples = 40``
    rows of the Gauss-Newton factors stay below ``p^2 / 4``: a Toeplitz
    group's ``n x 2p`` FFTs, a sparse group's ``n x nnz`` entries (``nnz ~ 3p``)."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(num_examples, p)) / np.sqrt(p), rng.choice([-1.0, 1.0], num_examples)
    prior_precision = rng.uniform(0.5, 2.0, p)
    log_likelihood = lambda z: -jnp.logaddexp(0.0, -y * (x @ z))
    potential = lambda z: 0.5 * jnp.sum(prior_precision * z**2) - jnp.sum(log_likelihood(z))
    return as_target(potential, log_likelihood)


def sub_jaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def values(jaxpr):
    """``(size, shape, what)`` of every input, constant and equation output of
    ``jaxpr`` and, recursively, of the programs its equations call."""
    size = lambda var: int(np.prod(getattr(var.aval, "shape", ())))
    for var in [*jaxpr.invars, *jaxpr.constvars]:
        yield size(var), getattr(var.aval, "shape", ()), "input"
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield size(var), getattr(var.aval, "shape", ()), eqn.primitive.name
        for sub in sub_jaxprs(eqn.params):
            yield from values(sub)


def traced_step(group, p, estimator, options, num_samples=8):
    """The jaxpr of one step on :func:`logistic_target` and the Hessian-vector
    products per draw it reported (its curvature operator's tally, which the
    step reports in ``info.num_grads``)."""
    target, estimate, made = logistic_target(p), estimators.resolve(estimator, **options), []

    def recorded(*args):
        made.append(estimate(*args))
        return made[-1]

    state = vi.structured_gaussian.init(jnp.zeros(p), group, 0.5)
    step = lambda key, state: vi.structured_gaussian.step(key, state, target, group, recorded, num_samples)
    jaxpr = jax.make_jaxpr(step)(KEY, state)
    return jaxpr, made[0].curvature.num_grads // (2 * num_samples)


@pytest.mark.parametrize("estimator, options", ESTIMATORS, ids=ESTIMATOR_IDS)
@pytest.mark.parametrize("pair", LARGE, ids=lambda pair: repr(pair[0]))
def test_step_holds_no_p_by_p_value_and_products_grow_with_p_only_if_exact(pair, estimator, options):
    """One step (8 draws) at ``p = 600`` and ``p = 1200``: the largest value has
    fewer than ``p^2 / 4`` entries, for exact, probed, gradient-only,
    Gauss-Newton and zeroth-order curvature; the Hessian-vector products per
    draw are the same at both with ``probes=4`` and with the default "auto"
    (and none without products), and ``p`` more at ``2p`` for exact curvature
    (each of these groups reads exact diagonals or factors)."""
    products = []
    for group, p in zip(pair, (P, 2 * P)):
        jaxpr, num_products = traced_step(group, p, estimator, options)
        largest = max(values(jaxpr.jaxpr), key=lambda v: v[0])
        assert largest[0] < p * p / 4, f"p={p}: {largest[2]} makes a value of shape {largest[1]}"
        products.append(num_products)
    exact = estimator in ("hessian", "gauss_newton") and "probes" not in options
    assert products[1] - products[0] == (P if exact else 0), products
    assert (products[0] > 0) == (estimator in ("auto", "hessian", "gauss_newton"))


# --- the reported products are the products made ----------------------------------------------
def counted_gaussian(p, seed=0):
    """``l(z) = (z - m)^T A (z - m) / 2`` evaluated in numpy callbacks, one
    call per point, with the calls counted: values, gradients and
    Hessian-vector products apart."""
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(p, 3))
    mean, precision = rng.normal(size=p), np.diag(rng.uniform(1.0, 2.0, p)) + root @ root.T / p
    calls = {"value": 0, "grad": 0, "hvp": 0}

    def callback(kind, fn, shape, *xs):
        def call(*args):
            calls[kind] += 1
            return fn(*(np.asarray(a) for a in args))

        return jax.pure_callback(call, jax.ShapeDtypeStruct(shape, xs[0].dtype), *xs, vmap_method="sequential")

    @jax.custom_jvp
    def grad_fn(z):
        return callback("grad", lambda z: precision @ (z - mean), z.shape, z)

    hvp = lambda primals, tangents: callback("hvp", lambda z, v: precision @ v, primals[0].shape, *primals, *tangents)
    grad_fn.defjvp(lambda primals, tangents: (grad_fn(*primals), hvp(primals, tangents)))

    @jax.custom_jvp
    def potential(z):
        return callback("value", lambda z: 0.5 * (z - mean) @ precision @ (z - mean), (), z)

    potential.defjvp(lambda primals, tangents: (potential(*primals), grad_fn(*primals) @ tangents[0]))
    return potential, calls


COUNTED_P = 300
COUNTED = [
    groups.Diagonal(),
    groups.Kronecker(groups.BlockUpperTriangular(2), groups.TriangularToeplitz(), shape=(15, 20)),
    groups.TriangularToeplitz(),
    groups.SparseCholesky(block_pattern(COUNTED_P)),
]


@pytest.mark.parametrize("group", COUNTED, ids=repr)
def test_exact_curvature_makes_p_products_per_draw_as_reported(group):
    """One jitted step (4 draws) with exact curvature at ``p = 300`` (so the
    products are streamed in several blocks): the potential sees ``p + 9``
    Hessian-vector products per draw (the diagonal or the factors, then the
    step control's 9), and ``info.num_grads`` counts a product as two
    gradients."""
    potential, calls = counted_gaussian(COUNTED_P)
    algo = vi.structured_gaussian(potential, group=group, estimator="hessian", num_samples=4)
    _, info = JIT(algo.step)(KEY, algo.init(jnp.zeros(COUNTED_P), scale=0.5))
    assert calls["hvp"] == 4 * (COUNTED_P + 9) and calls["grad"] == 4, calls
    assert int(info.num_grads) == calls["grad"] + 2 * calls["hvp"]


# --- streamed exact curvature against the dense formula --------------------------------------
STREAMED = [(g, p) for g, p in CASES if not g.dense_curvature] + [
    (groups.TriangularToeplitz(), 70),  # FFT products
    (groups.SparseCholesky(block_pattern(23, 4)), 23),
    (groups.Kronecker(groups.BlockUpperTriangular(1), groups.TriangularToeplitz(), shape=(4, 5)), 20),
    (groups.Kronecker(groups.Diagonal(), groups.SparseCholesky(block_pattern(7, 3)), shape=(3, 7)), 21),
]


@functools.partial(JIT, static_argnames=("group", "p"))
def local_gradients(group, p, b, h, w, u):
    """``local_gradient`` at ``b`` from the exact ``H`` streamed 3 basis vectors at
    a time and from its factors ``(I, H)`` held whole, alone and plus the
    low-rank term ``sym(W^T U)``; the streamed diagonal, and the natural direction."""
    gamma = 0.7
    exact = HessianCurvature(lambda v: h @ v, p, h.dtype, block_size=3)
    eye = jnp.eye(p, dtype=h.dtype)
    out = {
        "streamed": group.local_gradient(b, exact, gamma),
        "whole": group.local_gradient(b, LowRankCurvature(eye, h), gamma),
        "sum_streamed": group.local_gradient(b, SumCurvature(exact, LowRankCurvature(w, u)), gamma),
        "sum_whole": group.local_gradient(b, LowRankCurvature(*map(jnp.concatenate, ([eye, w], [h, u]))), gamma),
        "diagonal": HessianCurvature(lambda v: h @ v, p, h.dtype, block_size=3).diagonal(),
        "low_rank_diagonal": LowRankCurvature(w, u).diagonal(),
    }
    m = group.natural_direction(out["streamed"])
    parts = [(group.left, m.left), (group.right, m.right)] if isinstance(group, groups.Kronecker) else [(group, m)]
    return out | {"direction": [g.to_dense(part) for g, part in parts], "b": group.to_dense(b)}


@pytest.mark.parametrize("group, p", STREAMED, ids=[f"{g!r}-p{p}" for g, p in STREAMED])
def test_streamed_exact_curvature_gives_the_dense_local_gradient(group, p):
    """For a random symmetric indefinite ``H`` given as products: the streamed
    local gradient equals the one from the whole factors ``(I, H)`` (the
    formula before streaming) to 1e-10, also plus a low-rank term of 13 rows
    (Gauss-Newton's sum), and its natural direction is the Fisher-metric
    projection of the dense ``B^-1 H B^-T - gamma I`` (of its partial traces
    for Kronecker); the streamed and low-rank diagonals are exact."""
    rng = np.random.default_rng(p)
    a = rng.normal(size=(p, p))
    h, w, u = (a + a.T) / 2, rng.normal(size=(13, p)), rng.normal(size=(13, p))
    b = random_element(group, p, jax.random.PRNGKey(p))
    out = jax.tree.map(np.asarray, local_gradients(group, p, b, h, w, u))
    scale = max(1.0, max(np.max(np.abs(x), initial=0.0) for x in jax.tree.leaves(out["whole"])))
    for streamed, whole in [("streamed", "whole"), ("sum_streamed", "sum_whole")]:
        for x, y in zip(jax.tree.leaves(out[streamed]), jax.tree.leaves(out[whole]), strict=True):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-10 * scale, err_msg=streamed)
    for actual, expected in zip(out["direction"], expected_direction(group, p, out["b"], h, 0.7), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-10 * max(1.0, np.max(np.abs(expected))))
    np.testing.assert_allclose(out["diagonal"], np.diag(h), rtol=1e-14)
    np.testing.assert_allclose(out["low_rank_diagonal"], np.sum(w * u, axis=0), rtol=1e-12)
