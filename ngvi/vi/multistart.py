"""Multi-start Gaussian fits: where a mixture's components start, so that
every mode a start can reach gets one (no NumPyro needed).

    fits = vi.multistart(potential_fn, starts, rng_key)
    mix = vi.gaussian_mixture(potential_fn, num_components=len(fits.locs))
    state = mix.init(fits.locs, weights=fits.weights)

From every start a ``Diagonal`` Gaussian takes ``num_steps`` natural-gradient
steps (all starts at once: one compiled ``lax.scan`` over a ``vmap``). Unlike
a descent of ``l`` itself, a Gaussian fit cannot fall into a funnel's neck or
run off along an unbounded density: its entropy holds it wide. Fits are then
merged into distinct modes, best first: two fits are one mode when their means
are within ``separation`` combined standard deviations in every coordinate.
For separated modes each fit's ELBO estimates the log of its mode's mass, so
``weights`` (softmax of the negative losses of the distinct fits) are the
mixture weights that the ELBO would choose for components at those modes.
Cost: ``len(starts) * num_steps`` steps of the diagonal family
(``info.num_grads`` each), reported in :attr:`Fits.num_grads`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngvi.groups import Diagonal
from ngvi.vi.structured_gaussian import as_top_level_api as structured_gaussian

__all__ = ["Fits", "multistart"]


class Fits(NamedTuple):
    """Distinct fits, best (lowest loss) first: ``locs`` ``(M, p)``, their
    marginal ``scales``, ``loss`` (the negative ELBO, averaged over the last half of
    the steps), ``weights`` (``softmax(-loss)``), ``counts`` (the starts that
    ended at each) and ``num_grads`` (the gradient evaluations of all the fits)."""

    locs: jax.Array
    scales: jax.Array
    loss: jax.Array
    weights: jax.Array
    counts: np.ndarray
    num_grads: int


def _fit_all(potential_fn, starts, rng_key, num_steps, scale, num_samples):
    group = Diagonal()
    algorithm = structured_gaussian(potential_fn, group=group, num_samples=num_samples)

    def fit(key, start):
        def body(state, key):
            state, info = algorithm.step(key, state)
            return state, (info.loss, info.num_grads)

        state, (losses, grads) = jax.lax.scan(body, algorithm.init(start, scale), jax.random.split(key, num_steps))
        sds = jnp.sqrt(group.covariance_diagonal(state.factor))
        return state.loc, sds, jnp.mean(losses[num_steps // 2 :]), jnp.sum(grads)

    keys = jax.random.split(rng_key, starts.shape[0])
    return jax.jit(jax.vmap(fit))(keys, starts)


def multistart(potential_fn, starts, rng_key, num_steps=100, scale=1.0, separation=3.0, num_samples=8):
    """Fit a ``Diagonal`` Gaussian from every row of ``starts`` (``(n, p)``) and
    merge the fits into distinct modes (module docstring). Fits whose loss is
    not finite are left out; ``ValueError`` if none is finite."""
    starts = jnp.asarray(starts)
    if starts.ndim != 2:
        raise ValueError(f"starts must have shape (n, p) (starts x dimension), got {starts.shape}.")
    locs, sds, losses, grads = map(np.asarray, _fit_all(potential_fn, starts, rng_key, num_steps, scale, num_samples))
    finite = np.flatnonzero(np.isfinite(losses) & np.all(np.isfinite(locs), axis=1))
    if finite.size == 0:
        raise ValueError("no start gave a Gaussian fit with a finite loss; check the starts and the log density.")
    kept, counts = [], []
    for i in finite[np.argsort(losses[finite])]:
        apart = [np.max(np.abs(locs[i] - locs[j]) / np.hypot(sds[i], sds[j])) for j in kept]
        if apart and min(apart) < separation:
            counts[int(np.argmin(apart))] += 1
        else:
            kept.append(i)
            counts.append(1)
    kept = np.asarray(kept)
    weights = jax.nn.softmax(-jnp.asarray(losses[kept]))
    as_jax = lambda x: jnp.asarray(x, starts.dtype)
    return Fits(as_jax(locs[kept]), as_jax(sds[kept]), as_jax(losses[kept]), weights.astype(starts.dtype),
                np.asarray(counts), int(grads.sum()))
