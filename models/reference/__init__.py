"""NUTS reference posteriors for the model zoo, stored as JSON."""

import json
from pathlib import Path

REFERENCE_DIR = Path(__file__).parent


def load_reference(name):
    """Load the reference posterior of model ``name`` (e.g. "eight_schools")."""
    with open(REFERENCE_DIR / f"{name}.json") as f:
        return json.load(f)
