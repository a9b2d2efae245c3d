"""What exact and probed curvature cost a structured group's fit, and the
low-rank diagonal's reduction.

    python bench/structured_cost.py probes [--steps 400] [--reference-steps 600] [--seed 0]
    python bench/structured_cost.py diagonal [--repeats 50]
    python bench/structured_cost.py zoo --model irt_2pl --estimator auto|hessian [--float32]

``probes``: ``BlockUpperTriangular(8)`` on a 300-dimensional Gaussian target
``N(m, C)``, ``C = Q diag(lambda) Q^T`` with ``Q`` Haar-random and ``lambda``
log-spaced from 1 to 100 (condition number 100), float64, fitted with
:func:`ngvi.vi.structured_gaussian.as_top_level_api` (8 draws, step size 0.5,
start ``mu = 0``, standard deviations 0.1) by ``estimator="hessian"`` with
``probes`` None (exact), 4, 16 and 64, and by ``estimator="stein"``. The
family's optimum (the ``KL(q || p)`` minimiser over the group: the mean is
``m``, the standard deviations ``s*`` smaller than the target's) is a long
exact run (``probes=None``, 64 draws, ``--reference-steps``; on a quadratic
target its curvature has no Monte-Carlo error, the antithetic draws cancel in
``g_mu``). Per fit: gradient evaluations per step (``info.num_grads``, a
Hessian-vector product counts 2), milliseconds per step (the fit runs in one
compiled ``lax.scan``; compile excluded), and over the last half of the steps
the mean of the per-step errors of the mean, ``max_i |mu_i - m_i| / s*_i``,
and of the standard deviations, ``max_i |sd_i / s*_i - 1|``, and the same
errors of the iterates' average ("avg iterate": how much of the error is
noise rather than bias); "undone": the steps of the whole fit the step
control undid (``info.rejected``).

``diagonal``: ``diag(sym(P^T Q)) = sum_n P_n ⊙ Q_n`` for ``(n, p)`` factors,
jitted, median (and fastest) of ``--repeats`` calls with
``block_until_ready``, float32 and float64: the row loop that
:class:`ngvi.curvature.LowRankCurvature` used, three vectorised reductions
and what it uses now (the sum for up to 8 rows, else the row loop).

``zoo``: NGVI ``run(key, None)`` with key 0 on a zoo model at the test suite's
size and group (``tests/test_zoo_fits.py``: ``BlockUpperTriangular(8)`` for
p > 200) with ``--estimator`` "auto" (4 probes) or "hessian" (the exact
diagonal); prints its steps, gradient evaluations (``info.num_grads``), wall
time including compilation, and the answer's first-order check of the KL
optimum by plain autodiff (``tests/test_zoo_fits.py::optimality``: the largest
Newton step and sd step, in fitted sds, with their standard errors).
"""

import os

# LAPACK calls spin an OpenBLAS pool that fights XLA's on 2 cores (bench/groups.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ngvi import groups, vi  # noqa: E402
from ngvi.curvature import LowRankCurvature  # noqa: E402

P, K, NUM_SAMPLES, STEP_SIZE, INIT_SCALE = 300, 8, 8, 0.5, 0.1
FITS = [("hessian", {})] + [("hessian", {"probes": m}) for m in (4, 16, 64)] + [("stein", {})]


