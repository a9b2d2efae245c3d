"""Structured natural-gradient variational inference for NumPyro."""

from ngvi.threads import limit_lapack_threads

limit_lapack_threads()

from ngvi import groups
from ngvi.guides import MixtureELBO, StructuredGaussian, StructuredGaussianMixture
from ngvi.infer import NGVI, NGVIRunResult, NGVIState
from ngvi.inference_data import to_inference_data
from ngvi.modes import Modes, find_modes

__all__ = [
    "NGVI",
    "NGVIState",
    "NGVIRunResult",
    "StructuredGaussian",
    "StructuredGaussianMixture",
    "MixtureELBO",
    "to_inference_data",
    "find_modes",
    "Modes",
    "groups",
]
__version__ = "0.1.0"
