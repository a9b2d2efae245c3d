"""A long fit in a fresh Python process, at XLA's default optimisation level.

``conftest.py`` lowers XLA's backend optimisation for the suite's many small
compilations, and a subprocess would inherit it; a long run is several times
slower there (the BNN's 10,000 steps: 994 s against 212 s at the default)."""

import os
import subprocess
import sys


def run_python(args, timeout):
    """``python *args`` under a time limit (a hang fails the test), with the
    suite's lowered optimisation level taken out of ``XLA_FLAGS`` flag by flag
    (under pytest-xdist it appears twice); fails the test, with the end of
    its stderr, if the process fails."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if not flag.startswith("--xla_backend_optimization")]
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    env.update({"XLA_FLAGS": " ".join(flags)} if flags else {})
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
