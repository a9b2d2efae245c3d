"""``ngvi fit MODEL``: fit a NumPyro model with natural-gradient VI, print an
ArviZ summary, optionally compare with NUTS and write InferenceData and plots."""

import argparse
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from ngvi import groups
from ngvi.estimators import ESTIMATORS
from ngvi.guides import StructuredGaussian
from ngvi.infer import NGVI
from ngvi.inference_data import to_inference_data

__all__ = ["main", "parse_group", "load_model"]

_GROUPS = {
    "dense": (groups.Dense, 0),
    "diagonal": (groups.Diagonal, 0),
    "lower": (groups.LowerTriangular, 0),
    "upper": (groups.UpperTriangular, 0),
    "toeplitz": (groups.TriangularToeplitz, 0),
    "block_upper": (groups.BlockUpperTriangular, 1),
    "block_lower": (groups.BlockLowerTriangular, 1),
    "hierarchical": (groups.Hierarchical, 2),
}


def parse_group(spec):
    """``"block_upper:4"`` -> ``BlockUpperTriangular(4)``, ``"hierarchical:2,3"`` -> ``Hierarchical(2, 3)``."""
    name, _, sizes = spec.partition(":")
    if name not in _GROUPS:
        raise ValueError(f"unknown group {spec!r}; choose one of: {', '.join(_GROUPS)} (sizes after ':').")
    cls, num_sizes = _GROUPS[name]
    try:
        values = [int(s) for s in sizes.split(",")] if sizes else []
    except ValueError:
        raise ValueError(f"group sizes must be integers, got {spec!r}.") from None
    if len(values) != num_sizes:
        raise ValueError(f"group {name!r} takes {num_sizes} size(s) after ':', got {spec!r}.")
    return cls(*values)


def load_model(name):
    """A module with ``model`` and ``data()``: a file path, or a name in ``models/``."""
    path = Path(name)
    if path.suffix == ".py":
        if not path.exists():
            raise ValueError(f"no model file {name!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as err:
            raise ValueError(f"model file {name!r} needs a module that is not installed: {err}") from err
    else:
        module_name = f"ngvi.models.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise ValueError(f"model {name!r} needs a module that is not installed: {err}") from err
            raise ValueError(f"no model {name!r}: give a name in models/ or a path to a .py file") from err
    for attr in ("model", "data"):
        if not hasattr(module, attr):
            raise ValueError(f"{name} must define `model` and `data()`; `{attr}` is missing.")
    return module


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return int(text)


def _auto_or_positive_int(text):
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text}") from None


def _parser():
    parser = argparse.ArgumentParser(prog="ngvi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit a model with natural-gradient VI")
    fit.add_argument("model", help="a model name in models/ or a path to a file defining `model` and `data()`")
    fit.add_argument("--group", default="dense", help="dense, diagonal, lower, upper, toeplitz, block_upper:K, block_lower:K, hierarchical:K1,K2")
    fit.add_argument("--steps", type=_positive_int, default=None,
                     help="run exactly this many steps (default: until converged, at most --max-steps)")
    fit.add_argument("--tol", type=float, default=0.03, help="the error the converged answer must reach, in posterior sds")
    fit.add_argument("--max-steps", type=_positive_int, default=120_000,
                     help="the most steps without --steps, counted at the first number of draws (default: 120000)")
    fit.add_argument("--estimator", default="auto", choices=sorted(ESTIMATORS))
    fit.add_argument("--step-size", type=float, default=0.5)
    fit.add_argument("--num-samples", type=_auto_or_positive_int, default="auto",
                     help="Monte-Carlo samples per step (default 'auto': 8, more once the answer needs them)")
    fit.add_argument("--draws", type=_positive_int, default=2000, help="posterior draws for the summary")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--laplace", action="store_true", help="start at the MAP with the Laplace precision (warm_start='laplace')")
    fit.add_argument("--compare-nuts", action="store_true", help="also run NUTS and print both side by side")
    fit.add_argument("--out", type=Path, help="directory for InferenceData (netCDF) and plots")
    fit.add_argument("--x64", action="store_true", help="use float64")
    fit.add_argument("--no-cache", action="store_true",
                     help="do not use JAX's persistent compilation cache (default: $NGVI_CACHE_DIR, else ~/.cache/ngvi/jax)")
    return parser


