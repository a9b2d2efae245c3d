"""Checkpoints of a run: one ``.npz`` of plain arrays that a fresh process
resumes from (:meth:`ngvi.NGVI.run` with ``checkpoint=``).

A checkpoint holds the run's state (the algorithm's state, the model's
``numpyro.param`` sites and their optimiser, the key stream), the per-step
diagnostics so far, the host-side bookkeeping of the stopping rule (plain
numbers, ``None``, tuples, dicts and arrays: see :func:`encode`) and a
description of the fit (guide, group, latent sites and their shapes) that a
resuming run must match. It is written to a temporary file and renamed over
the old one, so a process killed while writing leaves the previous checkpoint
whole.
"""

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngvi.convergence import Check, Window

__all__ = ["Checkpoint", "describe", "save", "load", "encode", "decode"]

# 2: the bookkeeping of run(key, None) counts the budget spent (steps times the draws' scale).
FORMAT = 2
RECORDS = {"Window": Window, "Check": Check}
"""The named tuples a checkpoint's bookkeeping may hold."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns: the run's ``state`` and ``info`` (the per-step
    diagnostics so far, stacked), the ``steps`` done and the ``bookkeeping``
    saved beside them (``None`` for a run of a fixed number of steps)."""

    state: Any
    info: Any
    steps: int
    bookkeeping: Any


def describe(guide, num_steps):
    """The fit a checkpoint belongs to: the guide's type, group and latent
    sites (unconstrained shapes), and the run's ``num_steps`` (``None``: until converged)."""
    latent = {name: list(jnp.shape(value)) for name, value in guide._init_locs.items()}
    return {"guide": type(guide).__name__, "group": repr(guide.group), "latent": latent, "num_steps": num_steps}


def encode(obj, arrays, name, treedef):
    """``obj`` as JSON-ready data: numbers, strings and ``None`` as they are,
    named tuples of :data:`RECORDS` by their fields, tuples and dicts by their
    items, and a pytree of structure ``treedef`` (e.g. ``q``'s parameters) or
    an array by its leaves, moved into ``arrays`` under keys starting with ``name``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if jax.tree.structure(obj) == treedef:
        arrays.update({f"{name}.{i}": leaf for i, leaf in enumerate(_leaves(obj))})
        return {"tree": name}
    if isinstance(obj, tuple) and type(obj).__name__ in RECORDS:
        fields = {field: encode(value, arrays, f"{name}.{field}", treedef) for field, value in obj._asdict().items()}
        return {"record": type(obj).__name__, "fields": fields}
    if isinstance(obj, (tuple, list)):
        return {"tuple": [encode(value, arrays, f"{name}.{i}", treedef) for i, value in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"dict": {key: encode(value, arrays, f"{name}.{key}", treedef) for key, value in obj.items()}}
    arrays[name] = np.asarray(obj)
    return {"array": name}


def decode(data, arrays, treedef):
    """The inverse of :func:`encode` (arrays as ``jax.Array``)."""
    if not isinstance(data, dict):
        return data
    if "tree" in data:
        return jax.tree.unflatten(treedef, [jnp.asarray(arrays[f"{data['tree']}.{i}"]) for i in range(treedef.num_leaves)])
    if "record" in data:
        return RECORDS[data["record"]](**{key: decode(value, arrays, treedef) for key, value in data["fields"].items()})
    if "tuple" in data:
        return tuple(decode(value, arrays, treedef) for value in data["tuple"])
    if "dict" in data:
        return {key: decode(value, arrays, treedef) for key, value in data["dict"].items()}
    return jnp.asarray(arrays[data["array"]])


def _leaves(tree):
    """The leaves of ``tree`` as NumPy arrays (typed PRNG keys as their key data)."""
    return [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(tree)]


def _is_key(x):
    """Whether ``x`` is a typed PRNG key array."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(path, description, state, info, steps, bookkeeping=None, treedef=None):
    """Write the checkpoint of a run ``description`` (:func:`describe`) after
    ``steps`` steps, atomically (a temporary file renamed over ``path``);
    ``bookkeeping`` as :func:`encode` takes it, with its pytrees of structure ``treedef``."""
    arrays = {f"state.{i}": leaf for i, leaf in enumerate(_leaves(state))}
    arrays.update({f"info.{i}": leaf for i, leaf in enumerate(_leaves(info))})
    meta = {"format": FORMAT, "fit": description, "steps": steps, "bookkeeping": encode(bookkeeping, arrays, "book", treedef)}
    arrays["meta"] = np.asarray(json.dumps(meta))
    temporary = f"{path}.tmp.npz"
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)


def load(path, description, state_like, info_like, treedef=None):
    """The checkpoint at ``path``, its state and diagnostics in the structure of
    ``state_like`` and ``info_like`` (an info of one step), its bookkeeping's
    pytrees in ``treedef``'s. ``ValueError`` if
    it belongs to another fit (another guide, group, latent layout or
    ``num_steps``) or its arrays do not fit this run's (naming the first that differs)."""
    with np.load(path) as file:
        arrays = dict(file)
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"Checkpoint {path} has format {meta.get('format')}; this version of ngvi reads format {FORMAT}.")
    for key, value in description.items():
        if meta["fit"].get(key) != value:
            raise ValueError(
                f"Checkpoint {path} is of another fit: its {key} is {meta['fit'].get(key)!r}, this run's is {value!r}. "
                "Remove the file, or pass another checkpoint path, to start afresh."
            )
    state = _restore(path, "state", arrays, state_like)
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((meta["steps"],) + x.shape, x.dtype), info_like)
    info = _restore(path, "info", arrays, stacked)
    return Checkpoint(state, info, meta["steps"], decode(meta["bookkeeping"], arrays, treedef))


def _restore(path, name, arrays, like):
    """The tree of ``like``'s structure from ``arrays[f"{name}.{i}"]``, each leaf
    checked against ``like``'s shape and dtype (typed PRNG keys rewrapped)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    if sum(key.startswith(f"{name}.") for key in arrays) != len(paths):
        raise ValueError(f"Checkpoint {path} holds another {name} structure than this run's.")
    leaves = []
    for i, (where, template) in enumerate(paths):
        value = arrays[f"{name}.{i}"]
        expected = jax.random.key_data(template) if _is_key(template) else template
        if value.shape != tuple(expected.shape) or value.dtype != expected.dtype:
            raise ValueError(
                f"Checkpoint {path}: {name}{jax.tree_util.keystr(where)} has shape {value.shape} and dtype {value.dtype},"
                f" this run's has {tuple(expected.shape)} and {expected.dtype}."
            )
        key = _is_key(template)
        leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(template)) if key else jnp.asarray(value))
    return jax.tree.unflatten(treedef, leaves)
