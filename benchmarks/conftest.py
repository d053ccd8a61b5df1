"""Benchmark settings: OpenMP threads wait passively (set before torch loads OpenMP: on a
shared 2-core machine the default spin-wait made two threads up to 20x slower than one)."""
import os
import sys

if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    sys.stderr.write("benchmarks: torch was imported before OMP_WAIT_POLICY could be set; "
                     "run with OMP_WAIT_POLICY=PASSIVE\n")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
