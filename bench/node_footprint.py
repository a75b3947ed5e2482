"""Node footprint per trainer: peak RSS of a real `fedmq node run` process through a federation's rounds,
time per local epoch, and the size of the model file it trains (TFLite).

Usage: .venv/bin/python bench/node_footprint.py [--rounds 5]
Also prints the installed size of a node per trainer: fresh virtual environments, pip from PyPI.
Needs mosquitto (./install.sh). Data: the digits demo split (10 nodes' shares; the measured node is one).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.demo.dataset import digits
from fedmq.coordinator.demo.federation import LEARNING_RATE, write_federation
from fedmq.coordinator.rounds import build_model_file
from fedmq.coordinator.service import CoordinatorService
from fedmq.node.trainers import make_trainer
from fedmq.shared.messages import TrainParams
from fedmq.shared.models import initial_weights
from fedmq.shared.topicmap import load_topic_map

CASES = [
    ("numpy", "softmax_regression"),
    ("sklearn", "sgd_classifier"),
    ("numpy", "tflite-mlp"),
    ("tflite", "tflite-mlp"),
]


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a live process, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def measure(trainer: str, model: str, rounds: int, workdir: str) -> dict:
    train, test = digits(0)
    with MosquittoProcess(os.path.join(workdir, "broker")) as broker:
        layout = write_federation(
            workdir,
            train,
            test,
            nodes=2,
            groups=1,
            rounds=rounds,
            alpha=0.5,
            seed=0,
            model=model,
            port=broker.port,
            deadline_s=30,
            trainer=trainer,
        )
        tm = load_topic_map(layout.topic_map)
        service = CoordinatorService(tm, fresh=True)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fedmq.shared.cli", "node", "run", cfg, "--exit-when-done"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for cfg in layout.node_configs
        ]
        peak = 0
        while thread.is_alive() and procs[0].poll() is None:
            try:
                peak = max(peak, vm_hwm_kb(procs[0].pid))
            except OSError:
                break
            time.sleep(0.05)
        thread.join(60)
        for p in procs:
            p.terminate()
            p.wait(10)
        data = np.load(os.path.join(workdir, "data", f"{layout.node_ids[0]}.npz"))
    spec = tm.model
    file = build_model_file(tm, initial_weights(spec)) if spec.kind == "tflite" else None
    t = make_trainer(trainer, spec, file[1] if file else None)
    t.set_weights(initial_weights(spec))
    params = TrainParams(1, tm.policy.batch_size, LEARNING_RATE[model])
    rng = np.random.default_rng(0)
    t.fit(data["x"], data["y"], params, rng)  # warm-up
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        t.fit(data["x"], data["y"], params, rng)
        times.append(time.perf_counter() - t0)
    return {
        "trainer": trainer,
        "model": model,
        "rss_mb": peak / 1024,
        "samples": len(data["y"]),
        "epoch_ms": 1000 * float(np.median(times)),
        "file_bytes": len(file[1]) if file else 0,
        "rounds": len(service.driver.state.history) if service.driver else 0,
    }


INSTALLS = [("numpy", ""), ("sklearn", "[sklearn]"), ("tflite", "[tflite]")]


def installed_mb(extra: str, workdir: str) -> "tuple[float, int]":
    """Size of a fresh virtual environment's site-packages after installing fedmq-shared and fedmq-node
    (with ``extra``) as a gateway would (no editable installs), and its number of distributions."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(workdir, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = os.path.join(venv, "bin", "python")
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            py,
            "install",
            "-q",
            "--disable-pip-version-check",
            os.path.join(root, "shared"),
            os.path.join(root, "node") + extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = 0
    for dirpath, _, files in os.walk(site):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    dists = len([d for d in os.listdir(site) if d.endswith(".dist-info")])
    return total / 1e6, dists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds the measured node takes part in (default 5)")
    args = ap.parse_args()
    print("installed size of a gateway's node (fresh virtual environment, fedmq-shared + fedmq-node):")
    for trainer, extra in INSTALLS:
        with tempfile.TemporaryDirectory() as tmp:
            mb, dists = installed_mb(extra, tmp)
        print(f"  {trainer:<8} fedmq-node{extra:<10} {mb:>7.1f} MB in {dists} distributions", flush=True)
    print(f"# {platform.machine()} python {platform.python_version()}, {os.cpu_count()} cores")
    print(
        f"{'trainer':<8} {'model':<20} {'rounds':>6} {'peak RSS MB':>12} {'samples':>8} {'ms/epoch':>9} "
        f"{'model file B':>13}"
    )
    for trainer, model in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(trainer, model, args.rounds, tmp)
        print(
            f"{r['trainer']:<8} {r['model']:<20} {r['rounds']:>6} {r['rss_mb']:>12.1f} {r['samples']:>8} "
            f"{r['epoch_ms']:>9.2f} {r['file_bytes'] or '-':>13}"
        )


if __name__ == "__main__":
    main()
