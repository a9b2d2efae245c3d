"""Sharding: a step's draws spread over 8 host devices (``NGVI(..., mesh=)``)
give the one-device result to float rounding, for a single Gaussian, a mixture
and data subsampling from data placed on the devices, in float64 (the first two
in float32 too); so does a mesh whose ``"data"`` axis splits each step's data
subsample.
The devices exist only in a fresh process (``--xla_force_host_platform_device_count``
must be set before JAX starts), so the checks run in a subprocess."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from ngvi import NGVI, StructuredGaussian
from ngvi.models import eight_schools

CHILD = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
import jax
jax.config.update("jax_enable_x64", sys.argv[1] == "float64")
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ngvi import NGVI, StructuredGaussian, StructuredGaussianMixture
from ngvi.groups import BlockUpperTriangular, Diagonal
from ngvi.models import eight_schools, logistic_regression

assert len(jax.devices()) == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
draws_and_data = Mesh(np.array(jax.devices()).reshape(4, 2), ("draws", "data"))
schools = eight_schools.data()
regression = logistic_regression.data()
rows = NamedSharding(mesh, PartitionSpec(("a", "b")))
n = regression["x"].shape[0] // 8 * 8
placed = {name: jax.device_put(value[:n], rows) for name, value in regression.items()}
cases = {
    "gaussian": (eight_schools.model, lambda m: StructuredGaussian(m, group=BlockUpperTriangular(k=2)), schools, 16, mesh),
    "mixture": (eight_schools.model, lambda m: StructuredGaussianMixture(m, num_components=2, group=Diagonal()), schools, 8, mesh),
    "subsample": (logistic_regression.model, lambda m: StructuredGaussian(m), dict(placed, subsample_size=40), 8, mesh),
    "data_axis": (logistic_regression.model, lambda m: StructuredGaussian(m), dict(placed, subsample_size=40), 8,
                  draws_and_data),
}
for name in sys.argv[2:]:
    model, guide, data, num_samples, devices = cases[name]
    results = []
    for where in (None, devices):
        fit = NGVI(model, guide(model), num_samples=num_samples, mesh=where)
        result = fit.run(jax.random.PRNGKey(0), 60, progress_bar=False, **data)
        results.append(result)
    state = results[1].state
    lowered = fit._compiled_chunk((), data, 3).lower(state, 3, 1.0)
    if name == "data_axis":  # the subsample's indices carry the "data" axis into the program
        print("constrained", '{"data"}' in lowered.as_text())
    hlo = lowered.compile().as_text()
    error = max(float(np.max(np.abs(np.asarray(results[0].params[k]) - np.asarray(results[1].params[k]))))
                for k in results[0].params)
    moved = max(float(np.max(np.abs(np.asarray(v)))) for v in results[0].params.values())
    finite = all(bool(np.all(np.isfinite(np.asarray(v)))) for v in results[1].params.values())
    print(name, error, moved, finite, "all-reduce" in hlo or "reduce-scatter" in hlo)
try:
    NGVI(eight_schools.model, StructuredGaussian(eight_schools.model), num_samples=12, mesh=mesh)
except ValueError as err:
    print("error", err)
try:
    fit = NGVI(logistic_regression.model, StructuredGaussian(logistic_regression.model), mesh=draws_and_data)
    fit.init(jax.random.PRNGKey(0), **dict(placed, subsample_size=41))
except ValueError as err:
    print("error", err)
"""


def _run_child(tmp_path, dtype, cases):
    script = tmp_path / "sharded.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), dtype, *cases], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


ALL_CASES = ("gaussian", "mixture", "subsample", "data_axis")


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "dtype, tol, cases", [("float64", 1e-10, ALL_CASES), ("float32", 1e-3, ALL_CASES[:2])], ids=["float64", "float32"]
)
def test_a_fit_with_its_draws_on_8_devices_equals_the_one_device_fit(tmp_path, dtype, tol, cases):
    """Every case in float64; in float32 (where rounding allows only a loose
    tolerance) the single Gaussian and the mixture: how the data subsample is
    placed does not depend on the dtype."""
    lines = _run_child(tmp_path, dtype, cases)
    for name in cases:
        case, error, moved, finite, communicates = next(line for line in lines if line.startswith(name)).split()
        assert finite == "True", name
        assert float(error) <= tol, (name, error)
        assert float(moved) > 0.1, name  # the fit moved: equal results are not equal starts
        assert communicates == "True", name  # the sharded step sums across devices: it is sharded
    assert "data_axis" not in cases or "constrained True" in lines
    assert any(
        "num_samples=12 draws do not split over the mesh's 8 devices (axes {'a': 4, 'b': 2})" in line for line in lines
    ), lines
    assert any(
        "Plate 'data' has subsample_size=41, which does not split over the mesh's 'data' axis of 2 devices" in line
        for line in lines
    ), lines


def test_a_mesh_that_is_not_a_mesh_is_refused():
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh, got list"):
        NGVI(eight_schools.model, StructuredGaussian(eight_schools.model), mesh=jax.devices())


def test_a_one_device_mesh_gives_the_unsharded_result():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("draws",))
    data = eight_schools.data()
    results = [
        NGVI(eight_schools.model, StructuredGaussian(eight_schools.model), mesh=m).run(
            jax.random.PRNGKey(0), 30, progress_bar=False, **data
        )
        for m in (None, mesh)
    ]
    for name in results[0].params:
        np.testing.assert_allclose(results[1].params[name], results[0].params[name], rtol=0, atol=1e-12)
