"""Structured natural-gradient descent for neural networks, as an optax transform.

Every parameter array ``W`` gets a Gaussian-like precision ``S = B B^T`` with
``B = B_1 ⊗ B_2`` in a Kronecker group (MATH.md sec. 4, 7): ``W`` is read as a
``d1 x d2`` matrix (all axes but the last by the last, so a dense layer's
``(in, out)`` kernel and a convolution's ``(h, w, in, out)`` one alike; a
vector as ``d x 1``), each factor in ``BlockLowerTriangular(k)`` (``k = 0``:
``Diagonal``; vectors: ``Diagonal``). No layer needs registering: the
curvature comes from per-example gradients ``c_i`` of the batch,

    H = (1/n) sum_i vec(c_i) vec(c_i)^T + damping * I,

the empirical Fisher matrix for per-example loss gradients, the Gauss-Newton
matrix for per-example gradients of the outputs (squared loss) or of the loss
at labels drawn from the model (the Monte-Carlo Fisher). One step, with
``M = beta C ⊙ kappa(B^-1 H B^-T - I)`` taken factor by factor from the
partial traces of MATH.md sec. 4 (no ``p x p`` matrix; the damping's partial
traces are ``damping tr(S_2^-1) I`` and ``damping tr(S_1^-1) I``):

    B <- B h(M),   ||M||_2 <= max_factor_step     (each step, or every ``update_every``)
    update = -alpha S^-1 g,  alpha sqrt(g^T S^-1 g) <= max_update_norm   (with the new ``B``)

``S`` tends to ``H``'s projection on the family (an exponential moving average
at rate ``beta`` to first order), and the update is then a damped
Gauss-Newton / natural-gradient step. With ``k = 0`` and ``weight noise``
(:func:`sample_params`) it is the variational rule VOGN (Khan et al., 2018):
``s <- s + beta (mean_i c_i^2 + damping - s)`` to first order.

Cost per parameter of ``d1 x d2 = p`` and ``n`` examples: ``O(n p k)`` for the
partial traces' pattern entries (the per-example gradients kept as factors,
:meth:`ngvi.groups.Kronecker.partial_curvatures`; their own cost is the
caller's), ``O(k^2 (d1 + d2))`` for the factor steps and ``O(k p)`` for
``S^-1 g``; memory ``O(k (d1 + d2))`` per parameter in the state.

    opt = ngvi.optax.structured_ngd(learning_rate=0.1, block_size=4)
    state = opt.init(params)
    example_grads = jax.vmap(jax.grad(example_loss), (None, 0))(params, batch)
    updates, state = opt.update(grads, state, params, curvature_grads=example_grads)
    params = optax.apply_updates(params, updates)

Without per-example gradients, the curvature can come from the weight noise
(the variational Hessian estimate of IVON, Shen et al., 2024, here for the
whole structured ``S``): with ``noise_scale = sigma`` (for ``S`` the mean
per-example curvature of ``N`` examples, ``sigma = 1 / sqrt(N)``), the
gradient ``g`` of the mean loss taken at ``w = mu + sigma B^-T eps``
(:func:`sample_params`) gives, by Stein's lemma,

    H ~ sym(Sigma^-1 (w - mu) g^T),   Sigma^-1 = S / sigma^2,

one row per parameter and step (``O(p k)``; no second backward pass):

    w = ngvi.optax.sample_params(key, params, state, sigma)
    grads = jax.grad(loss)(w, batch)
    updates, state = opt.update(grads, state, params, sampled_params=w)

On a step given neither (or not a multiple of ``update_every``) the factors
stay and only the preconditioned step is taken.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngvi.curvature import DenseCurvature, LowRankCurvature, SumCurvature
from ngvi.groups import BlockLowerTriangular, Diagonal, Kronecker
from ngvi.groups.diagonal import DiagonalFactor
from ngvi.groups.kronecker import KroneckerFactor

__all__ = ["StructuredNGDState", "structured_ngd", "parameter_group", "sample_params"]


class StructuredNGDState(NamedTuple):
    """The number of steps taken and the Kronecker factor ``B`` of every parameter."""

    count: jax.Array
    factors: Any


def parameter_group(shape, block_size):
    """The Kronecker group of a parameter array of ``shape``: ``d1 x d2`` for
    ``d1`` the product of all axes but the last and ``d2`` the last (``d x 1``
    for a vector, ``1 x 1`` for a scalar), each matrix factor
    ``BlockLowerTriangular(min(block_size, d))`` (``Diagonal`` for
    ``block_size = 0``), a vector's ``Diagonal``."""
    if int(block_size) != block_size or block_size < 0:
        raise ValueError(f"block_size must be a non-negative integer, got {block_size!r}.")
    if len(shape) >= 2:
        d1, d2 = math.prod(shape[:-1]), shape[-1]
        factor = lambda d: BlockLowerTriangular(min(int(block_size), d)) if block_size else Diagonal()
        return Kronecker(factor(d1), factor(d2), shape=(d1, d2))
    return Kronecker(Diagonal(), Diagonal(), shape=(max(math.prod(shape), 1), 1))


