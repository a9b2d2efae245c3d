"""The crossed random-effects model at scale: cost per step against p, and accuracy against a long run.

    python bench/large_model.py scaling [--sizes 1000,10000,100000,1000000] [--steps 20]
    python bench/large_model.py accuracy [--dim 10000] [--max-steps 5000] [--reference fit.npz]

The model is :mod:`ngvi.models.crossed_effects` with ``(p - 8) / 2`` units of each
kind, 10 observations per latent dimension and a subsample of 10^4 per step
(``subsample_size`` is capped by the data), float32, every method from the same
uniform start of NumPyro's ``init_to_uniform``:

* ``ngvi``: ``NGVI(model, StructuredGaussian(model, group=BlockUpperTriangular(8)))``
  at its defaults (``estimator="auto"``: 8 draws, ``k + 4`` Hessian-vector products each);
* ``lowrank`` and ``diagonal``: ``SVI`` with ``optax.adam(1e-2)``, ``Trace_ELBO()``
  (one draw) on ``AutoLowRankMultivariateNormal(rank=8)`` and ``AutoDiagonalNormal``,
  their subsample drawn as ngvi draws its (:func:`with_vectorised_subsample`).

``scaling`` runs each (method, p) in a fresh process: compile time of one
jit-compiled step, the median step time over ``--steps`` steps, the step's
peak memory (``VmHWM`` reset before the steps, as ``bench/groups.py``), and
gradient evaluations per step (a Hessian-vector product counts as two).

``accuracy`` fits at ``--dim``: a reference by ``run(key, None)`` on all the
data (no subsampling; at ``--dim 10000``, the stored fit of
``python -m ngvi.models.make_full_data_fit``), then ngvi on the subsample with
``run(key, None)`` and ``max_steps=--max-steps``, and the Adam baselines on
the subsample for up to 10 times ngvi's wall time (errors at 20 times along the
way; each stops early at ngvi's mean error or once its error has not fallen
by 5% over 5 checks; its row is its best check). Errors against the reference: the
RMS over coordinates of ``(mean - mean_ref) / sd_ref``, the RMS of
``log(sd / sd_ref)``, and the coverage of the generating values by the
central 90% intervals of the unconstrained marginals.

Results: ``bench/results/large_model_<mode>.json`` and ``.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _util import loglog_slope, peak_mib, release_free_memory, reset_peak, rss_mib  # noqa: E402

METHODS = ("ngvi", "lowrank", "diagonal")
SUBSAMPLE, OBS_PER_DIM, RANK, LEARNING_RATE = 10_000, 10, 8, 1e-2
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def problem(p, subsample=SUBSAMPLE, seed=0):
    """``(data, truth)`` of the crossed-effects model with ``p`` latent dimensions."""
    from ngvi.models import crossed_effects

    units, num_obs = (p - 8) // 2, OBS_PER_DIM * p
    return crossed_effects.simulate(
        num_a=units, num_b=units, num_obs=num_obs, subsample_size=None if subsample is None else min(subsample, num_obs),
        seed=seed,
    )


def with_vectorised_subsample(model, data):
    """``model`` with its observation plate's subsample drawn as ngvi draws it
    (:func:`ngvi.target.draw_subsamples`): NumPyro's own draw is a sequential
    loop of ``subsample_size`` steps on CPU (~60 ms for 10^4), which would
    dominate an Adam step; the baselines get the same draw as ngvi."""
    import numpyro

    from ngvi.target import draw_subsamples, substitute_subsamples

    if data["subsample_size"] is None or data["subsample_size"] >= data["y"].shape[0]:
        return model
    plates = {"obs": (data["y"].shape[0], data["subsample_size"])}

    def subsampled(*args, **kwargs):
        subsamples = draw_subsamples(plates, numpyro.prng_key())
        return substitute_subsamples(model, subsamples)(*args, **kwargs)

    return subsampled


def make_fit(method, model, data):
    """``(init(key) -> state, step(state) -> (state, num_grads), params(state) -> guide params, guide)``."""
    import jax
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal, AutoLowRankMultivariateNormal

    from ngvi import NGVI, StructuredGaussian
    from ngvi.groups import BlockUpperTriangular

    if method == "ngvi":
        guide = StructuredGaussian(model, group=BlockUpperTriangular(RANK))
        fit = NGVI(model, guide)

        def step(state):
            state, info = fit._update(state, (), data)
            return state, info.num_grads

        return (lambda key: fit.init(key, **data)), step, fit.get_params, guide
    model = with_vectorised_subsample(model, data)
    guide = AutoLowRankMultivariateNormal(model, rank=RANK) if method == "lowrank" else AutoDiagonalNormal(model)
    svi = SVI(model, guide, optax.adam(LEARNING_RATE), Trace_ELBO())

    def svi_step(state):
        return svi.update(state, **data)[0], jax.numpy.ones((), jax.numpy.int32)

    return (lambda key: svi.init(key, **data)), svi_step, svi.get_params, guide


def measure(method, p, num_steps):
    """Compile time, median step time, peak memory and gradients per step of one (method, p)."""
    import jax

    from ngvi.models import crossed_effects

    data, _ = problem(p)
    init, step, _, _ = make_fit(method, crossed_effects.model, data)
    state = jax.block_until_ready(init(jax.random.PRNGKey(0)))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(state).compile()
    compile_s = time.perf_counter() - t0
    state, num_grads = jax.block_until_ready(compiled(state))
    release_free_memory()
    baseline = rss_mib()
    reset_peak()
    times = []
    for _ in range(num_steps):
        t0 = time.perf_counter()
        state, num_grads = jax.block_until_ready(compiled(state))
        times.append(time.perf_counter() - t0)
    leaves = jax.tree.leaves(state)
    return dict(
        method=method, p=p, num_obs=OBS_PER_DIM * p, compile_s=compile_s, step_ms=1e3 * float(np.median(times)),
        peak_mib=peak_mib() - baseline, num_grads=int(num_grads), finite=all(bool(np.all(np.isfinite(x))) for x in leaves),
    )


def subprocess_rows(args, timeout):
    """Run this file with ``args`` in a fresh interpreter; its JSON lines, or an error row."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [dict(error=f"timeout after {timeout} s")]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode:
        rows.append(dict(error=(proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]))
    return rows


