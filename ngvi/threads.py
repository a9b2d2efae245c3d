"""One thread for the LAPACK that jaxlib's CPU kernels call.

jaxlib runs its CPU linear algebra (LU and triangular solves, Cholesky,
eigendecompositions) on SciPy's bundled OpenBLAS. That library keeps its own
pool of spinning threads, one per core, which competes with XLA's threads for
the same cores: on a 2-core machine a Kronecker factor step with 4 x 4 block
solves took 34 ms instead of 0.7 ms, and a CNN's curvature refresh 110 ms
instead of 28 ms. The small matrices of the structured groups gain nothing
from threads inside a LAPACK call, so :func:`limit_lapack_threads` sets that
library (and only it: NumPy's own BLAS keeps its threads) to one thread,
unless ``OPENBLAS_NUM_THREADS`` is set, which then decides.
"""

import os

__all__ = ["limit_lapack_threads"]


def limit_lapack_threads():
    """Set SciPy's OpenBLAS to one thread (see the module docstring); returns
    the paths of the libraries it limited (none if ``OPENBLAS_NUM_THREADS`` is set
    or threadpoolctl finds no such library)."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return []
    import scipy.linalg  # noqa: F401  (loads the library jaxlib's kernels call)
    from threadpoolctl import ThreadpoolController

    limited = []
    for library in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if f"scipy{os.sep}" in library.filepath or "scipy.libs" in library.filepath:
            library.set_num_threads(1)
            limited.append(library.filepath)
    return limited
