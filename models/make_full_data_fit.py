"""Fit the 10^4-latent crossed-effects model (:data:`ngvi.models.crossed_effects.TEST_SIZE`)
on all its data and store the fit in ``models/reference/crossed_effects_full_data_fit.npz``.

Run from the repository root::

    python -m ngvi.models.make_full_data_fit

NUTS is out of reach at this size here, so the reference of the subsampled fit
is a full-data ``NGVI(...).run(key, None)`` in float64 with the block group the
large-model fits use, :data:`SETTINGS`; the file holds the unconstrained
means and sds of the fit, its settings, steps, wall time and whether it
converged, and the generating values in the same layout.
"""

import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from ngvi import NGVI, StructuredGaussian  # noqa: E402
from ngvi.groups import BlockUpperTriangular  # noqa: E402
from ngvi.models import crossed_effects  # noqa: E402
from ngvi.models.reference import REFERENCE_DIR  # noqa: E402

NAME = "crossed_effects_full_data_fit"
SETTINGS = dict(k=8, tol=0.015, max_steps=8_000, seed=1)


def truth_vector(truth):
    """The generating values in the unconstrained latent layout of :func:`crossed_effects.model`."""
    return np.concatenate([
        [truth["beta0"]], truth["beta"], [np.log(truth["sigma_a"])], [np.log(truth["sigma_b"])], truth["z_a"],
        truth["z_b"],
    ])


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
        path, mean=mean, sd=sd, truth=truth_vector(truth), steps=len(result.losses), converged=bool(result.converged),
        wall_time_s=wall_time, **{f"setting_{name}": value for name, value in SETTINGS.items()},
    )
    print(f"{path}: {len(result.losses)} steps, {wall_time:.0f} s, converged {result.converged}")


if __name__ == "__main__":
    main()