def scaling(sizes, num_steps):
    rows = []
    print(f"{'method':<9} {'p':>8} {'compile s':>10} {'ms/step':>9} {'peak MiB':>9} {'grads/step':>11}", flush=True)
    for p in sizes:
        for method in METHODS:
            for row in subprocess_rows(["--worker", method, str(p), str(num_steps)], timeout=1800):
                row = {"method": method, "p": p, **row}
                rows.append(row)
                if "error" in row:
                    print(f"{method:<9} {p:>8}  ERROR: {row['error']}", flush=True)
                else:
                    print(
                        f"{method:<9} {p:>8} {row['compile_s']:>10.1f} {row['step_ms']:>9.1f} {row['peak_mib']:>9.1f}"
                        f" {row['num_grads']:>11}", flush=True,
                    )
    slopes = {}
    for method in METHODS:
        ok = [r for r in rows if r["method"] == method and "error" not in r]
        slopes[method] = dict(
            time=loglog_slope([r["p"] for r in ok], [r["step_ms"] for r in ok]),
            memory=loglog_slope([r["p"] for r in ok], [r["peak_mib"] for r in ok]),
        )
        print(f"{method}: log-log slope of time per step {slopes[method]['time']}, of peak memory {slopes[method]['memory']}")
    return dict(rows=rows, slopes=slopes)


def marginals(guide, params):
    """Means and sds of the fitted guide's unconstrained marginals."""
    posterior = guide.get_posterior(params)
    return np.asarray(posterior.mean), np.sqrt(np.asarray(posterior.variance))


def errors(mean, sd, ref_mean, ref_sd, truth):
    inside = np.abs(truth - mean) <= 1.6448536 * sd
    return dict(
        mean_rms=float(np.sqrt(np.mean(((mean - ref_mean) / ref_sd) ** 2))),
        log_sd_rms=float(np.sqrt(np.mean(np.log(sd / ref_sd) ** 2))),
        coverage_90=float(np.mean(inside)),
    )


def fit_ngvi(data, max_steps, key, checkpoint=None):
    """``run(key, None)`` at the defaults (checkpointed every 100 steps to
    ``checkpoint`` if given): ``(guide, params, seconds, steps, converged, gradients)``."""
    import jax

    from ngvi import NGVI, StructuredGaussian
    from ngvi.groups import BlockUpperTriangular
    from ngvi.models import crossed_effects

    guide = StructuredGaussian(crossed_effects.model, group=BlockUpperTriangular(RANK))
    t0 = time.perf_counter()
    result = NGVI(crossed_effects.model, guide, max_steps=max_steps).run(
        key, None, progress_bar=False, checkpoint=checkpoint, checkpoint_every=100, **data)
    jax.block_until_ready(result.params)
    seconds, num_grads = time.perf_counter() - t0, int(np.sum(np.asarray(result.info.num_grads)))
    return guide, result.params, seconds, len(result.losses), bool(result.converged), num_grads


def fit_adam(method, data, seconds, key, reference, truth, target_error, num_checks=20, patience=5):
    """Adam for up to ``seconds`` of wall time (compilation included), its errors
    at ``num_checks`` times; it stops early once its mean error is at most
    ``target_error`` (ngvi's) or has not fallen by 5% over ``patience`` checks."""
    import jax

    from ngvi.models import crossed_effects

    init, step, get_params, guide = make_fit(method, crossed_effects.model, data)
    t0 = time.perf_counter()
    state, step = init(key), jax.jit(step)
    curve, done = [], 0
    for check in range(1, num_checks + 1):
        while time.perf_counter() - t0 < check * seconds / num_checks:
            for _ in range(100):
                state, _ = step(state)
            done += 100
            jax.block_until_ready(state)
        mean, sd = marginals(guide, get_params(state))
        curve.append(dict(seconds=time.perf_counter() - t0, steps=done, **errors(mean, sd, *reference, truth)))
        print(f"  {method}: {curve[-1]}", flush=True)
        stalled = len(curve) > patience and curve[-1]["mean_rms"] > 0.95 * curve[-1 - patience]["mean_rms"]
        if curve[-1]["mean_rms"] <= target_error or stalled:
            break
    return curve


