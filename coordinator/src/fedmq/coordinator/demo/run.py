"""The demo run: a whole federation on this machine, reported on.

A private Mosquitto on a free loopback port, one coordinator process and N node processes in a
2-level hierarchy (homes of nodes), the digits data split non-IID over the nodes. Prints a line per
round, writes a JSON report and a PNG plot, and stops every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

from fedmq.broker.process import MosquittoProcess
from fedmq.broker.provision import client_config, provision
from fedmq.coordinator.demo.dataset import digits, own_data, synthetic
from fedmq.coordinator.demo.federation import HIDDEN, DemoLayout, secure_federation, set_port, write_federation
from fedmq.coordinator.demo.monitoring import announce, metrics_flag, start_dashboard
from fedmq.coordinator.demo.plot import plot_rounds
from fedmq.coordinator.demo.processes import Processes, collect_rounds, report_row
from fedmq.shared.data import DataError
from fedmq.shared.identities import MONITOR
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.topicmap import TlsSettings, load_topic_map
from fedmq.shared.topics import Topics

if TYPE_CHECKING:
    from fedmq.coordinator.monitor.dashboard import Dashboard


def centralised_accuracy(model: str, train: Any, test: Any, seed: int, standardise: bool = False) -> float:
    """Accuracy of a model of the same family trained centrally on all the training data (on standardised
    features when the federation scales them)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if model in HIDDEN:
        clf = MLPClassifier(hidden_layer_sizes=HIDDEN[model], max_iter=500, random_state=seed)
    else:
        clf = LogisticRegression(max_iter=3000)
    if standardise:
        clf = make_pipeline(StandardScaler(), clf)
    clf.fit(*train)
    return float(clf.score(*test))


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when every round was applied."""
    _scenario_defaults(args)
    problem = _argument_problem(args)
    if problem:
        print(f"fedmq demo: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = None
    workdir = os.path.abspath(args.workdir) if args.workdir else None  # configs name files by absolute paths
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fedmq-demo-")
        workdir = tmp.name
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    procs = Processes()
    broker: Optional[MosquittoProcess] = None
    watcher: Optional[MqttLink] = None
    board: Optional["Dashboard"] = None
    t0 = time.monotonic()
    try:
        if args.scenario in STREAM_SCENARIOS:
            return _stream_scenario(args, workdir, procs)
        try:
            train, test, parts, training = _dataset(args)
        except (DataError, ValueError) as exc:
            print(f"fedmq demo: --data: {exc}", file=sys.stderr)
            return 2
        trusted, test = split_trusted(test, args.trusted_split, args.seed)
        layout = write_federation(
            workdir, train, trusted, nodes=args.nodes, groups=args.groups, rounds=args.rounds, alpha=args.alpha,
            seed=args.seed, model=args.model, port=1, deadline_s=args.deadline, trainer=args.trainer, parts=parts,
            training={**(training or {}), **_round_overrides(args)},
            extra={**_transport_sections(args), **({"scaling": "federated"} if args.data else {})},
            node_extras=_node_extras(args))
        security_dir = os.path.join(workdir, "security") if args.secure else None
        broker = _broker(workdir, layout, security_dir)
        print(f"fedmq demo: Mosquitto on {broker.host}:{broker.port}"
              + (" (mutual TLS, ACL, no anonymous access; signed updates and models)" if security_dir else "")
              + f"; {args.nodes} nodes in {args.groups} homes, {args.rounds} rounds, model {args.model}, "
              + _data_line(args, train, test) + f", {args.compression} updates", flush=True)
        topics = Topics("demo")
        watcher = _watch(layout.topic_map, security_dir, topics.metrics())
        metrics = metrics_flag(args.metrics)
        coordinator = procs.spawn(
            ["coordinator", "run", layout.topic_map, "--fresh", "--quiet", *metrics],
            os.path.join(workdir, "logs", "coordinator.log"),
        )
        board = start_dashboard(args.dashboard, layout.topic_map, security_dir)
        announce(board, metrics)
        for node, cfg in zip(layout.node_ids, layout.node_configs):
            procs.spawn(["node", "run", cfg, "--exit-when-done"], os.path.join(workdir, "logs", f"{node}.log"))
        print(
            f"fedmq demo: started the coordinator and {args.nodes} nodes (logs in {os.path.join(workdir, 'logs')})",
            flush=True,
        )
        rounds = collect_rounds(watcher, {topics.metrics(): "demo"}, {"demo": coordinator}, args.rounds, args.deadline)[
            "demo"
        ]
        procs.stop_all()
        if len(rounds) < args.rounds:
            print(
                f"fedmq demo: only {len(rounds)} of {args.rounds} rounds completed; see "
                f"{os.path.join(workdir, 'logs', 'coordinator.log')}",
                file=sys.stderr,
            )
        _results(args, rounds, train, test, time.monotonic() - t0, layout.topic_map)
        return 0 if len(rounds) == args.rounds else 1
    except KeyboardInterrupt:
        print("fedmq demo: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if board is not None:
            board.stop()
        if watcher is not None:
            watcher.stop()
        procs.stop_all()
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()


def _broker(workdir: str, layout: DemoLayout, security_dir: Optional[str]) -> MosquittoProcess:
    """The demo's private Mosquitto, started; with ``security_dir`` the federation is provisioned first
    (mutual TLS, ACL, signing keys) and the configurations point at it either way."""
    if security_dir:
        provision(load_topic_map(layout.topic_map), security_dir)
    broker = MosquittoProcess(os.path.join(workdir, "broker"), security_dir=security_dir).start()
    if security_dir:
        secure_federation(layout, security_dir, broker.port)
    else:
        set_port(layout, broker.port)
    return broker


def _watch(topic_map: str, security_dir: Optional[str], topic: str) -> MqttLink:
    """A started link that receives ``topic`` (the round summaries), as the monitor where the broker is secured
    (an identity of its own: one connection per identity, the client id being the user name)."""
    watch = load_topic_map(topic_map).broker
    if security_dir:
        watch = replace(watch, tls=TlsSettings(**client_config(security_dir, MONITOR)["broker"]["tls"]))
    watcher = MqttLink(f"fedmq-demo-watch-{os.getpid()}", watch, persistent=False)
    watcher.subscribe(topic)
    watcher.start()
    return watcher


STREAM_SCENARIOS = ("smart-home", "appliances")


def _stream_scenario(args: argparse.Namespace, workdir: str, procs: Processes) -> int:
    """Run a scenario of gateways that learn from simulated sensor streams."""
    from fedmq.coordinator.demo.streams import run_stream_scenario

    if args.scenario == "appliances":
        from fedmq.coordinator.demo.appliances import APPLIANCES as scenario
    else:
        from fedmq.coordinator.demo.smart_home import SMART_HOME as scenario
    return run_stream_scenario(scenario, args, workdir, procs)


# the defaults of --model, --homes and --days that differ by scenario
SCENARIO_DEFAULTS = {"appliances": {"model": "mlp", "homes": 3, "days": 4.0}}
DEFAULTS = {"model": "softmax_regression", "homes": 6, "days": 7.0}


def _scenario_defaults(args: argparse.Namespace) -> None:
    """Fill in the options left unset with the scenario's defaults."""
    for key, value in {**DEFAULTS, **SCENARIO_DEFAULTS.get(args.scenario, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _argument_problem(args: argparse.Namespace) -> str:
    """What is wrong with the demo's numeric options, or ''."""
    if args.nodes < 1 or args.groups < 1 or args.groups > args.nodes or args.rounds < 1:
        return "need --nodes >= --groups >= 1 and --rounds >= 1"
    if args.homes < 1 or args.days <= 0:
        return "need --homes >= 1 and --days > 0"
    if not 0.0 <= args.trusted_split < 1.0:
        return "--trusted-split is a share of the held-out set: at least 0, below 1 (e.g. 0.5)"
    return ""


Split = Tuple[np.ndarray, np.ndarray]


def _dataset(args: argparse.Namespace) -> Tuple[Split, Split, Optional[List[Split]], Optional[Dict[str, Any]]]:
    """(training set, held-out set, per-node parts if the data set comes split, training overrides)."""
    if args.dataset == "synthetic":
        parts, test = synthetic(1.0, 1.0, args.nodes, args.seed)
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return train, test, parts, {"learning_rate": 0.01, "local_epochs": 20, "batch_size": 10}
    if args.data:
        train, test = own_data(args.data, args.label_column, args.seed)
        return train, test, None, None
    train, test = digits(args.seed)
    return train, test, None, None


def split_trusted(test: Split, share: float, seed: int) -> Tuple[Split, Split]:
    """(the coordinator's evaluation set, the rest): ``share`` of the held-out samples, drawn at random; with
    ``share`` 0 both are the whole held-out set."""
    if not share:
        return test, test
    order = np.random.default_rng([seed, 31]).permutation(len(test[0]))
    cut = max(1, int(round(share * len(order))))
    return (test[0][order[:cut]], test[1][order[:cut]]), (test[0][order[cut:]], test[1][order[cut:]])


def final_accuracy(topic_map: str, test: Split) -> Optional[float]:
    """The accuracy of the final checkpointed model on ``test``."""
    from fedmq.coordinator import checkpoint
    from fedmq.shared.models import evaluate

    tm = load_topic_map(topic_map)
    loaded = checkpoint.load(tm.checkpoint_dir or "", tm.federation, tm.model)
    if loaded is None:
        return None
    return float(evaluate(tm.model, loaded[0], test[0], test[1])["accuracy"])


def _data_line(args: argparse.Namespace, train: Split, test: Split) -> str:
    """How the demo's data is made and split, for its first line."""
    if args.dataset == "synthetic":
        return "Synthetic(1,1), a device per node"
    if args.data:
        return (f"{args.data} ({len(train[0])} training and {len(test[0])} held-out samples, federated scaling) "
                f"split non-IID (Dirichlet alpha={args.alpha})")
    return f"digits split non-IID (Dirichlet alpha={args.alpha})"


def _results(args: argparse.Namespace, rounds: List[Dict[str, Any]], train: Split, test: Split,
             elapsed: float, topic_map: str) -> None:
    """Print the final accuracy beside the centralised baseline; write the plot and the JSON report. With
    --trusted-split the final accuracy is the final model's on the samples the coordinator never had."""
    baseline = centralised_accuracy(args.model, train, test, args.seed, standardise=bool(args.data))
    final = rounds[-1]["accuracy"] if rounds else None
    if rounds and args.trusted_split:
        final = final_accuracy(topic_map, test)
    print(f"fedmq demo: final federated accuracy {final if final is None else f'{final:.4f}'}; "
          f"centralised {args.model} on the same data {baseline:.4f}; {elapsed:.1f} s in all", flush=True)
    report = {"rounds": [report_row(r) for r in rounds], "final_accuracy": final, "centralised_accuracy": baseline,
              "nodes": args.nodes, "groups": args.groups, "model": args.model, "alpha": args.alpha,
              "trainer": args.trainer, "seed": args.seed, "seconds": round(elapsed, 2),
              "dataset": args.data or args.dataset, "compression": args.compression}
    plot_path = args.plot or (os.path.splitext(args.report)[0] + ".png" if args.report
                              else os.path.join(args.workdir or ".", "fedmq-demo.png"))
    if rounds:
        plot_rounds(rounds, plot_path, baseline, f"fedmq demo: {args.nodes} nodes, {args.groups} homes, {args.model}")
        print(f"fedmq demo: plot written to {plot_path}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        print(f"fedmq demo: report written to {args.report}")


def _transport_sections(args: argparse.Namespace) -> Dict[str, Any]:
    """The topic map's compression and transport sections the demo's options ask for."""
    out: Dict[str, Any] = {}
    if args.compression != "raw":
        out["compression"] = {"update": args.compression}
        if args.compression == "topk":
            out["compression"]["topk_fraction"] = args.topk_fraction
            for key in ("topk_index", "topk_values"):
                if getattr(args, key):
                    out["compression"][key] = getattr(args, key)
    if args.max_payload:
        out["transport"] = {"max_payload_bytes": args.max_payload}
    if args.strategy:
        strategy = yaml.safe_load(args.strategy)
        if not isinstance(strategy, dict):
            raise SystemExit(f"fedmq demo: --strategy must be a YAML mapping, not {args.strategy!r}")
        out["strategy"] = strategy
    return out


def _round_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The rounds section's settings from the demo's options."""
    out: Dict[str, Any] = {
        "fraction": args.fraction,
        "quorum": args.quorum,
        "min_nodes": max(1, min(args.nodes // 2, math.ceil(args.fraction * args.nodes))),
    }
    if args.stragglers:  # a round where every selected node straggled is tried again, not fatal
        out.update(on_quorum_failure="retry", max_retries=20)
    return out


def _node_extras(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Per-node config additions for the simulated stragglers and slow nodes."""
    slow_count, slow_s = 0, 0.0
    if args.slow:
        try:
            count, seconds = args.slow.split(":")
            slow_count, slow_s = int(count), float(seconds)
        except ValueError:
            raise SystemExit(f"fedmq demo: --slow must be N:SECONDS, e.g. 3:2.0, not {args.slow!r}") from None
    attackers, attack = _attack(args)
    return [
        {
            **({"simulate_straggler": args.stragglers} if args.stragglers else {}),
            **({"simulate_delay_s": slow_s} if i < slow_count else {}),
            **({"simulate_attack": attack} if i >= args.nodes - attackers else {}),
        }
        for i in range(args.nodes)
    ]


def _attack(args: argparse.Namespace) -> "tuple[int, Dict[str, Any]]":
    """``--attack N:SCALE[:SAMPLES]``: how many nodes attack (the last ones) and their simulate_attack."""
    if not args.attack:
        return 0, {}
    try:
        parts = args.attack.split(":")
        count, scale = int(parts[0]), float(parts[1])
        samples = int(parts[2]) if len(parts) == 3 else None
        if len(parts) > 3 or not 0 < count <= args.nodes or (samples is not None and samples < 1):
            raise ValueError
    except (ValueError, IndexError):
        raise SystemExit(
            f"fedmq demo: --attack must be N:SCALE or N:SCALE:SAMPLES with 1 <= N <= --nodes, e.g. "
            f"2:-10:10000, not {args.attack!r}"
        ) from None
    return count, {"scale": scale, **({"samples": samples} if samples else {})}
