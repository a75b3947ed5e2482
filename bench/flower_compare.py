"""fedmq against Flower, side by side on this machine: the same task as real separate processes on loopback.

Task: 10 nodes, multinomial logistic regression on scikit-learn's digits split non-IID (Dirichlet 0.5, the
demo's split, identical for both), 10 rounds of FedAvg, every node every round, local training 2 epochs of
SGD at batch 16 and learning rate 0.5 (the same numpy code path on both sides), evaluation on the held-out
20 %.

* fedmq: Mosquitto, ``fedmq coordinator run`` and 10 ``fedmq node run`` processes.
* Flower: its Deployment Engine, a SuperLink and 10 SuperNodes (``flower-superlink``, ``flower-supernode``)
  and ``flwr run``, installed by this script into its own virtual environment (never a fedmq dependency).

Reported for both: wall time from the first process started to the last round done, memory (the sum of
every process's peak RSS, and the peak of all processes' RSS at one time, sampled every 0.1 s), bytes on
the wire (loopback interface counters, /proc/net/dev, over the run) and final accuracy; then the ratios.

Usage: .venv/bin/python bench/flower_compare.py [--flower-venv DIR] [--rounds 10]
Needs mosquitto (./install.sh) and network access to PyPI the first time (to install flwr).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Dict, List, Optional

import numpy as np

FLWR_VERSION = "1.41.0"
NODES, ALPHA, SEED, EPOCHS, BATCH, LR = 10, 0.5, 0, 2, 16, 0.5


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (every byte sent on lo is received on lo)."""
    with open("/proc/net/dev") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


class MemorySampler:
    """Samples the RSS of a process tree (by session id) every 0.1 s: per-process peaks and the peak total."""

    def __init__(self, sessions: List[int]) -> None:
        self.sessions = set(sessions)
        self.peaks: Dict[int, int] = {}
        self.peak_total = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add_session(self, sid: int) -> None:
        """Also watch processes of this session."""
        self.sessions.add(sid)

    def _run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        sid = int(fh.read().rsplit(")", 1)[1].split()[3])
                    if sid not in self.sessions:
                        continue
                    with open(f"/proc/{pid}/status") as fh:
                        fields = dict(line.split(":", 1) for line in fh if ":" in line)
                    rss, hwm = int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
                except (OSError, KeyError, ValueError, IndexError):
                    continue
                total += rss
                self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0), hwm)
            self.peak_total = max(self.peak_total, total)
            self.stop.wait(0.1)

    def __enter__(self) -> "MemorySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> Dict[str, float]:
        """MB figures."""
        return {"sum_of_peaks_mb": sum(self.peaks.values()) / 1024, "peak_total_mb": self.peak_total / 1024,
                "processes": len(self.peaks)}


def spawn(
    cmd: List[str], log: str, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None
) -> subprocess.Popen:
    """A child in its own session (so the sampler can find it and everything it starts)."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)


def stop_all(procs: List[subprocess.Popen]) -> None:
    """SIGTERM each process group, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def prepare_data(work: str) -> List[str]:
    """The demo's digits split, one NPZ per node plus test.npz; returns the node files."""
    from fedmq.coordinator.demo.dataset import digits, dirichlet_split

    (x, y), (xt, yt) = digits(SEED)
    files = []
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    for i, idx in enumerate(dirichlet_split(y, NODES, ALPHA, SEED)):
        path = os.path.join(work, "data", f"node{i}.npz")
        np.savez(path, x=x[idx], y=y[idx])
        files.append(path)
    np.savez(os.path.join(work, "data", "test.npz"), x=xt, y=yt)
    return files


# --- fedmq ------------------------------------------------------------------------------------------------


def run_fedmq(work: str, rounds: int) -> Dict[str, float]:
    """Mosquitto + coordinator + 10 nodes, as the demo writes them (one group)."""
    from fedmq.broker.process import MosquittoProcess
    from fedmq.coordinator.demo.dataset import digits
    from fedmq.coordinator.demo.federation import set_port, write_federation

    train, test = digits(SEED)
    layout = write_federation(
        work,
        train,
        test,
        nodes=NODES,
        groups=1,
        rounds=rounds,
        alpha=ALPHA,
        seed=SEED,
        model="softmax_regression",
        port=1,
        deadline_s=30,
        training={"local_epochs": EPOCHS, "batch_size": BATCH, "learning_rate": LR, "min_nodes": NODES},
    )
    report = os.path.join(work, "report.json")
    lo0, t0 = loopback_bytes(), time.monotonic()
    broker = MosquittoProcess(os.path.join(work, "broker"), persistence=False)
    procs: List[subprocess.Popen] = []
    with MemorySampler([]) as mem:
        broker.start()
        mem.add_session(os.getsid(broker.proc.pid) if broker.proc else 0)
        set_port(layout, broker.port)
        fedmq_cmd = [sys.executable, "-m", "fedmq.shared.cli"]
        try:
            coord = spawn(
                fedmq_cmd + ["coordinator", "run", layout.topic_map, "--fresh", "--quiet", "--report", report],
                os.path.join(work, "coordinator.log"),
            )
            procs.append(coord)
            mem.add_session(coord.pid)
            for node, cfg in zip(layout.node_ids, layout.node_configs):
                p = spawn(fedmq_cmd + ["node", "run", cfg, "--exit-when-done"], os.path.join(work, f"{node}.log"))
                procs.append(p)
                mem.add_session(p.pid)
            if coord.wait(600) != 0:
                raise RuntimeError(f"fedmq coordinator failed; see {work}/coordinator.log")
            wall = time.monotonic() - t0
            for p in procs[1:]:
                p.wait(30)
        finally:
            stop_all(procs)
            broker.stop()
    bytes_lo = loopback_bytes() - lo0
    rep = json.load(open(report))
    return {
        "wall_s": wall,
        "accuracy": rep["rounds"][-1]["accuracy"],
        "loopback_bytes": bytes_lo,
        "rounds": len(rep["rounds"]),
        **mem.summary(),
    }