def _is_factor(x):
    return isinstance(x, KroneckerFactor)


def _group_of(b):
    """The Kronecker group a factor's storage belongs to (as :func:`parameter_group` made it)."""
    factor_group = lambda f: Diagonal() if isinstance(f, DiagonalFactor) else BlockLowerTriangular(f.head.shape[0])
    left, right = factor_group(b.left), factor_group(b.right)
    return Kronecker(left, right, shape=(left.dim(b.left), right.dim(b.right)))


def _check_finite(params):
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not isinstance(leaf, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} has non-finite values at the start.")


def _check_curvature_grads(grads, curvature_grads):
    if jax.tree.structure(grads) != jax.tree.structure(curvature_grads):
        raise ValueError(
            "curvature_grads must have the parameters' tree structure (one leading axis of examples per leaf): "
            f"got {jax.tree.structure(curvature_grads)} for parameters {jax.tree.structure(grads)}."
        )
    sizes = set()
    for (path, g), c in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(curvature_grads)):
        if c.ndim != g.ndim + 1 or c.shape[1:] != g.shape:
            raise ValueError(
                f"curvature_grads{jax.tree_util.keystr(path)} has shape {c.shape}; the parameter's shape is {g.shape}, "
                f"so it needs shape (num_examples, *{g.shape})."
            )
        sizes.add(c.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"curvature_grads leaves have different numbers of examples: {sorted(sizes)}.")


def _factor_step(group, b, rows, damping, factor_step_size, max_factor_step):
    """``B h(M)`` from one parameter's curvature ``H = sym(P^T Q)``, ``rows =
    (P, Q)`` of shape ``n x p`` each; ``B`` unchanged if the step is not finite."""
    left, right = group.partial_curvatures(b, LowRankCurvature(*rows))
    p1, p2 = group.shape

    def damped(curvature, d, other_group, other):  # + damping tr(S_other^-1) I_d
        trace = jnp.sum(other_group.covariance_diagonal(other))
        return SumCurvature(curvature, DenseCurvature(damping * trace * jnp.eye(d, dtype=rows[0].dtype)))

    x = group.local_gradient_from_partials(
        b, damped(left, p1, group.right, b.right), damped(right, p2, group.left, b.left), 1.0)
    m = jax.tree.map(lambda leaf: factor_step_size * leaf, group.natural_direction(x))
    norm = group.spectral_norm(m)
    m = jax.tree.map(lambda leaf: leaf * jnp.minimum(1.0, max_factor_step / norm), m)
    new = group.retract(b, m)
    finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new)]))
    return jax.tree.map(lambda old, leaf: jnp.where(finite, leaf, old), b, new)


def _example_rows(example_grads):
    """``(P, Q)`` of the per-example curvature ``(1/n) sum_i c_i c_i^T``: ``P = Q`` the rows ``c_i / sqrt(n)``."""
    n = example_grads.shape[0]
    rows = example_grads.reshape(n, -1) / math.sqrt(n)
    return rows, rows


def _noise_rows(group, b, offset, grad, noise_scale):
    """``(P, Q)`` of the variational Hessian estimate ``sym(Sigma^-1 (w - mu) g(w)^T)``
    (Stein's lemma: its mean over ``w ~ N(mu, Sigma)`` is ``E[hess l]``) for
    ``Sigma = noise_scale^2 S^-1``: one row each, ``P = S (w - mu) / noise_scale^2``."""
    precision_offset = group.matvec(b, group.rmatvec(b, offset.reshape(-1))) / noise_scale**2
    return precision_offset[None], grad.reshape(1, -1)


def _curvature_rows(group_tree, factors, grads, params, curvature_grads, sampled_params, noise_scale):
    """Each parameter's curvature rows ``(P, Q)``: from ``curvature_grads``
    (:func:`_example_rows`) or from the gradient ``grads`` taken at
    ``sampled_params`` (:func:`_noise_rows`); ``None`` for neither."""
    if curvature_grads is not None and sampled_params is not None:
        raise ValueError("pass curvature_grads or sampled_params, not both.")
    if curvature_grads is not None:
        _check_curvature_grads(grads, curvature_grads)
        return jax.tree.map(_example_rows, curvature_grads)
    if sampled_params is None:
        return None
    if noise_scale is None or params is None:
        raise ValueError("sampled_params needs structured_ngd(noise_scale=...), the scale sample_params drew them at, "
                         "and the params they were drawn around.")
    if jax.tree.structure(sampled_params) != jax.tree.structure(grads):
        raise ValueError(f"sampled_params must have the parameters' tree structure {jax.tree.structure(grads)}, "
                         f"got {jax.tree.structure(sampled_params)}.")
    offsets = jax.tree.map(jnp.subtract, sampled_params, params)
    return jax.tree.map(lambda group, b, o, g: _noise_rows(group, b, o, g, noise_scale),
                        group_tree, factors, offsets, grads, is_leaf=_is_factor)


