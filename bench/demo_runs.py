"""Run ``fedmq demo`` as a subprocess and return its report (shared by the learning benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List


def run_demo(args: List[str]) -> Dict[str, Any]:
    """One whole federation (Mosquitto, coordinator and node processes); its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "fedmq.shared.cli", "demo", *args, "--report", report,
               "--plot", os.path.join(tmp, "plot.png")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(report):
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        with open(report, encoding="utf-8") as fh:
            return json.load(fh)
