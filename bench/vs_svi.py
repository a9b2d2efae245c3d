"""NGVI against NumPyro SVI + Adam: gradient evaluations and wall time to a common target.

    python bench/vs_svi.py [--quick] [--seed 0] [--models eight_schools logistic_regression linear_regression]

Methods, per model (``k`` = 4 for logistic regression, 2 otherwise; every guide
starts at ``init_to_median`` with standard deviations 0.1; float32):

* NGVI, the ten variants of ``NGVI_VARIANTS``, the same on every model and
  fixed before the run (``n`` = num_samples, drawn in antithetic pairs), default
  step control, 300 steps. With the step size "decay" of ``SCHEDULES``
  (``optax.schedules.exponential_decay(init_value=0.5, transition_begin=50,
  transition_steps=50, decay_rate=0.5, end_value=0.02)``: 0.5 for 50 burn-in
  steps, then halved every 50 steps down to 0.02, reached near step 282; a
  constant step leaves the mean wandering 0.1-0.2 sd around the optimum, which
  the decay shrinks about 5-fold): "hessian" Dense n=8 (the defaults) and n=2
  (one antithetic pair), "hessian" BlockUpperTriangular(k) n=2 with
  ``probes=4`` (Hutchinson ``diag(H)``), and "stein" (gradients only) with
  Dense and BlockUpperTriangular(k), n=8 and n=16. With the step size "newton"
  (1 for 8 steps, then ``1 / (t - 6)`` down to 0.1: full Newton / VON steps
  while far from the optimum, then a running mean of the curvature and of the
  mean's steps): "hessian" Dense n=32 and n=8, each with ``curvature_samples=2``
  (``g_mu`` from all draws, ``H`` from one antithetic pair), and "stein" Dense
  n=64 (32 antithetic pairs along orthogonal directions: a whole frame for
  p <= 32, so the curvature has no cross-direction noise);
* SVI + ``optax.adam`` (as ``optax.inject_hyperparams(optax.adam)``, so one
  executable serves every learning rate), ``Trace_ELBO()`` (one particle) on
  AutoMultivariateNormal, AutoLowRankMultivariateNormal(rank=k) and
  AutoDiagonalNormal, learning rates 1e-3, 1e-2, 3e-2, 20,000 steps.

Target: (a) an ELBO within 0.5 nat of the best ELBO any method reaches on the
model (the highest at any check of any method) and (b) every unconstrained
posterior mean within 0.1 NUTS sd of the NUTS
reference mean. The ELBO is ``H[q] - mean U(z)`` over 4000 draws ``z ~ q`` of
the fitted guide's ``get_posterior(params)`` (``U`` = NumPyro's potential
energy, analytic entropy); every draw uses one PRNG key, so all guides whose
sampler is ``loc + A eps`` share the same ``eps`` (LowRank draws ``p + k``
normals and differs). The criteria are checked after every NGVI step and every
100 SVI steps, and the first 100-step SVI chunk that meets them is re-checked
step by step; "steps to target" is the first step where both hold. "Held
from" is the first check from which they hold at every later check to the end
of the budget (at the resolution of the checks: every step for NGVI, every 100
steps for SVI), i.e. a result one can stop at without knowing the reference.

Each method's steps run in one compiled loop ``(state, n) -> state``
(``lax.fori_loop`` with a traced trip count, i.e. an XLA ``while``; a
``lax.scan`` would need a static length), compiled ahead with
``.lower().compile()`` (the "compile s" column) and called once per check
chunk, with no per-step host syncs. "wall s" re-runs exactly the steps to target
in one call from the initial state (best of >= 5 runs; the median is in the
JSON), excluding compilation and checks.

Gradient evaluations, one per Monte-Carlo sample per gradient and two per
Hessian-vector product (HVP):

* SVI, Trace_ELBO with one particle: 1 per step.
* NGVI "stein": ``n`` (one ``value_and_grad`` per sample).
* NGVI "hessian" with ``m`` curvature draws (``curvature_samples``, default
  ``n``): ``n`` gradients, and every product with the curvature operator is one
  HVP at each of the ``m`` draws. Dense: ``n + 2 m p`` (``H`` formed from ``p``
  products per draw; the step control reads the matrix).
  BlockUpperTriangular: ``n + 2 m (k + C + 9)``, ``k`` rows plus ``diag(H)``
  (``C = p`` products exactly, or ``C`` = the number of Hutchinson ``probes``),
  and 9 products of the step control (2 per probe x 4 probes in the factor line
  minimiser, 1 in the mean's). E.g. p = 10, k = 2: Dense n=8 168, Dense n=2 42,
  BlockUpperTriangular(2) n=2 probes=4 62, Dense n=32 ``curvature_samples=2`` 72.

NGVI's per-step figure is the step's own count (``info.num_grads`` of the
algorithm, :mod:`ngvi.vi`). The full run also counts them independently: one
jitted step with the estimators' gradient and HVP helpers wrapped in
``jax.debug.callback`` counters, checked against ``info.num_grads``. ``--quick``: SVI 2,000 steps at lr 1e-2, NGVI 100 steps, no counting
run, and only linear_regression unless ``--models`` is given (each NGVI step
takes 4-15 s to compile here, so all three models take several minutes even
quick). Results go to ``bench/results/vs_svi[_quick].json``.
"""

