"""Checkpoint and resume: a run killed after a checkpoint and resumed in a
fresh process ends where an uninterrupted run ends; a checkpoint of another
fit is refused with an error that names the difference."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ngvi.checkpoint
from ngvi import NGVI, StructuredGaussian, StructuredGaussianMixture
from ngvi.groups import BlockUpperTriangular, Dense, Diagonal
from ngvi.models import eight_schools

DATA = eight_schools.data()

# A child process: fits eight schools with a checkpoint every 50 steps; with a
# kill count it kills itself (SIGKILL) right after that many checkpoints, as a
# job killed between two checkpoints would leave them. It prints the final
# parameters' digest and saves them beside the checkpoint.
CHILD = """
import os, signal, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngvi.checkpoint
from ngvi import NGVI, StructuredGaussian
from ngvi.groups import BlockUpperTriangular
from ngvi.models import eight_schools

path, num_steps, kill_after = sys.argv[1], eval(sys.argv[2]), int(sys.argv[3])
save, saved = ngvi.checkpoint.save, []

def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    saved.append(1)
    if len(saved) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

ngvi.checkpoint.save = save_then_die
guide = StructuredGaussian(eight_schools.model, group=BlockUpperTriangular(k=2))
fit = NGVI(eight_schools.model, guide, max_steps=600)
result = fit.run(jax.random.PRNGKey(3), num_steps, progress_bar=False, checkpoint=path, checkpoint_every=50,
                 **eight_schools.data())
np.savez(path + ".result.npz", losses=np.asarray(result.losses), **{k: np.asarray(v) for k, v in result.params.items()})
print(result.stop_reason, len(result.losses))
"""


def _child(tmp_path, name, num_steps, kill_after):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / f"{name}.npz")
    done = subprocess.run(
        [sys.executable, str(script), path, repr(num_steps), str(kill_after)], capture_output=True, text=True, timeout=300
    )
    return done, path


@pytest.mark.timeout(900)
@pytest.mark.parametrize("num_steps", [300, None])
def test_a_run_killed_and_resumed_in_a_fresh_process_ends_where_an_uninterrupted_run_ends(tmp_path, num_steps):
    killed, path = _child(tmp_path, "resumed", num_steps, kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert os.path.exists(path) and not os.path.exists(path + ".result.npz")
    resumed, _ = _child(tmp_path, "resumed", num_steps, kill_after=0)
    whole, whole_path = _child(tmp_path, "whole", num_steps, kill_after=0)
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr[-2000:] + whole.stderr[-2000:]
    assert resumed.stdout == whole.stdout  # the same stop reason and number of steps
    with np.load(path + ".result.npz") as a, np.load(whole_path + ".result.npz") as b:
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _interrupted_then_resumed(monkeypatch, make_fit, path, num_steps, *args, **kwargs):
    """Run ``make_fit()`` with a checkpoint, stopped by an exception after its
    second checkpoint, then resumed by a new ``make_fit()``; also run whole."""
    save, saved = ngvi.checkpoint.save, []

    def save_then_stop(*a, **k):
        save(*a, **k)
        saved.append(1)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ngvi.checkpoint, "save", save_then_stop)
    key = jax.random.PRNGKey(1)
    with pytest.raises(KeyboardInterrupt):
        make_fit().run(key, num_steps, *args, progress_bar=False, checkpoint=path, checkpoint_every=40, **kwargs)
    monkeypatch.setattr(ngvi.checkpoint, "save", save)
    resumed = make_fit().run(key, num_steps, *args, progress_bar=False, checkpoint=path, checkpoint_every=40, **kwargs)
    whole = make_fit().run(key, num_steps, *args, progress_bar=False, **kwargs)
    return resumed, whole


def _assert_same(resumed, whole):
    assert resumed.stop_reason == whole.stop_reason
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for name in whole.params:
        np.testing.assert_array_equal(resumed.params[name], whole.params[name], err_msg=name)


def model_with_param(x, y=None):
    """A regression whose noise scale is a ``numpyro.param`` site (with an optimiser state)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = numpyro.param("sigma", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


@pytest.mark.timeout(600)
def test_resume_keeps_the_model_params_and_their_optimiser(monkeypatch, tmp_path):
    x = jax.random.normal(jax.random.PRNGKey(0), (50, 2))
    y = x @ np.array([1.0, -0.5]) + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (50,))
    make = lambda: NGVI(model_with_param, StructuredGaussian(model_with_param, group=Dense()))  # noqa: E731
    resumed, whole = _interrupted_then_resumed(monkeypatch, make, str(tmp_path / "param.npz"), 200, x, y)
    _assert_same(resumed, whole)
    assert abs(float(whole.params["sigma"]) - 1.0) > 0.1  # the param moved, so its resumed value is a real check


