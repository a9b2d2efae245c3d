"""What the single-Gaussian step control costs on near-Gaussian models.

    python bench/step_control.py [--models a,b,...] [--steps N] [--rounds R] [--budget-seconds S] [--seed S]

Per model (``groups.Dense()``, ``estimator="hessian"``, ``num_samples=8``,
constant step size 0.5, float32; the start of ``NGVI(model, guide).init`` with
the guide's defaults, ``init_to_uniform`` and standard deviations 0.1), the
pure step :func:`ngvi.vi.structured_gaussian.step` on the flat potential of
:func:`ngvi.target.make_target`, in variants that differ only in the step
control:

* ``full``: the defaults, ``trust_radius=1``, ``loc_trust_radius=10`` and the
  undo (``state.backup``, ``state.radius``);
* ``no undo``: the same trust regions, ``backup=None, radius=None``;
* ``no control``: no undo and ``trust_radius = loc_trust_radius = inf``. This
  makes the two clippings no-ops (``_clip(norm, inf) = 1``), but it does not
  remove the other work of ``ngd.natural_gradient_step``: the power iteration
  for the factor step's spectral norm (20 structured products) and the two
  line minimisers (``min(beta, t*)``, ``1 + 2 num_probes`` curvature products
  and a solve per probe) run, and bind, whatever the radii; the library has
  no switch for them;
* ``bare`` (bench only): ``no control`` with both line minimisers replaced by
  ``inf`` and the spectral norm by 0 while the step is traced (a patch of
  ``ngvi.ngd`` and a ``Dense`` subclass, here only), i.e. the plain
  natural-gradient step ``beta = 0.5`` of MATH.md sec. 3.

Every variant starts from the same state and uses the same per-step keys
(``jax.random.split``), so trajectories coincide until the control first acts
("same as left until": the first step at which ``mu`` or ``B`` differ from the
variant in the column before by more than 1e-6 relative, "=" if never).

The steps run in one ``lax.scan`` over the keys, compiled ahead with
``.lower().compile()`` ("compile s"); it emits each step's info and ``(mu, B)``
(a copy of ``p + p^2`` floats per step). Its wall time is taken in
``--rounds`` rounds that run every variant once, in rotated order (the machine
is shared; interleaving spreads load changes over the variants); "ms/step" is
the median call over the steps per call (and the fastest call); the rounds stop
after ``MIN_ROUNDS`` once ``--budget-seconds`` of calls are spent on a model.

Gradient evaluations per step are the step's ``info.num_grads`` (an HVP counts
2). With ``Dense`` the "hessian" estimator forms ``H`` from ``p`` HVPs per
draw (``8 + 16 p``) and the step control reads that matrix, so the control
costs no gradient evaluations here, only time. Errors after each step against
the NUTS reference's unconstrained moments, as ``bench/zoo.py``: mean error
``max_i |mu_i - m_i| / s_i``, sd error ``max_i |sd_i / s_i - 1|``; "steps to
target" is the first step after which both are below ``TOL`` (every step is
checked), "held from" the first step from which they stay below to the end of
the run. "rejected" counts ``info.rejected`` (undone steps; without the undo,
only non-finite ones); "clipped" the steps whose factor / mean step the trust
region scaled down (``info.factor_scale``, ``info.loc_scale`` < 1).

Output: ``bench/results/step_control.md``.
"""

import os

# LAPACK calls spin an OpenBLAS pool that fights XLA's on 2 cores (bench/groups.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ngvi import NGVI, StructuredGaussian, groups, ngd  # noqa: E402
from ngvi.estimators import resolve  # noqa: E402
from ngvi.models.reference import load_reference  # noqa: E402
from ngvi.target import make_target  # noqa: E402
from ngvi.vi import structured_gaussian as sg  # noqa: E402
from vs_svi import fmt  # noqa: E402
from zoo import machine_facts, markdown_table  # noqa: E402

MODELS = ("linear_regression", "poisson_glm", "logistic_regression", "radon_noncentred")
STEPS = {"linear_regression": 100, "poisson_glm": 100, "logistic_regression": 200, "radon_noncentred": 300}
SETTINGS = dict(num_samples=8, step_size=0.5, gamma=1.0)
TOL, SAME_RTOL, MIN_ROUNDS = 0.1, 1e-6, 5
INF = float("inf")
RESULTS = ROOT / "bench" / "results"


class DenseWithoutNorm(groups.Dense):
    """``Dense`` whose spectral norm is 0 (no power iteration): with an infinite
    trust radius the factor step's clip is 1 either way; ``info.factor_norm`` reads 0."""

    def spectral_norm(self, m, iterations=20):
        return jnp.zeros((), jax.tree.leaves(m)[0].dtype)