import os

# LAPACK calls spin an OpenBLAS pool that fights XLA's on 2 cores (bench/groups.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO, init_to_median  # noqa: E402
from numpyro.infer.autoguide import (  # noqa: E402
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
)
from numpyro.infer.util import potential_energy  # noqa: E402

import ngvi.estimators as estimators  # noqa: E402
from _util import time_runs  # noqa: E402
from ngvi.models.reference import load_reference  # noqa: E402
from ngvi import NGVI, StructuredGaussian, groups  # noqa: E402

RANK = {"eight_schools": 2, "logistic_regression": 4, "linear_regression": 2}
# "decay": 0.5 for a burn-in of 50 steps, then halved every 50 steps down to 0.02
# (reached at step ~282), so the mean's Monte-Carlo wander at the optimum shrinks
# by ~sqrt(0.02 / 0.5) = 0.2x.
# "newton": full steps (beta = 1, the Newton / VON step of a dense group) for
# NEWTON_STEPS steps, then beta_t = 1 / (t - NEWTON_STEPS + 2) down to 0.1: with
# beta = 1 / k the precision is the running mean of the curvature estimates
# since the burn-in (Robbins-Monro averaging of the Monte-Carlo noise).
NEWTON_STEPS, NEWTON_FLOOR = 8, 0.1
SCHEDULES = {
    "decay": (
        optax.schedules.exponential_decay(
            init_value=0.5, transition_steps=50, decay_rate=0.5, transition_begin=50, end_value=0.02
        ),
        "exponential_decay(init_value=0.5, transition_begin=50, transition_steps=50, decay_rate=0.5, end_value=0.02)",
    ),
    "newton": (
        optax.join_schedules(
            [optax.constant_schedule(1.0), lambda t: jnp.maximum(NEWTON_FLOOR, 1.0 / (t + 2.0))], [NEWTON_STEPS]
        ),
        f"1 for {NEWTON_STEPS} steps, then max({NEWTON_FLOOR}, 1 / (t - {NEWTON_STEPS} + 2))",
    ),
}
# (estimator, group kind, num_samples, options, schedule): the same list on every model, fixed in advance.
NGVI_VARIANTS = (
    ("hessian", "dense", 8, {}, "decay"),
    ("hessian", "dense", 2, {}, "decay"),
    ("hessian", "block_upper", 2, {"probes": 4}, "decay"),
    ("stein", "dense", 8, {}, "decay"),
    ("stein", "dense", 16, {}, "decay"),
    ("stein", "block_upper", 8, {}, "decay"),
    ("stein", "block_upper", 16, {}, "decay"),
    ("hessian", "dense", 32, {"curvature_samples": 2}, "newton"),
    ("hessian", "dense", 8, {"curvature_samples": 2}, "newton"),
    ("stein", "dense", 64, {}, "newton"),
)
LEARNING_RATES = (1e-3, 1e-2, 3e-2)
AUTOGUIDES = {
    "AutoMVN": lambda model, k: AutoMultivariateNormal(model, init_loc_fn=init_to_median),
    "AutoLowRank": lambda model, k: AutoLowRankMultivariateNormal(model, rank=k, init_loc_fn=init_to_median),
    "AutoDiag": lambda model, k: AutoDiagonalNormal(model, init_loc_fn=init_to_median),
}
ELBO_DRAWS, ELBO_TOL, MEAN_TOL = 4000, 0.5, 0.1
FULL = {"ngvi_steps": 300, "svi_steps": 20_000, "svi_chunk": 100, "lrs": LEARNING_RATES, "count": True}
QUICK = {"ngvi_steps": 100, "svi_steps": 2_000, "svi_chunk": 100, "lrs": (1e-2,), "count": False}


