import os

# Most of the suite's time is XLA compiling many small programs (a fit per model,
# estimator and dtype), not running them. LLVM's optimisation level 0 compiles
# them faster and leaves the computations as they are: 6 zoo-estimator tests
# took 161 s instead of 262 s. It must be set before JAX starts its backend;
# subprocess tests inherit it. Users' runs are compiled at the default level.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

# The brute-force checks compare against autodiff Fisher matrices to ~1e-10.
jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402

# Under pytest-xdist's --dist loadgroup, these files run on one worker each: their
# tests share a module fixture or a cache of fits. Every other test goes to
# whichever worker is free, so that the long zoo fits spread over both.
SHARED_STATE = {
    "test_accuracy", "test_cli", "test_driver", "test_groups", "test_guide", "test_inference_data",
    "test_laplace", "test_mixture", "test_zoo", "test_zoo_fits",
}


# The longest tests go first, so that no worker is left with one at the end
# while the other idles (the large zoo fits take 3-12 minutes each on 2 cores).
LONGEST_FIRST = ("test_zoo_fits_large", "test_large_model", "test_zoo_tools", "test_zoo_estimators")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the test ids
def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SHARED_STATE:
            item.add_marker(pytest.mark.xdist_group(module))
    rank = lambda item: next(
        (i for i, name in enumerate(LONGEST_FIRST) if item.module.__name__.endswith(name)), len(LONGEST_FIRST)
    )
    items.sort(key=rank)
