"""ngvi.optim.structured_es: convergence on ill-conditioned problems, parity with
a faithful xNES (bench/xnes.py, matrix exponential), structure, and input checks."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngvi import groups
from ngvi.optim import structured_es

_spec = importlib.util.spec_from_file_location("xnes", Path(__file__).parents[1] / "bench" / "xnes.py")
xnes_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xnes_module)

SEEDS = (0, 1, 2)
DIM = 10
# Measured: 9100-9550 evaluations (xNES: 8860-9090) to f <= 1e-8 from mean 1, scale 1.
BUDGET = 12_000


def evaluations(run, init, seed, budget):
    return xnes_module.evaluations_to_target(run, jax.random.PRNGKey(seed), init, max_evaluations=budget, chunk=400)[0]


@pytest.fixture(scope="module")
def ellipsoid_evaluations():
    f = xnes_module.rotated_ellipsoid(DIM, condition=1e6, seed=0)
    es = structured_es(f, groups.Dense())
    init, _, run = xnes_module.xnes(f, DIM)
    ours = [evaluations(es.run, es.init(jnp.ones(DIM), 1.0), s, BUDGET) for s in SEEDS]
    reference = [evaluations(run, init(jnp.ones(DIM), 1.0), s, 2 * BUDGET) for s in SEEDS]
    return ours, reference


@pytest.mark.timeout(300)
def test_dense_reaches_1e8_on_rotated_ellipsoid(ellipsoid_evaluations):
    ours, _ = ellipsoid_evaluations
    assert all(n is not None for n in ours), f"evaluations to 1e-8 per seed (None: over {BUDGET}): {ours}"


@pytest.mark.timeout(300)
def test_dense_within_20_percent_of_xnes(ellipsoid_evaluations):
    ours, reference = ellipsoid_evaluations
    assert None not in ours and None not in reference, (ours, reference)
    ratio = np.mean(ours) / np.mean(reference)
    assert 0.8 <= ratio <= 1.2, f"structured_es {ours} vs xNES {reference}: ratio {ratio:.3f}"


@pytest.mark.timeout(300)
def test_block_group_beats_diagonal_on_block_structure():
    """p = 30, an ellipsoid (condition 1e6) rotated inside the first 10 coordinates,
    which hold scales spread over the whole range: the block group fits the
    rotation, the diagonal one cannot (measured: 47k evaluations against none in 400k)."""
    p, k, budget = 30, 10, 120_000
    scales = 1e6 ** (np.arange(p) / (p - 1))
    head = np.round(np.linspace(0, p - 1, k)).astype(int)
    scales = jnp.asarray(np.concatenate([scales[head], np.delete(scales, head)]))
    rotation = jnp.asarray(np.linalg.qr(np.random.default_rng(0).standard_normal((k, k)))[0])
    f = lambda w: jnp.sum(scales * w.at[:k].set(rotation @ w[:k]) ** 2)
    found = {}
    for name, group in [("block", groups.BlockUpperTriangular(k)), ("diagonal", groups.Diagonal())]:
        es = structured_es(f, group)
        found[name] = evaluations(es.run, es.init(jnp.ones(p), 1.0), 0, budget)
    assert found["block"] is not None, found
    assert found["diagonal"] is None or found["diagonal"] > found["block"], found


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "f, group, mean, scale, match",
    [
        (lambda w: jnp.sum(w**2), groups.Dense(), jnp.ones((2, 3)), 1.0, "flat"),
        (lambda w: jnp.sum(w**2), groups.Dense(), jnp.array([1.0, jnp.nan, 0.0]), 1.0, "non-finite entries at \\[1\\]"),
        (lambda w: jnp.sum(w**2), groups.Dense(), jnp.ones(3), 0.0, "scale"),
        (lambda w: jnp.sum(w**2), groups.BlockUpperTriangular(5), jnp.ones(3), 1.0, "p=3"),
        (lambda w: w**2, groups.Diagonal(), jnp.ones(3), 1.0, "scalar"),
    ],
)
def test_bad_input_raises(f, group, mean, scale, match):
    with pytest.raises(ValueError, match=match):
        structured_es(f, group).init(mean, scale)


@pytest.mark.timeout(300)
def test_bad_options_raise():
    with pytest.raises(ValueError, match="population_size"):
        structured_es(jnp.sum, groups.Dense(), population_size=1)
    with pytest.raises(ValueError, match="shaping"):
        structured_es(jnp.sum, groups.Dense(), shaping="ranks")
