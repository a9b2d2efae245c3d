"""The closed-form natural-gradient step of every group equals ``F^-1 grad``
with ``F`` the autodiff Hessian of the KL in local coordinates (MATH.md sec. 4,
last paragraph), for a quadratic loss whose ``L`` is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from group_cases import KRONECKER_CASES, KRONECKER_IDS, SINGLE_CASES, SINGLE_IDS, algebra_basis, random_element
from ngvi.curvature import HessianCurvature


def _h(m):
    return jnp.eye(m.shape[0]) + m + 0.5 * m @ m


def _gaussian_kl(mu0, s0, mu1, s1):
    """KL(N(mu0, s0^-1) || N(mu1, s1^-1)) for precisions s0, s1."""
    d = mu1 - mu0
    return 0.5 * (
        jnp.trace(s1 @ jnp.linalg.inv(s0)) - s0.shape[0] + d @ s1 @ d - jnp.linalg.slogdet(s1)[1] + jnp.linalg.slogdet(s0)[1]
    )


def _objective(mu, s, a, m, gamma):
    """L = E_q[l] + gamma E_q[log q] for l(z) = (z - m)^T A (z - m) / 2."""
    sigma = jnp.linalg.inv(s)
    d = mu - m
    neg_entropy = -0.5 * s.shape[0] * (1 + jnp.log(2 * jnp.pi)) + 0.5 * jnp.linalg.slogdet(s)[1]
    return 0.5 * jnp.trace(a @ sigma) + 0.5 * d @ a @ d + gamma * neg_entropy


def brute_force_natural_gradient(b_dense, mu, basis, a, m, gamma):
    """``pinv(F) grad`` in eta = (delta, theta): mu = mu_t + B^-T delta, B = B_t h(sum theta_i E_i)."""
    p = mu.shape[0]
    basis = jnp.asarray(np.stack(basis))

    def local(eta):
        delta, theta = eta[:p], eta[p:]
        b = b_dense @ _h(jnp.tensordot(theta, basis, 1))
        return mu + jnp.linalg.solve(b_dense.T, delta), b @ b.T

    @jax.jit  # one compiled program instead of one per operation
    def fisher_and_grad(eta0):
        mu0, s0 = local(eta0)
        fisher = jax.hessian(lambda eta: _gaussian_kl(mu0, s0, *local(eta)))(eta0)
        return fisher, jax.grad(lambda eta: _objective(*local(eta), a, m, gamma))(eta0)

    fisher, grad = fisher_and_grad(jnp.zeros(p + basis.shape[0]))
    nat = jnp.linalg.pinv(fisher, rtol=1e-12) @ grad
    return nat[:p], jnp.tensordot(nat[p:], basis, 1)


def _quadratic_problem(group, p):
    key_b, key_a, key_m = jax.random.split(jax.random.PRNGKey(p), 3)
    b = random_element(group, p, key_b)
    root = jax.random.normal(key_a, (p, p))
    a = root @ root.T / p + 0.5 * jnp.eye(p)  # the (constant) Hessian of l
    mu, m = jax.random.normal(key_m, (2, p))
    curvature = HessianCurvature(lambda v: a @ v, p, jnp.float64)
    return b, a, mu, m, curvature


@pytest.mark.parametrize("gamma", [1.0, 0.7])
@pytest.mark.parametrize("group,p", SINGLE_CASES, ids=SINGLE_IDS)
def test_natural_gradient_matches_brute_force_fisher(group, p, gamma):
    b, a, mu, m, curvature = _quadratic_problem(group, p)
    delta, step = brute_force_natural_gradient(group.to_dense(b), mu, algebra_basis(group, p), a, m, gamma)

    # Closed form: delta = B^-1 g_mu, and the step in M is -C ⊙ kappa(X).
    direction = group.natural_direction(group.local_gradient(b, curvature, gamma))
    np.testing.assert_allclose(delta, group.solve(b, a @ (mu - m)), atol=1e-9)
    np.testing.assert_allclose(-step, group.to_dense(direction), atol=1e-9)


@pytest.mark.parametrize("factor", ["left", "right"])
@pytest.mark.parametrize("group,p", KRONECKER_CASES, ids=KRONECKER_IDS)
def test_kronecker_step_matches_fisher_restricted_to_one_factor(group, p, factor):
    """With the other factor held fixed, the step is the natural gradient in
    the coordinates ``M_1 ⊗ I`` (or ``I ⊗ M_2``) alone."""
    b, a, mu, m, curvature = _quadratic_problem(group, p)
    p1, p2 = group.shape
    if factor == "left":
        basis = [np.kron(e, np.eye(p2)) for e in algebra_basis(group.left, p1)]
        embed = lambda d: np.kron(group.left.to_dense(d.left), np.eye(p2))
    else:
        basis = [np.kron(np.eye(p1), e) for e in algebra_basis(group.right, p2)]
        embed = lambda d: np.kron(np.eye(p1), group.right.to_dense(d.right))
    _, step = brute_force_natural_gradient(group.to_dense(b), mu, basis, a, m, 1.0)
    direction = group.natural_direction(group.local_gradient(b, curvature, 1.0))
    np.testing.assert_allclose(-step, embed(direction), atol=1e-9)
