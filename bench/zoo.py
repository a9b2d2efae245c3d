"""The model zoo: NGVI, NumPyro SVI + Adam and NUTS against the NUTS references
(or, with ``--target kl``, against the Gaussian family's KL optimum, ``bench/kl_optima.py``).

    python bench/zoo.py [--models a,b,...] [--budget-grads N] [--budget-seconds S] [--target nuts|kl]

Methods, per model (float32; every VI guide starts at ``init_to_median`` with
standard deviations 0.1, PRNG seed 0):

* NGVI ``estimator="auto"`` (the default) and ``"stein"``, otherwise the
  defaults (``num_samples=8``, constant step size 0.5), on
  ``StructuredGaussian`` with ``groups.Dense()`` (``BlockUpperTriangular(8)``
  for p > 200); gradient evaluations per step are the step's
  ``info.num_grads`` (an HVP counts 2);
* NGVI ``run(key, None)``, every default: one call that runs until converged;
  its row is the converged answer ("to target" if it meets the target), its
  wall time includes compilation (the compile column is blank);
* Batch-and-Match (``bench/batch_and_match.py``) with 16 and 64 draws per step
  (``batch_size`` gradients), learning rate ``B D / (t + 1)``, from the same
  start as NGVI (``init_to_median``, sds 0.1);
* SVI, ``Trace_ELBO()`` (one particle: 1 gradient evaluation per step) with
  ``optax.adam`` at learning rates 1e-3 and 1e-2 (one executable per autoguide
  via ``optax.inject_hyperparams``, so both rates share its compile time) on
  AutoDiagonalNormal, AutoLowRankMultivariateNormal (default rank) and
  AutoMultivariateNormal;
* NUTS, one chain, the reference's ``num_warmup``, ``num_samples`` and
  ``target_accept_prob``, seed = the reference's + 1. It runs the kernel's
  ``sample`` in the same compiled loop as the VI methods (what ``MCMC.run``
  does inside) and counts gradients as the sum of ``HMCState.num_steps``, the
  leapfrog steps (the field ``extra_fields=("num_steps",)`` collects). Its
  checkpoints start after warmup and at least 20 and 2p draws; its "fit" at a
  checkpoint is the Gaussian with the mean and covariance of the draws so far.
  The gradient budget does not apply to it.

Each method's steps run in one compiled ``(state, n) -> state`` loop
(``vs_svi.compile_loop``, the "compile s" column), called for geometrically
growing step counts (``CHECKS_PER_DECADE`` checkpoints per decade); the wall
time adds up the loop calls only. A method stops after the checkpoint where
its gradient evaluations or loop time reach the budget.

Errors against the target's unconstrained mean ``m`` and sd ``s`` (the
reference's, from its covariance's diagonal, or the stored KL optimum's): mean
error ``max_i |mu_i - m_i| / s_i``, sd error
``max_i |sd_i / s_i - 1|``; the target is both below ``TOL``, "first reached"
is the first checkpoint that meets it. At the last checkpoint: the negative
ELBO ``mean(log q(z) - log p(x, z))`` over ``ELBO_DRAWS`` draws of the fitted
Gaussian ``q`` (its ``log_prob``; ``log p`` = minus NumPyro's
``potential_energy`` in the unconstrained space) and the Pareto k-hat of the
importance ratios ``p / q`` (``arviz.psislw``).

Outputs: ``bench/results/zoo.md``, ``zoo_error_vs_grads.png`` and
``zoo_error_vs_time.png`` (error = max(mean error, sd error)).
"""

import os

# LAPACK calls spin an OpenBLAS pool that fights XLA's on 2 cores (bench/groups.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, NamedTuple  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import NUTS, SVI, Trace_ELBO, init_to_median  # noqa: E402
from numpyro.infer.autoguide import (  # noqa: E402
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
)
from numpyro.infer.util import potential_energy  # noqa: E402

import batch_and_match  # noqa: E402
from ngvi import NGVI, StructuredGaussian, groups  # noqa: E402
from ngvi.models.reference import load_kl_optimum, load_reference  # noqa: E402
from ngvi.target import make_target  # noqa: E402
from vs_svi import compile_loop, fmt, with_learning_rate  # noqa: E402

SMALL_MODELS = ("linear_regression", "poisson_glm", "logistic_regression", "eight_schools")
AUTOGUIDES = {
    "AutoDiagonalNormal": AutoDiagonalNormal,
    "AutoLowRankMVN": AutoLowRankMultivariateNormal,
    "AutoMVN": AutoMultivariateNormal,
}
LEARNING_RATES = (1e-3, 1e-2)
TOL, ELBO_DRAWS, CHECKS_PER_DECADE, DENSE_MAX_DIM = 0.1, 2000, 8, 200
RESULTS = ROOT / "bench" / "results"
KL_OPTIMA = ROOT / "models" / "reference" / "kl_optima.json"  # written by bench/kl_optima.py