# --- Flower -----------------------------------------------------------------------------------------------

CLIENT_APP = '''
"""Flower ClientApp: the same numpy softmax-regression SGD as fedmq's numpy trainer."""
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _fit(w, b, x, y, epochs, batch, lr, rng):
    onehot = np.eye(w.shape[1])[y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            i = order[s:s + batch]
            z = x[i] @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot[i]) / len(i)
            w -= lr * (x[i].T @ g)
            b -= lr * g.sum(axis=0)
    return w, b


@app.train()
def train(msg: Message, context: Context) -> Message:
    data = np.load(context.node_config["data"])
    x, y = data["x"].astype(np.float64), data["y"]
    coef, intercept = msg.content["arrays"].to_numpy_ndarrays()
    cfg = msg.content["config"]
    rng = np.random.default_rng(int(context.node_config["seed"]) + int(cfg["server-round"]))
    w, b = _fit(coef.T.astype(np.float64), intercept.astype(np.float64), x, y, int(cfg["epochs"]),
                int(cfg["batch"]), float(cfg["lr"]), rng)
    arrays = ArrayRecord([np.ascontiguousarray(w.T, np.float32), b.astype(np.float32)])
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": len(x)})}), reply_to=msg)
'''

SERVER_APP = '''
"""Flower ServerApp: FedAvg over every node for N rounds, central evaluation on the held-out digits."""
import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    test = np.load(cfg["test"])
    history = []

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        coef, intercept = arrays.to_numpy_ndarrays()
        acc = float(np.mean((test["x"] @ coef.T + intercept).argmax(axis=1) == test["y"]))
        history.append({"round": rnd, "accuracy": acc, "time": time.time()})
        with open(cfg["out"], "w") as fh:
            json.dump(history, fh)
        return MetricRecord({"accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg["nodes"],
                      min_available_nodes=cfg["nodes"])
    start = ArrayRecord([np.zeros((10, 64), np.float32), np.zeros(10, np.float32)])
    strategy.start(grid=grid, initial_arrays=start, num_rounds=cfg["rounds"], evaluate_fn=evaluate,
                   train_config=ConfigRecord({"epochs": cfg["epochs"], "batch": cfg["batch"], "lr": cfg["lr"]}))
'''


