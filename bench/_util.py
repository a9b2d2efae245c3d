"""Process-level memory probes, timing and log-log fits shared by the benchmarks.

Memory is read from ``/proc/self/status`` (Linux). ``VmHWM`` is the peak
resident set size; writing ``5`` to ``/proc/self/clear_refs`` resets it to the
current RSS, so the peak of one region of code is ``VmHWM - VmRSS`` taken
just before the region. ``jax.devices()[0].memory_stats()`` returns ``None``
on CPU, hence this route.
"""

import ctypes
import gc
import statistics
import time

import numpy as np

MIB = 2.0**20


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_mib():
    """Current resident set size."""
    return _status_kib("VmRSS") / 1024.0


def peak_mib():
    """Peak resident set size since start or since the last :func:`reset_peak`."""
    return _status_kib("VmHWM") / 1024.0


def reset_peak():
    """Reset the peak RSS to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def release_free_memory():
    """Collect garbage and hand freed heap pages back to the OS, so that a
    later region cannot reuse them without it showing in the RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def time_runs(fn, min_runs=3, max_runs=20, budget_s=2.0, times=()):
    """``(median, min, runs)`` wall time of ``fn()`` (which must block); runs
    repeat until ``budget_s`` is spent, within ``[min_runs, max_runs]``.
    ``times`` are earlier samples of the same call, counted in."""
    times = list(times)
    while len(times) < min_runs or (len(times) < max_runs and sum(times) < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times)


def loglog_slope(xs, ys):
    """Least-squares slope of ``log y`` against ``log x`` (``None`` with < 2 points)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if xs.size < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
