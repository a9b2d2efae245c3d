import os
import shutil
import tempfile

# Most of the suite's time is XLA compiling many small programs (a fit per model,
# estimator and dtype), not running them. LLVM's optimisation level 0 compiles
# them faster and leaves the computations as they are: 6 zoo-estimator tests
# took 161 s instead of 262 s. It must be set before JAX starts its backend;
# subprocess tests inherit it. Users' runs are compiled at the default level.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# The same programs are compiled again and again: by each fit's own jit, in each
# test worker and in each subprocess test's fresh process. JAX's persistent
# compilation cache, one directory per test run (shared by pytest-xdist's
# workers and inherited by subprocesses), compiles each of them once.
# (The cache's keys include XLA_FLAGS, so programs compiled at another
# optimisation level or device count are kept apart.) It is removed at the end.
# On 2 cores, the checkpoint and driver tests took 172 s instead of 229 s.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ngvi-tests-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

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


def pytest_sessionfinish(session):
    """The run's compilation cache goes (by the process that made it: pytest-xdist's workers inherit it)."""
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
