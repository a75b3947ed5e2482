"""A shorter soak than bench/soak.py (which records 200 rounds x 50 nodes in docs/benchmarks.md):
the coordinator's memory stays flat while rounds go on."""

import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "soak.py")


@pytest.mark.slow
def test_coordinator_memory_is_flat_over_many_rounds():
    r = subprocess.run([sys.executable, BENCH, "--nodes", "20", "--rounds", "80", "--processes", "4", "--warmup", "20"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rounds completed: 80 of 80; all with 20 updates: True" in r.stdout, r.stdout
    growth = float(re.search(r"growth ([+-][\d.]+) %", r.stdout).group(1))
    assert growth < 10.0, r.stdout