class Method:
    """One optimiser on one guide: initial state, compiled loop, posterior of a state."""

    def __init__(self, name, family, state, advance, posterior, grads_per_step, compile_s, **info):
        self.name, self.family, self.state, self.advance = name, family, state, advance
        self.posterior, self.grads_per_step, self.compile_s, self.info = posterior, grads_per_step, compile_s, info


def compile_loop(step, state, kw):
    """``(state, n, kw) -> state`` after ``n`` steps, compiled ahead; returns it and the compile seconds.

    Only the array arguments in ``kw`` are traced; the others (sizes such as a
    number of groups) are closed over, as the model needs them concrete."""
    arrays = {name: value for name, value in kw.items() if isinstance(value, (jax.Array, np.ndarray))}
    static = {name: value for name, value in kw.items() if name not in arrays}

    def loop(state, n, arrays):
        return jax.lax.fori_loop(0, n, lambda _, s: step(s, {**static, **arrays}), state)

    start = time.perf_counter()
    compiled = jax.jit(loop).lower(state, jnp.int32(1), arrays).compile()
    compile_s = time.perf_counter() - start

    def advance(state, n, kw):
        return compiled(state, n, {name: kw[name] for name in arrays})

    return advance, compile_s


def ngvi_grads_per_step(optimiser, state, kw):
    """Gradient evaluations of one NGVI step, as the step reports them (``info.num_grads``)."""
    result = optimiser.run(jax.random.PRNGKey(0), 1, init_state=state, progress_bar=False, **kw)
    return int(result.info.num_grads[0])


@contextlib.contextmanager
def counting(counts):
    """Wrap the estimators' ``value_and_grad`` and mean-HVP helpers so that each
    per-sample gradient and HVP bumps ``counts`` when executed (under jit, vmap, map)."""
    mean_hvp, values_and_grads = estimators._mean_hvp, estimators._values_and_grads

    def bump(kind, n):
        def callback(_):
            counts[kind] += n

        return callback

    def counted_mean_hvp(fn, z):
        hvp = mean_hvp(fn, z)

        def counted(v):
            jax.debug.callback(bump("hvp", z.shape[0]), v)
            return hvp(v)

        return counted

    def counted_values_and_grads(potential, z):
        jax.debug.callback(bump("grad", z.shape[0]), z)
        return values_and_grads(potential, z)

    estimators._mean_hvp, estimators._values_and_grads = counted_mean_hvp, counted_values_and_grads
    try:
        yield
    finally:
        estimators._mean_hvp, estimators._values_and_grads = mean_hvp, values_and_grads


def count_ngvi_step(optimiser, state, kw):
    """Gradient evaluations (HVP = 2) of one jitted NGVI step, counted at run time."""
    counts = {"grad": 0, "hvp": 0}
    with counting(counts):
        jax.block_until_ready(jax.jit(lambda s, kw: optimiser.update(s, **kw))(state, kw))
        jax.effects_barrier()
    return counts["grad"] + 2 * counts["hvp"]


def ngvi_methods(module, kw, k, key, count):
    """The NGVI variants of ``NGVI_VARIANTS`` on ``module``."""
    for estimator, kind, num_samples, options, schedule in NGVI_VARIANTS:
        group = groups.Dense() if kind == "dense" else groups.BlockUpperTriangular(k)
        guide = StructuredGaussian(module.model, group=group, init_loc_fn=init_to_median)
        step_size, schedule_text = SCHEDULES[schedule]
        optimiser = NGVI(module.model, guide, estimator=estimator, step_size=step_size, num_samples=num_samples, **options)
        state = optimiser.init(key, **kw)
        advance, compile_s = compile_loop(lambda s, kw, o=optimiser: o.update(s, **kw)[0], state, kw)
        reported = ngvi_grads_per_step(optimiser, state, kw)
        counted = count_ngvi_step(optimiser, state, kw) if count else None
        if counted is not None and counted != reported:
            raise RuntimeError(f"{estimator}/{group!r}: counted {counted} grad evals per step, the step reports {reported}")
        label = "dense" if kind == "dense" else f"block_upper({k})"
        label += f" n={num_samples}" + "".join(f" {name}={value}" for name, value in options.items())
        yield Method(
            f"NGVI {estimator} {label} {schedule}", "ngvi", state, advance,
            lambda s, g=guide, o=optimiser: g.get_posterior(o.get_params(s)),
            reported, compile_s, counted_grads_per_step=counted, estimator=estimator, group=kind,
            num_samples=num_samples, **options, step_size=schedule_text,
        )


