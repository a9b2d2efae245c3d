"""Fit the 10^4-latent crossed-effects model (:data:`ngvi.models.crossed_effects.TEST_SIZE`)
on all its data and store the fit in ``models/reference/crossed_effects_full_data_fit.npz``.

Run from the repository root::

    python -m ngvi.models.make_full_data_fit

NUTS is out of reach at this size here, so the reference of the subsampled fit
is a full-data ``NGVI(...).run(key, None)`` in float32 (as the large fits run) with the block group the
large-model fits use, :data:`SETTINGS`; the file holds the unconstrained
means and sds of the fit, its settings, steps, wall time and whether it
converged, and the generating values in the same layout.
"""

import time

import jax
import numpy as np

from ngvi import NGVI, StructuredGaussian
from ngvi.groups import BlockUpperTriangular
from ngvi.models import crossed_effects
from ngvi.models.reference import REFERENCE_DIR

NAME = "crossed_effects_full_data_fit"
SETTINGS = dict(k=8, tol=0.015, max_steps=8_000, seed=1)


def main():
    data, truth = crossed_effects.simulate(**{**crossed_effects.TEST_SIZE, "subsample_size": None})
    guide = StructuredGaussian(crossed_effects.model, group=BlockUpperTriangular(SETTINGS["k"]))
    fit = NGVI(crossed_effects.model, guide, tol=SETTINGS["tol"], max_steps=SETTINGS["max_steps"])
    start = time.perf_counter()
    result = fit.run(jax.random.PRNGKey(SETTINGS["seed"]), None, **data)
    posterior = guide.get_posterior(result.params)
    mean, sd = np.asarray(posterior.mean), np.sqrt(np.asarray(posterior.variance))
    wall_time = time.perf_counter() - start
    path = REFERENCE_DIR / f"{NAME}.npz"
    np.savez(
        path, mean=mean, sd=sd, truth=crossed_effects.unconstrained_truth(truth), steps=len(result.losses),
        converged=bool(result.converged), wall_time_s=wall_time, **{f"setting_{name}": value for name, value in SETTINGS.items()},
    )
    print(f"{path}: {len(result.losses)} steps, {wall_time:.0f} s, converged {result.converged}")


if __name__ == "__main__":
    main()
