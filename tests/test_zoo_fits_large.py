"""The costliest zoo models' default fits at the family's KL optimum (the
checks of ``tests/test_zoo_fits.py``, in a file of their own so that the test
workers share the work)."""

import pytest

from test_zoo_fits import LARGE, check_kl_optimum, run_in_the_suite


@pytest.mark.slow
@pytest.mark.parametrize("name", run_in_the_suite(LARGE))
def test_default_fit_is_at_the_kl_optimum(name, tmp_path):
    check_kl_optimum(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stochastic_volatility", "irt_2pl"])
def test_a_float32_fit_is_at_the_kl_optimum(name, tmp_path):
    """The models whose default curvature has probes (p > 128), fitted in
    float32 as JAX runs by default: the stochastic volatility's went to
    precisions of 10^20 in its first 1,000 steps before the probes' diagonal
    was shrunk by its noise (:meth:`ngvi.curvature.HessianCurvature.diagonal`)."""
    check_kl_optimum(name, tmp_path, "float32")
