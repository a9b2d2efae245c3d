"""The command line (API.md, "Command line"): ``ngvi fit`` on a built-in model with
NUTS comparison and outputs, its error exits, the group specs, the side-by-side
table, and ``python -m ngvi`` on a model file."""

import contextlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from ngvi import groups
from ngvi.cli import _side_by_side, main, parse_group

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = textwrap.dedent(
    '''
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist


    def model(y=None):
        loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("data", 20):
            numpyro.sample("obs", dist.Normal(loc, scale), obs=y)


    def data():
        return {"y": jnp.linspace(1.0, 3.0, 20)}
    '''
)


@pytest.fixture(scope="module")
def eight_schools_run(tmp_path_factory):
    """``ngvi fit eight_schools --compare-nuts --out DIR``: exit code, stdout, stderr, DIR."""
    out = tmp_path_factory.mktemp("out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["fit", "eight_schools", "--steps", "100", "--draws", "200", "--compare-nuts", "--out", str(out), "--no-cache"])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_fit_prints_summary(eight_schools_run):
    """``fit`` returns 0, shows progress, and prints the run line and an ArviZ summary
    of every site."""
    code, stdout, stderr, _ = eight_schools_run
    assert code == 0 and "100/100" in stderr
    assert "ngvi: eight_schools" in stdout and "100 steps" in stdout
    lines = stdout.splitlines()
    for row in ("mu", "tau", "theta[0]", "theta_tilde[7]"):
        assert any(line.split()[:1] == [row] for line in lines), row


def test_fit_compare_nuts_prints_side_by_side(eight_schools_run):
    """``--compare-nuts`` prints a table with both methods, the mean difference in NUTS
    sds and the sd ratio, and the two roughly agree on ``mu``."""
    stdout = eight_schools_run[1]
    table = stdout[stdout.index("against NUTS"):]
    assert "mean diff / sd" in table and "sd ratio" in table and "ngvi" in table and "nuts" in table
    mu_row = next(line.split() for line in table.splitlines() if line.split()[:1] == ["mu"])
    assert abs(float(mu_row[-2])) < 0.5 and 0.5 < float(mu_row[-1]) < 2.0


def test_fit_writes_outputs(eight_schools_run):
    """``--out`` writes ngvi.nc (readable, with the draws and loss trace), loss.png and,
    with ``--compare-nuts``, nuts.nc and forest.png."""
    _, stdout, _, out = eight_schools_run
    assert "wrote" in stdout
    assert {p.name for p in out.iterdir()} == {"ngvi.nc", "loss.png", "nuts.nc", "forest.png"}
    idata = az.from_netcdf(str(out / "ngvi.nc"))
    assert idata.posterior.sizes["draw"] == 200 and idata.optimization_trace["loss"].shape == (100,)
    assert az.from_netcdf(str(out / "nuts.nc")).posterior.sizes["chain"] == 2
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["fit", "no_such_model"], ["no_such_model"]),
        (["fit", "eight_schools", "--group", "nonsense"], ["nonsense"]),
        (["fit", "eight_schools", "--group", "block_upper"], ["block_upper"]),
        (["fit", "eight_schools", "--group", "hierarchical:2"], ["hierarchical"]),
        (["fit", "eight_schools", "--group", "block_upper:11"], ["BlockUpperTriangular(k=11)", "p=10"]),
        (["fit", "eight_schools", "--group", "block_upper:x"], []),
    ],
    ids=["unknown-model", "unknown-group", "missing-size", "one-size-of-two", "k>p", "not-a-number"],
)
def test_bad_input_exits_2(argv, words, capsys):
    """A bad model name or group spec exits with code 2 and a message on stderr."""
    assert main(argv + ["--steps", "2", "--draws", "10", "--no-cache"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("ngvi: error:")
    for word in words:
        assert word in captured.err


def test_bad_estimator_is_an_argparse_error(capsys):
    """An estimator outside the choices is rejected by argparse (exit code 2)."""
    with pytest.raises(SystemExit) as err:
        main(["fit", "eight_schools", "--estimator", "newton"])
    assert err.value.code == 2 and "newton" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--num-samples", "lots", "'auto' or a positive integer"), ("--steps", "-3", "a positive integer"),
])
def test_bad_numbers_are_argparse_errors_that_say_what_is_expected(option, value, words, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "eight_schools", option, value])
    assert err.value.code == 2 and f"{option}: must be {words}, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ("dense", groups.Dense, {}),
        ("diagonal", groups.Diagonal, {}),
        ("lower", groups.LowerTriangular, {}),
        ("upper", groups.UpperTriangular, {}),
        ("toeplitz", groups.TriangularToeplitz, {}),
        ("block_upper:4", groups.BlockUpperTriangular, {"k": 4}),
        ("block_lower:0", groups.BlockLowerTriangular, {"k": 0}),
        ("hierarchical:2,3", groups.Hierarchical, {"k1": 2, "k2": 3}),
    ],
)
def test_parse_group(spec, cls, attrs):
    """Group specs map to the group classes with their sizes."""
    group = parse_group(spec)
    assert type(group) is cls
    assert {name: getattr(group, name) for name in attrs} == attrs