def with_learning_rate(state, lr):
    """An ``SVIState`` of ``inject_hyperparams(adam)`` with its learning rate replaced."""
    count, (params, opt_state) = state.optim_state  # numpyro's optax wrapper: (i, (params, opt_state))
    hyper = {**opt_state.hyperparams, "learning_rate": jnp.asarray(lr, opt_state.hyperparams["learning_rate"].dtype)}
    return state._replace(optim_state=(count, (params, opt_state._replace(hyperparams=hyper))))


def svi_methods(module, kw, k, key, lrs):
    """SVI + Adam on every autoguide and learning rate."""
    for name, make_guide in AUTOGUIDES.items():
        guide = make_guide(module.model, k)
        svi = SVI(module.model, guide, optax.inject_hyperparams(optax.adam)(learning_rate=lrs[0]), Trace_ELBO())
        state = svi.init(key, **kw)
        advance, compile_s = compile_loop(lambda s, kw, svi=svi: svi.update(s, **kw)[0], state, kw)
        for lr in lrs:
            yield Method(
                f"Adam {name} lr={lr:g}", "svi", with_learning_rate(state, lr), advance,
                lambda s, g=guide, svi=svi: g.get_posterior(svi.get_params(s)),
                1, compile_s, guide=name, lr=lr,
            )


def make_check(module, kw, unpack, reference, key):
    """``posterior -> (ELBO, max_i |mean_i - ref_i| / sd_i)``: the draws are jitted per
    distribution, the potential over the draws once per model."""
    ref_mean = jnp.asarray(reference["mean"])
    ref_sd = jnp.sqrt(jnp.diagonal(jnp.asarray(reference["cov"])))
    potential = lambda z: potential_energy(module.model, (), kw, unpack(z))
    draws = jax.jit(lambda q: (q.sample(key, (ELBO_DRAWS,)), jnp.sum(q.entropy()), q.mean))
    score = jax.jit(lambda z, entropy: entropy - jnp.mean(jax.vmap(potential)(z)))
    error = jax.jit(lambda mean: jnp.max(jnp.abs(mean - ref_mean) / ref_sd))

    def check(posterior):
        z, entropy, mean = draws(posterior)
        return float(score(z, entropy)), float(error(mean))

    return check


def checked_run(method, kw, num_steps, chunk, check, state=None, start_step=0):
    """Run ``num_steps`` in chunks, checking ELBO and means after each; the loop time excludes the checks."""
    state = method.state if state is None else state
    steps, elbos, errors, loop_s = [], [], [], 0.0
    n = jnp.int32(chunk)
    for done in range(chunk, num_steps + 1, chunk):
        start = time.perf_counter()
        state = jax.block_until_ready(method.advance(state, n, kw))
        loop_s += time.perf_counter() - start
        elbo, error = check(method.posterior(state))
        steps.append(start_step + done), elbos.append(elbo), errors.append(error)
    return {"steps": steps, "elbo": elbos, "mean_error": errors, "loop_s": loop_s}


def refine(method, kw, trace, hit, check, best_elbo):
    """The first step meeting the target inside the chunk of check ``hit``, checking every step."""
    before = trace["steps"][hit - 1] if hit else 0
    state = method.advance(method.state, jnp.int32(before), kw)
    fine = checked_run(method, kw, trace["steps"][hit] - before, 1, check, state, before)
    first = first_hit(fine, best_elbo)
    return trace["steps"][hit] if first is None else fine["steps"][first]


def meets(trace, best_elbo):
    """Per check: whether both criteria hold."""
    elbo, error = np.asarray(trace["elbo"]), np.asarray(trace["mean_error"])
    return (elbo >= best_elbo - ELBO_TOL) & (error <= MEAN_TOL)


def first_hit(trace, best_elbo):
    """Index of the first check meeting both criteria, or None."""
    hits = np.flatnonzero(meets(trace, best_elbo))
    return int(hits[0]) if hits.size else None


def first_held(trace, best_elbo):
    """Index of the first check from which both criteria hold at every later check, or None."""
    misses = np.flatnonzero(~meets(trace, best_elbo))
    held = 0 if not misses.size else int(misses[-1]) + 1
    return held if held < len(trace["steps"]) else None


