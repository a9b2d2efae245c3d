"""Laplace warm start: begin natural-gradient VI at

    mu_0 = argmin_z l(z)      (the MAP in NumPyro's unconstrained space, L-BFGS from optax)
    B_0  = the fixed point of  B <- B h(C ⊙ kappa(B^-1 H B^-T - I)),  H = hess l(mu_0)

i.e. the factor step of :func:`ngvi.ngd.natural_gradient_step` (``beta = 1``,
``gamma = 1``) iterated with the curvature held at the MAP. For a full-matrix
group the fixed point is ``B_0 B_0^T = H``, the Laplace approximation; for a
structured group it is the member of the family closest to ``N(mu_0, H^-1)`` in
``KL(q || .)`` (e.g. ``diag(H)`` for :class:`ngvi.groups.Diagonal`). The
curvature is read as the step reads it, through Hessian-vector products at
``mu_0``, with ``diag(H)`` and the factors of ``H`` (``p`` products each)
taken once (:meth:`ngvi.curvature.Curvature.evaluated`): a block group then
costs ``k + 9`` products per iteration. The Kronecker, Toeplitz and sparse
groups read ``H`` through its factors (``p x p`` numbers), as their exact
``"hessian"`` steps do.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from ngvi.estimators import Estimate, hessian_curvature
from ngvi.ngd import is_finite, natural_gradient_step

__all__ = ["LaplaceStart", "laplace_start", "check_laplace_start", "find_map", "fit_factor"]

# A start is accepted within this many standard deviations of the mode (one
# Newton step) and with a last factor step of at most this spectral norm.
LOC_TOLERANCE, FACTOR_TOLERANCE = 0.1, 1e-2


class LaplaceStart(NamedTuple):
    """The warm start and how well its two searches converged: ``loc_error`` is
    ``|B_0^-1 grad l(mu_0)|``, the distance of ``mu_0`` from the stationary
    point in standard deviations of the start (one Newton step); ``factor_error``
    the spectral norm of the last local factor step (0 at the fixed point)."""

    loc: jax.Array
    factor: object
    map_iterations: jax.Array
    factor_iterations: jax.Array
    loc_error: jax.Array
    factor_error: jax.Array


def find_map(potential, start, max_iterations=1000, tolerance=1e-6):
    """``argmin l`` by L-BFGS (``optax.lbfgs``, zoom line search) from ``start``,
    until ``|grad l| <= tolerance``, a step that does not lower ``l`` (the float
    resolution), or ``max_iterations``. Returns ``(z, iterations)``."""
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(potential)

    def step(carry):
        z, state, _ = carry
        value, grad = value_and_grad(z, state=state)
        updates, state = solver.update(grad, state, z, value=value, grad=grad, value_fn=potential)
        return optax.apply_updates(z, updates), state, value

    def going(carry):
        _, state, previous = carry
        count, value = otu.tree_get(state, "count"), otu.tree_get(state, "value")
        improving = (count <= 1) | (value < previous)
        return (count < max_iterations) & (otu.tree_norm(otu.tree_get(state, "grad")) > tolerance) & improving

    first = step((start, solver.init(start), jnp.inf))
    z, state, _ = jax.lax.while_loop(going, step, first)
    return z, otu.tree_get(state, "count")


def fit_factor(key, group, loc, factor, curvature, max_iterations=200):
    """Iterate the factor step at a fixed curvature until its unclipped spectral
    norm is below ``sqrt(machine epsilon)`` (or ``max_iterations``): from ``B = I / scale``
    each step shrinks ``B`` at most 2-fold, then the dense step converges
    quadratically. Returns ``(factor, iterations, last step norm)``."""
    zero = jnp.zeros((), loc.dtype)
    estimate = Estimate(zero, zero, jnp.zeros_like(loc), curvature, 0, jnp.zeros((), jnp.int32))
    tolerance = jnp.sqrt(jnp.finfo(loc.dtype).eps)

    def step(carry):
        key, factor, count, _ = carry
        key, step_key = jax.random.split(key)
        _, factor, info = natural_gradient_step(step_key, group, loc, factor, estimate, 1.0, 1.0)
        return key, factor, count + 1, info.factor_norm

    def going(carry):
        _, _, count, norm = carry
        return (count < max_iterations) & (norm > tolerance)

    _, factor, count, norm = jax.lax.while_loop(going, step, (key, factor, 0, jnp.asarray(jnp.inf, loc.dtype)))
    return factor, count, norm


def laplace_start(key, potential, group, loc, factor, max_iterations=1000):
    """The warm start (:class:`LaplaceStart`) from the guide's initial ``loc`` and ``factor``."""
    mode, map_iterations = find_map(potential, loc, max_iterations)
    curvature = hessian_curvature(potential, mode[None], group).evaluated()
    factor, factor_iterations, factor_error = fit_factor(key, group, mode, factor, curvature)
    loc_error = jnp.linalg.norm(group.solve(factor, jax.grad(potential)(mode)))
    return LaplaceStart(mode, factor, map_iterations, factor_iterations, loc_error, factor_error)


def check_laplace_start(start):
    """Raise ``ValueError`` saying which search failed (call outside jit)."""
    if not (is_finite(start.loc, start.factor) and start.factor_error < FACTOR_TOLERANCE):
        raise ValueError(
            "warm_start='laplace': the Hessian of -log p where the MAP search ended is not positive definite "
            "(a flat direction, a saddle, or no finite mode); start without a warm start."
        )
    if not start.loc_error < LOC_TOLERANCE:
        raise ValueError(
            f"warm_start='laplace': the MAP search did not converge in {int(start.map_iterations)} L-BFGS "
            f"iterations (it ended {float(start.loc_error):.3g} standard deviations from a stationary point)."
        )