@pytest.mark.parametrize("spec", ["dense:3", "block_upper", "block_upper:1,2", "hierarchical:2", "kronecker", ""])
def test_parse_group_errors(spec):
    """Specs with an unknown name or the wrong number of sizes raise ValueError."""
    with pytest.raises(ValueError):
        parse_group(spec)


def test_side_by_side_table():
    """The comparison table has both methods' mean and sd and the derived columns
    ``(mean_vi - mean_nuts) / sd_nuts`` and ``sd_vi / sd_nuts``, per scalar."""
    rng = np.random.default_rng(0)
    vi = az.from_dict(posterior={"a": 1 + 2 * rng.standard_normal((1, 4000)), "b": rng.standard_normal((1, 4000, 2))})
    nuts = az.from_dict(posterior={"a": 3.0 * rng.standard_normal((2, 4000)), "b": rng.standard_normal((2, 4000, 2))})
    table = _side_by_side(vi, nuts)
    assert list(table.index) == ["a", "b[0]", "b[1]"]
    a = table.loc["a"]
    np.testing.assert_allclose(a["mean diff / sd"], (a[("ngvi", "mean")] - a[("nuts", "mean")]) / a[("nuts", "sd")])
    np.testing.assert_allclose(a["sd ratio"], a[("ngvi", "sd")] / a[("nuts", "sd")])
    np.testing.assert_allclose([a[("ngvi", "mean")], a[("ngvi", "sd")], a[("nuts", "sd")]], [1.0, 2.0, 3.0], atol=0.1)
    np.testing.assert_allclose(table["sd ratio"][1:], 1.0, atol=0.1)


def test_module_entry_point_with_model_file(tmp_path):
    """``python -m ngvi fit PATH.py`` fits a file defining ``model`` and ``data()`` in a
    fresh interpreter (from a Laplace warm start); without ``--compare-nuts``, ``--out``
    writes only ngvi.nc and loss.png."""
    path, out, cache = tmp_path / "my_model.py", tmp_path / "out", tmp_path / "cache"
    path.write_text(MODEL_FILE)
    argv = ["fit", str(path), "--group", "diagonal", "--steps", "30", "--draws", "100", "--laplace", "--out", str(out)]
    env = {**os.environ, "NGVI_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-m", "ngvi", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert any(cache.iterdir()), "the compiled programs were not written to NGVI_CACHE_DIR"
    assert "Diagonal()" in done.stdout and "from a Laplace start" in done.stdout
    assert {"loc", "scale"} <= {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert {p.name for p in out.iterdir()} == {"ngvi.nc", "loss.png"}
    assert abs(float(az.from_netcdf(str(out / "ngvi.nc")).posterior["loc"].mean()) - 2.0) < 0.3
