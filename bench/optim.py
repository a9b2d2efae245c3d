"""ngvi.optim.structured_newton against scipy's BFGS, L-BFGS-B and Newton-CG and optax's Adam
on the 200-dimensional Rosenbrock and Dixon-Price functions (MATH.md sec. 7).

    python bench/optim.py            # 3 seeds, ~5 min on 2 cores
    python bench/optim.py --quick    # 1 seed, short runs, ~2 min
    python bench/optim.py --dense    # also Dense (p = 200 products an iteration), seed 0 only, ~4 min more

Writes bench/results/optim[_quick].md and bench/results/optim[_quick].png.
"""

import argparse
import itertools
import os
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.optimize  # noqa: E402

from ngvi import groups  # noqa: E402
from ngvi.optim import structured_newton  # noqa: E402

TARGET, P = 1e-10, 200
RESULTS = Path(__file__).parent / "results"


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def dixon_price(x):
    i = jnp.arange(2, x.shape[0] + 1, dtype=x.dtype)
    return (x[0] - 1.0) ** 2 + jnp.sum(i * (2.0 * x[1:] ** 2 - x[:-1]) ** 2)


# default: k rows + 4 whitened probes for diag(H) + 1 for the mean's line minimiser;
# "k+1": one probe and no line minimiser (the acceptance test alone checks the mean step).
SETTINGS = {"default": {}, "k+1": {"num_probes": 1, "line_search": False}}
PROBLEMS = {"rosenbrock": (rosenbrock, 2.0), "dixon_price": (dixon_price, 10.0)}
GROUPS = {
    "diagonal": groups.Diagonal(),
    "block_lower(1)": groups.BlockLowerTriangular(1),
    "block_lower(5)": groups.BlockLowerTriangular(5),
    "block_lower(10)": groups.BlockLowerTriangular(10),
    "block_upper(1)": groups.BlockUpperTriangular(1),
    "block_upper(5)": groups.BlockUpperTriangular(5),
    "block_upper(10)": groups.BlockUpperTriangular(10),
    "hierarchical(1,1)": groups.Hierarchical(1, 1),
}


def start(seed, half_width):
    return np.random.default_rng(seed).uniform(-half_width, half_width, P)


def run_structured(fn, group, x0s, num_steps, options):
    """One compiled ``run`` per (problem, group, options), timed per seed; returns per-seed
    ``(losses, seconds per iteration, hvp per iteration)`` and the compile time."""
    opt = structured_newton(fn, group, **options)
    key = jax.random.PRNGKey(0)
    states = [opt.init(jnp.asarray(x0)) for x0 in x0s]
    t0 = time.perf_counter()
    compiled = jax.jit(opt.run, static_argnums=2).lower(key, states[0], num_steps).compile()
    compile_s = time.perf_counter() - t0
    out = []
    for state in states:
        t0 = time.perf_counter()
        result = jax.block_until_ready(compiled(key, state))
        seconds = time.perf_counter() - t0
        out.append((np.asarray(result.losses), seconds / num_steps, int(result.info.num_hvp[0])))
    return out, compile_s


def run_scipy(fn, method, x0, max_iter):
    """f after each iteration (from the callback) and its wall time; Hessian-vector
    products counted for Newton-CG."""
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(fn), (x,), (v,))[1])
    value = jax.jit(fn)
    jax.block_until_ready((value_and_grad(jnp.asarray(x0)), hvp(jnp.asarray(x0), jnp.asarray(x0))))  # compile
    count = [0]

    def hessp(x, v):
        count[0] += 1
        return np.asarray(hvp(jnp.asarray(x), jnp.asarray(v)))

    fun = lambda x: tuple(np.asarray(a) for a in value_and_grad(jnp.asarray(x)))
    losses, times, hvps = [float(value(jnp.asarray(x0)))], [0.0], [0]
    t0 = time.perf_counter()

    def callback(x):
        losses.append(float(value(jnp.asarray(x))))
        times.append(time.perf_counter() - t0)
        hvps.append(count[0])

    options = {"maxiter": max_iter, "gtol": 1e-14} if method != "Newton-CG" else {"maxiter": max_iter, "xtol": 1e-14}
    if method == "L-BFGS-B":
        options = {"maxiter": max_iter, "gtol": 1e-14, "ftol": 1e-16, "maxfun": 20 * max_iter}
    scipy.optimize.minimize(fun, x0, jac=True, method=method, callback=callback, options=options,
                            hessp=hessp if method == "Newton-CG" else None)
    return np.asarray(losses), np.asarray(times), np.asarray(hvps)


def run_adam(fn, x0, num_steps, learning_rate=1e-2):
    opt = optax.adam(learning_rate)

    def body(carry, _):
        x, state = carry
        value, grad = jax.value_and_grad(fn)(x)
        updates, state = opt.update(grad, state)
        return (optax.apply_updates(x, updates), state), value

    def run(x):
        (x, _), values = jax.lax.scan(body, (x, opt.init(x)), None, length=num_steps)
        return jnp.concatenate([values, fn(x)[None]])

    x = jnp.asarray(x0)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(x).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = np.asarray(jax.block_until_ready(compiled(x)))
    return losses, (time.perf_counter() - t0) / num_steps, compile_s


def first_hit(losses):
    hit = np.flatnonzero(losses <= TARGET)
    return int(hit[0]) if hit.size else None