class Method(NamedTuple):
    """A method on one model: ``advance(state, n, kw)`` runs ``n`` steps,
    ``grads(state, steps)`` counts gradient evaluations so far, ``fit(state,
    steps)`` is the fitted Gaussian, ``checkpoints`` the step counts at which
    to check it."""

    name: str
    state: Any
    advance: Callable
    grads: Callable
    fit: Callable
    checkpoints: np.ndarray
    compile_s: float


def geometric(start, stop):
    """Integers from ``start`` to ``stop`` spaced ``CHECKS_PER_DECADE`` per decade."""
    num = max(2, int(np.ceil(CHECKS_PER_DECADE * np.log10(stop / start))) + 1)
    return np.unique(np.geomspace(start, stop, num).round().astype(int))


def group_for(dim):
    return groups.Dense() if dim <= DENSE_MAX_DIM else groups.BlockUpperTriangular(8)


def ngvi_methods(model, kw, dim, key, budget_grads):
    """NGVI with the "auto" and the "stein" estimator, defaults otherwise; the
    state carries the gradient evaluations so far (the steps' ``info.num_grads``)."""
    for estimator in ("auto", "stein"):
        guide = StructuredGaussian(model, group=group_for(dim), init_loc_fn=init_to_median)
        optimiser = NGVI(model, guide, estimator=estimator)

        def step(carry, kw, optimiser=optimiser):
            result = optimiser.run(None, 1, progress_bar=False, init_state=carry[0], **kw)
            return result.state, carry[1] + result.info.num_grads[0]

        state = (optimiser.init(key, **kw), jnp.zeros((), jnp.int32))
        advance, compile_s = compile_loop(step, state, kw)
        first_step = int(advance(state, jnp.int32(1), kw)[1])
        yield Method(
            f"NGVI {estimator}", state, advance, lambda s, steps: int(s[1]),
            lambda s, steps, g=guide, o=optimiser: g.get_posterior(o.get_params(s[0])),
            geometric(1, max(1, budget_grads // first_step)), compile_s,
        )


def converged_row(model, kw, dim, key, errors, final):
    """NGVI ``run(key, None)`` with every default: one row (the converged answer)."""
    guide = StructuredGaussian(model, group=group_for(dim), init_loc_fn=init_to_median)
    optimiser = NGVI(model, guide)
    start = time.perf_counter()
    result = optimiser.run(key, None, progress_bar=False, **kw)
    wall = time.perf_counter() - start
    q = guide.get_posterior(result.params)
    mean_err, sd_err = errors(q)
    grads, steps = int(np.sum(result.info.num_grads)), int(result.losses.shape[0])
    hit = mean_err < TOL and sd_err < TOL
    neg_elbo, khat = final(q)
    name = f"NGVI run(None) ({'converged' if result.converged else result.stop_reason})"
    trace = np.array([(steps, grads, wall, mean_err, sd_err)])
    return {
        "method": name, "compile_s": None, "grads_to_target": grads if hit else None,
        "wall_to_target": wall if hit else None, "steps": steps, "grads": grads, "wall": wall,
        "mean_err": mean_err, "sd_err": sd_err, "neg_elbo": neg_elbo, "khat": khat,
    }, trace


def bam_methods(model, kw, key, budget_grads):
    """Batch-and-Match at 16 and 64 draws per step, from NGVI's start, on the
    potential NGVI fits (the guide's flat unconstrained layout)."""
    guide = StructuredGaussian(model, init_loc_fn=init_to_median)
    numpyro.handlers.seed(guide, key)(**kw)  # sets up the latent layout and the start
    for batch_size in (16, 64):
        state = batch_and_match.init(key, guide._init_latent, 0.1)

        def step(s, kw, b=batch_size):
            return batch_and_match.step(s, make_target(model, guide, key, (), kw).potential, b)

        advance, compile_s = compile_loop(step, state, kw)
        yield Method(
            f"Batch-and-Match B={batch_size}", state, advance, lambda s, steps, b=batch_size: b * steps,
            lambda s, steps: dist.MultivariateNormal(s.loc, s.cov, validate_args=False),  # NaN once diverged
            geometric(1, max(1, budget_grads // batch_size)), compile_s,
        )


def svi_methods(model, kw, key, budget_grads):
    """SVI + Adam on every autoguide at every learning rate."""
    for name, make_guide in AUTOGUIDES.items():
        guide = make_guide(model, init_loc_fn=init_to_median)
        svi = SVI(model, guide, optax.inject_hyperparams(optax.adam)(learning_rate=LEARNING_RATES[0]), Trace_ELBO())
        state = svi.init(key, **kw)
        advance, compile_s = compile_loop(lambda s, kw, svi=svi: svi.update(s, **kw)[0], state, kw)
        for lr in LEARNING_RATES:
            yield Method(
                f"Adam {name} lr={lr:g}", with_learning_rate(state, lr), advance, lambda s, steps: steps,
                lambda s, steps, g=guide, svi=svi: g.get_posterior(svi.get_params(s)),
                geometric(1, budget_grads), compile_s,
            )


def flatten(z, sites):
    """The flat unconstrained vector of a dict of site values, in the reference's layout."""
    return jnp.concatenate([jnp.reshape(z[site["name"]], (-1,)) for site in sites])


def unflatten(z, sites):
    """The dict of site values of a flat unconstrained vector (inverse of :func:`flatten`)."""
    sizes = np.cumsum([site["size"] for site in sites])[:-1]
    return {site["name"]: jnp.reshape(part, site["shape"]) for site, part in zip(sites, jnp.split(z, sizes))}


def nuts_method(model, kw, ref):
    """One NUTS chain with the reference's settings (NumPyro's defaults, 1000
    warm-up draws, where the reference is exact draws, as for the funnel); the
    state carries the draws and the leapfrog count."""
    settings, sites = ref["settings"], ref["unconstrained"]["sites"]
    num_warmup, num_samples = settings.get("num_warmup", 1000), settings["num_samples"]
    kernel = NUTS(model, target_accept_prob=settings.get("target_accept_prob", 0.8))
    hmc_state = kernel.init(jax.random.PRNGKey(settings["seed"] + 1), num_warmup, None, (), kw)
    draws = jnp.zeros((num_samples, ref["unconstrained"]["dim"]), hmc_state.potential_energy.dtype)

    def step(carry, kw):
        hmc_state, draws, leapfrogs = carry
        hmc_state = kernel.sample(hmc_state, (), kw)
        index = hmc_state.i - num_warmup - 1  # the first draw after warmup goes to row 0
        draws = draws.at[jnp.where(index >= 0, index, num_samples)].set(flatten(hmc_state.z, sites), mode="drop")
        return hmc_state, draws, leapfrogs + hmc_state.num_steps

    def fit(carry, steps):
        kept = np.asarray(carry[1][: steps - num_warmup], np.float64)
        return dist.MultivariateNormal(jnp.asarray(kept.mean(0)), jnp.asarray(np.atleast_2d(np.cov(kept.T))))

    state = (hmc_state, draws, jnp.zeros((), jnp.int32))
    advance, compile_s = compile_loop(step, state, kw)
    first = min(max(20, 2 * draws.shape[1]), num_samples)  # enough draws for a full-rank covariance
    checkpoints = num_warmup + geometric(first, num_samples)
    return Method("NUTS", state, advance, lambda s, steps: int(s[2]), fit, checkpoints, compile_s)


def target_moments(name, ref, target):
    """The unconstrained mean and sd the errors are measured against: the NUTS
    reference's (``target="nuts"``) or the family's KL optimum (``"kl"``, stored by ``bench/kl_optima.py``)."""
    if target == "kl":
        optimum = load_kl_optimum(name)
        if optimum is None:
            raise ValueError(f"no KL optimum stored for {name!r} in {KL_OPTIMA}: "
                             f"run python bench/kl_optima.py --models {name}")
        return np.asarray(optimum["mean"]), np.asarray(optimum["sd"])
    return np.asarray(ref["unconstrained"]["mean"]), np.sqrt(np.diagonal(np.asarray(ref["unconstrained"]["cov"])))


def make_scores(model, kw, ref, key, moments):
    """``errors(q) -> (mean error, sd error)`` against ``moments`` (mean, sd), and
    ``final(q) -> (negative ELBO, Pareto k-hat)`` from ``ELBO_DRAWS`` draws of ``q``."""
    sites = ref["unconstrained"]["sites"]
    ref_mean, ref_sd = (jnp.asarray(m, jnp.float32) for m in moments)
    potential = jax.vmap(lambda z: potential_energy(model, (), kw, unflatten(z, sites)))
    errors = jax.jit(lambda q: (jnp.max(jnp.abs(q.mean - ref_mean) / ref_sd),
                                jnp.max(jnp.abs(jnp.sqrt(q.variance) / ref_sd - 1.0))))

    @jax.jit
    def log_ratios(q):
        z = q.sample(key, (ELBO_DRAWS,))
        log_q = jnp.reshape(q.log_prob(z), (ELBO_DRAWS, -1)).sum(-1)  # AutoDiagonalNormal's is per coordinate
        return -potential(z) - log_q

    def final(q):
        log_w = np.asarray(log_ratios(q), np.float64)
        return -np.mean(log_w), float(az.psislw(log_w)[1])

    return lambda q: tuple(map(float, errors(q))), final


def run_method(method, kw, errors, budget_grads, budget_s):
    """Advance checkpoint by checkpoint until the budget; the trace of grads, loop seconds and errors."""
    state, done, loop_s, trace = method.state, 0, 0.0, []
    for steps in method.checkpoints:
        start = time.perf_counter()
        state = jax.block_until_ready(method.advance(state, jnp.int32(steps - done), kw))
        loop_s, done = loop_s + time.perf_counter() - start, steps
        grads = method.grads(state, steps)
        trace.append((steps, grads, loop_s, *errors(method.fit(state, steps))))
        if grads >= budget_grads or loop_s >= budget_s:
            break
    return state, np.array(trace)


def summarise(method, state, trace, final):
    """One table row: first checkpoint on target, final errors, negative ELBO and k-hat."""
    steps, grads, wall, mean_err, sd_err = trace.T
    hits = np.flatnonzero((mean_err < TOL) & (sd_err < TOL))
    neg_elbo, khat = final(method.fit(state, int(steps[-1])))
    hit = hits[0] if hits.size else None
    return {
        "method": method.name, "compile_s": method.compile_s,
        "grads_to_target": None if hit is None else int(grads[hit]),
        "wall_to_target": None if hit is None else wall[hit],
        "steps": int(steps[-1]), "grads": int(grads[-1]), "wall": wall[-1],
        "mean_err": mean_err[-1], "sd_err": sd_err[-1], "neg_elbo": neg_elbo, "khat": khat,
    }


def benchmark_model(name, budget_grads, budget_s, target):
    """Every method on model ``name``: ``(rows, traces)``."""
    module = importlib.import_module(f"ngvi.models.{name}")
    kw, ref = module.data(), load_reference(name)
    key, score_key = jax.random.split(jax.random.PRNGKey(0))
    errors, final = make_scores(module.model, kw, ref, score_key, target_moments(name, ref, target))
    dim = ref["unconstrained"]["dim"]
    methods = [
        *ngvi_methods(module.model, kw, dim, key, budget_grads),
        *bam_methods(module.model, kw, key, budget_grads),
        *svi_methods(module.model, kw, key, budget_grads),
        nuts_method(module.model, kw, ref),
    ]
    row, trace = converged_row(module.model, kw, dim, key, errors, final)
    rows, traces = [row], {row["method"]: trace}
    print(f"  {row['method']:<32} {fmt(row['grads_to_target'], 'd'):>9} grads to target, {row['steps']} steps, "
          f"{row['grads']} grads {row['wall']:.2f} s with compilation, errors {row['mean_err']:.3f} / {row['sd_err']:.3f}",
          flush=True)
    for method in methods:
        grads = np.inf if method.name == "NUTS" else budget_grads  # NUTS runs the reference's settings
        state, traces[method.name] = run_method(method, kw, errors, grads, budget_s)
        rows.append(summarise(method, state, traces[method.name], final))
        r = rows[-1]
        print(f"  {r['method']:<32} {fmt(r['grads_to_target'], 'd'):>9} grads to target, final {r['grads']:>8} grads "
              f"{r['wall']:7.2f} s, errors {r['mean_err']:.3f} / {r['sd_err']:.3f}, compile {r['compile_s']:.1f} s",
              flush=True)
    return rows, traces


def markdown_table(header, rows):
    """A markdown table from a header and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_markdown(path, command, facts, results, budget_grads, budget_s, target):
    """``results/zoo.md``: the command, the machine, one table per model."""
    against = "the NUTS references" if target == "nuts" else "the Gaussian family's KL optimum"
    header = ["method", "grads to target", "wall s to target", "steps", "grads", "wall s", "mean err", "sd err",
              "-ELBO", "k-hat", "compile s"]
    parts = [
        f"# Model zoo: NGVI, SVI + Adam and NUTS against {against}", "",
        f"    {command}", "", facts, "",
        f"Budget per method: {budget_grads:,} gradient evaluations or {budget_s:g} s of loop time (excluding "
        "compilation), checked at the checkpoints. Target: mean error and sd error both below "
        f"{TOL} (target sd; target: {against}); \"to target\" is the first checkpoint ({CHECKS_PER_DECADE} per "
        "decade of steps) "
        "that meets it, \"-\" = not reached. Steps, grads, wall s, errors, -ELBO and k-hat are at the last "
        f"checkpoint; -ELBO = mean(log q - log p) over {ELBO_DRAWS} draws of the fitted Gaussian (for NUTS: the "
        "Gaussian with the draws' mean and covariance), k-hat = Pareto k of p / q. The two Adam learning rates of "
        "one autoguide share one executable and its compile time. Details: the docstring of `bench/zoo.py`.",
    ]
    for name, (rows, ref) in results.items():
        s = ref["settings"]
        reference = (f"NUTS {s['num_chains']} chains x ({s['num_warmup']} + {s['num_samples']})" if s["sampler"] == "NUTS"
                     else f"{s['num_chains']} x {s['num_samples']} exact draws")
        parts += ["", f"## {name} (p = {ref['unconstrained']['dim']}; reference: {reference}, "
                  f"{ref['wall_time_s']:.1f} s with compilation)", ""]
        parts.append(markdown_table(header, [[
            r["method"], fmt(r["grads_to_target"], ","), fmt(r["wall_to_target"], ".3f"), f"{r['steps']:,}",
            f"{r['grads']:,}", f"{r['wall']:.2f}", f"{r['mean_err']:.3f}", f"{r['sd_err']:.3f}",
            f"{r['neg_elbo']:.3f}", f"{r['khat']:.2f}", fmt(r["compile_s"], ".1f"),
        ] for r in rows]))
    path.write_text("\n".join(parts) + "\n")


def plot(path, all_traces, column, xlabel):
    """Error = max(mean error, sd error) against trace column ``column``, one panel per model."""
    cols = min(2, len(all_traces))
    rows = -(-len(all_traces) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax, (name, traces) in zip(axes.flat, all_traces.items()):
        bases = list(dict.fromkeys(method.split(" lr=")[0] for method in traces))  # one colour per guide
        for method, trace in traces.items():
            style = "-" if not method.startswith("Adam") else ("--" if "lr=0.001" in method else ":")
            color = "black" if method == "NUTS" else f"C{bases.index(method.split(' lr=')[0])}"
            ax.plot(trace[:, column], np.maximum(trace[:, 3], trace[:, 4]), style, color=color, label=method,
                    marker=".", ms=3)
        ax.axhline(TOL, color="0.6", lw=0.8)
        ax.set(xscale="log", yscale="log", title=name, xlabel=xlabel, ylabel="max(mean error, sd error)")
    for ax in axes.flat[len(all_traces):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_facts():
    """CPU, cores, load, library versions and dtype, as one line."""
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (f"Machine: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; "
            f"Python {platform.python_version()}, jax {jax.__version__} ({jax.devices()[0].platform}), "
            f"numpyro {numpyro.__version__}, optax {optax.__version__}, arviz {az.__version__}; float32; "
            f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SMALL_MODELS), help="comma-separated zoo models")
    parser.add_argument("--budget-grads", type=int, default=2_000_000, help="gradient evaluations per method")
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="loop seconds per method")
    parser.add_argument("--name", default="zoo", help="results go to bench/results/NAME.md, NAME_error_vs_*.png")
    parser.add_argument("--target", choices=("nuts", "kl"), default="nuts",
                        help="errors against the NUTS moments or the family's KL optimum (bench/kl_optima.py)")
    args = parser.parse_args()
    command = " ".join(["python", "bench/zoo.py", *sys.argv[1:]])
    facts, start = machine_facts(), time.perf_counter()
    print(command + "\n" + facts, flush=True)
    results, traces = {}, {}
    for name in args.models.split(","):
        print(name, flush=True)
        rows, traces[name] = benchmark_model(name, args.budget_grads, args.budget_seconds, args.target)
        results[name] = (rows, load_reference(name))
    facts += f" Total run time {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f} at the end."
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_markdown(RESULTS / f"{args.name}.md", command, facts, results, args.budget_grads, args.budget_seconds,
                   args.target)
    plot(RESULTS / f"{args.name}_error_vs_grads.png", traces, 1, "gradient evaluations")
    plot(RESULTS / f"{args.name}_error_vs_time.png", traces, 2, "wall time excluding compilation (s)")
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in sorted(RESULTS.glob(args.name + '*')))}")


if __name__ == "__main__":
    main()
