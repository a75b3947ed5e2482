"""The demo's child processes and the round summaries it follows on the metrics topics."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Collection, Dict, List, Mapping

from fedmq.coordinator.cli import format_round
from fedmq.shared.messages import MessageError, decode_metrics
from fedmq.shared.mqtt import MqttLink

REPORT_KEYS = ("round", "accuracy", "loss", "updates", "bytes_up", "bytes_down", "bytes_per_update",
               "tensor_bytes_per_update", "seconds", "elapsed", "staleness", "epsilon", "delta", "problems")


class Processes:
    """Child processes that are always stopped: SIGTERM, then SIGKILL."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def spawn(self, args: List[str], log_path: str) -> subprocess.Popen:
        """Start ``python -m fedmq.shared.cli ARGS`` with its output in ``log_path``."""
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fedmq.shared.cli", *args], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every child to exit by itself (nodes run with --exit-when-done leave after
        the federation's "done", with the last model in hand); True if they all did."""
        end = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop_all(self, grace: float = 5.0) -> None:
        """Terminate every child, kill the stragglers."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def report_row(r: Dict[str, Any]) -> Dict[str, Any]:
    """The figures of a round summary that go into the demo's report."""
    return {k: r[k] for k in REPORT_KEYS if k in r}


def collect_rounds(watcher: MqttLink, metrics: Mapping[str, str], coordinators: Mapping[str, subprocess.Popen],
                   rounds: int, deadline: float, regressors: Collection[str] = ()) -> Dict[str, List[Dict[str, Any]]]:
    """Round summaries per federation (``metrics``: metrics topic -> name; ``regressors``: the names whose
    model is a regressor), printed as they arrive, until every federation has ``rounds`` of them, its
    coordinator has exited, or nothing happened for a while."""
    seen: Dict[str, Dict[int, Dict[str, Any]]] = {name: {} for name in metrics.values()}
    last_progress = started = time.monotonic()
    stall = 60.0 + 4 * deadline

    def busy() -> bool:
        return any(len(seen[n]) < rounds and coordinators[n].poll() is None for n in seen)

    while (busy() or not watcher.inbox.empty()) and time.monotonic() - last_progress < stall:
        msg = watcher.get(timeout=0.2)
        if msg is None or msg.topic not in metrics:
            continue
        try:
            summary = decode_metrics(msg.payload)
        except MessageError:
            continue
        name = metrics[msg.topic]
        if summary["round"] not in seen[name] and not msg.retain:
            seen[name][summary["round"]] = summary
            last_progress = time.monotonic()
            summary["elapsed"] = round(last_progress - started, 3)  # since the coordinator started
            print((f"{name:<10} " if len(metrics) > 1 else "") + format_round(summary, name in regressors), flush=True)
    return {n: [s[k] for k in sorted(s)] for n, s in seen.items()}