def structured_ngd(
    learning_rate, factor_step_size=0.1, block_size=4, damping=1e-3, update_every=1, max_update_norm=0.1,
    max_factor_step=1.0, init_precision=1.0, noise_scale=None,
):
    """The update ``-alpha S^-1 g`` with ``S = B B^T`` refreshed from
    ``curvature_grads`` (module docstring).

    ``learning_rate`` is ``alpha`` (a number or an optax schedule);
    ``factor_step_size`` is ``beta``; ``damping`` is added to the curvature;
    ``update_every`` steps between factor refreshes. ``max_update_norm``
    bounds the update's length in the metric, ``alpha sqrt(g^T S^-1 g)``
    (over all parameters; K-FAC's "KL clipping"): where the curvature is small
    (late in training, or in flat directions) an unbounded ``S^-1 g`` would
    jump; ``None`` turns it off. ``max_factor_step`` bounds ``||M||_2`` (a step
    changes ``S`` by at most a factor ~6.25 in any direction); ``S`` starts at
    ``init_precision * I``. ``noise_scale`` is the scale of the weight noise
    for the variational curvature: ``update(grads, state, params,
    sampled_params=w)`` with ``grads`` taken at ``w = sample_params(key,
    params, state, noise_scale)`` (module docstring).
    """
    for name, value in dict(factor_step_size=factor_step_size, damping=damping, max_factor_step=max_factor_step,
                            init_precision=init_precision, max_update_norm=max_update_norm).items():
        if value is None and name == "max_update_norm":
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    if init_precision <= 0:
        raise ValueError(f"init_precision must be positive, got {init_precision!r}.")
    if noise_scale is not None and not (isinstance(noise_scale, (int, float)) and 0 < noise_scale < math.inf):
        raise ValueError(f"noise_scale must be None or a positive number, got {noise_scale!r}.")
    if int(update_every) != update_every or update_every < 1:
        raise ValueError(f"update_every must be a positive number of steps, got {update_every!r}.")
    def init_fn(params):
        _check_finite(params)

        def init_factor(leaf):
            group = parameter_group(leaf.shape, block_size)
            return group.init(leaf.size, 1.0 / math.sqrt(init_precision), leaf.dtype)

        return StructuredNGDState(jnp.zeros((), jnp.int32), jax.tree.map(init_factor, params))

    def update_fn(updates, state, params=None, *, curvature_grads=None, sampled_params=None, **extra_args):
        del extra_args
        factors = state.factors
        group_tree = jax.tree.map(_group_of, factors, is_leaf=_is_factor)
        rows = _curvature_rows(group_tree, factors, updates, params, curvature_grads, sampled_params, noise_scale)
        if rows is not None:

            def refresh(factors):
                return jax.tree.map(
                    lambda group, b, r: _factor_step(group, b, r, damping, factor_step_size, max_factor_step),
                    group_tree, factors, rows, is_leaf=_is_factor,
                )

            factors = jax.lax.cond(state.count % update_every == 0, refresh, lambda f: f, factors)

        def precondition(group, b, g):
            return group.rsolve(b, group.solve(b, g.reshape(-1))).reshape(g.shape)

        directions = jax.tree.map(precondition, group_tree, factors, updates, is_leaf=_is_factor)
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        if max_update_norm is not None:
            metric = sum(jnp.vdot(g, u) for g, u in zip(jax.tree.leaves(updates), jax.tree.leaves(directions)))
            norm = rate * jnp.sqrt(jnp.maximum(metric, 0.0))
            rate = rate * jnp.minimum(1.0, max_update_norm / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
        new_updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), directions)
        return new_updates, StructuredNGDState(optax.safe_int32_increment(state.count), factors)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sample_params(rng_key, params, state, scale=1.0):
    """``params + scale B^-T eps`` leaf by leaf, ``eps ~ N(0, I)``: a draw from
    ``N(params, scale^2 S^-1)`` (the variational view's weight noise; for ``S``
    the mean per-example curvature of ``N`` examples, ``scale = 1 / sqrt(N)``).
    ``state`` is :func:`structured_ngd`'s state (or a chain's holding it)."""
    if not isinstance(state, StructuredNGDState):
        state = next(s for s in state if isinstance(s, StructuredNGDState))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(rng_key, len(leaves))))

    def draw(key, leaf, b):
        group = _group_of(b)
        eps = jax.random.normal(key, (leaf.size,), leaf.dtype)
        return leaf + scale * group.rsolve(b, eps).reshape(leaf.shape)

    return jax.tree.map(draw, keys, params, state.factors, is_leaf=_is_factor)