def cache_dir():
    """Where compiled programs are kept between runs: ``$NGVI_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ngvi/jax`` (``~/.cache/ngvi/jax``)."""
    if os.environ.get("NGVI_CACHE_DIR"):
        return Path(os.environ["NGVI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ngvi" / "jax"


def _use_compilation_cache():
    """JAX's persistent compilation cache in :func:`cache_dir`, so that a second
    run of the same model and settings loads its programs instead of compiling
    them: all of them, also the one-operation programs of NumPyro's eager set-up
    (~160 of ~50 ms each on a small model). Set before anything is compiled."""
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _run_nuts(module, key, data):
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(module.model), num_warmup=1000, num_samples=1000, num_chains=2, chain_method="sequential")
    mcmc.run(key, **data)
    return mcmc


def _side_by_side(idata_vi, idata_nuts):
    import arviz as az
    import pandas as pd

    vi = az.summary(idata_vi, kind="stats")[["mean", "sd"]]
    nuts = az.summary(idata_nuts, kind="stats")[["mean", "sd"]]
    table = pd.concat({"ngvi": vi, "nuts": nuts}, axis=1).dropna()
    table[("mean diff / sd", "")] = (table[("ngvi", "mean")] - table[("nuts", "mean")]) / table[("nuts", "sd")]
    table[("sd ratio", "")] = table[("ngvi", "sd")] / table[("nuts", "sd")]
    return table


def _write_outputs(out, idata, losses, idata_nuts):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(out / "ngvi.nc")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses)
    ax.set(xlabel="step", ylabel="negative ELBO (estimate)", yscale="symlog")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    if idata_nuts is not None:
        idata_nuts.to_netcdf(out / "nuts.nc")
        axes = az.plot_forest([idata, idata_nuts], model_names=["ngvi", "nuts"], combined=True)
        axes.ravel()[0].figure.savefig(out / "forest.png", dpi=120, bbox_inches="tight")
    plt.close("all")
    print(f"wrote {out}/ngvi.nc, loss.png" + (", nuts.nc, forest.png" if idata_nuts is not None else ""))


def fit(options):
    import arviz as az

    if not options.no_cache:
        _use_compilation_cache()
    if options.x64:
        jax.config.update("jax_enable_x64", True)
    module = load_model(options.model)
    try:
        data = module.data()
    except FileNotFoundError as err:
        raise ValueError(f"{options.model}: data() could not read {err.filename!r}") from err
    guide = StructuredGaussian(module.model, group=parse_group(options.group))
    ngvi = NGVI(
        module.model, guide, step_size=options.step_size, num_samples=options.num_samples,
        estimator=options.estimator, warm_start="laplace" if options.laplace else None,
        tol=options.tol, max_steps=options.max_steps,
    )
    fit_key, draw_key, nuts_key = jax.random.split(jax.random.PRNGKey(options.seed), 3)
    start = time.perf_counter()
    result = ngvi.run(fit_key, options.steps, **data)
    jax.block_until_ready(result.state)
    vi_seconds = time.perf_counter() - start
    idata = to_inference_data(guide, result.params, num_samples=options.draws, rng_key=draw_key, losses=result.losses, **data)
    start_text = ", from a Laplace start" if options.laplace else ""
    stopped = {"converged": ", converged", "max_steps": ", not converged (max steps)", "num_steps": ""}[result.stop_reason]
    print(f"\nngvi: {options.model}, group {guide.group!r}, estimator {options.estimator}, "
          f"{result.losses.shape[0]} steps{stopped}{start_text} "
          f"in {vi_seconds:.1f} s, rejected steps {int(result.state.num_rejected)}, "
          f"final loss {float(jnp.nanmean(result.losses[-50:])):.3f}, Pareto k {idata.attrs['pareto_k']:.2f}")
    print(az.summary(idata, kind="stats").to_string())
    idata_nuts = None
    if options.compare_nuts:
        start = time.perf_counter()
        idata_nuts = az.from_numpyro(_run_nuts(module, nuts_key, data))
        nuts_seconds = time.perf_counter() - start
        print(f"\nngvi ({vi_seconds:.1f} s) against NUTS (2 chains x 1000 draws, {nuts_seconds:.1f} s):")
        print(_side_by_side(idata, idata_nuts).to_string(float_format=lambda x: f"{x:.3f}"))
    if options.out is not None:
        _write_outputs(options.out, idata, result.losses, idata_nuts)


def main(argv=None):
    options = _parser().parse_args(argv)
    try:
        fit(options)
    except ValueError as err:
        print(f"ngvi: error: {err}", file=sys.stderr)
        return 2
    return 0
