"""Structured natural-gradient variational inference for NumPyro."""

from ngvi import groups
from ngvi.guides import StructuredGaussian
from ngvi.infer import NGVI, NGVIRunResult, NGVIState

__all__ = ["NGVI", "NGVIState", "NGVIRunResult", "StructuredGaussian", "groups"]
__version__ = "0.1.0"