def gaussian_target(p, seed):
    """``(potential, m)`` of ``N(m, C)`` with a dense ``C`` of condition number 100."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(p, p)))[0]
    precision = q @ np.diag(1.0 / np.logspace(0.0, 2.0, p)) @ q.T
    mean = rng.normal(size=p)
    precision, mean_j = jnp.asarray(0.5 * (precision + precision.T)), jnp.asarray(mean)
    return (lambda z: 0.5 * (z - mean_j) @ precision @ (z - mean_j)), mean


def fit(potential, group, estimator, options, num_steps, num_samples, key):
    """Every step's ``(mu, sd, num_grads, rejected)`` of one fit, and its milliseconds per step."""
    algo = vi.structured_gaussian(potential, group=group, estimator=estimator, num_samples=num_samples,
                                  step_size=STEP_SIZE, **options)

    def step(state, k):
        state, info = algo.step(k, state)
        return state, (state.loc, jnp.sqrt(group.covariance_diagonal(state.factor)), info.num_grads, info.rejected)

    run = jax.jit(lambda state, keys: jax.lax.scan(step, state, keys)[1])
    state, keys = algo.init(jnp.zeros(P, jnp.float64), scale=INIT_SCALE), jax.random.split(key, num_steps)
    compiled = run.lower(state, keys).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(state, keys))
    seconds = time.perf_counter() - start
    return (*map(np.asarray, out), 1e3 * seconds / num_steps)


def errors(locs, sds, mean, sd_opt):
    """Per-row ``max_i |mu_i - m_i| / s*_i`` and ``max_i |sd_i / s*_i - 1|``."""
    return np.max(np.abs(locs - mean) / sd_opt, -1), np.max(np.abs(sds / sd_opt - 1.0), -1)


def probes(args):
    jax.config.update("jax_enable_x64", True)
    potential, mean = gaussian_target(P, args.seed)
    group, key = groups.BlockUpperTriangular(K), jax.random.PRNGKey(args.seed)
    ref_locs, ref_sds, _, _, ref_ms = fit(potential, group, "hessian", {}, args.reference_steps, 64, key)
    sd_opt = ref_sds[-1]
    drift = np.max(np.abs(ref_sds[-1] / ref_sds[-101] - 1.0))
    ref_mean_error = errors(ref_locs[-1:], ref_sds[-1:], mean, sd_opt)[0][0]
    print(f"p = {P}, BlockUpperTriangular({K}), {NUM_SAMPLES} draws, step size {STEP_SIZE}, {args.steps} steps, "
          f"seed {args.seed}")
    ratio = sd_opt / np.sqrt(target_variance(potential))
    print(f"optimum: exact, 64 draws, {args.reference_steps} steps ({ref_ms:.0f} ms/step): sd change over its "
          f"last 100 steps {drift:.1e}, mean error {ref_mean_error:.1e}; "
          f"s* / target sd in [{ratio.min():.2f}, {ratio.max():.2f}]")
    half = args.steps // 2
    columns = ("grads/step", "ms/step", "mean err", "sd err", "mean err, avg iterate", "sd err, avg iterate", "undone")
    print(f"{'estimator':<20} " + " ".join(f"{c:>{max(9, len(c))}}" for c in columns))
    for estimator, options in FITS:
        locs, sds, num_grads, rejected, ms = fit(potential, group, estimator, options, args.steps, NUM_SAMPLES, key)
        mean_err, sd_err = (np.mean(e[half:]) for e in errors(locs, sds, mean, sd_opt))
        averages = locs[half:].mean(0, keepdims=True), sds[half:].mean(0, keepdims=True)
        avg_mean_err, avg_sd_err = (e[0] for e in errors(*averages, mean, sd_opt))
        name = estimator + (f", probes={options['probes']}" if options else ", exact" if estimator == "hessian" else "")
        cells = (f"{int(np.median(num_grads))}", f"{ms:.1f}") + tuple(
            f"{e:.3f}" for e in (mean_err, sd_err, avg_mean_err, avg_sd_err)
        ) + (f"{int(rejected.sum())}",)
        print(f"{name:<20} " + " ".join(f"{c:>{max(9, len(h))}}" for c, h in zip(cells, columns)))


def target_variance(potential):
    """The target's marginal variances ``diag(C)`` (from its Hessian)."""
    return np.diag(np.linalg.inv(np.asarray(jax.hessian(potential)(jnp.zeros(P)))))


def _row_loop(p_factor, q_factor):
    step = lambda i, total: total + p_factor[i] * q_factor[i]
    return jax.lax.fori_loop(0, p_factor.shape[0], step, jnp.zeros_like(p_factor[0]))


