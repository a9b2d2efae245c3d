"""ngvi.threads: jaxlib's LAPACK (SciPy's OpenBLAS) runs on one thread after `import ngvi`."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, ngvi
from threadpoolctl import threadpool_info
print(json.dumps([(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["internal_api"] == "openblas"]))
"""


def openblas_threads(env):
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scipy_libraries(libraries):
    return [threads for path, threads in libraries if "scipy.libs" in path or f"scipy{os.sep}" in path]


def test_scipy_openblas_gets_one_thread_unless_the_user_sets_it():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    libraries = openblas_threads(env)
    if not scipy_libraries(libraries):
        pytest.skip(f"no OpenBLAS bundled with SciPy here: {libraries}")
    assert scipy_libraries(libraries) == [1] * len(scipy_libraries(libraries))
    chosen = scipy_libraries(openblas_threads(dict(env, OPENBLAS_NUM_THREADS="2")))
    assert chosen and all(threads == min(2, os.cpu_count()) for threads in chosen)