@contextlib.contextmanager
def without_line_minimisers():
    """Both line minimisers of ``ngvi.ngd`` return ``inf`` (so each half step is
    ``beta``) while the step is traced."""
    saved = ngd._line_minimiser, ngd._factor_line_minimiser
    ngd._line_minimiser = lambda estimate, direction: jnp.asarray(INF, direction.dtype)
    ngd._factor_line_minimiser = lambda key, group, factor, curvature, direction, num_probes: jnp.asarray(
        INF, jax.tree.leaves(factor)[0].dtype)
    try:
        yield
    finally:
        ngd._line_minimiser, ngd._factor_line_minimiser = saved


# name -> (undo, trust_radius, loc_trust_radius, bare)
VARIANTS = {
    "full": (True, 1.0, 10.0, False),
    "no undo": (False, 1.0, 10.0, False),
    "no control": (False, INF, INF, False),
    "bare": (False, INF, INF, True),
}


def compile_run(target, state, keys, undo, trust_radius, loc_trust_radius, bare):
    """The compiled scan ``(state, keys) -> (state, (info, loc, factor))`` of one variant, and its compile seconds."""
    group = DenseWithoutNorm() if bare else groups.Dense()
    if not undo:
        state = state._replace(backup=None, radius=None)
    one_step = partial(sg.step, target=target, group=group, estimator=resolve("hessian"), trust_radius=trust_radius,
                       loc_trust_radius=loc_trust_radius, **SETTINGS)

    def run(state, keys):
        def body(state, key):
            state, info = one_step(key, state)
            return state, (info, state.loc, state.factor)

        return jax.lax.scan(body, state, keys)

    start = time.perf_counter()
    with without_line_minimisers() if bare else contextlib.nullcontext():
        compiled = jax.jit(run).lower(state, keys).compile()
    return compiled, state, time.perf_counter() - start


def first_step(mask):
    """1-based index of the first True, or None."""
    hits = np.flatnonzero(mask)
    return None if hits.size == 0 else int(hits[0]) + 1


def held_from(mask):
    """1-based first step from which ``mask`` holds to the end, or None."""
    if not mask[-1]:
        return None
    misses = np.flatnonzero(~mask)
    return 1 if misses.size == 0 else int(misses[-1]) + 2


