"""Throughput of a step with its draws spread over 1, 2, 4 and 8 host devices.

    python bench/sharding.py [--steps 200] [--num-samples 32] [--dim 2000]

One process per device count (``--xla_force_host_platform_device_count=n``
must be set before JAX starts): ``NGVI`` with ``BlockUpperTriangular(8)`` on a
Bayesian logistic regression with ``--dim`` coefficients and 20,000 simulated
observations (placed on the devices by rows), ``--num-samples`` draws per step,
``mesh`` over the ``n`` devices (``None`` for the one-device baseline).
Reported: compile time of the first chunk, then milliseconds per step (the
median of three timed runs of ``--steps`` steps, compiled once) and the
speed-up against one device. On this 2-core CPU the host "devices" share two
cores, so no speed-up is expected: the benchmark shows what the sharded step
costs, the tests show that it is right. On real devices the draws' model
evaluations, which dominate a step, split ``n`` ways.
"""

import argparse
import json
import os
import subprocess
import sys

WORKER = """
import os, sys, json, time
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={sys.argv[1]}"
import jax, jax.numpy as jnp, numpy as np
import numpyro, numpyro.distributions as dist
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ngvi import NGVI, StructuredGaussian
from ngvi.groups import BlockUpperTriangular

devices, steps, num_samples, dim = (int(a) for a in sys.argv[1:5])

def model(x, y=None):
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta), obs=y)

x = jax.random.normal(jax.random.PRNGKey(0), (20_000, dim)) / jnp.sqrt(dim)
y = jax.random.bernoulli(jax.random.PRNGKey(1), jax.nn.sigmoid(x @ jnp.linspace(-2, 2, dim))).astype(jnp.float32)
mesh = Mesh(np.array(jax.devices()), ("draws",)) if devices > 1 else None
if mesh is not None:
    rows = NamedSharding(mesh, PartitionSpec("draws"))
    x, y = jax.device_put(x, rows), jax.device_put(y, rows)
fit = NGVI(model, StructuredGaussian(model, group=BlockUpperTriangular(k=8)), num_samples=num_samples, mesh=mesh)
state = fit.init(jax.random.PRNGKey(2), x, y)
chunk = fit._compiled_chunk((x, y), {}, steps)
t0 = time.perf_counter()
jax.block_until_ready(chunk(state, steps, 1.0))
first = time.perf_counter() - t0
times = []
for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(chunk(state, steps, 1.0))
    times.append(time.perf_counter() - t0)
run = sorted(times)[1]
print(json.dumps({"devices": devices, "compile_s": first - run, "ms_per_step": 1e3 * run / steps}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--dim", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for devices in (1, 2, 4, 8):
        argv = [sys.executable, "-c", WORKER, str(devices), str(args.steps), str(args.num_samples), str(args.dim)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=dict(os.environ))
        if done.returncode:
            sys.exit(done.stderr)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["ms_per_step"]
    print(f"p = {args.dim}, 20,000 observations, {args.num_samples} draws, BlockUpperTriangular(8), {os.cpu_count()} cores\n")
    print("| devices | compile s | ms / step | speed-up |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['devices']} | {row['compile_s']:.1f} | {row['ms_per_step']:.1f} | {base / row['ms_per_step']:.2f} |")


if __name__ == "__main__":
    main()
