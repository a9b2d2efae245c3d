"""Wall time and peak memory of one natural-gradient step per group and dimension.

    python bench/groups.py [--quick] [--float64] [--only dense,diagonal,...]

One step (MATH.md sec. 3-5), jit-compiled once per (group, p):
draw ``eps ~ N(0, I)`` (8 samples), ``z = mu + B^-T eps``, ``g = grad l(z)`` for
the synthetic loss ``l(z) = sum(a z^2)/2 + ||U z||^2/2`` (``U`` is 2 x p, so a
gradient costs O(p)), the gradient-only curvature ``H = sym(P^T g)`` with
``P = B eps / 8``, then ``local_gradient``, ``natural_direction``,
``retract(B, 0.1 * direction)`` and ``mu - 0.1 B^-T B^-1 mean(g)``.

Kronecker is ``Dense(p1) ⊗ Dense(p2)`` with ``p1`` the largest divisor of ``p``
not above ``sqrt(p)`` (25x40, 100x100, 250x400, 1000x1000).

Each (group, p) runs in a fresh subprocess (``--quick``: one for all). Peak
memory is the peak RSS of one step (``VmHWM`` after a reset, minus ``VmRSS``
just before it) in a process that has already imported jax, allocated the
inputs, compiled the step and run it once; it counts the step's output state
and temporaries, not the inputs or the executable (see ``bench/_util.py``). Results go to ``bench/results/groups[_quick][_float64].json``.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _util import loglog_slope, peak_mib, release_free_memory, reset_peak, rss_mib, time_runs  # noqa: E402

N_SAMPLES, BETA, GAMMA, RANK = 8, 0.1, 1.0, 2
STRUCTURED = ["block_upper", "block_lower", "hierarchical", "diagonal", "kronecker"]
SIZES = {**{name: [10**3, 10**4, 10**5, 10**6] for name in STRUCTURED}, "dense": [250, 500, 1000, 2000, 4000]}
QUICK_MAX_P = {"dense": 1000, **{name: 10**4 for name in STRUCTURED}}
# Fit rule: points with a median step under 1 ms (dispatch overhead) or a peak
# under 1 MiB (allocator / page granularity) are left out of the log-log fits.
MIN_FIT_MS, MIN_FIT_MIB = 1.0, 1.0
# jaxlib's LAPACK calls (LU, triangular solves) run on scipy's OpenBLAS, whose
# spinning thread pool fights XLA's own pool on 2 cores and stalls each call by
# 4-150 ms; workers therefore default to one BLAS thread (override via the env).
BLAS_THREADS = "1"


def near_square(p):
    """``(p1, p2)`` with ``p1 * p2 = p`` and ``p1`` the largest divisor ``<= sqrt(p)``."""
    p1 = next(d for d in range(math.isqrt(p), 0, -1) if p % d == 0)
    return p1, p // p1


def make_group(name, p):
    """The group benchmarked under ``name`` at dimension ``p``, and a layout label."""
    from ngvi import groups

    if name == "kronecker":
        shape = near_square(p)
        return groups.Kronecker(groups.Dense(), groups.Dense(), shape=shape), "dense(%d)xdense(%d)" % shape
    return {
        "block_upper": (groups.BlockUpperTriangular(8), "k=8"),
        "block_lower": (groups.BlockLowerTriangular(8), "k=8"),
        "hierarchical": (groups.Hierarchical(4, 4), "k1=4,k2=4"),
        "diagonal": (groups.Diagonal(), "-"),
        "dense": (groups.Dense(), "-"),
    }[name]


def make_step(group, p, dtype):
    """The jittable step ``(b, mu, key, a, u) -> (b_new, mu_new)``."""
    import jax
    import jax.numpy as jnp

    from ngvi.curvature import LowRankCurvature

    def loss(z, a, u):
        return 0.5 * jnp.sum(a * z**2) + 0.5 * jnp.sum((u @ z) ** 2)

    grads = jax.vmap(jax.grad(loss), in_axes=(0, None, None))

    def step(b, mu, key, a, u):
        eps = jax.random.normal(key, (N_SAMPLES, p), dtype)
        z = mu + jax.vmap(lambda e: group.rsolve(b, e))(eps)
        g = grads(z, a, u)
        p_factor = jax.vmap(lambda e: group.matvec(b, e))(eps) / N_SAMPLES
        x = group.local_gradient(b, LowRankCurvature(p_factor, g), GAMMA)
        direction = group.natural_direction(x)
        b_new = group.retract(b, jax.tree.map(lambda t: BETA * t, direction))
        mu_new = mu - BETA * group.rsolve(b, group.solve(b, jnp.mean(g, axis=0)))
        return b_new, mu_new

    return step


def measure(name, p, dtype, budget_s):
    """Compile time, step time and step peak memory of one (group, p), in this process."""
    import jax
    import jax.numpy as jnp

    group, layout = make_group(name, p)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    b = group.init(p, scale=1.0, dtype=dtype)
    mu = 0.1 * jax.random.normal(k1, (p,), dtype)
    a = jax.random.uniform(k2, (p,), dtype, 0.5, 2.0)
    u = jax.random.normal(k3, (RANK, p), dtype) / math.sqrt(p)
    args = jax.block_until_ready((b, mu, jax.random.key(1), a, u))
    state_mib = sum(x.nbytes for x in jax.tree.leaves((b, mu))) / 2**20

    t0 = time.perf_counter()
    compiled = jax.jit(make_step(group, p, dtype)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: jax.block_until_ready(compiled(*args))
    out = run()  # warm-up: one-time runtime allocations
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    del out

    release_free_memory()
    baseline = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    out = run()
    first_s, peak = time.perf_counter() - t0, peak_mib() - baseline
    del out

    step_s, min_s, runs = time_runs(run, budget_s=budget_s, times=[first_s])
    sample = jax.jit(lambda key: jax.random.normal(key, (N_SAMPLES, p), dtype))
    jax.block_until_ready(sample(args[2]))
    rng_s = time_runs(lambda: jax.block_until_ready(sample(args[2])), budget_s=budget_s / 4)[0]
    return dict(
        group=name, layout=layout, p=p, dtype=jnp.dtype(dtype).name, compile_s=compile_s,
        step_ms=1e3 * step_s, min_ms=1e3 * min_s, runs=runs, rng_ms=1e3 * rng_s, peak_mib=peak,
        baseline_mib=baseline, state_mib=state_mib, finite=finite,
    )


def worker(configs, float64, budget_s):
    """Measure each ``(group, p)`` in this process, one JSON line each."""
    import jax

    jax.config.update("jax_enable_x64", float64)
    dtype = jax.numpy.float64 if float64 else jax.numpy.float32
    for name, p in configs:
        print(json.dumps(measure(name, p, dtype, budget_s)), flush=True)


def run_worker(configs, float64, budget_s, timeout=900):
    """Run :func:`worker` in a fresh interpreter; one result dict per ``(group, p)``."""
    spec = ",".join(f"{name}:{p}" for name, p in configs)
    cmd = [sys.executable, __file__, "--worker", spec, "--budget", str(budget_s)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.setdefault("OPENBLAS_NUM_THREADS", BLAS_THREADS)
    try:
        proc = subprocess.run(cmd + ["--float64"] * float64, capture_output=True, text=True, timeout=timeout, env=env)
        rows, error = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], None
        if proc.returncode:
            error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        rows, error = [], f"timeout after {timeout} s"
    return rows + [dict(group=name, p=p, error=error) for name, p in configs[len(rows) :]]


def fit(rows):
    """Per group and for time and memory: the log-log slope against ``p`` over
    the points the fit rule keeps, the ``p`` used, and the slope between the
    two largest ``p`` (the asymptotic trend)."""
    slopes = {}
    for name in dict.fromkeys(r["group"] for r in rows):
        ok = [r for r in rows if r["group"] == name and "error" not in r]
        slopes[name] = {}
        for key, field, floor in [("time", "step_ms", MIN_FIT_MS), ("memory", "peak_mib", MIN_FIT_MIB)]:
            kept = [(r["p"], r[field]) for r in ok if r[field] >= floor]
            ps, ys = [x for x, _ in kept], [y for _, y in kept]
            slopes[name][key] = loglog_slope(ps, ys)
            slopes[name][key + "_p"] = ps
            slopes[name][key + "_last"] = loglog_slope(ps[-2:], ys[-2:])
    return slopes


ROW = "{:<13} {:<23} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9}"


def print_row(r):
    if "error" in r:
        print(f"{r['group']:<13} {'':<23} {r['p']:>8}  ERROR: {r['error']}", flush=True)
    else:
        cells = [f"{r[k]:.2f}" for k in ("compile_s", "step_ms", "min_ms", "rng_ms")] + [f"{r['peak_mib']:.1f}"]
        print(ROW.format(r["group"], r["layout"], r["p"], *cells, f"{r['state_mib']:.1f}"), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only p <= 1e4 (dense: p <= 1000), ~1 min")
    parser.add_argument("--float64", action="store_true", help="benchmark in float64 (default float32)")
    parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(SIZES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        configs = [(name, int(p)) for name, p in (c.split(":") for c in args.worker.split(","))]
        return worker(configs, args.float64, args.budget)

    budget = 0.3 if args.quick else 2.0
    blas = os.environ.get("OPENBLAS_NUM_THREADS", BLAS_THREADS)
    load0 = os.getloadavg()[0]
    print(f"one step: {N_SAMPLES} gradient samples, beta={BETA}, gamma={GAMMA}, "
          f"{'float64' if args.float64 else 'float32'}, OPENBLAS_NUM_THREADS={blas}, load average {load0:.2f}")
    print("step/min ms: median/fastest wall time of the compiled step (jax.block_until_ready); rng ms: "
          f"the step's jax.random.normal({N_SAMPLES}, p) alone.\n"
          "peak MiB: peak RSS of one step above the RSS just before it (VmHWM reset via "
          "/proc/self/clear_refs;\n  jax memory_stats() is None on CPU), in a fresh process per "
          f"{'run' if args.quick else '(group, p)'}. state MiB: size of (B, mu).\n")
    print(ROW.format("group", "layout", "p", "compile s", "step ms", "min ms", "rng ms", "peak MiB", "state MiB"))
    t0, rows = time.perf_counter(), []
    names = [n for n in args.only.split(",") if n] or list(SIZES)
    configs = [(n, p) for n in names for p in SIZES[n] if not args.quick or p <= QUICK_MAX_P[n]]
    for batch in [configs] if args.quick else [[c] for c in configs]:
        for row in run_worker(batch, args.float64, budget):
            rows.append(row)
            print_row(row)

    slopes = fit(rows)
    print(f"\nlog-log slopes vs p (least squares; points with median step < {MIN_FIT_MS:g} ms or "
          f"peak < {MIN_FIT_MIB:g} MiB are excluded as fixed overhead / below resolution;\n"
          "tail: slope between the two largest p kept)")
    fmt = lambda s: "  n/a" if s is None else f"{s:5.2f}"
    for name, s in slopes.items():
        for key, label in [("time", "time"), ("memory", "mem ")]:
            print(f"{name if key == 'time' else '':<13} {label} {fmt(s[key])}  tail {fmt(s[key + '_last'])}"
                  f"  p in {s[key + '_p']}")
    total, load1 = time.perf_counter() - t0, os.getloadavg()[0]
    print(f"\ntotal {total:.0f} s, load average {load1:.2f} at the end")

    out = ROOT / "bench" / "results" / ("groups" + "_quick" * args.quick + "_float64" * args.float64 + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        n_samples=N_SAMPLES, beta=BETA, gamma=GAMMA, loss_rank=RANK, quick=args.quick,
        min_fit_ms=MIN_FIT_MS, min_fit_mib=MIN_FIT_MIB, openblas_num_threads=blas,
        memory_method="peak RSS (VmHWM, reset via /proc/self/clear_refs) of one step minus VmRSS before it, "
        "after import, inputs, compile and one warm-up run; fresh process per "
        + ("run" if args.quick else "(group, p)"),
        total_s=total, loadavg_start=load0, loadavg_end=load1,
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows, slopes=slopes), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
