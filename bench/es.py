"""Structured evolution strategies (``ngvi.optim.structured_es``) against pycma and xNES.

    nice -n 10 python bench/es.py            # results/es.md
    nice -n 10 python bench/es.py --quick    # results/es_quick.md

Evaluations of ``f`` until the best value so far is ``<= 1e-8`` (counted at the
end of the generation that reaches it; ``-`` if not within the cap), float64.

1. Dense problems, d = 10, 20, 40 (``--quick``: 10, 20): the rotated ellipsoid
   ``sum_i 1e6^{i/(d-1)} (R w)_i^2`` (``R`` Haar, seed 0) from ``w = 1``, scale 1, and
   Rosenbrock from ``w = 0``, scale 0.5. ``structured_es`` with ``Dense``, the faithful
   xNES of ``bench/xnes.py`` (matrix exponential, independent draws) and pycma's
   CMA-ES (defaults), each at its default population size.
2. The structured claim: p coordinates, an ellipsoid with condition 1e6 rotated
   inside the first k = 10 coordinates (which take the scales at 10 evenly spaced
   ranks of the whole range, so the rotated block is itself ill-conditioned),
   the identity elsewhere; from ``w = 1``, scale 1. ``structured_es`` with
   ``BlockUpperTriangular(10)``, ``BlockLowerTriangular(10)`` and ``Diagonal``
   against separable CMA-ES (pycma ``CMA_diagonal=True``) and pycma's VkD-CMA
   (``GaussVkDSampler``, C = D (I + V V^T) D with adapted k, O(k^2 p) like the block groups).
   ``--p`` sets p (default 200; ``--quick`` 100); ``--only dense`` runs part 1 alone
   (results/es[_quick]_dense.md). VkD-CMA is pure Python: about 250 s per run at p = 100.

pycma is not a dependency of ngvi (pyproject.toml has no ``bench`` extra):
``pip install cma``. pycma's seed is ``seed + 1`` (its seed 0 means "random").
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, str(Path(__file__).parent))
from xnes import evaluations_to_target, rosenbrock, rotated_ellipsoid, xnes  # noqa: E402

from ngvi import groups  # noqa: E402
from ngvi.optim import structured_es  # noqa: E402

TARGET = 1e-8


def block_ellipsoid(p, k=10, condition=1e6, seed=0):
    """The rotated-block ellipsoid of part 2."""
    scales = condition ** (np.arange(p) / (p - 1))
    head = np.round(np.linspace(0, p - 1, k)).astype(int)
    scales = jnp.asarray(np.concatenate([scales[head], np.delete(scales, head)]))
    rotation = jnp.asarray(np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))[0])
    return lambda w: jnp.sum(scales * w.at[:k].set(rotation @ w[:k]) ** 2)


def run_ngvi(f, group, x0, sigma, seed, cap):
    es = structured_es(f, group)
    return evaluations_to_target(es.run, jax.random.PRNGKey(seed), es.init(x0, sigma), TARGET, cap, chunk=500)


def run_xnes(f, x0, sigma, seed, cap):
    init, _, run = xnes(f, x0.shape[0])
    return evaluations_to_target(run, jax.random.PRNGKey(seed), init(x0, sigma), TARGET, cap, chunk=500)


def run_cma(f, x0, sigma, seed, cap, **options):
    import cma

    batch = jax.jit(jax.vmap(f))
    opts = {"seed": seed + 1, "ftarget": TARGET, "maxfevals": cap, "verbose": -9, **options}
    es = cma.CMAEvolutionStrategy(np.asarray(x0), sigma, opts)
    while not es.stop():
        xs = es.ask()
        es.tell(xs, np.asarray(batch(jnp.asarray(np.array(xs)))).tolist())
    best = es.result.fbest
    return (es.result.evaluations if best <= TARGET else None), best


def vkd_options():
    from cma.restricted_gaussian_sampler import GaussVkDSampler

    return GaussVkDSampler.extend_cma_options({})


def fmt(result):
    n, best = result
    return f"{n:,}" if n is not None else f"- (best {best:.1e})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--p", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--only", choices=["dense"], default=None, help="part 1 only")
    args = parser.parse_args()
    dims = (10, 20) if args.quick else (10, 20, 40)
    seeds = range(args.seeds or (1 if args.quick else 3))
    p = args.p or (100 if args.quick else 200)
    start = time.time()
    lines = [
        "# Structured ES against xNES and pycma" + (" (--quick)" if args.quick else ""),
        "",
        f"    python bench/es.py{' --quick' if args.quick else ''}{f' --p {args.p}' if args.p else ''}",
        "",
        f"Python {platform.python_version()}, jax {jax.__version__}, float64, 2 shared cores; seeds {list(seeds)}"
        " (jax keys; pycma seed + 1). Evaluations of f to best f <= 1e-8, per seed; '-': not within the cap.",
        "",
        "## Dense problems",
        "",
        "| problem | d | structured_es Dense | xNES (expm) | CMA-ES (pycma) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, make, x0, sigma in [
        ("rotated ellipsoid 1e6", lambda d: rotated_ellipsoid(d), jnp.ones, 1.0),
        ("Rosenbrock", lambda d: rosenbrock, jnp.zeros, 0.5),
    ]:
        for d in dims:
            f, cap = make(d), 400 * d**2
            cells = [[], [], []]
            for s in seeds:
                cells[0].append(fmt(run_ngvi(f, groups.Dense(), x0(d), sigma, s, cap)))
                cells[1].append(fmt(run_xnes(f, x0(d), sigma, s, cap)))
                cells[2].append(fmt(run_cma(f, x0(d), sigma, s, cap)))
            lines.append(f"| {name} | {d} | " + " | ".join(", ".join(c) for c in cells) + " |")
            print(lines[-1], f"[{time.time() - start:.0f} s]", flush=True)
    if args.only == "dense":
        return finish(lines, args, start)
    k, cap = 10, 8000 * p
    f = block_ellipsoid(p, k)
    block_floats = k * k + k * (p - k) + (p - k)
    lines += [
        "",
        f"## Structured: p = {p}, condition 1e6, rotated inside the first {k} coordinates (cap {cap:,} evaluations)",
        "",
        "| method | floats in the factor | evaluations to 1e-8 | wall s (incl. compile) |",
        "| --- | --- | --- | --- |",
    ]
    methods = [
        ("structured_es BlockUpperTriangular(10)", block_floats,
         lambda s: run_ngvi(f, groups.BlockUpperTriangular(k), jnp.ones(p), 1.0, s, cap)),
        ("structured_es BlockLowerTriangular(10)", block_floats,
         lambda s: run_ngvi(f, groups.BlockLowerTriangular(k), jnp.ones(p), 1.0, s, cap)),
        ("structured_es Diagonal", p, lambda s: run_ngvi(f, groups.Diagonal(), jnp.ones(p), 1.0, s, cap)),
        ("sep-CMA-ES (pycma CMA_diagonal=True)", 2 * p,
         lambda s: run_cma(f, jnp.ones(p), 1.0, s, cap, CMA_diagonal=True)),
        ("VkD-CMA (pycma GaussVkDSampler)", "(k_t + 1) p",
         lambda s: run_cma(f, jnp.ones(p), 1.0, s, cap, **vkd_options())),
    ]
    for label, floats, method in methods:
        results, t0 = [], time.time()
        for s in seeds:
            results.append(fmt(method(s)))
        lines.append(f"| {label} | {floats} | {', '.join(results)} | {time.time() - t0:.0f} |")
        print(lines[-1], f"[{time.time() - start:.0f} s]", flush=True)
    finish(lines, args, start)


def finish(lines, args, start):
    lines += ["", f"Total run time {time.time() - start:.0f} s."]
    name = "es_quick" if args.quick else "es"
    out = Path(__file__).parent / "results" / (name + ("_dense" if args.only == "dense" else "") + ".md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
