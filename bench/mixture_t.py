"""Approximating an 80-dimensional multimodal distribution (Lin, Nielsen, Khan and
Schmidt, ICML 2021): a mixture of structured Gaussians fitted with NGVI to the
equal-weight mixture of 10 Student-t components of ``models/mixture_t.py``.

    python bench/mixture_t.py [--quick]

All methods use ``BlockUpperTriangular(k=5)`` and start from the same ``starts``
points drawn uniformly in the box ``[-20, 20]^d`` (never the true means).

* ``ngvi_mixture``: :func:`ngvi.find_modes` descends from every start (Adam,
  ``descent_steps`` gradients each) and merges the end points into distinct
  modes; ``StructuredGaussianMixture`` with one component per mode, fixed equal
  weights (as in the ICML 2021 experiment), ``init_scale``; then
  ``NGVI(estimator="stein")`` with ``num_samples`` draws per component per step.
* ``ngvi_mixture_learned_weights``: the same with ``learn_weights=True``.
* ``ngvi_mixture_wide_start``: no mode finding: ``wide_components`` components
  at the first starts, each as wide as the box (``wide_init_scale``, the
  precision ``I/300`` of the ICML 2021 code), learned weights, the same steps.
* ``ngvi_single``: one ``StructuredGaussian`` at the best mode found, NGVI with
  ``K * num_samples`` draws per step (the mixture's gradient evaluations).
* ``svi_mixture``: the ``ngvi_mixture`` guide (same modes, same initial factors)
  trained by stock ``numpyro.infer.SVI`` with ``optax.adam`` and
  ``ngvi.MixtureELBO(num_particles=num_samples)`` for the same steps, hence the
  same gradient evaluations; best of the ``learning_rates`` by final loss.
* ``svi_mixture_wide_start``: the ``ngvi_mixture_wide_start`` guide with stock
  SVI and Adam in the same way.

Every row counts gradient evaluations: ``starts * descent_steps`` for the mode
search (where used) plus one per draw per step.

Metrics, from ``draws`` draws of the fit and of the exact target: for every
dimension the 1-Wasserstein distance between the fitted and the exact marginal
samples divided by the exact marginal's interquartile range (median and max
over dimensions; the "exact vs exact" row is the Monte-Carlo floor of that
number), and how many target components have a fitted component whose mean is
within 3 marginal scales of theirs in every dimension ("covered"). The figure
``docs/mixture_t_marginals.png`` (``bench/results/mixture_t_quick.png`` with
``--quick``) draws the first 8 marginals, each fit over the
exact density (every component's marginal is a Student-t with 2 degrees of
freedom, location ``m_c[i]`` and scale ``sqrt((P_c^-1)_ii)``; the mixture's is
their average). Results: ``bench/results/mixture_t[_quick].json``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # LAPACK's spinning pool fights XLA's on 2 cores

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI, init_to_value  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from ngvi.models import mixture_t as mt  # noqa: E402
from ngvi import NGVI, MixtureELBO, StructuredGaussian, StructuredGaussianMixture, find_modes, groups  # noqa: E402

FULL = dict(dim=80, starts=200, descent_steps=2000, descent_rate=0.5, steps=3000, chunk=500, num_samples=8,
            step_size=0.1, final_step_size=0.01, decay_from=0.5, init_scale=0.1, wide_components=40,
            wide_init_scale=17.0, learning_rates="0.003,0.01,0.03", seed=0, draws=20_000)
QUICK = dict(FULL, steps=500, chunk=250, draws=10_000)
BLOCK_K, BOX, COVER_SCALES, PLOT_DIMS = 5, 20.0, 3.0, 8


def step_schedule(s):
    """``step_size`` for ``decay_from * steps`` steps, then a cosine decay to
    ``final_step_size`` (the Monte-Carlo wander of the means and weights shrinks
    with the step)."""
    hold = int(s["decay_from"] * s["steps"])
    return optax.join_schedules(
        [optax.constant_schedule(s["step_size"]),
         optax.cosine_decay_schedule(s["step_size"], s["steps"] - hold, s["final_step_size"] / s["step_size"])],
        [hold],
    )


# --- the exact target --------------------------------------------------------
class Exact:
    """Means ``(C, d)``, marginal scales ``(C, d)`` and the exact 1-d marginals."""

    def __init__(self, dim, seed):
        self.means, precisions = mt.components(dim, mt.NUM_COMPONENTS, mt.SEED)
        self.scales = mt.marginal_scales(precisions)
        self.data = mt.data(dim=dim)
        self.distribution = mt.target(**self.data)
        self.seed = seed

    def density(self, x, i):
        """The exact marginal density of coordinate ``i`` at ``x``."""
        return np.mean(stats.t.pdf(x[:, None], mt.DF, self.means[:, i], self.scales[:, i]), axis=1)

    def cdf(self, x, i):
        return np.mean(stats.t.cdf(x, mt.DF, self.means[:, i], self.scales[:, i]))

    def iqr(self, i):
        lo, hi = self.means[:, i].min() - 1e3, self.means[:, i].max() + 1e3
        q = [optimize.brentq(lambda x: self.cdf(x, i) - u, lo, hi, xtol=1e-10) for u in (0.25, 0.75)]
        return q[1] - q[0]

    def sample(self, num):
        return np.asarray(self.distribution.sample(jax.random.PRNGKey(self.seed + 1), (num,)), np.float64)


def metrics(exact, iqr, exact_draws, fit_draws, locs):
    """Normalised W1 per dimension (if ``fit_draws`` is given) and the coverage of
    the target components by ``locs``."""
    out = {}
    if fit_draws is not None:
        w1 = [stats.wasserstein_distance(fit_draws[:, i], exact_draws[:, i]) for i in range(exact.means.shape[1])]
        w1 = np.asarray(w1) / iqr
        out.update(w1_over_iqr_median=float(np.median(w1)), w1_over_iqr_max=float(np.max(w1)))
    if locs is not None:
        # worst-dimension distance, in marginal scales, of every fitted mean to every target mean
        dist = np.max(np.abs(locs[:, None] - exact.means[None]) / exact.scales[None], axis=-1)
        out["covered"] = int(np.sum(dist.min(0) < COVER_SCALES))
        out["nearest_in_scales"] = np.round(dist.min(0), 2).tolist()
    return out


# --- methods -----------------------------------------------------------------
class FoundModes(NamedTuple):
    locs: jax.Array
    evals: int  # gradient evaluations spent finding them


def starts(s):
    """Uniform draws in the box from a stream of their own: ``models/mixture_t.py``
    draws the true means from ``default_rng(0)``, which must not be reused here."""
    rng = np.random.default_rng([s["seed"], 2021])
    return rng.uniform(-BOX, BOX, size=(s["starts"], s["dim"]))


def run_scan(update, state, s):
    """``steps`` updates in jit-compiled scans of ``chunk`` steps: final state,
    losses, compile and run seconds."""
    chunk = jax.jit(lambda st: jax.lax.scan(lambda c, _: update(c), st, None, length=s["chunk"]))
    start = time.perf_counter()
    compiled = chunk.lower(state).compile()
    compile_s, start = time.perf_counter() - start, time.perf_counter()
    losses = []
    for _ in range(s["steps"] // s["chunk"]):
        state, loss = compiled(state)
        losses.append(np.asarray(loss))
    return state, np.concatenate(losses), compile_s, time.perf_counter() - start


class Fit(NamedTuple):
    guide: object
    params: dict
    losses: np.ndarray
    compile_s: float
    run_s: float
    grad_evals: int
    rejected: int


def fit_ngvi(s, data, guide, num_samples, extra_evals):
    ngvi = NGVI(mt.model, guide, step_size=step_schedule(s), num_samples=num_samples, estimator="stein")
    state = ngvi.init(jax.random.PRNGKey(s["seed"]), **data)
    state, losses, compile_s, run_s = run_scan(lambda st: ngvi.update(st, **data), state, s)
    num = getattr(guide, "num_components", 1)
    evals = extra_evals + s["steps"] * num * num_samples
    return Fit(guide, ngvi.get_params(state), losses, compile_s, run_s, evals, int(state.num_rejected))


def mode_guide(s, modes, learn_weights=False):
    return StructuredGaussianMixture(
        mt.model, num_components=len(modes.locs), group=groups.BlockUpperTriangular(BLOCK_K),
        learn_weights=learn_weights, init_locs=modes.locs, init_scale=s["init_scale"],
    )


def ngvi_mixture(s, data, modes):
    return fit_ngvi(s, data, mode_guide(s, modes), s["num_samples"], modes.evals)


def ngvi_mixture_learned_weights(s, data, modes):
    return fit_ngvi(s, data, mode_guide(s, modes, learn_weights=True), s["num_samples"], modes.evals)


def wide_guide(s):
    return StructuredGaussianMixture(
        mt.model, num_components=s["wide_components"], group=groups.BlockUpperTriangular(BLOCK_K),
        learn_weights=True, init_locs=starts(s)[: s["wide_components"]], init_scale=s["wide_init_scale"],
    )


def ngvi_mixture_wide_start(s, data, modes):
    return fit_ngvi(s, data, wide_guide(s), s["num_samples"], 0)


def ngvi_single(s, data, modes):
    guide = StructuredGaussian(mt.model, group=groups.BlockUpperTriangular(BLOCK_K), init_scale=s["init_scale"],
                               init_loc_fn=init_to_value(values={"z": modes.locs[0]}))
    return fit_ngvi(s, data, guide, len(modes.locs) * s["num_samples"], modes.evals)


def fit_svi(s, data, make_guide, extra_evals):
    """Stock SVI with Adam, best of ``learning_rates`` by the mean loss of the last 5% of steps."""
    best = None
    for rate in map(float, s["learning_rates"].split(",")):
        guide = make_guide()
        svi = SVI(mt.model, guide, optax.adam(rate), MixtureELBO(num_particles=s["num_samples"]))
        state = svi.init(jax.random.PRNGKey(s["seed"]), **data)
        state, losses, compile_s, run_s = run_scan(lambda st: svi.update(st, **data), state, s)
        evals = extra_evals + s["steps"] * guide.num_components * s["num_samples"]
        fit = Fit(guide, svi.get_params(state), losses, compile_s, run_s, evals, 0)
        print(f"  adam({rate}): final loss {final_loss(fit):.3f}", flush=True)
        if best is None or final_loss(fit) < final_loss(best):
            best = fit
    return best


def svi_mixture(s, data, modes):
    return fit_svi(s, data, lambda: mode_guide(s, modes), modes.evals)


def svi_mixture_wide_start(s, data, modes):
    return fit_svi(s, data, lambda: wide_guide(s), 0)


def final_loss(fit):
    return float(np.mean(fit.losses[-max(1, len(fit.losses) // 20):]))


METHODS = {
    f.__name__: f
    for f in (ngvi_mixture, ngvi_mixture_learned_weights, ngvi_mixture_wide_start, ngvi_single, svi_mixture,
              svi_mixture_wide_start)
}


def component_locs(guide, params):
    return np.atleast_2d(np.asarray(guide.unpack_params(params)[0], np.float64))


def fitted_density(guide, params, x, i):
    """The fitted marginal density of coordinate ``i`` (exact for a Gaussian mixture)."""
    posterior = guide.get_posterior(params)
    if isinstance(guide, StructuredGaussianMixture):
        weights = np.asarray(posterior.mixing_distribution.probs)
        components = posterior.component_distribution
    else:
        weights, components = np.ones(1), posterior
    loc = np.atleast_2d(np.asarray(components.mean))[:, i]
    sd = np.sqrt(np.atleast_2d(np.asarray(components.variance))[:, i])
    return np.sum(weights * stats.norm.pdf(x[:, None], loc, sd), axis=1)


def plot(exact, fits, path):
    fig, axes = plt.subplots(2, PLOT_DIMS // 2, figsize=(16, 6.5), sharey=False)
    x = np.linspace(-BOX - 3, BOX + 3, 40_001)
    styles = {"ngvi_mixture": ("tab:red", "-", "NGVI mixture"), "svi_mixture": ("tab:blue", "--", "SVI + Adam mixture"),
              "ngvi_single": ("tab:green", ":", "NGVI single Gaussian")}
    for i, ax in enumerate(axes.flat):
        ax.fill_between(x, exact.density(x, i), color="0.75", label="exact")
        for name, (guide, params) in fits.items():
            if name in styles:
                color, ls, label = styles[name]
                ax.plot(x, fitted_density(guide, params, x, i), color=color, ls=ls, lw=0.9, label=label)
        ax.set_title(f"marginal of $z_{{{i}}}$", fontsize=10)
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 20)
        ax.set_xlim(x[0], x[-1])
    axes.flat[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("80-d mixture of 10 Student-t (df = 2): first 8 marginals, fit over exact density (log scale)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (~4 min): 500 NGVI/SVI steps")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args()
    s = dict(QUICK if args.quick else FULL)
    s.update({k: v for k, v in vars(args).items() if k in FULL and v is not None})
    print("settings:", s, flush=True)

    exact = Exact(s["dim"], s["seed"])
    data = {k: jnp.asarray(v) for k, v in exact.data.items()}
    iqr = np.array([exact.iqr(i) for i in range(s["dim"])])
    exact_draws = exact.sample(s["draws"])
    floor_draws = np.asarray(exact.distribution.sample(jax.random.PRNGKey(s["seed"] + 2), (s["draws"],)), np.float64)
    results = {"exact_vs_exact": metrics(exact, iqr, exact_draws, floor_draws, None)}

    start = time.perf_counter()
    found = find_modes(mt.model, starts(s), num_steps=s["descent_steps"], learning_rate=s["descent_rate"], **data)
    modes = FoundModes(found.locs, s["starts"] * s["descent_steps"])
    results["find_modes"] = {"modes": len(found.locs), "starts_per_mode": found.counts.tolist(),
                             "grad_evals": modes.evals, "seconds": round(time.perf_counter() - start, 1),
                             **metrics(exact, iqr, exact_draws, None, np.asarray(found.locs, np.float64))}
    print(f"find_modes: {json.dumps(results['find_modes'])}", flush=True)

    fits = {}
    for name in args.methods.split(","):
        fit = METHODS[name](s, data, modes)
        draws = fit.guide.get_posterior(fit.params).sample(jax.random.PRNGKey(s["seed"] + 3), (s["draws"],))
        out = metrics(exact, iqr, exact_draws, np.asarray(draws, np.float64), component_locs(fit.guide, fit.params))
        out.update(final_loss=final_loss(fit), compile_s=round(fit.compile_s, 1), run_s=round(fit.run_s, 1),
                   grad_evals=fit.grad_evals, rejected_steps=fit.rejected)
        if isinstance(fit.guide, StructuredGaussianMixture):
            out["weights"] = np.round(np.asarray(jax.nn.softmax(fit.guide.unpack_params(fit.params)[2])), 4).tolist()
        results[name], fits[name] = out, (fit.guide, fit.params)
        print(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'weights'})}", flush=True)

    if "ngvi_mixture" in results:
        best = results["ngvi_mixture"]["w1_over_iqr_median"]
        results["ratios"] = {f"ngvi_mixture / {n}": best / results[n]["w1_over_iqr_median"]
                             for n in ("ngvi_single", "svi_mixture", "svi_mixture_wide_start") if n in results}
        quick_figure = ROOT / "bench" / "results" / "mixture_t_quick.png"
        plot(exact, fits, quick_figure if args.quick else ROOT / "docs" / "mixture_t_marginals.png")

    header = f"{'method':30s} {'W1/IQR median':>14s} {'W1/IQR max':>11s} {'covered':>8s} {'loss':>9s} {'run s':>7s}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        if name != "ratios":
            nan = float("nan")
            print(f"{name:30s} {r.get('w1_over_iqr_median', nan):14.4f} {r.get('w1_over_iqr_max', nan):11.4f} "
                  f"{str(r.get('covered', '-')) + '/10':>8s} {r.get('final_loss', nan):9.2f} {r.get('run_s', 0):7.1f}")
    for name, ratio in results.get("ratios", {}).items():
        print(f"W1/IQR median ratio {name}: {ratio:.3f}")
    out_path = ROOT / "bench" / "results" / f"mixture_t{'_quick' if args.quick else ''}.json"
    out_path.write_text(json.dumps({"settings": s, "results": results}, indent=2) + "\n")
    print(f"wrote {out_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