def result_row(method, trace, best_elbo, kw, check):
    """Steps, gradient evaluations and wall time to the target, and the end point, of one method."""
    hit, steps, wall = first_hit(trace, best_elbo), None, (None, None)
    if hit is not None:
        steps = refine(method, kw, trace, hit, check, best_elbo) if method.family == "svi" else trace["steps"][hit]
        run = lambda: jax.block_until_ready(method.advance(method.state, jnp.int32(steps), kw))
        wall = time_runs(run, min_runs=5, max_runs=50, budget_s=2.0)[:2]
    last = {key: trace[key][-1:] for key in ("elbo", "mean_error")}
    held = first_held(trace, best_elbo)
    held_steps = None if held is None else trace["steps"][held]
    return {
        "method": method.name, "family": method.family, **method.info,
        "grads_per_step": method.grads_per_step,
        "steps_to_target": steps,
        "grad_evals_to_target": None if steps is None else steps * method.grads_per_step,
        "steps_to_hold": held_steps,
        "grad_evals_to_hold": None if held_steps is None else held_steps * method.grads_per_step,
        "wall_s_to_target": wall[1],
        "wall_s_to_target_median": wall[0],
        "compile_s": method.compile_s,
        "budget_steps": trace["steps"][-1],
        "budget_grad_evals": trace["steps"][-1] * method.grads_per_step,
        "budget_loop_s": trace["loop_s"],
        "final_elbo": trace["elbo"][-1],
        "final_mean_error": trace["mean_error"][-1],
        "target_holds_at_end": first_hit(last, best_elbo) == 0,
        "trace": {key: trace[key] for key in ("steps", "elbo", "mean_error")},
    }


