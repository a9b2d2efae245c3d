"""Optimisers on the structured natural-gradient step (MATH.md sec. 7)."""

from ngvi.optim.es import ESInfo, ESState, EvolutionStrategy, structured_es

__all__ = ["structured_es", "ESState", "ESInfo", "EvolutionStrategy"]