def print_accuracy_row(r):
    print(f"{r['method']:<28} {r['seconds']:>7.0f} {r['steps']:>7} {r['num_grads']:>10} {r['mean_rms']:>9.3f}"
          f" {r['log_sd_rms']:>10.3f} {r['coverage_90']:>9.3f}", flush=True)


def reference_fit(dim, cache):
    """``(row, (mean, sd))`` of the full-data fit: the stored one at the test
    size (:mod:`ngvi.models.make_full_data_fit`), else the one cached at
    ``cache``, else a fresh ``run(key, None)`` (checkpointed beside ``cache``,
    so an interrupted run resumes) that is then cached there."""
    import jax

    from ngvi.models import crossed_effects
    from ngvi.models.reference import load_fit

    size = crossed_effects.TEST_SIZE
    if ((dim - 8) // 2, OBS_PER_DIM * dim, SUBSAMPLE) == (size["num_a"], size["num_obs"], size["subsample_size"]):
        fit, method = load_fit("crossed_effects_full_data_fit"), "ngvi, all data (stored)"
    elif cache is not None and os.path.exists(cache):
        with np.load(cache) as arrays:
            fit, method = dict(arrays), "ngvi, all data (cached)"
    else:
        full, _ = problem(dim, subsample=None)
        guide, params, seconds, steps, converged, grads = fit_ngvi(
            full, 10_000, jax.random.PRNGKey(1), checkpoint=None if cache is None else cache + ".checkpoint.npz")
        mean, sd = marginals(guide, params)
        fit, method = dict(mean=mean, sd=sd, wall_time_s=seconds, steps=steps, converged=converged), "ngvi, all data"
        if cache is not None:
            np.savez(cache, **fit)
    row = dict(method=method, seconds=float(fit["wall_time_s"]), steps=int(fit["steps"]),
               converged=bool(fit["converged"]), num_grads=-1)
    return row, (fit["mean"], fit["sd"])


def accuracy(dim, max_steps, reference):
    """ngvi on the subsample and Adam for up to 10x its time, against a full-data ngvi fit."""
    import jax

    from ngvi.models import crossed_effects

    print(f"{'method':<28} {'s':>7} {'steps':>7} {'grads':>10} {'mean err':>9} {'log-sd err':>10} {'cover 90':>9}",
          flush=True)
    sub, truth = problem(dim)
    truth = crossed_effects.unconstrained_truth(truth)
    row, reference = reference_fit(dim, reference)
    rows = [dict(row, **errors(*reference, *reference, truth))]
    print_accuracy_row(rows[-1])
    guide, params, seconds, steps, converged, grads = fit_ngvi(sub, max_steps, jax.random.PRNGKey(2))
    rows.append(dict(method="ngvi, subsampled", seconds=seconds, steps=steps, converged=converged, num_grads=grads,
                     **errors(*marginals(guide, params), *reference, truth)))
    print_accuracy_row(rows[-1])
    for method in ("lowrank", "diagonal"):
        curve = fit_adam(method, sub, 10 * seconds, jax.random.PRNGKey(3), reference, truth, rows[1]["mean_rms"])
        best = min(curve, key=lambda c: c["mean_rms"])
        rows.append(dict(method=f"{method} + Adam, subsampled", num_grads=best["steps"], curve=curve, **best))
        print_accuracy_row(rows[-1])
    return dict(dim=dim, rows=rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["scaling", "accuracy"], default="scaling")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--steps", type=int, default=20, help="scaling: steps timed per (method, p)")
    parser.add_argument("--dim", type=int, default=10_000, help="accuracy: latent dimensions")
    parser.add_argument("--max-steps", type=int, default=5_000, help="accuracy: the subsampled fit's max_steps")
    parser.add_argument("--reference", help="accuracy: .npz to cache the full-data fit in (reused if it exists)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, p, num_steps = args.worker
        print(json.dumps(measure(method, int(p), int(num_steps))), flush=True)
        return
    if args.mode == "scaling":
        result = scaling([int(float(s)) for s in args.sizes.split(",")], args.steps)
    else:
        result = accuracy(args.dim, args.max_steps, args.reference)
    os.makedirs(RESULTS, exist_ok=True)
    suffix = f"_{args.dim}" if args.mode == "accuracy" and args.dim != 10_000 else ""
    with open(os.path.join(RESULTS, f"large_model_{args.mode}{suffix}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