DIAGONALS = {
    "row loop": _row_loop,
    "einsum": lambda p_factor, q_factor: jnp.einsum("np,np->p", p_factor, q_factor),
    "sum(P*Q, 0)": lambda p_factor, q_factor: jnp.sum(p_factor * q_factor, axis=0),
    "ones @ (P*Q)": lambda p_factor, q_factor: jnp.ones(p_factor.shape[0], p_factor.dtype) @ (p_factor * q_factor),
    "now: sum if n <= 8": lambda p_factor, q_factor: LowRankCurvature(p_factor, q_factor).diagonal(),
}


def diagonal(args):
    jax.config.update("jax_enable_x64", True)
    shapes = [(8, 10**5), (16, 10**4), (10**5, 50)]
    print(f"{'dtype':<8} {'(n, p)':<12} " + " ".join(f"{name:>20}" for name in DIAGONALS) + "   (ms: median / fastest)")
    for dtype in (jnp.float32, jnp.float64):
        for n, p in shapes:
            keys = jax.random.split(jax.random.PRNGKey(0))
            p_factor, q_factor = (jax.random.normal(k, (n, p), dtype) for k in keys)
            cells = []
            for fn in DIAGONALS.values():
                compiled = jax.jit(fn).lower(p_factor, q_factor).compile()
                compiled(p_factor, q_factor).block_until_ready()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    compiled(p_factor, q_factor).block_until_ready()
                    times.append(1e3 * (time.perf_counter() - start))
                cells.append(f"{np.median(times):>9.3f} / {np.min(times):<8.3f}")
            print(f"{np.dtype(dtype).name:<8} {str((n, p)):<12} " + " ".join(f"{c:>20}" for c in cells))
    print(f"load average: {os.getloadavg()[0]:.1f}")


def zoo(args):
    """One ``run(key, None)`` on a zoo model and its first-order check (module docstring)."""
    import sys

    jax.config.update("jax_enable_x64", not args.float32)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_zoo_fits import guide_at_test_size, optimality

    from ngvi import NGVI, convergence

    module, data, guide = guide_at_test_size(args.model)
    start = time.perf_counter()
    result = NGVI(module.model, guide, estimator=args.estimator).run(jax.random.PRNGKey(0), None, progress_bar=False, **data)
    wall = time.perf_counter() - start
    answer = convergence.parameters(result.state.vi_state, guide.group)
    jax.config.update("jax_enable_x64", True)
    as64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    newton, sd_step, newton_se, sd_se = optimality(guide, data, as64(answer["loc"]), jax.tree.map(as64, answer["factor"]))
    print(f"{args.model} ({'float32' if args.float32 else 'float64'}, {args.estimator}): "
          f"{result.losses.shape[0]} steps, converged {result.converged}, "
          f"{np.sum(np.asarray(result.info.num_grads)) / 1e6:.2f} M gradient evaluations, {wall:.0f} s, "
          f"{int(result.state.num_rejected)} rejected; Newton step {np.abs(newton).max():.3f} (se {newton_se.max():.3f}), "
          f"sd step {np.abs(sd_step).max():.3f} (se {sd_se.max():.3f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    fits = sub.add_parser("probes")
    fits.add_argument("--steps", type=int, default=400)
    fits.add_argument("--reference-steps", type=int, default=600)
    fits.add_argument("--seed", type=int, default=0)
    timing = sub.add_parser("diagonal")
    timing.add_argument("--repeats", type=int, default=50)
    model = sub.add_parser("zoo")
    model.add_argument("--model", required=True)
    model.add_argument("--estimator", default="auto", choices=["auto", "hessian"])
    model.add_argument("--float32", action="store_true")
    args = parser.parse_args()
    {"probes": probes, "diagonal": diagonal, "zoo": zoo}[args.what](args)


if __name__ == "__main__":
    main()