@pytest.mark.timeout(600)
def test_resume_of_a_mixture_run_to_convergence(monkeypatch, tmp_path):
    model = eight_schools.model
    make = lambda: NGVI(model, StructuredGaussianMixture(model, num_components=2, group=Diagonal()), max_steps=400)  # noqa: E731
    resumed, whole = _interrupted_then_resumed(monkeypatch, make, str(tmp_path / "mixture.npz"), None, **DATA)
    _assert_same(resumed, whole)


@pytest.mark.timeout(600)
def test_a_finished_run_resumed_returns_its_result_without_stepping(tmp_path):
    path = str(tmp_path / "done.npz")
    fit = NGVI(eight_schools.model, StructuredGaussian(eight_schools.model, group=Diagonal()))
    first = fit.run(jax.random.PRNGKey(0), 100, progress_bar=False, checkpoint=path, **DATA)
    again = fit.run(jax.random.PRNGKey(0), 100, progress_bar=False, checkpoint=path, **DATA)
    _assert_same(again, first)


def other_model(y=None):
    """A model of another latent layout than eight schools'."""
    numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([10]).to_event(1))


@pytest.mark.timeout(600)
def test_a_checkpoint_of_another_fit_is_refused_naming_the_difference(tmp_path):
    path = str(tmp_path / "fit.npz")
    model = eight_schools.model
    NGVI(model, StructuredGaussian(model, group=Diagonal())).run(
        jax.random.PRNGKey(0), 20, progress_bar=False, checkpoint=path, **DATA
    )
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"its group is 'Diagonal\(\)', this run's is 'Dense\(\)'"):
        NGVI(model, StructuredGaussian(model, group=Dense())).run(key, 20, progress_bar=False, checkpoint=path, **DATA)
    with pytest.raises(ValueError, match="its latent is .*'mu'.*this run's is .*'theta'"):
        NGVI(other_model, StructuredGaussian(other_model, group=Diagonal())).run(key, 20, progress_bar=False, checkpoint=path)
    with pytest.raises(ValueError, match="its num_steps is 20, this run's is None"):
        NGVI(model, StructuredGaussian(model, group=Diagonal())).run(key, None, progress_bar=False, checkpoint=path, **DATA)
    with pytest.raises(ValueError, match="its guide is 'StructuredGaussian', this run's is 'StructuredGaussianMixture'"):
        mixture = StructuredGaussianMixture(model, num_components=2, group=Diagonal())
        NGVI(model, mixture).run(key, 20, progress_bar=False, checkpoint=path, **DATA)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive number of steps"):
        NGVI(model, StructuredGaussian(model)).run(key, 20, progress_bar=False, checkpoint=path, checkpoint_every=0, **DATA)


@pytest.mark.timeout(600)
def test_a_checkpoint_whose_arrays_do_not_fit_is_refused_naming_the_array(tmp_path):
    """Same description, another dtype of the mean (as a float32 run would leave
    it); a checkpoint of an older format (its bookkeeping lacks what this version's keeps)."""
    path = str(tmp_path / "fit.npz")
    fit = NGVI(eight_schools.model, StructuredGaussian(eight_schools.model, group=Diagonal()))
    fit.run(jax.random.PRNGKey(0), 20, progress_bar=False, checkpoint=path, **DATA)
    with np.load(path) as file:
        arrays = dict(file)
    arrays["state.0"] = arrays["state.0"].astype(np.float32)  # the first leaf: vi_state.loc
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"state\.vi_state\.loc has shape \(10,\) and dtype float32"):
        fit.run(jax.random.PRNGKey(0), 20, progress_bar=False, checkpoint=path, **DATA)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.asarray(json.dumps({**meta, "format": ngvi.checkpoint.FORMAT - 1}))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"has format {ngvi.checkpoint.FORMAT - 1}; this version of ngvi reads format"):
        fit.run(jax.random.PRNGKey(0), 20, progress_bar=False, checkpoint=path, **DATA)


def test_encode_and_decode_round_trip_the_stopping_rules_bookkeeping():
    params = {"loc": np.arange(3.0), "factor": (np.eye(3), np.ones(2))}
    treedef = jax.tree.structure(params)
    window = ngvi.convergence.new_window()._replace(first=params, noise=((1.0, 2.0, 0.0),), last_drift=0.5)
    arrays = {}
    data = ngvi.checkpoint.encode({"window": window, "position": 3, "batch": None}, arrays, "book", treedef)
    back = ngvi.checkpoint.decode(json.loads(json.dumps(data)), arrays, treedef)
    assert isinstance(back["window"], ngvi.convergence.Window)
    assert back["position"] == 3 and back["batch"] is None and back["window"].noise == ((1.0, 2.0, 0.0),)
    np.testing.assert_array_equal(back["window"].first["factor"][0], np.eye(3))