def flower_venv(path: str) -> str:
    """A virtual environment with flwr (created once); returns its bin directory."""
    bin_dir = os.path.join(path, "bin")
    if not os.path.exists(os.path.join(bin_dir, "flower-superlink")):
        print(f"installing flwr {FLWR_VERSION} into {path} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run(
            [os.path.join(bin_dir, "pip"), "install", "-q", f"flwr=={FLWR_VERSION}", "numpy"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
    return bin_dir


def write_flower_app(app_dir: str, work: str, rounds: int) -> None:
    """The Flower App: pyproject and the two apps."""
    pkg = os.path.join(app_dir, "fedmqbench")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as fh:
        fh.write("")
    with open(os.path.join(pkg, "client_app.py"), "w") as fh:
        fh.write(CLIENT_APP)
    with open(os.path.join(pkg, "server_app.py"), "w") as fh:
        fh.write(SERVER_APP)
    with open(os.path.join(app_dir, "pyproject.toml"), "w") as fh:
        fh.write(
            textwrap.dedent(f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "fedmqbench"
            version = "1.0.0"
            dependencies = ["flwr=={FLWR_VERSION}", "numpy"]

            [tool.hatch.build.targets.wheel]
            packages = ["."]

            [tool.flwr.app]
            publisher = "fedmq"

            [tool.flwr.app.components]
            serverapp = "fedmqbench.server_app:app"
            clientapp = "fedmqbench.client_app:app"

            [tool.flwr.app.config]
            rounds = {rounds}
            nodes = {NODES}
            epochs = {EPOCHS}
            batch = {BATCH}
            lr = {LR}
            test = "{os.path.join(work, "data", "test.npz")}"
            out = "{os.path.join(work, "flower-history.json")}"
            """)
        )


def run_flower(work: str, rounds: int, venv: str, node_files: List[str]) -> Dict[str, float]:
    """SuperLink + 10 SuperNodes + flwr run, until the last round's evaluation is written."""
    bin_dir = flower_venv(venv)
    app_dir = os.path.join(work, "flower-app")
    write_flower_app(app_dir, work, rounds)
    home = os.path.join(work, "flwr-home")
    os.makedirs(home, exist_ok=True)
    port = free_port()
    with open(os.path.join(home, "config.toml"), "w") as fh:
        fh.write(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
    env = {**os.environ, "FLWR_HOME": home, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    history = os.path.join(work, "flower-history.json")
    procs: List[subprocess.Popen] = []
    lo0, t0 = loopback_bytes(), time.monotonic()
    with MemorySampler([]) as mem:
        try:
            # Flower 1.41: the Fleet and Control APIs are one HTTP server (--host/--port); state in memory.
            link = spawn(
                [os.path.join(bin_dir, "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)],
                os.path.join(work, "superlink.log"),
                env,
            )
            procs.append(link)
            mem.add_session(link.pid)
            for i, data in enumerate(node_files):
                p = spawn(
                    [
                        os.path.join(bin_dir, "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        f'data="{data}" seed={SEED + i}',
                    ],
                    os.path.join(work, f"supernode{i}.log"),
                    env,
                )
                procs.append(p)
                mem.add_session(p.pid)
            for _ in range(120):  # until the SuperLink's Control API answers
                if (
                    subprocess.run(
                        [os.path.join(bin_dir, "flwr"), "ls", "bench"], env=env, cwd=app_dir, capture_output=True
                    ).returncode
                    == 0
                ):
                    break
                time.sleep(0.5)
            run = spawn(
                [os.path.join(bin_dir, "flwr"), "run", app_dir, "bench", "--stream"],
                os.path.join(work, "flwr-run.log"),
                env,
                cwd=app_dir,
            )
            procs.append(run)
            mem.add_session(run.pid)
            end = time.monotonic() + 3600
            done = None
            while time.monotonic() < end:
                if os.path.exists(history):
                    try:
                        h = json.load(open(history))
                    except ValueError:
                        h = []
                    if h and h[-1]["round"] >= rounds:
                        done = h
                        break
                if run.poll() not in (None, 0):
                    raise RuntimeError(f"flwr run failed; see {work}/flwr-run.log")
                time.sleep(0.2)
            if done is None:
                raise RuntimeError(f"Flower did not finish {rounds} rounds; see {work}")
            wall = time.monotonic() - t0
        finally:
            stop_all(procs)
    bytes_lo = loopback_bytes() - lo0
    return {
        "wall_s": wall,
        "accuracy": done[-1]["accuracy"],
        "loopback_bytes": bytes_lo,
        "rounds": rounds,
        **mem.summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=10, help="FedAvg rounds (default 10)")
    ap.add_argument(
        "--flower-venv",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".flower-venv"),
        help="where to install Flower (default bench/.flower-venv)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory with every log")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fedmq-vs-flower-")
    try:
        files = prepare_data(work)
        print(f"fedmq: Mosquitto + coordinator + {NODES} nodes, {args.rounds} rounds...", flush=True)
        f = run_fedmq(os.path.join(work, "fedmq"), args.rounds)
        print(
            f"Flower {FLWR_VERSION} Deployment Engine: SuperLink + {NODES} SuperNodes, {args.rounds} rounds...",
            flush=True,
        )
        fl = run_flower(work, args.rounds, args.flower_venv, files)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    rows = [
        ("wall time, s", "wall_s", "{:.1f}"),
        ("sum of per-process peak RSS, MB", "sum_of_peaks_mb", "{:.0f}"),
        ("peak RSS of all processes at once, MB", "peak_total_mb", "{:.0f}"),
        ("processes", "processes", "{:.0f}"),
        ("bytes on loopback", "loopback_bytes", "{:,.0f}"),
        ("final accuracy", "accuracy", "{:.4f}"),
    ]
    print(f"\n{'':40} {'fedmq':>14} {'Flower':>14} {'fedmq / Flower':>15}")
    for label, key, fmt in rows:
        ratio = f[key] / fl[key] if fl[key] else float("nan")
        print(f"{label:40} {fmt.format(f[key]):>14} {fmt.format(fl[key]):>14} {ratio:>15.3f}")
    print(
        f"\nFlower takes {fl['wall_s'] / f['wall_s']:.1f}x the wall time and "
        f"{fl['peak_total_mb'] / f['peak_total_mb']:.1f}x "
        f"the memory; accuracy differs by {100 * (f['accuracy'] - fl['accuracy']):+.2f} points."
    )


if __name__ == "__main__":
    main()
