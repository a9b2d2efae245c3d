"""Fast checks of every model of the zoo in ``models/`` and of its reference.

The zoo is every module of ``models/`` that defines ``model`` and ``data``
(other than the helper modules); each must import, load its data, trace, have
a finite log density at its initial point and continuous latent sites only,
and (unless listed in ``NO_REFERENCE``) ship a reference posterior whose
diagnostics pass and whose latent sites are the model's.
"""

import ast
import functools
import importlib
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import init_to_uniform
from numpyro.infer.util import initialize_model

import ngvi.models
from ngvi.models.reference import REFERENCE_DIR, load_reference

MODELS_DIR = Path(ngvi.models.__file__).parent
HELPERS = {"__init__", "make_references"}
# Models without a reference file, and why.
NO_REFERENCE = {
    "mixture_t": "exact target and exact sampler in the module",
    "crossed_effects": "10^5 latents: simulated with known generating values, beyond NUTS here",
}
R_HAT_MAX, ESS_MIN = 1.01, 400


def _defines_model_and_data(path):
    tree = ast.parse(path.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return {"model", "data"} <= defined


ZOO = sorted(
    path.stem
    for path in MODELS_DIR.glob("*.py")
    if path.stem not in HELPERS and _defines_model_and_data(path)
)
WITH_REFERENCE = [name for name in ZOO if name not in NO_REFERENCE]


@functools.lru_cache(maxsize=None)
def load(name):
    """The module, its data, and its latent sites from one trace of the model
    under ``seed`` (traced abstractly: shapes and distributions, no compiling):
    ``{name: {"shape", "discrete", "unconstrained_size"}}`` in trace order."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kwargs = module.data()
    latent = {}

    def run(rng_key):
        trace = handlers.trace(handlers.seed(module.model, rng_key)).get_trace(**kwargs)
        for site_name, site in trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            shape = tuple(np.shape(site["value"]))
            support = site["fn"].support
            size = None if support.is_discrete else math.prod(biject_to(support).inverse_shape(shape))
            latent[site_name] = {"shape": shape, "discrete": support.is_discrete, "unconstrained_size": size}
        return {k: site["value"] for k, site in trace.items() if k in latent}

    values = jax.eval_shape(run, jax.random.PRNGKey(0))
    assert {k: tuple(v.shape) for k, v in values.items()} == {k: s["shape"] for k, s in latent.items()}
    return module, kwargs, latent


@functools.lru_cache(maxsize=None)
def initial_point(name):
    """``initialize_model``'s initial point (``ParamInfo``), compiled once."""
    module, kwargs, _ = load(name)

    @jax.jit
    def init(rng_key):
        info = initialize_model(rng_key, module.model, model_kwargs=kwargs, init_strategy=init_to_uniform)
        return info.param_info

    return init(jax.random.PRNGKey(0))


def test_zoo_is_large_enough():
    assert len(ZOO) >= 14, ZOO
    dims = {name: sum(s["unconstrained_size"] or 0 for s in load(name)[2].values()) for name in ZOO}
    assert sum(dim >= 100 for dim in dims.values()) >= 3, dims


def test_every_reference_file_belongs_to_a_model():
    """Every ``<name>.json`` beside ``kl_optima.json`` (the family's optima, by model) is a NUTS reference of a zoo model."""
    files = sorted(path.stem for path in REFERENCE_DIR.glob("*.json") if path.stem != "kl_optima")
    assert files == WITH_REFERENCE


@pytest.mark.parametrize("name", ZOO)
def test_imports_loads_and_traces(name):
    module, kwargs, latent = load(name)
    assert callable(module.model) and module.__doc__
    assert isinstance(kwargs, dict)
    for value in jax.tree.leaves(kwargs):
        assert np.all(np.isfinite(np.asarray(value)))
    assert latent, f"{name} has no latent site"
    discrete = [site_name for site_name, site in latent.items() if site["discrete"]]
    assert not discrete, f"{name}: discrete latent sites {discrete}"


@pytest.mark.parametrize("name", ZOO)
def test_log_density_is_finite_at_the_initial_point(name):
    _, _, latent = load(name)
    param_info = initial_point(name)
    assert np.isfinite(float(param_info.potential_energy))
    for grad in jax.tree.leaves(param_info.z_grad):
        assert np.all(np.isfinite(np.asarray(grad)))
    assert set(param_info.z) == set(latent)
    for site_name, value in param_info.z.items():
        assert np.size(value) == latent[site_name]["unconstrained_size"]
        assert np.all(np.isfinite(np.asarray(value)))


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_reference(name):
    _, _, latent = load(name)
    assert (REFERENCE_DIR / f"{name}.json").exists()
    ref = load_reference(name)
    assert ref["model"] == name
    assert ref["wall_time_s"] > 0

    stats = ref["diagnostics"]
    if not ref.get("exact", False):
        assert ref["settings"]["sampler"] == "NUTS"
        assert ref["settings"]["num_chains"] >= 4
        assert stats["r_hat_max"] < R_HAT_MAX
        assert stats["ess_min"] > ESS_MIN

    sites = ref["unconstrained"]["sites"]
    assert [s["name"] for s in sites] == list(latent)  # AutoContinuous order
    assert [tuple(s["shape"]) for s in sites] == [s["shape"] for s in latent.values()]
    assert [s["size"] for s in sites] == [s["unconstrained_size"] for s in latent.values()]
    dim = sum(s["size"] for s in sites)
    assert ref["unconstrained"]["dim"] == dim
    assert np.shape(ref["unconstrained"]["mean"]) == (dim,)
    assert np.shape(ref["unconstrained"]["cov"]) == (dim, dim)

    assert {k for k, s in ref["constrained"].items() if s["kind"] == "latent"} == set(latent)
    for site_name, site in ref["constrained"].items():
        shape = tuple(site["shape"])
        assert np.shape(site["mean"]) == np.shape(site["sd"]) == shape
        quantiles = [np.asarray(site["quantiles"][q]) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")]
        assert all(q.shape == shape for q in quantiles)
        assert all(np.all(lo <= hi) for lo, hi in zip(quantiles, quantiles[1:])), site_name
        assert np.all(np.isfinite(site["mean"])) and np.all(np.isfinite(site["sd"]))
