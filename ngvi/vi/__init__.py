"""Natural-gradient VI on a plain potential ``l(z) = -log p(z)`` over a flat
vector, no NumPyro needed (blackjax-style: ``init``, ``step``, ``sample``).

    from ngvi import vi, groups
    algo = vi.structured_gaussian(potential_fn, group=groups.Dense(), estimator="hessian")
    state = algo.init(position, scale=0.1)
    state, info = jax.jit(algo.step)(rng_key, state)
    mix = vi.gaussian_mixture(potential_fn, num_components=4, group=groups.Diagonal())
    fits = vi.multistart(potential_fn, starts, rng_key)  # one Gaussian fit per mode the starts reach

Each name is the algorithm's top-level factory (``as_top_level_api`` of its
module) and carries the module's pure pieces: ``vi.structured_gaussian.step``,
``vi.structured_gaussian.StructuredGaussianState``, and so on.
"""

from ngvi.vi import gaussian_mixture as _gaussian_mixture
from ngvi.vi import structured_gaussian as _structured_gaussian
from ngvi.vi.base import VIAlgorithm
from ngvi.vi.multistart import Fits, multistart

__all__ = ["VIAlgorithm", "structured_gaussian", "gaussian_mixture", "multistart", "Fits"]


class _Algorithm:
    """An algorithm module, called as its top-level factory."""

    def __init__(self, module):
        self._module = module
        self.__doc__ = module.as_top_level_api.__doc__

    def __call__(self, *args, **kwargs):
        return self._module.as_top_level_api(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)

    def __repr__(self):
        return f"<algorithm {self._module.__name__}>"


structured_gaussian = _Algorithm(_structured_gaussian)
gaussian_mixture = _Algorithm(_gaussian_mixture)
