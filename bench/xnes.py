"""A faithful xNES (Glasmachers, Schaul, Sun, Wierstra, Schmidhuber, GECCO 2010), the
yardstick for ``ngvi.optim.structured_es``, and the problems and the
evaluations-to-target loop the ES benchmark and tests share.

xNES, plainly: ``z_k = mu + sigma B s_k``, ``s_k ~ N(0, I)`` independent, rank
utilities ``u_k`` (the same formula as ``ngvi.optim.es.rank_utilities``, written out here),

    G_delta = sum_k u_k s_k,   G_M = sum_k u_k (s_k s_k^T - I),
    G_sigma = tr(G_M) / d,     G_B = G_M - G_sigma I,
    mu <- mu + eta_mu sigma B G_delta,  sigma <- sigma exp(eta_sigma G_sigma / 2),  B <- B expm(eta_B G_B / 2),

``n = 4 + floor(3 log d)``, ``eta_mu = 1``, ``eta_sigma = eta_B = (9 + 3 log d) / (5 d^{3/2})``.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm


class XNESState(NamedTuple):
    mean: jax.Array
    sigma: jax.Array
    shape: jax.Array
    best_value: jax.Array
    num_evaluations: jax.Array


class XNESInfo(NamedTuple):
    best_value: jax.Array
    num_evaluations: jax.Array


def xnes(f, dim, population_size=None):
    """``(init(mean, sigma), step(key, state), run(key, state, num_generations))`` for xNES on ``f``."""
    n = 4 + int(math.floor(3 * math.log(dim))) if population_size is None else population_size
    eta = (9 + 3 * math.log(dim)) / (5 * dim**1.5)
    raw = np.maximum(0.0, np.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    utilities = raw / raw.sum() - 1.0 / n

    def init(mean, sigma):
        mean = jnp.asarray(mean, jnp.result_type(float))
        eye = jnp.eye(dim, dtype=mean.dtype)
        inf = jnp.asarray(jnp.inf, mean.dtype)
        return XNESState(mean, jnp.asarray(sigma, mean.dtype), eye, inf, jnp.zeros((), jnp.int32))

    def step(key, state):
        s = jax.random.normal(key, (n, dim), state.mean.dtype)
        z = state.mean + state.sigma * s @ state.shape.T
        values = jax.vmap(f)(z)
        u = jnp.asarray(utilities, s.dtype)[jnp.argsort(jnp.argsort(values))]
        g_delta = u @ s
        g_m = (s.T * u) @ s - jnp.sum(u) * jnp.eye(dim, dtype=s.dtype)
        g_sigma = jnp.trace(g_m) / dim
        g_b = g_m - g_sigma * jnp.eye(dim, dtype=s.dtype)
        new = XNESState(
            state.mean + state.sigma * state.shape @ g_delta,
            state.sigma * jnp.exp(0.5 * eta * g_sigma),
            state.shape @ expm(0.5 * eta * g_b),
            jnp.minimum(state.best_value, jnp.min(values)),
            state.num_evaluations + n,
        )
        return new, XNESInfo(new.best_value, new.num_evaluations)

    def run(key, state, num_generations):
        return jax.lax.scan(lambda s, k: step(k, s), state, jax.random.split(key, num_generations))

    return init, step, run


def rotated_ellipsoid(dim, condition=1e6, seed=0, rotated=None):
    """``f(w) = sum_i condition^{i/(d-1)} (R w)_i^2`` with ``R`` Haar-random (seeded),
    or rotating only the coordinates ``rotated`` (a slice) and the identity elsewhere."""
    rng = np.random.default_rng(seed)
    scales = jnp.asarray(condition ** (np.arange(dim) / (dim - 1)))
    if rotated is None:
        rotation = jnp.asarray(np.linalg.qr(rng.standard_normal((dim, dim)))[0])
        return lambda w: jnp.sum(scales * (rotation @ w) ** 2)
    k = rotated.stop - rotated.start
    block = jnp.asarray(np.linalg.qr(rng.standard_normal((k, k)))[0])
    return lambda w: jnp.sum(scales * w.at[rotated].set(block @ w[rotated]) ** 2)


def rosenbrock(w):
    """``sum_i 100 (w_{i+1} - w_i^2)^2 + (1 - w_i)^2``, minimum 0 at ``w = 1``."""
    return jnp.sum(100.0 * (w[1:] - w[:-1] ** 2) ** 2 + (1.0 - w[:-1]) ** 2)


def evaluations_to_target(run, key, state, target=1e-8, max_evaluations=10**6, chunk=200):
    """Evaluations used when the best value so far first reaches ``target``
    (``None`` if not within ``max_evaluations``), running ``run(key, state, chunk)``
    (jit-compiled once) chunk after chunk; also the final best value."""
    run = jax.jit(run, static_argnums=2)
    while True:
        key, sub = jax.random.split(key)
        state, info = run(sub, state, chunk)
        best, evals = np.asarray(info.best_value), np.asarray(info.num_evaluations)
        hit = np.flatnonzero(best <= target)
        if hit.size:
            return int(evals[hit[0]]), float(best[hit[0]])
        if evals[-1] >= max_evaluations or not np.isfinite(state.mean).all():
            return None, float(best[-1])