def benchmark_model(name, config, seed):
    """Run every method on model ``name``; return the JSON-ready result."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kw, k = module.data(), RANK[name]
    init_key, check_key = jax.random.split(jax.random.PRNGKey(seed))
    methods = list(ngvi_methods(module, kw, k, init_key, config["count"]))
    methods += list(svi_methods(module, kw, k, init_key, config["lrs"]))
    unpack = StructuredGaussian(module.model, init_loc_fn=init_to_median)
    handlers.seed(unpack, 0)(**kw)  # set up the prototype: one flattening for every AutoContinuous guide
    check = make_check(module, kw, unpack._unpack_latent, load_reference(name)["unconstrained"], check_key)

    traces = {}
    for m in methods:
        steps, chunk = (config["ngvi_steps"], 1) if m.family == "ngvi" else (config["svi_steps"], config["svi_chunk"])
        traces[m.name] = checked_run(m, kw, steps, chunk, check)
    best_elbo = float(np.nanmax([np.nanmax(t["elbo"]) for t in traces.values()]))

    rows = [result_row(m, traces[m.name], best_elbo, kw, check) for m in methods]
    best_lrs = best_learning_rates(rows)
    for row in rows:
        row["best_lr"] = row["family"] == "ngvi" or best_lrs.get(row["guide"]) == row["lr"]
    return {"model": name, "k": k, "best_elbo": best_elbo, "rows": rows, "summary": summarise(rows)}


def best_learning_rates(rows):
    """Per autoguide, the lr that reaches the target in fewest steps (else the best final ELBO)."""
    best = {}
    for guide in {r["guide"] for r in rows if r["family"] == "svi"}:
        runs = [r for r in rows if r.get("guide") == guide]
        key = lambda r: (r["steps_to_target"] is None, r["steps_to_target"] or 0, -np.nan_to_num(r["final_elbo"], nan=-np.inf))
        best[guide] = min(runs, key=key)["lr"]
    return best


def summarise(rows):
    """Best NGVI variant against best Adam baseline: ratios Adam / NGVI (lower bounds when Adam never got there)."""
    out = {}
    ngvi = [r for r in rows if r["family"] == "ngvi"]
    adam = [r for r in rows if r["family"] == "svi"]
    metrics = (("grad_evals_to_target", "budget_grad_evals"), ("wall_s_to_target", "budget_loop_s"),
               ("grad_evals_to_hold", "budget_grad_evals"))
    for metric, budget in metrics:
        ngvi_hit = [r for r in ngvi if r[metric] is not None]
        adam_hit = [r for r in adam if r[metric] is not None]
        if not ngvi_hit:
            out[metric] = {"ratio": None, "note": "no NGVI variant reached the target"}
            continue
        best_ngvi = min(ngvi_hit, key=lambda r: r[metric])
        if adam_hit:
            best_adam = min(adam_hit, key=lambda r: r[metric])
            ratio, bound = best_adam[metric] / best_ngvi[metric], "="
        else:
            best_adam = min(adam, key=lambda r: r[budget])
            ratio, bound = best_adam[budget] / best_ngvi[metric], ">="
        out[metric] = {"ngvi": best_ngvi["method"], "adam": best_adam["method"], "ratio": ratio, "bound": bound}
    best_final = lambda rs: max(rs, key=lambda r: np.nan_to_num(r["final_elbo"], nan=-np.inf))
    out["final_elbo"] = {
        "ngvi": best_final(ngvi)["method"], "ngvi_elbo": best_final(ngvi)["final_elbo"],
        "adam": best_final(adam)["method"], "adam_elbo": best_final(adam)["final_elbo"],
    }
    return out


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_model(result):
    """One table per model plus the NGVI / Adam ratios."""
    print(f"\n== {result['model']} (k={result['k']}): best ELBO {result['best_elbo']:.3f}; target ELBO >= "
          f"{result['best_elbo'] - ELBO_TOL:.3f} and max |mean - NUTS| <= {MEAN_TOL} sd")
    header = f"{'method':<58} {'grads/step':>10} {'steps':>6} {'grad evals':>10} {'wall s':>8} {'compile s':>9} " \
             f"{'final ELBO':>10} {'final err':>9} {'held from':>10}"
    print(header + "\n" + "-" * len(header))
    for r in result["rows"]:
        name = r["method"] + (" *" if r["family"] == "svi" and r["best_lr"] else "")
        reached = r["steps_to_target"] is not None
        print(f"{name:<58} {r['grads_per_step']:>10} {fmt(r['steps_to_target'], 'd') if reached else 'not reached':>6} "
              f"{fmt(r['grad_evals_to_target'], 'd'):>10} {fmt(r['wall_s_to_target'], '.4f'):>8} "
              f"{r['compile_s']:>9.2f} {r['final_elbo']:>10.3f} {r['final_mean_error']:>9.3f} "
              f"{fmt(r['grad_evals_to_hold'], 'd'):>10}")
    s = result["summary"]
    for metric, label in (("grad_evals_to_target", "grad evals"), ("wall_s_to_target", "wall time"),
                          ("grad_evals_to_hold", "grad evals to hold")):
        m = s[metric]
        if m["ratio"] is None:
            print(f"{label}: {m['note']}")
        else:
            print(f"{label}: best Adam / best NGVI {m['bound']} {m['ratio']:.1f}x ({m['adam']} vs {m['ngvi']})")
    f = s["final_elbo"]
    print(f"final ELBO: best NGVI {f['ngvi_elbo']:.3f} ({f['ngvi']}), best Adam {f['adam_elbo']:.3f} ({f['adam']}), "
          f"difference {f['ngvi_elbo'] - f['adam_elbo']:+.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SVI 2,000 steps at one lr, NGVI 100 steps, no counting")
    parser.add_argument("--models", nargs="+", choices=sorted(RANK), help="default: all (--quick: linear_regression)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of every method's state and of the checks")
    options = parser.parse_args()
    config = QUICK if options.quick else FULL
    options.models = options.models or (["linear_regression"] if options.quick else sorted(RANK))
    print(f"command: python bench/vs_svi.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores; "
          f"ngvi steps {config['ngvi_steps']} (checked every step), svi steps {config['svi_steps']} "
          f"(checked every {config['svi_chunk']}), lrs {config['lrs']}; '*' marks each autoguide's best lr")
    print("NGVI step sizes: " + "; ".join(f"{name}: {text}" for name, (_, text) in SCHEDULES.items()))
    print("NGVI variants (estimator, group, num_samples, options, step size): " + "; ".join(map(str, NGVI_VARIANTS)))
    start = time.perf_counter()
    results = []
    for name in options.models:
        results.append(benchmark_model(name, config, options.seed))
        print_model(results[-1])
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s")
    suffix = ("_quick" if options.quick else "") + (f"_seed{options.seed}" if options.seed else "")
    out = ROOT / "bench" / "results" / f"vs_svi{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", "bench/vs_svi.py", *sys.argv[1:]]), "config": config, "total_s": total,
            "seed": options.seed, "ngvi_step_sizes": {name: text for name, (_, text) in SCHEDULES.items()},
            "ngvi_variants": [list(v) for v in NGVI_VARIANTS],
            "elbo_draws": ELBO_DRAWS, "elbo_tol": ELBO_TOL, "mean_tol": MEAN_TOL, "jax": jax.__version__}
    with open(out, "w") as f:
        json.dump({"meta": meta, "models": results}, f, indent=1)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