def diverges(a, b):
    """1-based first step at which trajectories ``a`` and ``b`` ((T, ...) arrays) differ, or None."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    scale = np.maximum(np.abs(a).max(1), np.abs(b).max(1))
    return first_step(np.abs(a - b).max(1) > SAME_RTOL * np.maximum(scale, 1.0))


def benchmark_model(name, num_steps, rounds, budget_s, seed):
    module = importlib.import_module(f"ngvi.models.{name}")
    kw, ref = module.data(), load_reference(name)
    init_key, target_key, steps_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    guide = StructuredGaussian(module.model, group=groups.Dense())
    state = NGVI(module.model, guide).init(init_key, **kw).vi_state
    names = [site["name"] for site in ref["unconstrained"]["sites"]]
    assert list(guide._unpack_latent(state.loc)) == names, (list(guide._unpack_latent(state.loc)), names)
    target = make_target(module.model, guide, target_key, (), kw)
    keys = jax.random.split(steps_key, num_steps)
    ref_mean = np.asarray(ref["unconstrained"]["mean"], np.float64)
    ref_sd = np.sqrt(np.diagonal(np.asarray(ref["unconstrained"]["cov"], np.float64)))
    coordinate = [f"{site['name']}[{i}]" if site["size"] > 1 else site["name"]
                  for site in ref["unconstrained"]["sites"] for i in range(site["size"])]
    variance = jax.jit(jax.vmap(groups.Dense().covariance_diagonal))

    compiled = {}
    for variant, options in VARIANTS.items():
        compiled[variant] = compile_run(target, state, keys, *options)
    times = {variant: [] for variant in VARIANTS}
    outputs = {}
    for r in range(rounds):
        if r >= MIN_ROUNDS and sum(map(sum, times.values())) > budget_s:
            break
        order = list(VARIANTS)[r % len(VARIANTS):] + list(VARIANTS)[: r % len(VARIANTS)]
        for variant in order:
            run, start_state, _ = compiled[variant]
            t0 = time.perf_counter()
            out = jax.block_until_ready(run(start_state, keys))
            times[variant].append(time.perf_counter() - t0)
            outputs[variant] = out

    rows, previous = [], None
    for variant in VARIANTS:
        _, (info, locs, factors) = outputs[variant]
        sds = np.sqrt(np.asarray(variance(factors), np.float64))
        mean_err = np.max(np.abs(np.asarray(locs, np.float64) - ref_mean) / ref_sd, axis=1)
        sd_err = np.max(np.abs(sds / ref_sd - 1.0), axis=1)
        ok = (mean_err < TOL) & (sd_err < TOL)
        grads = np.asarray(info.num_grads, np.int64)
        hit = first_step(ok)
        trajectory = np.concatenate([np.asarray(locs).reshape(num_steps, -1),
                                     np.asarray(factors.matrix).reshape(num_steps, -1)], axis=1)
        rows.append({
            "variant": variant, "grads_per_step": int(grads[0]), "grads_constant": bool(np.all(grads == grads[0])),
            "ms_per_step": 1e3 * statistics.median(times[variant]) / num_steps,
            "ms_per_step_min": 1e3 * min(times[variant]) / num_steps, "compile_s": compiled[variant][2],
            "steps_to_target": hit, "grads_to_target": None if hit is None else int(grads[:hit].sum()),
            "held_from": held_from(ok), "rejected": int(np.sum(info.rejected)),
            "factor_clipped": int(np.sum(np.asarray(info.factor_scale) < 1)),
            "loc_clipped": int(np.sum(np.asarray(info.loc_scale) < 1)),
            "mean_err": float(mean_err[-1]), "sd_err": float(sd_err[-1]),
            "same_until": None if previous is None else diverges(previous, trajectory),
            "worst": f"{coordinate[np.argmax(np.abs(locs[-1] - ref_mean) / ref_sd)]} / "
                     f"{coordinate[np.argmax(np.abs(sds[-1] / ref_sd - 1.0))]}",
            "rounds": len(times[variant]),
        })
        previous = trajectory
        r = rows[-1]
        print(f"  {variant:<11} {r['grads_per_step']:>5} grads/step {r['ms_per_step']:7.3f} ms/step "
              f"(min {r['ms_per_step_min']:.3f}), compile {r['compile_s']:.1f} s, target at step "
              f"{fmt(r['steps_to_target'], 'd')}, held from {fmt(r['held_from'], 'd')}, rejected {r['rejected']}, "
              f"clipped {r['factor_clipped']}/{r['loc_clipped']}, final {r['mean_err']:.3f}/{r['sd_err']:.3f}, "
              f"same as previous until {fmt(r['same_until'], 'd')}, worst coordinates {r['worst']}, "
              f"{r['rounds']} timed calls", flush=True)
    return rows, ref["unconstrained"]["dim"]


def write_markdown(path, command, facts, results, num_steps, rounds, budget_s):
    header = ["model", "variant", "grads/step", "ms/step (min)", "compile s", "steps to target", "grads to target",
              "held from", "rejected", "clipped factor / mean", "final mean / sd err", "worst coordinate, mean / sd", "same as above until"]
    table = []
    for name, (rows, dim) in results.items():
        for r in rows:
            table.append([
                f"{name} (p={dim})" if r is rows[0] else "", r["variant"], f"{r['grads_per_step']:,}",
                f"{r['ms_per_step']:.3f} ({r['ms_per_step_min']:.3f})", f"{r['compile_s']:.1f}",
                fmt(r["steps_to_target"], "d") if r["steps_to_target"] else f"> {num_steps[name]}",
                fmt(r["grads_to_target"], ","), fmt(r["held_from"], "d"), str(r["rejected"]),
                f"{r['factor_clipped']} / {r['loc_clipped']}", f"{r['mean_err']:.3f} / {r['sd_err']:.3f}", r["worst"],
                "" if r is rows[0] else ("=" if r["same_until"] is None else str(r["same_until"])),
            ])
    steps = ", ".join(f"{name} {n}" for name, n in num_steps.items() if name in results)
    parts = [
        "# Step control of the single Gaussian: full, no undo, no control", "",
        f"    {command}", "", facts, "",
        f"Dense, estimator \"hessian\", 8 samples, step size 0.5, the start of `NGVI.init` (guide defaults); steps "
        f"per run: {steps}; timing: median (fastest) of 5-{rounds} interleaved calls of the compiled scan over all "
        f"steps (up to {budget_s:g} s of calls per model), divided by the steps. Target: mean and sd error both below {TOL} NUTS sd; \"held from\" = first "
        "step from which it holds to the end of the run; \"clipped\" = steps the trust region scaled down; "
        "\"same as above until\" = first step whose `(mu, B)` differ from the row above (\"=\": never). "
        "\"bare\" additionally drops the line minimisers and the power iteration (a bench-only patch). "
        "Details: the docstring of `bench/step_control.py`.", "",
        markdown_table(header, table),
    ]
    path.write_text("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per model, STEPS)")
    parser.add_argument("--rounds", type=int, default=20, help="at most this many timed calls per variant")
    parser.add_argument("--budget-seconds", type=float, default=8.0,
                        help="timing seconds per model over all variants (at least MIN_ROUNDS calls each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "step_control.md"))
    args = parser.parse_args()
    command = " ".join(["python", "bench/step_control.py", *sys.argv[1:]])
    facts, start = machine_facts(), time.perf_counter()
    print(command + "\n" + facts, flush=True)
    names = args.models.split(",")
    num_steps = {name: args.steps or STEPS.get(name, 200) for name in names}
    results = {}
    for name in names:
        print(f"{name} ({num_steps[name]} steps)", flush=True)
        results[name] = benchmark_model(name, num_steps[name], args.rounds, args.budget_seconds, args.seed)
    facts += f" Total run time {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f} at the end."
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_markdown(Path(args.out), command, facts, results, num_steps, args.rounds, args.budget_seconds)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
