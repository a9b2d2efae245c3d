"""Structured natural-gradient variational inference for NumPyro."""
