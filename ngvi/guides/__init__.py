"""NumPyro autoguides with structured Gaussian (and mixture) posteriors."""

from ngvi.guides.distribution import StructuredNormal
from ngvi.guides.mixture import MixtureELBO, StructuredGaussianMixture
from ngvi.guides.structured_gaussian import StructuredGaussian

__all__ = ["StructuredNormal", "StructuredGaussian", "StructuredGaussianMixture", "MixtureELBO"]
