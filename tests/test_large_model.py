"""The large model at test size: the crossed-effects model with 10^4 latent
dimensions and 10^5 observations (:data:`ngvi.models.crossed_effects.TEST_SIZE`),
fitted on subsamples of a tenth of the data at the defaults, against its stored
full-data fit (``python -m ngvi.models.make_full_data_fit``). In float32, as a
large fit runs, in a subprocess (the suite runs in float64) under a time limit."""

import numpy as np
import pytest

from ngvi.models.reference import load_fit
from subprocesses import run_python

CHILD = """
import sys
import jax
import numpy as np
from ngvi import NGVI, StructuredGaussian
from ngvi.groups import BlockUpperTriangular
from ngvi.models import crossed_effects

data, _ = crossed_effects.simulate(**crossed_effects.TEST_SIZE)
guide = StructuredGaussian(crossed_effects.model, group=BlockUpperTriangular(8))
result = NGVI(crossed_effects.model, guide, max_steps=int(sys.argv[2])).run(
    jax.random.PRNGKey(2), None, progress_bar=False, **data
)
posterior = guide.get_posterior(result.params)
np.savez(sys.argv[1], mean=posterior.mean, sd=np.sqrt(posterior.variance), steps=len(result.losses),
         rejected=int(result.state.num_rejected), num_grads=int(np.sum(result.info.num_grads)))
"""
MAX_STEPS = 3000


@pytest.mark.timeout(1200)
def test_the_subsampled_fit_at_10k_latents_matches_the_full_data_fit(tmp_path):
    """Means within 0.03 posterior sds RMS and 0.1 at most over the 10^4
    coordinates, sds within 2% RMS (the stopping rule's tolerance is 0.03 at
    99% over all coordinates; the reference has its own error, at 0.015), the 8
    global parameters within 0.1 sds and 5% in sd; 90% intervals cover the
    generating values as often as the full-data fit's do (90.5%)."""
    script, out = tmp_path / "fit.py", tmp_path / "fit.npz"
    script.write_text(CHILD)
    run_python([script, out, MAX_STEPS], timeout=1100)
    fit, reference = np.load(out), load_fit("crossed_effects_full_data_fit")
    assert np.all(np.isfinite(fit["mean"])) and np.all(np.isfinite(fit["sd"]))
    z = (fit["mean"] - reference["mean"]) / reference["sd"]
    log_sd = np.log(fit["sd"] / reference["sd"])
    assert np.sqrt(np.mean(z**2)) <= 0.03 and np.max(np.abs(z)) <= 0.1, (np.sqrt(np.mean(z**2)), np.max(np.abs(z)))
    assert np.sqrt(np.mean(log_sd**2)) <= 0.02, np.sqrt(np.mean(log_sd**2))
    assert np.max(np.abs(z[:8])) <= 0.1 and np.max(np.abs(log_sd[:8])) <= 0.05, (z[:8], log_sd[:8])
    inside = np.abs(reference["truth"] - fit["mean"]) <= 1.6448536 * fit["sd"]
    reference_inside = np.abs(reference["truth"] - reference["mean"]) <= 1.6448536 * reference["sd"]
    assert abs(np.mean(inside) - np.mean(reference_inside)) <= 0.01, (np.mean(inside), np.mean(reference_inside))
