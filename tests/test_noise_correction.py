"""The retraction's noise correction (docs/maths.md, "The step's noise"): the
half-spread of the curvature against point Hessians taken one by one, and the
corrected retraction's expected precision against the noise-free one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngvi import gaussian, groups
from ngvi.estimators import gaussian_samples, half_spread, hessian
from ngvi.groups.dense import MatrixFactor
from ngvi.target import Target

CORRECTED = [groups.Dense(), groups.LowerTriangular(), groups.UpperTriangular()]


def quartic(z):
    return jnp.sum(z**4) / 4 + jnp.sum(jnp.sin(z[:-1] * z[1:]))


def test_half_spread_is_half_the_difference_of_the_halves_means():
    """Pairs ``(0, 1), (2, 3)`` against ``(4, 5), (6, 7)``, the dropped pair
    ``(2, 3)`` left out of its half's mean."""
    weights = jnp.array([1, 1, 0, 0, 1, 1, 1, 1], jnp.float64) / 6
    x = jnp.arange(8.0) ** 2
    expected = 0.5 * ((x[0] + x[1]) / 2 - (x[4] + x[5] + x[6] + x[7]) / 4)
    np.testing.assert_allclose(jnp.sum(half_spread(weights) * x), expected, rtol=1e-12)
    assert np.all(half_spread(jnp.array([1, 1, 0, 0], jnp.float64) / 2) == 0)  # one half empty: no spread


def test_the_halves_are_drawn_independently():
    """Within each half of the pairs the directions are orthogonal; across the
    halves they are not (independent draws), so the halves' estimates are independent."""
    eps = gaussian.antithetic_normals(jax.random.PRNGKey(0), 8, 6, jnp.float64)
    gram = np.asarray(eps @ eps.T)
    for block in (slice(0, 4), slice(4, 8)):
        inner = gram[block, block][::2, ::2]
        np.testing.assert_allclose(inner - np.diag(np.diag(inner)), 0.0, atol=1e-10)
    assert np.abs(gram[0:4:2, 4:8:2]).min() > 1e-3
    np.testing.assert_allclose(eps[1::2], -eps[::2])


@pytest.mark.parametrize("group", CORRECTED, ids=str)
def test_hessian_spread_from_the_point_hessians(group):
    """``"hessian"``'s ``spread`` for a full-matrix group is ``(H_1 - H_2) / 2``
    of ``jax.hessian`` at each draw, and 0 on a Gaussian target (constant Hessian)."""
    p, key = 4, jax.random.PRNGKey(3)
    loc, factor = jnp.linspace(-0.5, 0.5, p), group.init(p, 0.7, jnp.float64)
    estimate = hessian(key, Target(quartic), group, loc, factor, 8, 1.0)
    _, z = gaussian_samples(jax.random.split(key)[0], group, loc, factor, 8)
    point = np.asarray(jax.vmap(jax.hessian(quartic))(z))
    halves = [point[:4].mean(0), point[4:].mean(0)]
    np.testing.assert_allclose(estimate.spread.matrix, 0.5 * (halves[0] - halves[1]), atol=1e-10)
    np.testing.assert_allclose(estimate.curvature.matrix, point.mean(0), atol=1e-10)
    gaussian = hessian(key, Target(lambda z: 0.5 * jnp.sum(z**2 * jnp.arange(1.0, p + 1))), group, loc, factor, 8, 1.0)
    np.testing.assert_allclose(gaussian.spread.matrix, 0.0, atol=1e-12)


@pytest.mark.parametrize("group", CORRECTED, ids=str)
def test_corrected_retraction_has_the_noise_free_expected_precision(group):
    """Pure noise ``M = E`` (``E`` over a symmetric set ``+-E_k`` of local steps)
    and the correction from an independent copy ``D`` of it: the plain
    retraction's ``E[h(E) h(E)^T]`` is off ``I`` by the second-order term
    ``E[N(E)]``; with ``Q(D)``, ``E[(h(E) - Q(D)) (h(E) - Q(D))^T]`` is off by
    fourth-order terms only (the expectations are exact sums over the set, so
    the orders show without Monte-Carlo error): doubling the noise multiplies
    the plain error by 4 and the corrected one by 16."""
    p = 4
    basis = np.random.default_rng(0).standard_normal((50, p, p))

    def errors(size):
        e = jax.vmap(lambda x: group.natural_direction(MatrixFactor(x)).matrix)(jnp.asarray(size * basis))
        e = jnp.concatenate([e, -e])
        h = jax.vmap(lambda x: group.h(MatrixFactor(x)).matrix)(e)
        q = jax.vmap(lambda x: group.noise_correction(MatrixFactor(x)).matrix)(e)
        mean = lambda a, b: jnp.mean(jnp.einsum("nij,nkj->nik", a, b), 0)
        plain = mean(h, h)
        q_mean, h_mean = q.mean(0), h.mean(0)
        corrected = plain - h_mean @ q_mean.T - q_mean @ h_mean.T + mean(q, q)
        return [float(jnp.abs(a - jnp.eye(p)).max()) for a in (plain, corrected)]

    (plain_small, corrected_small), (plain_large, corrected_large) = errors(0.01), errors(0.02)
    np.testing.assert_allclose(plain_large / plain_small, 4.0, rtol=0.05)
    np.testing.assert_allclose(corrected_large / corrected_small, 16.0, rtol=0.05)
    assert corrected_small < plain_small / 100


def test_structured_groups_keep_the_plain_retraction():
    group = groups.BlockUpperTriangular(2)
    factor = group.init(5, 1.0, jnp.float64)
    assert not group.corrects_noise
    with pytest.raises(NotImplementedError, match="no noise correction"):
        group.noise_correction(factor)
