"""Every group of ``CASES`` against its dense counterpart (MATH.md sec. 2-5):
structured linear algebra, the pattern of elements and of the sub-algebra, the
natural direction from exact, probed and gradient-only curvature, closure of
the retraction under indefinite curvature, dimension errors, and float32.

Each kind of check is one jitted program per group (``group`` static), shared
by the tests that read it; compiling dominates the run time, so the programs
are compiled without backend optimisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from group_cases import CASES, IDS, algebra_basis, closed_pattern
from ngvi import groups
from ngvi.curvature import DenseCurvature, HessianCurvature, LowRankCurvature

PARAMS = [pytest.param(g, p, id=i) for (g, p), i in zip(CASES, IDS)]
VECTOR_OPS = ("matvec", "rmatvec", "solve", "rsolve")
JIT = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# --- dense references --------------------------------------------------------------
def parts(group, p):
    """``(factor group, factor dim, getter)`` per factor: the group itself, or
    the left and right factors of a Kronecker group."""
    if isinstance(group, groups.Kronecker):
        p1, p2 = group.shape
        return [(group.left, p1, lambda t: t.left), (group.right, p2, lambda t: t.right)]
    return [(group, p, lambda t: t)]


def dense_parts(group, p, tree):
    """The dense matrix of each factor of ``tree`` (an element or of ``m``)."""
    return [g.to_dense(get(tree)) for g, _, get in parts(group, p)]


def allowed_pattern(group, p):
    """Union of the supports of the basis of ``m`` (kron of the factors' for Kronecker)."""
    masks = [np.any(np.stack(algebra_basis(g, q)) != 0, axis=0) for g, q, _ in parts(group, p)]
    return functools.reduce(np.kron, masks).astype(bool)


def metric_projection(basis, x):
    """The Fisher-metric projection of ``X`` onto ``span(basis)``: solve the Gram
    system ``<E_a, E_b> c = tr(X^T E_a)``, ``<M1, M2> = tr((M1+M1^T)(M2+M2^T))/2``."""
    e = np.stack(basis)
    s = e + np.swapaxes(e, 1, 2)
    gram = 0.5 * np.einsum("aij,bij->ab", s, s)
    return np.tensordot(np.linalg.solve(gram, np.einsum("ij,aij->a", x, e)), e, 1)


def expected_direction(group, p, b_dense, h, gamma):
    """``C ⊙ kappa(X)`` per factor for ``X = B^-1 H B^-T - gamma I``; for
    Kronecker the projections of ``tr_2 X / p2`` and ``tr_1 X / p1`` (MATH.md sec. 4)."""
    b_inv = np.linalg.inv(b_dense)
    x = b_inv @ h @ b_inv.T - gamma * np.eye(p)
    if isinstance(group, groups.Kronecker):
        p1, p2 = group.shape
        x4 = x.reshape(p1, p2, p1, p2)
        traces = [np.einsum("acbc->ab", x4) / p2, np.einsum("cacb->ab", x4) / p1]
    else:
        traces = [x]
    return [metric_projection(algebra_basis(g, q), t) for (g, q, _), t in zip(parts(group, p), traces)]


def dense_linear_algebra(b, v, vs):
    ops = {"matvec": lambda u: b @ u, "rmatvec": lambda u: b.T @ u}
    ops |= {"solve": lambda u: np.linalg.solve(b, u), "rsolve": lambda u: np.linalg.solve(b.T, u)}
    out = {name: f(v) for name, f in ops.items()} | {f"vmap_{name}": f(vs.T).T for name, f in ops.items()}
    covariance_diagonal = np.diag(np.linalg.inv(b @ b.T))
    return out | {"logdet": np.linalg.slogdet(b)[1], "covariance_diagonal": covariance_diagonal}


def close(actual, expected, tol, name=""):
    """Agreement to ``tol`` relative to the size of ``expected``."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, np.max(np.abs(expected))), err_msg=name)


def random_spd(rng, p):
    root = rng.normal(size=(p, p))
    return root @ root.T / p + 0.5 * np.eye(p)


def random_symmetric(rng, shape, scale):
    a = scale * rng.normal(size=shape)
    return (a + np.swapaxes(a, -1, -2)) / 2


def exact_curvature(h):
    return HessianCurvature(lambda v: h @ v, h.shape[0], h.dtype)


def direction(group, b, curvature, gamma):
    return group.natural_direction(group.local_gradient(b, curvature, gamma))


def draw_noise(group, p, rng, count=2, spread=0.3):
    """``count`` pytrees of Gaussian noise shaped like the group's storage."""
    shapes = jax.eval_shape(lambda: group.identity(p, jnp.float64))
    return [jax.tree.map(lambda s: spread * rng.normal(size=s.shape), shapes) for _ in range(count)]


def element(group, p, noise):
    """The identity retracted along ``natural_direction(n)`` for each ``n`` in
    ``noise``: a generic element on the pattern, like ``random_element`` of
    group_cases.py but from numpy draws (jax.random is slow to compile)."""
    b = group.identity(p, jnp.float64)
    for n in noise:
        b = group.retract(b, group.natural_direction(n))
    return b


# --- one evaluation per group ----------------------------------------------------------
STEP = 0.3  # beta of the random walk


@functools.partial(JIT, static_argnames=("group", "p", "gamma"))
def evaluate(group, p, noise, v, vs, hs, gamma):
    """A random element ``b`` and the structured operations on it (on ``v`` and
    vmapped over ``vs``); then a walk ``b <- retract(b, beta m)`` with ``m`` the
    natural direction for each curvature in ``hs``, recording at each step ``B``,
    logdet, ``B^-1 v``, ``m``, ``h(beta m)``, ``mul(b, h(beta m))`` and the new
    ``B``. ``gamma`` is a Python float, as a driver passes it."""
    b = element(group, p, noise)
    out = {name: getattr(group, name)(b, v) for name in ("matvec", "rmatvec", "rsolve")}
    out |= {f"vmap_{name}": jax.vmap(functools.partial(getattr(group, name), b))(vs) for name in VECTOR_OPS}

    def step(b, h):
        m = direction(group, b, exact_curvature(h), gamma)
        scaled = jax.tree.map(lambda x: STEP * x, m)
        hm, moved = group.h(scaled), group.retract(b, scaled)
        return moved, {
            "b": group.to_dense(b),
            "logdet": group.logdet(b),
            "solve": group.solve(b, v),
            "direction": dense_parts(group, p, m),
            "fisher_norm_sq": group.fisher_norm_sq(m),
            "h": dense_parts(group, p, hm),
            "h_logdet": [g.logdet(get(hm)) for g, _, get in parts(group, p)],
            "mul": group.to_dense(group.mul(b, hm)),
            "retract": group.to_dense(moved),
        }

    return out | {
        "covariance_diagonal": group.covariance_diagonal(b),
        "init": group.to_dense(group.init(p, 0.25, jnp.float64)),
        "walk": jax.lax.scan(step, b, hs)[1],
        "element": b,
    }


def run(group, p, seed=0, gamma=1.0, h=None):
    """``evaluate`` on random inputs: numpy outputs, the inputs, and ``b`` itself.
    The first curvature is ``h`` (random SPD by default); the next 199 are fresh
    symmetric indefinite matrices, ``3 I`` plus entries of size 3."""
    rng = np.random.default_rng(seed)
    h = random_spd(rng, p) if h is None else h
    hs = np.concatenate([h[None], 3.0 * np.eye(p) + random_symmetric(rng, (199, p, p), 3.0)])
    inputs = {"v": rng.normal(size=p), "vs": rng.normal(size=(3, p)), "hs": hs}
    raw = evaluate(group, p, draw_noise(group, p, rng), **inputs, gamma=gamma)
    out = {k: jax.tree.map(np.asarray, x) for k, x in raw.items() if k != "element"}
    return out, inputs, raw["element"]


@functools.lru_cache(maxsize=None)
def default_run(group, p):
    return run(group, p)


def check_against_dense(group, p, out, inputs, gamma, tol):
    """The operations on ``b`` and the first step against numpy."""
    walk, b = out["walk"], out["walk"]["b"][0]
    out = out | {"logdet": walk["logdet"][0], "solve": walk["solve"][0]}
    for name, value in dense_linear_algebra(b, inputs["v"], inputs["vs"]).items():
        close(out[name], value, tol, name)
    close(out["init"], 4.0 * np.eye(p), tol, "init")
    check_step(group, p, walk, 0, inputs["hs"][0], gamma, tol)


def check_step(group, p, walk, t, h, gamma, tol):
    """Step ``t`` of the walk: the natural direction is the Fisher-metric
    projection of the dense ``X`` (of its partial traces for Kronecker), and
    fisher_norm_sq, ``h``, ``mul`` and ``retract`` match their dense versions."""
    b, direction_parts = walk["b"][t], [d[t] for d in walk["direction"]]
    for actual, expected in zip(direction_parts, expected_direction(group, p, b, h, gamma), strict=True):
        close(actual, expected, tol, f"direction at step {t}")
    # Kronecker: the block-diagonal metric p2 <M1, M1> + p1 <M2, M2> (MATH.md sec. 4).
    metric = sum(p // q * 0.5 * np.sum((d + d.T) ** 2) for (_, q, _), d in zip(parts(group, p), direction_parts))
    close(walk["fisher_norm_sq"][t], metric, tol, "fisher_norm_sq")
    h_parts = [hd[t] for hd in walk["h"]]
    for d, hd in zip(direction_parts, h_parts):
        close(hd, np.eye(len(d)) + STEP * d + STEP**2 * d @ d / 2, tol, "h")
    product = b @ functools.reduce(np.kron, h_parts)
    close(walk["mul"][t], product, tol, "mul")
    close(walk["retract"][t], product, tol, "retract")


# --- 1. linear algebra, 3a. natural direction ---------------------------------------------
@pytest.mark.parametrize("group,p", PARAMS)
def test_matches_dense(group, p):
    """Under jit and vmap, matvec, rmatvec, solve, rsolve, logdet, mul,
    covariance_diagonal, init(p, scale), fisher_norm_sq, h and retract equal their
    dense versions, and ``natural_direction(local_gradient)`` is the Fisher-metric
    projection of the dense ``X`` onto ``m`` (of its partial traces for Kronecker)."""
    out, inputs, _ = default_run(group, p)
    check_against_dense(group, p, out, inputs, 1.0, tol=1e-9)


@st.composite
def simple_group(draw, p):
    kind = draw(st.sampled_from(["dense", "diag", "lower", "upper", "bup", "blow", "hier", "toeplitz", "sparse"]))
    if kind == "hier":
        k1 = draw(st.integers(0, p))
        return groups.Hierarchical(k1, draw(st.integers(0, p - k1)))
    if kind in ("bup", "blow"):
        return (groups.BlockUpperTriangular if kind == "bup" else groups.BlockLowerTriangular)(draw(st.integers(0, p)))
    if kind == "sparse":
        below = [(i, j) for i in range(p) for j in range(i)]
        edges = draw(st.lists(st.sampled_from(below), max_size=p)) if below else []
        return groups.SparseCholesky(closed_pattern(p, edges))
    plain = {"dense": groups.Dense, "diag": groups.Diagonal, "lower": groups.LowerTriangular}
    return (plain | {"upper": groups.UpperTriangular, "toeplitz": groups.TriangularToeplitz})[kind]()


@st.composite
def any_group(draw):
    if draw(st.booleans()):
        p1, p2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        return groups.Kronecker(draw(simple_group(p1)), draw(simple_group(p2)), shape=(p1, p2)), p1 * p2
    p = draw(st.integers(1, 6))
    return draw(simple_group(p)), p


@settings(max_examples=5, deadline=None)
@given(case=any_group(), seed=st.integers(0, 2**16), gamma=st.sampled_from([0.0, 0.7, 1.0]))
def test_random_shapes_match_dense(case, seed, gamma):
    """The same checks, and those of the walk, for random block sizes,
    dimensions, Kronecker factor groups and transitively closed sparsity patterns."""
    group, p = case
    out, inputs, _ = run(group, p, seed, gamma)
    check_against_dense(group, p, out, inputs, gamma, tol=1e-9)
    check_walk(group, p, out, inputs, gamma)


@pytest.mark.xfail(
    strict=True,
    raises=jax.errors.JaxRuntimeError,
    reason="XLA CPU RET_CHECK in fft_thunk.cc (FFT operand not dim0-major): Kronecker._apply runs the FFT "
    "Toeplitz solve (p1 >= 64) on the single column of a p1 x 1 matrix, then the Dense factor's LU solve",
)
def test_kronecker_with_fft_toeplitz_factor_and_one_column():
    """``Kronecker(TriangularToeplitz(), Dense(), shape=(64, 1))`` at the identity:
    jitted solve and rsolve return ``v``."""
    group = groups.Kronecker(groups.TriangularToeplitz(), groups.Dense(), shape=(64, 1))
    b, v = group.identity(64, jnp.float64), jnp.arange(1.0, 65.0)
    solves = JIT(lambda b, v: (group.solve(b, v), group.rsolve(b, v)))(b, v)
    np.testing.assert_allclose(np.asarray(solves), np.stack([v, v]))


# --- 2. structure -------------------------------------------------------------------------------
@pytest.mark.parametrize("group,p", PARAMS)
def test_elements_and_directions_lie_on_the_pattern(group, p):
    """A random element is exactly zero off the pattern of ``m`` and nonzero on
    it; a natural direction lies in the span of the basis of ``m``."""
    walk = default_run(group, p)[0]["walk"]
    pattern, b = allowed_pattern(group, p), walk["b"][0]
    assert np.all(b[~pattern] == 0.0) and np.all(b[pattern] != 0.0)
    for (g, q, _), d in zip(parts(group, p), walk["direction"]):
        basis = np.stack(algebra_basis(g, q)).reshape(-1, q * q).T
        residual = d[0].reshape(-1) - basis @ np.linalg.lstsq(basis, d[0].reshape(-1), rcond=None)[0]
        np.testing.assert_allclose(residual, 0.0, atol=1e-12)


# --- 3b, 3c. estimated curvature --------------------------------------------------------------
def rademacher(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape)


def test_hutchinson_diagonal_is_exact_mean_and_unbiased():
    """Exact curvature gives ``diag(H)`` and ``sym(P^T Q) = H``. With probes ``R``
    the diagonal is exactly ``mean(R ⊙ R H)`` and ``sym(P^T Q) = sym(R^T R H) / n``;
    over 4000 probe sets the mean diagonal is within 5 standard errors of
    ``diag(H)`` (per-probe variance ``sum_{j != i} H_ij^2``)."""
    p, n, sets = 6, 4, 4000
    rng = np.random.default_rng(2)
    h, r, probe_sets = random_symmetric(rng, (p, p), 1.0), rademacher(rng, (n, p)), rademacher(rng, (sets, n, p))
    sym = lambda w, u: 0.5 * (w.T @ u + u.T @ w)

    @JIT
    def estimates(h, r, probe_sets):
        exact, probed = exact_curvature(h), lambda r: HessianCurvature(lambda v: h @ v, p, h.dtype, probes=(r, r))
        many = jax.vmap(lambda r: probed(r).diagonal())(probe_sets)
        return exact.diagonal(), sym(*exact.factors()), probed(r).diagonal(), sym(*probed(r).factors()), many

    diagonal, full, probed_diagonal, probed_full, diagonals = map(np.asarray, estimates(h, r, probe_sets))
    np.testing.assert_allclose(diagonal, np.diag(h), rtol=1e-15)
    np.testing.assert_allclose(full, h, rtol=1e-15)
    np.testing.assert_allclose(probed_diagonal, np.mean(r * (r @ h), axis=0), rtol=1e-14)
    np.testing.assert_allclose(probed_full, sym(r.T @ r / n, h), rtol=1e-13, atol=1e-14)
    stderr = np.sqrt((np.sum(h**2, axis=0) - np.diag(h) ** 2) / (sets * n))
    assert np.all(np.abs(diagonals.mean(axis=0) - np.diag(h)) < 5 * stderr)


@functools.partial(JIT, static_argnums=(0, 1))
def stein_directions(group, p, b, eps, h, mu, m):
    """Gradient-only natural directions at ``b`` for ``l(z) = (z-m)^T H (z-m)/2``,
    one per batch of antithetic pairs ``(eps, -eps)``: ``H ~ sym(P^T Q)`` with
    ``P = s B eps / n``, ``Q = grad l(z)``, ``z = mu + B^-T eps``, for ``s = 1``
    (correct) and ``s = 2`` (a deliberate factor-2 error)."""

    def stein(e, s):
        e = jnp.concatenate([e, -e])
        z = mu + jax.vmap(lambda u: group.rsolve(b, u))(e)
        p_factor = s * jax.vmap(lambda u: group.matvec(b, u))(e) / e.shape[0]
        return dense_parts(group, p, direction(group, b, LowRankCurvature(p_factor, (z - m) @ h), 1.0))

    return jax.lax.map(lambda s: jax.lax.map(lambda e: stein(e, s), eps), jnp.array([1.0, 2.0]))


@functools.partial(JIT, static_argnums=(0, 1, 2))
def probed_directions(group, p, whitened, b, probes, h):
    """Natural directions at ``b`` from ``HessianCurvature`` with each probe set
    ``R``: probe pairs ``(R, R)``, or whitened ``(R B^T, R B^-1)``."""

    def pairs(r):
        if not whitened:
            return r, r
        return jax.vmap(lambda v: group.matvec(b, v))(r), jax.vmap(lambda v: group.rsolve(b, v))(r)

    curvature = lambda r: HessianCurvature(lambda v: h @ v, p, h.dtype, probes=pairs(r))
    return jax.lax.map(lambda r: dense_parts(group, p, direction(group, b, curvature(r), 1.0)), probes, batch_size=10)


def band(samples):
    """5 standard errors of the mean of ``samples`` (per factor, entrywise), with
    a 1e-10 floor for entries that carry no noise."""
    return [5 * s.std(0, ddof=1) / np.sqrt(len(s)) + 1e-10 for s in samples]


def outside(samples, exact, tolerance):
    """Largest ``|mean - exact| / tolerance`` over all entries (> 1: outside the band)."""
    return max(np.max(np.abs(s.mean(0) - e) / t) for s, e, t in zip(samples, exact, tolerance))


@pytest.mark.parametrize("group,p", PARAMS)
def test_gradient_only_direction(group, p):
    """Gradient-only directions (2000 batches of 10 antithetic pairs, 20000 in
    all) average to the exact direction within 5 standard errors (from the batch
    means); the estimator with ``P`` doubled falls outside that band."""
    out, inputs, b = default_run(group, p)
    exact = [d[0] for d in out["walk"]["direction"]]
    rng = np.random.default_rng(4)
    mu, m = rng.normal(size=(2, p))
    stein = stein_directions(group, p, b, rng.normal(size=(2000, 10, p)), inputs["hs"][0], mu, m)
    correct, doubled = ([np.asarray(s[i]) for s in stein] for i in (0, 1))
    assert outside(correct, exact, band(correct)) < 1.0
    assert outside(doubled, exact, band(correct)) > 1.0


# Groups that read diag(H) and H v rather than the factors of the curvature.
DIAGONAL_READERS = [
    c for c in PARAMS if isinstance(c.values[0], (groups.Diagonal, groups.BlockUpperTriangular, groups.Hierarchical))
]


@pytest.mark.parametrize("whitened", [False, True], ids=["raw", "whitened"])
@pytest.mark.parametrize("group,p", DIAGONAL_READERS)
def test_probed_direction_is_unbiased(group, p, whitened):
    """With Rademacher probes (1000 sets of 3), raw or whitened, the exact
    products and the Hutchinson diagonal combine into directions that average
    to the exact one within 5 standard errors."""
    out, inputs, b = default_run(group, p)
    exact = [d[0] for d in out["walk"]["direction"]]
    probes = rademacher(np.random.default_rng(5), (1000, 3, p))
    probed = jax.tree.map(np.asarray, probed_directions(group, p, whitened, b, probes, inputs["hs"][0]))
    assert outside(probed, exact, band(probed)) < 1.0


# Groups whose rows of B that meet diag(H) are diagonal: there r ⊙ B^-1 H B^-T r reads
# as the raw diagonal, so whitened probes make it exact at H = B B^T.
WHITE_DIAGONAL = [c for c in PARAMS if isinstance(c.values[0], (groups.Diagonal, groups.BlockUpperTriangular))]


@pytest.mark.parametrize("group,p", WHITE_DIAGONAL)
def test_whitened_probes_are_exact_at_the_fit(group, p):
    """At ``H = B B^T`` (``q`` fits the target, the natural direction is 0),
    whitened probes give the direction 0 for every probe set (to 1e-12), while
    raw probes do not where ``H`` couples a coordinate whose diagonal the group
    reads (one past the ``k`` dense rows) to others (their error is
    ``sum_{j != i} H_ij^2``, couplings ``B`` has captured)."""
    b = default_run(group, p)[2]
    b_dense = np.asarray(group.to_dense(b))
    h = b_dense @ b_dense.T
    probes = rademacher(np.random.default_rng(6), (20, 2, p))
    size = lambda whitened: max(np.max(np.abs(np.asarray(d))) for d in probed_directions(group, p, whitened, b, probes, h))
    assert size(True) < 1e-12
    k = getattr(group, "k", 0)
    if np.any((h - np.diag(np.diag(h)))[k:] != 0):
        assert size(False) > 1e-3


@pytest.mark.parametrize(
    "group,p",
    [
        pytest.param(groups.Dense(), 5, id="Dense"),
        pytest.param(groups.TriangularToeplitz(), 5, id="Toeplitz"),
    ],
)
def test_low_rank_local_gradient_memory_is_linear_in_rows(group, p):
    """``local_gradient`` from a rank-``n`` curvature (the gradient-only estimator
    with ``n`` samples) needs temporary memory ``O(n p)``: at most 32 floats per
    entry of ``P`` for ``n = 1000`` (compiled, not run)."""
    n = 1000
    b = jax.eval_shape(lambda: group.identity(p, jnp.float64))
    factor = jax.ShapeDtypeStruct((n, p), jnp.float64)
    local_gradient = JIT(lambda b, w, u: group.local_gradient(b, LowRankCurvature(w, u), 1.0))
    assert local_gradient.lower(b, factor, factor).compile().memory_analysis().temp_size_in_bytes <= 32 * n * p * 8


# --- 4. closure and invertibility ------------------------------------------------------------
def check_walk(group, p, out, inputs, gamma):
    """Every step of the walk stays exactly on the pattern and invertible, with
    logdet, solve, the natural direction, ``h`` and retract matching numpy."""
    walk, v = out["walk"], inputs["v"]
    dense = walk["b"]
    assert np.all(dense[:, ~allowed_pattern(group, p)] == 0.0) and np.all(np.isfinite(walk["logdet"]))
    close(walk["logdet"], np.linalg.slogdet(dense)[1], 1e-9, "logdet")
    np.testing.assert_allclose(walk["solve"], np.linalg.solve(dense, v), rtol=1e-8, atol=1e-10)
    for t in range(len(dense)):
        check_step(group, p, walk, t, inputs["hs"][t], gamma, tol=1e-8)
    np.testing.assert_array_equal(walk["retract"][:-1], dense[1:])
    assert not np.allclose(dense[-1], dense[0])


@pytest.mark.parametrize("group,p", PARAMS)
def test_retraction_stays_in_the_group(group, p):
    """200 steps ``b <- retract(b, 0.3 m)`` under fresh symmetric indefinite
    curvature (``3 I`` plus entries of size 3) keep ``B`` exactly on the pattern
    and invertible, each step matching the dense computation. (Zero-mean
    curvature drives ``S`` towards 0, where steps overshoot and non-normal groups
    reach cond(B) > 1e16 in float64.)"""
    out, inputs, _ = default_run(group, p)
    eigenvalues = np.linalg.eigvalsh(inputs["hs"][1:])
    assert np.mean((eigenvalues[:, 0] < 0) & (eigenvalues[:, -1] > 0)) > 0.3
    check_walk(group, p, out, inputs, 1.0)


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("group,p", PARAMS)
def test_h_is_invertible(group, p, scale):
    """For ``M`` in ``m`` (0.3 times a natural direction under indefinite
    curvature), ``h(M)`` is on the pattern with ``|det h(M)| >= 2^-q`` per factor of size ``q`` (the
    eigenvalues of ``M`` are real and ``h(l) = 1 + l + l^2/2 >= 1/2``), and its
    smallest singular value is at least 1/2 when ``M`` is symmetric."""
    walk = run(group, p, seed=7, h=random_symmetric(np.random.default_rng(7), (p, p), scale))[0]["walk"]
    h_parts = [hd[0] for hd in walk["h"]]
    assert np.all(functools.reduce(np.kron, h_parts)[~allowed_pattern(group, p)] == 0.0)
    for d, hd, logdet in zip(walk["direction"], h_parts, walk["h_logdet"]):
        sign, expected = np.linalg.slogdet(hd)
        assert sign != 0 and expected >= -len(hd) * np.log(2) - 1e-9
        close(logdet[0], expected, 1e-9)
        if np.allclose(d[0], d[0].T):
            assert np.linalg.svd(hd, compute_uv=False).min() >= 0.5 - 1e-9


# --- 5. errors ------------------------------------------------------------------------------------
PATTERN_4 = closed_pattern(4, [(1, 0), (3, 2)])


@pytest.mark.parametrize(
    "group,call,p",
    [
        (groups.BlockUpperTriangular(5), "check", 3),
        (groups.BlockLowerTriangular(5), "init", 3),
        (groups.Hierarchical(2, 2), "check", 3),
        (groups.Kronecker(groups.Dense(), groups.Dense(), shape=(2, 3)), "check", 7),
        (groups.Kronecker(groups.Dense(), groups.Dense(), shape=(2, 3)), "init", 7),
        (groups.Kronecker(groups.Dense(), groups.Dense()), "check", 6),
        (groups.SparseCholesky(PATTERN_4), "check", 5),
        (groups.SparseCholesky(PATTERN_4), "init", 5),
        (groups.Dense(), "check", 0),
    ],
    ids=repr,
)
def test_wrong_dimension_names_group_and_p(group, call, p):
    """A group that cannot act on ``p`` raises a ValueError naming itself and ``p``."""
    with pytest.raises(ValueError) as info:
        getattr(group, call)(p)
    assert repr(group) in str(info.value)
    assert f"p={p}" in str(info.value).replace(" ", "")


@pytest.mark.parametrize(
    "pattern,problem",
    [
        (np.ones((3, 4), bool), "square"),
        (np.eye(3, dtype=bool) | np.eye(3, k=1, dtype=bool), "lower-triangular"),
        (np.tril(np.ones((3, 3), bool), -1) | np.diag([True, False, True]), "diagonal"),
        (np.eye(3, dtype=bool) | np.eye(3, k=-1, dtype=bool), "closed under products"),
    ],
    ids=["non-square", "upper-entry", "missing-diagonal", "not-closed"],
)
def test_sparse_pattern_is_validated(pattern, problem):
    """SparseCholesky rejects a bad pattern with a message naming the problem."""
    with pytest.raises(ValueError, match=problem):
        groups.SparseCholesky(pattern)


# --- 6. float32 --------------------------------------------------------------------------------------
@functools.partial(JIT, static_argnums=(0, 1))
def driver_step(group, p, b, v, h):
    """What a driver runs each step, with ``gamma`` a Python float: init,
    matvec, solve, local_gradient and retract."""
    m = direction(group, b, HessianCurvature(lambda u: h @ u, p, h.dtype), 1.0)
    init, moved = group.init(p, 0.25, h.dtype), group.retract(b, jax.tree.map(lambda x: STEP * x, m))
    dense = {"init": group.to_dense(init), "direction": dense_parts(group, p, m), "retract": group.to_dense(moved)}
    return (init, m, moved), dense | {"matvec": group.matvec(b, v), "solve": group.solve(b, v)}


@pytest.mark.parametrize("group,p", PARAMS)
def test_float32_stays_float32(group, p):
    """With x64 enabled, a float32 element, vector and curvature give float32
    results everywhere, equal to the float64 ones to float32 accuracy."""
    out, inputs, b = default_run(group, p)
    to32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    trees, dense = driver_step(group, p, to32(b), to32(inputs["v"]), to32(inputs["hs"][0]))
    assert {x.dtype for x in jax.tree.leaves((trees, dense))} == {jnp.dtype(jnp.float32)}
    close(dense["init"], 4.0 * np.eye(p), 1e-6, "init")
    for actual, expected in zip(dense["direction"], out["walk"]["direction"], strict=True):
        close(actual, expected[0], 1e-4, "direction")
    close(dense["retract"], out["walk"]["retract"][0], 1e-4, "retract")
    close(dense["matvec"], out["matvec"], 1e-4, "matvec")
    close(dense["solve"], out["walk"]["solve"][0], 1e-4, "solve")


@pytest.mark.parametrize(
    "left,right",
    [
        (groups.BlockLowerTriangular(2), groups.Diagonal()),
        (groups.Diagonal(), groups.BlockUpperTriangular(1)),
        (groups.Dense(), groups.Hierarchical(1, 1)),
    ],
    ids=["block-diag", "diag-block", "dense-hier"],
)
def test_kronecker_reads_a_low_rank_curvature_as_it_reads_the_dense_one(left, right):
    """A rank-``n`` curvature kept as factors for the pattern-reading factor groups
    (``O(n p k)``) gives the same local gradient as its dense ``p x p`` matrix."""
    group = groups.Kronecker(left, right, shape=(5, 4))
    rng = np.random.default_rng(7)
    b = group.retract(group.identity(20, jnp.float64),
                      jax.tree.map(lambda x: 0.3 * rng.normal(size=x.shape), group.identity(20, jnp.float64)))
    w, u = rng.normal(size=(2, 3, 20))
    low_rank = JIT(lambda b, w, u: group.local_gradient(b, LowRankCurvature(w, u), 0.7))(b, w, u)
    dense = JIT(lambda b, h: group.local_gradient(b, DenseCurvature(h), 0.7))(b, 0.5 * (w.T @ u + u.T @ w))
    for ours, reference in zip(jax.tree.leaves(low_rank), jax.tree.leaves(dense)):
        np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-12)