def summarise(rows, name, runs, compile_s=None):
    """runs: per seed ``(losses, times, hvps)`` with times and hvps cumulative arrays."""
    hits = [first_hit(losses) for losses, _, _ in runs]
    reached = [h for h in hits if h is not None]
    iters = "/".join("-" if h is None else str(h) for h in hits)
    hvp_to = "/".join("-" if h is None else str(int(hv[h])) for h, (_, _, hv) in zip(hits, runs))
    time_to = "/".join("-" if h is None else f"{t[h]:.2f}" for h, (_, t, _) in zip(hits, runs))
    per_iter = np.median([hv[-1] / max(len(hv) - 1, 1) for _, _, hv in runs])
    finals = "/".join(f"{losses[-1]:.3g}" for losses, _, _ in runs)
    iterations = "/".join(str(len(losses) - 1) for losses, _, _ in runs)
    ms_per_iter = np.median([1e3 * t[-1] / max(len(t) - 1, 1) for _, t, _ in runs])
    rows.append(
        f"| {name} | {len(reached)}/{len(runs)} | {iters} | {hvp_to} | {per_iter:.1f} | {time_to} | "
        f"{ms_per_iter:.3g} | {'-' if compile_s is None else f'{compile_s:.1f}'} | {iterations} | {finals} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, short runs")
    parser.add_argument("--dense", action="store_true", help="also the Dense group, on the first seed")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    steps = {"rosenbrock": 300, "dixon_price": 100} if args.quick else {"rosenbrock": 20000, "dixon_price": 3000}
    scipy_iters = {"rosenbrock": 3000, "dixon_price": 3000}
    dense_steps = {"rosenbrock": 100, "dixon_price": 50} if args.quick else {"rosenbrock": 700, "dixon_price": 300}
    adam_steps = 2000 if args.quick else 20000
    suffix = "_quick" if args.quick else ""
    lines = [
        f"# Structured Newton on 200-dimensional test functions{' (quick)' if args.quick else ''}",
        "",
        f"Float64; seeds {seeds}; target f <= {TARGET:g}. Per-seed values are separated by '/'. "
        "`hvp/it`: Hessian-vector products per iteration (median over the run; structured `default`: k dense rows "
        "(k1 + k2 for hierarchical), 4 whitened probes for diag(H), 1 for the mean's line minimiser; `k+1`: "
        "1 probe and no line minimiser). `to target`: iterations, cumulative "
        "products and wall seconds (excluding compilation) until f first <= target; `ms/it`: median wall time "
        "per iteration. `compile s`: jit compilation "
        "(structured: once per problem and group, shared by the seeds). Load average at start: "
        f"{os.getloadavg()[0]:.2f} (2 shared cores).",
        "",
    ]
    curves = {}
    for problem, (fn, half_width) in PROBLEMS.items():
        x0s = [start(seed, half_width) for seed in seeds]
        rows = [
            f"## {problem} (start uniform in [-{half_width:g}, {half_width:g}])",
            "",
            "| method | seeds at target | iterations to target | hvp to target | hvp/it | seconds to target "
            "| ms/it | compile s | iterations run | final f |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (name, group), (setting, options) in itertools.product(GROUPS.items(), SETTINGS.items()):
            out, compile_s = run_structured(fn, group, x0s, steps[problem], options)
            runs = [(losses, dt * np.arange(len(losses)), hv * np.arange(len(losses))) for losses, dt, hv in out]
            summarise(rows, f"newton {name} {setting}", runs, compile_s)
            if setting == "default":
                curves[(problem, f"newton {name}")] = runs[0][:2]
            print(rows[-1], flush=True)
        if args.dense:
            out, compile_s = run_structured(fn, groups.Dense(), x0s[:1], dense_steps[problem], {})
            runs = [(losses, dt * np.arange(len(losses)), hv * np.arange(len(losses))) for losses, dt, hv in out]
            summarise(rows, "newton dense (first seed)", runs, compile_s)
            curves[(problem, "newton dense")] = runs[0][:2]
            print(rows[-1], flush=True)
        for method in ("BFGS", "L-BFGS-B", "Newton-CG"):
            runs = [run_scipy(fn, method, x0, scipy_iters[problem]) for x0 in x0s]
            summarise(rows, f"scipy {method}", runs)
            curves[(problem, f"scipy {method}")] = runs[0][:2]
            print(rows[-1], flush=True)
        adam = [run_adam(fn, x0, adam_steps) for x0 in x0s]
        runs = [(losses, dt * np.arange(len(losses)), np.zeros(len(losses), int)) for losses, dt, _ in adam]
        summarise(rows, "optax adam(1e-2)", runs, adam[0][2])
        curves[(problem, "optax adam(1e-2)")] = runs[0][:2]
        print(rows[-1], flush=True)
        lines += rows + [""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"optim{suffix}.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for row, problem in enumerate(PROBLEMS):
        for (prob, name), (losses, times) in curves.items():
            if prob != problem:
                continue
            style = "-" if name.startswith("newton") else "--"
            axes[row, 0].loglog(np.arange(1, len(losses) + 1), np.maximum(losses, 1e-16), style, label=name)
            axes[row, 1].loglog(times[1:], np.maximum(losses[1:], 1e-16), style, label=name)
        for col, xlabel in enumerate(("iteration + 1", "wall seconds (compilation excluded)")):
            axes[row, col].set(title=f"{problem}, p = {P}, seed {seeds[0]}", xlabel=xlabel, ylabel="f")
            axes[row, col].axhline(TARGET, color="k", lw=0.5)
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"optim{suffix}.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
