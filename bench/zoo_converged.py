"""``run(key, None)`` with no setting besides the group, on zoo models, at
several seeds and both float widths, against the family's KL optimum.

    python bench/zoo_converged.py [--models a,b,...] [--seeds 2,3,4] [--dtype float64|float32] [--name NAME]

Per model and seed: ``NGVI(model, StructuredGaussian(model, group=G)).run(key,
None, **data())``, every other setting at its default (``G`` as
``bench/zoo.py``: Dense, ``BlockUpperTriangular(8)`` for p > 200). The fit's
mean and sds in the unconstrained space against the stored KL optimum
(``bench/kl_optima.py``; key 1, so the seeds here start at 2): mean error
``max_i |mu_i - m_i| / s_i`` and sd error ``max_i |sd_i / s_i - 1|``, with the
stored optimum's own tolerance beside them (its error is part of what is
measured). Wall time includes tracing and compilation (one process per
``--dtype``, models one after another). Rows are appended to
``bench/results/NAME.jsonl`` as they finish; ``--report`` turns that file into
``NAME.md``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
REPORT_HEADER = """Commands: bench/README.md (`zoo_converged.py`). Every fit converged by the
stopping rule's test; errors are the largest over the unconstrained
coordinates (mean in the stored optimum's sds, sd relative), against the
optimum's own tolerance (`optimum tol`, 99%). The misses are in a model's few
hyperparameters (stochastic volatility seed 4: coordinates 1 and 2 at 0.077 and
-0.053 sd, RMS over all 503 coordinates 0.006; local level seed 4: coordinate 1
at 0.077, RMS 0.009): the stopping rule measures shifts as an RMS over
whitened coordinates, which dilutes an error confined to a few of them.
"""


def fit(name, seed):
    """One ``run(key, None)`` on zoo model ``name``: a JSON-ready dict."""
    import importlib
    import time

    import jax
    import numpy as np

    from ngvi import NGVI, StructuredGaussian
    from ngvi.models.reference import load_kl_optimum, load_reference
    from zoo import group_for, target_moments

    module = importlib.import_module(f"ngvi.models.{name}")
    kw = module.data()
    ref = load_reference(name)
    group = group_for(ref["unconstrained"]["dim"])
    m, s = target_moments(name, ref, "kl")  # a clear error if bench/kl_optima.py has not stored it
    optimum = load_kl_optimum(name)
    guide = StructuredGaussian(module.model, group=group)
    start = time.perf_counter()
    result = NGVI(module.model, guide).run(jax.random.PRNGKey(seed), None, progress_bar=False, **kw)
    wall = time.perf_counter() - start
    q = guide.get_posterior(result.params)
    mean, sd = np.asarray(q.mean, np.float64), np.sqrt(np.asarray(q.variance, np.float64))
    return {
        "model": name, "seed": seed, "dtype": str(q.mean.dtype), "p": int(mean.size), "group": str(group),
        "converged": bool(result.converged), "stop": result.stop_reason, "steps": int(result.losses.shape[0]),
        "grads": int(np.sum(result.info.num_grads)), "rejected": int(np.sum(result.info.rejected)), "wall_s": wall,
        "mean_err": float(np.max(np.abs(mean - m) / s)), "sd_err": float(np.max(np.abs(sd / s - 1.0))),
        "optimum_tol": optimum["tol"], "optimum_converged": optimum["converged"],
    }


def report(rows):
    """A markdown table of ``rows`` and the share within 0.03 sd and 3%."""
    lines = [
        "| model (p, group) | dtype | seed | stopped | steps | grads | rejected | wall s | mean err | sd err "
        "| optimum tol |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['p']}, {r['group']}) | {r['dtype']} | {r['seed']} | "
            f"{'converged' if r['converged'] else r['stop']} | {r['steps']:,} | {r['grads']:,} | {r['rejected']} | "
            f"{r['wall_s']:.1f} | {r['mean_err']:.3f} | {r['sd_err']:.3f} | {r['optimum_tol']} |"
        )
    within = [r["converged"] and r["mean_err"] <= 0.03 and r["sd_err"] <= 0.03 for r in rows]
    lines.append(f"\nConverged and within 0.03 sd and 3% of the stored optimum: {sum(within)} of {len(rows)} fits.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="")
    parser.add_argument("--seeds", default="2,3,4")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--name", default="zoo_converged")
    parser.add_argument("--report", action="store_true", help="write NAME.md from NAME.jsonl and stop")
    args = parser.parse_args()
    path = os.path.join(RESULTS, args.name)
    if args.report:
        with open(path + ".jsonl") as f:
            rows = sorted((json.loads(line) for line in f), key=lambda r: (r["model"], r["dtype"], r["seed"]))
        with open(path + ".md", "w") as f:
            f.write(f"# run(key, None) against the KL optimum\n\n{REPORT_HEADER}\n{report(rows)}")
        return
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    for name in args.models.split(","):
        for seed in map(int, args.seeds.split(",")):
            row = fit(name, seed)
            print(json.dumps(row), flush=True)
            with open(path + ".jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
