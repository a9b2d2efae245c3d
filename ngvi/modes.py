"""Multi-start mode finding: where to put the components of a
:class:`ngvi.StructuredGaussianMixture` when the posterior has modes that are
far apart and narrow, so that no component would ever see them from its start.

    modes = find_modes(model, starts, *args)
    guide = StructuredGaussianMixture(model, num_components=len(modes.locs), init_locs=modes.locs)

Every start descends ``l(z) = -log p(x, z)`` on NumPyro's flat unconstrained
latent vector with ``optax.adam`` (all starts at once, one compiled ``lax.scan``);
the end points are then merged into distinct modes: two end points belong to
one mode when ``l`` rises by less than ``barrier`` nats above the higher of them
anywhere on the segment between them (checked at a few points), so the test is
free of any length scale.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers

from ngvi.guides.structured_gaussian import StructuredGaussian
from ngvi.target import make_target

__all__ = ["Modes", "find_modes"]

SEGMENT = (0.25, 0.5, 0.75)


class Modes(NamedTuple):
    """Distinct modes, best first: ``locs`` ``(M, p)``, ``potential`` ``l`` at
    them, and ``counts``, how many starts ended in each (its basin's share)."""

    locs: jax.Array
    potential: jax.Array
    counts: np.ndarray


def _descend(potential, starts, num_steps, learning_rate):
    """Adam on ``potential`` from every start (cosine-decayed rate)."""
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, 1e-3))

    def run(z):
        def body(carry, _):
            z, state = carry
            updates, state = optimizer.update(jax.grad(potential)(z), state, z)
            return (optax.apply_updates(z, updates), state), None

        return jax.lax.scan(body, (z, optimizer.init(z)), None, length=num_steps)[0][0]

    return jax.jit(jax.vmap(run))(starts)


def _same_mode(potential, barrier):
    """``(a, b) -> bool``: no rise of ``barrier`` above ``max(l(a), l(b))`` between them."""

    def same(a, b):
        ceiling = jnp.maximum(potential(a), potential(b)) + barrier
        between = jax.vmap(lambda t: potential(a + t * (b - a)))(jnp.asarray(SEGMENT, a.dtype))
        return jnp.all(between < ceiling)

    return jax.jit(same)


def find_modes(model, starts, *args, num_steps=2000, learning_rate=0.5, barrier=1.0, rng_key=None, **kwargs):
    """Descend from every row of ``starts`` (``(n, p)``, unconstrained) and merge
    the end points into distinct modes (:class:`Modes`). ``num_steps`` Adam steps
    per start, each one gradient of ``l``: ``n * num_steps`` gradient evaluations."""
    guide = StructuredGaussian(model)
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    with handlers.block():
        handlers.seed(guide, key)(*args, **kwargs)
    starts = jnp.asarray(starts, guide._init_latent.dtype)
    if starts.ndim != 2 or starts.shape[1] != guide.latent_dim:
        raise ValueError(
            f"starts must have shape (n, {guide.latent_dim}) (starts x latent dimension), got {starts.shape}."
        )
    potential = make_target(model, guide, key, args, kwargs).potential
    ends = _descend(potential, starts, num_steps, learning_rate)
    values = jax.vmap(potential)(ends)
    finite = np.flatnonzero(np.isfinite(np.asarray(values)))
    if finite.size == 0:
        raise ValueError("no start ended at a finite log density; check the starts and the model.")
    same = _same_mode(potential, barrier)
    kept, counts = [], []
    for i in finite[np.argsort(np.asarray(values)[finite])]:
        for j, m in enumerate(kept):
            if bool(same(ends[m], ends[i])):
                counts[j] += 1
                break
        else:
            kept.append(i)
            counts.append(1)
    kept = np.asarray(kept)
    return Modes(ends[kept], values[kept], np.asarray(counts))
