"""NUTS reference posteriors for the model zoo, stored as JSON, and full-data
fits of models beyond NUTS here, as ``.npz``."""

import json

import numpy as np
from pathlib import Path

REFERENCE_DIR = Path(__file__).parent


def load_reference(name):
    """Load the reference posterior of model ``name`` (e.g. "eight_schools")."""
    with open(REFERENCE_DIR / f"{name}.json") as f:
        return json.load(f)


def load_fit(name):
    """Load a stored full-data fit (e.g. "crossed_effects_full_data_fit") as a dict of arrays."""
    with np.load(REFERENCE_DIR / f"{name}.npz") as arrays:
        return dict(arrays)


def load_kl_optimum(name):
    """The Gaussian family's KL optimum on model ``name`` (``mean`` and ``sd`` of
    the unconstrained latent, the ``group``, the ``method`` that computed it;
    ``bench/kl_optima.py``), or ``None`` if none is stored."""
    with open(REFERENCE_DIR / "kl_optima.json") as f:
        return json.load(f).get(name)
