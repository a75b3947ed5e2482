"""``fedmq demo --scenario smart-home``: gateways in simulated homes learn from their sensor streams.

A private Mosquitto; the home simulator publishes ``--days`` of sensor history for ``--homes`` homes
(zigbee2mqtt, Tasmota and statestream formats; gateways installed at different times, so some homes
have little data); one gateway process per home runs two nodes on its own home's topics, one learning
occupancy from the other signals, one forecasting the temperature an hour ahead, each in its own
federation with federated feature scaling. The report compares, per home and overall, on the two days
that follow (held out: no node has seen them), the federated model against one trained centrally on
all homes' data and against each home's local-only model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.checkpoint import MODEL, current_dir
from fedmq.coordinator.demo.processes import Processes, collect_rounds, report_row
from fedmq.coordinator.sim.homes import Simulation
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import TASKS, node_config, width, write_yaml
from fedmq.node.serve.discovery import PER_NODE
from fedmq.shared.datacheck import normalise_labels
from fedmq.shared.envelope import decode
from fedmq.shared.messages import MessageError, Status
from fedmq.shared.models import evaluate, initial_weights
from fedmq.shared.mqtt import MqttLink
from fedmq.shared.saved_model import SavedModel
from fedmq.shared.scaling import Scaling
from fedmq.shared.topicmap import ModelSpec, load_topic_map
from fedmq.shared.topicmap.model import BrokerSettings
from fedmq.shared.topics import Topics

Samples = Tuple[np.ndarray, np.ndarray]
HELD_OUT_DAYS = 2.0
PERIOD_S = 300.0
FEDERATIONS = {"occupancy": "smarthome", "forecast": "smarthome-temp"}
# what each task's prediction is to Home Assistant
ENTITIES = {"occupancy": {"name": "Occupancy", "device_class": "occupancy"},
            "forecast": {"name": "Temperature in 1 h", "device_class": "temperature", "unit": "°C"}}


def _model(task: str, model: str, seed: int) -> Dict[str, Any]:
    features = width(TASKS[task][0])
    if task == "forecast":
        return {"kind": "sgd_regressor", "features": features, "seed": seed}  # trained by the numpy trainer
    spec: Dict[str, Any] = {"kind": model, "features": features, "classes": [0, 1], "seed": seed}
    if model == "mlp":
        spec["hidden"] = [16]
    return spec


def _topic_map(workdir: str, task: str, homes: List[str], args: argparse.Namespace, port: int) -> str:
    federation = FEDERATIONS[task]
    tm = {"federation": federation, "broker": {"host": "127.0.0.1", "port": port},
          "model": _model(task, args.model if args.model in ("mlp", "softmax_regression") else "softmax_regression",
                          args.seed),
          "rounds": {"rounds": args.rounds, "min_nodes": len(homes), "deadline_s": args.deadline, "quorum": 0.6,
                     "local_epochs": 2, "batch_size": 32, "learning_rate": 0.1 if task == "occupancy" else 0.02,
                     "wait_for_nodes_s": 90, "seed": args.seed},
          "scaling": "federated",
          "checkpoint": {"dir": os.path.join(workdir, f"checkpoints-{task}")},
          "tree": {"groups": {h: {"nodes": [f"{h}-gw" + ("" if task == "occupancy" else f"-{task}")]}
                              for h in homes}}}
    path = os.path.join(workdir, f"{federation}.yaml")
    write_yaml(path, tm)
    return path


def _serving(home: str, task: str) -> Dict[str, Any]:
    """A gateway node's ``serve:`` section: its prediction as a Home Assistant entity of the home's gateway."""
    return {"topic": f"fedmq/{home}/{task}", "period_s": 2, "personalise": True,
            "homeassistant": {"device_id": f"{home}_gateway", "device_name": f"{home} gateway", **ENTITIES[task]}}


def _replay(sources: Dict[str, Any], messages: List[Tuple[float, str, bytes]]) -> Dict[str, Samples]:
    """Each home's samples from recorded messages, built exactly as its gateway builds them."""
    pairs = [(topic, payload) for _, topic, payload in messages]
    return {home: src.replay(pairs) for home, src in sources.items()}


def _sources(configs: Dict[str, str]) -> Dict[str, Any]:
    from fedmq.node.config import load_node_config
    from fedmq.shared.data import open_source

    return {home: open_source(load_node_config(path).data) for home, path in configs.items()}


def _final_model(checkpoints: str, spec: ModelSpec) -> Tuple[Dict[str, np.ndarray], Optional[Scaling]]:
    snapshot = current_dir(checkpoints)
    assert snapshot is not None, f"no checkpoint in {checkpoints}"
    with open(os.path.join(snapshot, MODEL), "rb") as fh:
        env = decode(fh.read())
    return dict(env.tensors), Scaling.from_meta(env.meta.get("scaling"), spec.features)


def _score(spec: ModelSpec, weights: Dict[str, np.ndarray], scaling: Optional[Scaling], data: Samples) -> float:
    x = scaling.apply(data[0]) if scaling else data[0]
    out = evaluate(spec, weights, x, data[1] if spec.is_classifier else data[1].astype(np.float64))
    return out["accuracy"] if spec.is_classifier else float(np.sqrt(out["loss"]))


def _fit(spec: ModelSpec, train: Samples, seed: int) -> Tuple[Dict[str, np.ndarray], Scaling]:
    """A model of the same kind trained on ``train`` alone (its own scaling), with the numpy trainer."""
    from fedmq.node.trainers import make_trainer
    from fedmq.shared.messages import TrainParams
    from fedmq.shared.scaling import local_stats

    stats = local_stats(train[0])
    scaling = Scaling.from_means(stats, len(train[0]))
    trainer = make_trainer("numpy", spec, None)
    trainer.set_weights(initial_weights(spec))
    lr = 0.1 if spec.is_classifier else 0.02
    trainer.fit(scaling.apply(train[0]), train[1], TrainParams(40, 32, lr), np.random.default_rng(seed))
    return trainer.get_weights(), scaling


def compare(spec: ModelSpec, federated: Tuple[Dict[str, np.ndarray], Optional[Scaling]],
            train: Dict[str, Samples], test: Dict[str, Samples], seed: int, learning_rate: float) -> Dict[str, Any]:
    """Per home and overall: the federated model, a central one (all homes' data), each home's own, and the
    federated model personalised on the home's data as its gateway does (``serve.personalise``)."""
    from fedmq.node.serve.config import Personalise
    from fedmq.node.serve.personalise import better_or_equal, personalise

    train = {h: (x, normalise_labels(spec, y)) for h, (x, y) in train.items()}
    test = {h: (x, normalise_labels(spec, y)) for h, (x, y) in test.items()}
    everything = (np.concatenate([t[0] for t in train.values()]), np.concatenate([t[1] for t in train.values()]))
    central = _fit(spec, everything, seed)
    global_model = SavedModel(spec, federated[0], federated[1], "demo", 0)
    rows: Dict[str, Dict[str, Any]] = {}
    for home, data in test.items():
        local = _fit(spec, train[home], seed) if len(train[home][0]) else None
        mine = personalise(global_model, *train[home], Personalise(), seed, learning_rate, PERIOD_S)[0]
        rows[home] = {"train_samples": int(len(train[home][0])), "test_samples": int(len(data[0])),
                      "federated": round(_score(spec, *federated, data), 4),
                      "personalised": round(_score(spec, mine.weights, mine.scaling, data), 4),
                      "central": round(_score(spec, *central, data), 4),
                      "local": round(_score(spec, *local, data), 4) if local else None}
    everyone = (np.concatenate([t[0] for t in test.values()]), np.concatenate([t[1] for t in test.values()]))
    overall = {"federated": round(_score(spec, *federated, everyone), 4),
               "personalised": round(float(np.average([r["personalised"] for r in rows.values()],
                                                      weights=[r["test_samples"] for r in rows.values()])), 4),
               "central": round(_score(spec, *central, everyone), 4),
               "local": round(float(np.average([r["local"] for r in rows.values() if r["local"] is not None],
                                               weights=[r["test_samples"] for r in rows.values()
                                                        if r["local"] is not None])), 4)}
    share = float(np.mean([better_or_equal(global_model, r["personalised"], r["federated"]) for r in rows.values()]))
    return {"metric": "accuracy" if spec.is_classifier else "rmse_celsius", "homes": rows, "overall": overall,
            "personalised_at_least_as_good": round(share, 4)}


def _wait_for_gateways(watcher: MqttLink, expected: int, timeout: float) -> int:
    """Wait until ``expected`` nodes announced themselves online (their data links are subscribed by then)."""
    online: Dict[str, str] = {}
    end = time.monotonic() + timeout
    while sum(s == "online" for s in online.values()) < expected and time.monotonic() < end:
        msg = watcher.get(timeout=0.2)
        if msg is None or not any(Topics(f).parse_last(msg.topic, "status") for f in FEDERATIONS.values()):
            continue
        try:
            status = Status.decode(msg.payload)
        except MessageError:
            continue
        online[status.node] = status.state
    return sum(s == "online" for s in online.values())


def run_smart_home(args: argparse.Namespace, workdir: str, procs: Processes) -> int:
    """The scenario in ``workdir``; returns the exit code (0 when every round of both federations ran)."""
    t0 = time.monotonic()
    homes = args.homes
    broker_proc = MosquittoProcess(os.path.join(workdir, "broker")).start()
    try:
        broker = BrokerSettings(host=broker_proc.host, port=broker_proc.port)
        sim = Simulation(homes, args.seed, PERIOD_S, history_s=args.days * 86400)
        history = list(sim.run(args.days * 86400))
        future = list(sim.run(HELD_OUT_DAYS * 86400))
        names = [h.name for h in sim.homes]
        configs: Dict[str, Dict[str, str]] = {task: {} for task in TASKS}
        for home in sim.homes:
            for task in TASKS:
                cfg = node_config(home, FEDERATIONS[task], broker, PERIOD_S, task=task,
                                  store=os.path.join(workdir, "stores", f"{home.name}-{task}.sqlite"),
                                  extra={"cache_dir": os.path.join(workdir, "cache", f"{home.name}-{task}"),
                                         "trainer": "numpy", "serve": _serving(home.name, task)})
                configs[task][home.name] = os.path.join(workdir, f"node-{home.name}-{task}.yaml")
                write_yaml(configs[task][home.name], cfg)
        maps = {task: _topic_map(workdir, task, names, args, broker.port) for task in TASKS}
        print(f"fedmq demo: Mosquitto on {broker.host}:{broker.port}; {homes} simulated homes "
              f"({', '.join(f'{h.name} {h.household}/{h.format}' for h in sim.homes)}); {args.days:g} days of "
              f"sensor history; occupancy and 1-hour temperature forecast, {args.rounds} rounds each", flush=True)
        watcher = MqttLink(f"fedmq-demo-watch-{os.getpid()}", broker, persistent=False)
        for task in TASKS:
            topics = Topics(FEDERATIONS[task])
            watcher.subscribe(topics.metrics())
            for h in names:
                watcher.subscribe(topics.status((h,), "+"))
        watcher.start()
        try:
            for name in names:  # one gateway process per home, running both nodes
                procs.spawn(["node", "run", configs["occupancy"][name], configs["forecast"][name], "--exit-when-done"],
                            os.path.join(workdir, "logs", f"{name}-gw.log"))
            up = _wait_for_gateways(watcher, 2 * homes, 60)
            print(f"fedmq demo: {up} gateway nodes online; publishing the sensor history...", flush=True)
            with Publisher(broker) as pub:
                sent = pub.publish(history)
            print(f"fedmq demo: {sent} sensor messages published in {time.monotonic() - t0:.1f} s; starting the "
                  "coordinators (rounds start once every gateway has enough samples)", flush=True)
            coordinators = {task: procs.spawn(["coordinator", "run", maps[task], "--fresh", "--quiet"],
                                              os.path.join(workdir, "logs", f"coordinator-{task}.log"))
                            for task in TASKS}
            rounds = collect_rounds(watcher, {Topics(FEDERATIONS[t]).metrics(): t for t in TASKS}, coordinators,
                                    args.rounds, args.deadline, regressors=("forecast",))
        finally:
            watcher.stop()
        if all(len(rounds[t]) == args.rounds for t in TASKS):
            procs.wait_all(15.0)  # the gateways leave once they have the final model: it is what they serve
        procs.stop_all()
        served = published_predictions(broker, names)
        report: Dict[str, Any] = {"scenario": "smart-home", "homes": {h.name: {"household": h.household,
                                                                                "format": h.format} for h in sim.homes},
                                  "days": args.days, "held_out_days": HELD_OUT_DAYS, "seed": args.seed,
                                  "rounds": {t: [report_row(r) for r in rounds[t]] for t in TASKS}, "comparison": {}}
        report["predictions"] = served
        done = all(len(rounds[t]) == args.rounds for t in TASKS)
        for task in TASKS:
            if not rounds[task]:
                continue
            tm = load_topic_map(maps[task])
            spec = tm.model
            sources = _sources(configs[task])
            report["comparison"][task] = compare(spec, _final_model(os.path.join(workdir, f"checkpoints-{task}"), spec),
                                                 _replay(sources, history), _replay(sources, future), args.seed,
                                                 tm.policy.learning_rate)
        report["seconds"] = round(time.monotonic() - t0, 2)
        _print_comparison(report)
        _print_predictions(served, broker)
        missing = [f"{h} {t}" for h in names for t in TASKS if t not in served[h]["states"]]
        missing += [f"{h} entities" for h in names if len(served[h]["entities"]) < PER_NODE * len(TASKS)]
        if missing:  # a state that names a problem (a sensor gone quiet at the end) is served as designed
            print(f"fedmq demo: nothing published for {', '.join(missing)}", file=sys.stderr)
            done = False
        _write_outputs(args, report, workdir)
        if not done:
            print("fedmq demo: not every round completed; see the logs in " + os.path.join(workdir, "logs"),
                  file=sys.stderr)
        return 0 if done else 1
    finally:
        broker_proc.stop()


def published_predictions(broker: BrokerSettings, homes: List[str], wait_s: float = 10.0) -> Dict[str, Any]:
    """Per home: the retained prediction state of each task and the Home Assistant discovery configs of its
    gateway, as the home broker holds them."""
    link = MqttLink(f"fedmq-demo-entities-{os.getpid()}", broker, persistent=False)
    for home in homes:
        link.subscribe(f"fedmq/{home}/+/state")
        link.subscribe(f"homeassistant/+/{home}_gateway/+/config")
    out: Dict[str, Any] = {h: {"states": {}, "entities": {}} for h in homes}
    link.start()
    end = time.monotonic() + wait_s
    try:
        while time.monotonic() < end and any(len(out[h]["states"]) < len(TASKS) for h in homes):
            msg = link.get(timeout=0.2)
            while msg is not None:
                parts = msg.topic.split("/")
                try:
                    body = json.loads(msg.payload) if msg.payload else None
                except ValueError:
                    body = None
                if parts[0] == "fedmq" and isinstance(body, dict):
                    out[parts[1]]["states"][parts[2]] = body
                elif parts[0] == "homeassistant" and isinstance(body, dict):
                    out[parts[2][:-len("_gateway")]]["entities"][body.get("unique_id", msg.topic)] = parts[1]
                msg = link.get(timeout=0.5)
    finally:
        link.stop()
    return out


def _print_predictions(served: Dict[str, Any], broker: BrokerSettings) -> None:
    print(f"fedmq demo: predictions and Home Assistant entities on {broker.host}:{broker.port} "
          "(discovery prefix homeassistant):")
    for home, got in served.items():
        parts = []
        for task in TASKS:
            st = got["states"].get(task, {})
            if st.get("value") is None:
                parts.append(f"{task}: none ({st.get('problem', 'no state')})")
                continue
            shown = (f"{st['value']:.1f}" if isinstance(st["value"], float) else str(st["value"]))
            extra = f", confidence {st['confidence']:.2f}" if "confidence" in st else ""
            parts.append(f"{task}: {shown}{extra} (model {st.get('model_version')}"
                         f"{', personalised' if st.get('personalised') else ''})")
        print(f"  {home:<8} {'; '.join(parts)}; {len(got['entities'])} entities")


def _print_comparison(report: Dict[str, Any]) -> None:
    for task, comp in report["comparison"].items():
        metric = comp["metric"]
        print(f"fedmq demo: {task} ({metric} on the {report['held_out_days']:g} held-out days that follow):")
        print(f"  {'home':<8} {'household':<15} {'samples':>7}  {'federated':>9} {'personal':>8} {'central':>8} "
              f"{'local':>8}")
        for home, row in comp["homes"].items():
            local = "-" if row["local"] is None else f"{row['local']:.3f}"
            print(f"  {home:<8} {report['homes'][home]['household']:<15} {row['train_samples']:>7}  "
                  f"{row['federated']:>9.3f} {row['personalised']:>8.3f} {row['central']:>8.3f} {local:>8}")
        o = comp["overall"]
        print(f"  {'overall':<24} {'':>7}  {o['federated']:>9.3f} {o['personalised']:>8.3f} {o['central']:>8.3f} "
              f"{o['local']:>8.3f}")
        print(f"  personalised at least as good as federated on {comp['personalised_at_least_as_good']:.0%} of homes")
    print(f"fedmq demo: {report['seconds']:.1f} s in all", flush=True)


def _write_outputs(args: argparse.Namespace, report: Dict[str, Any], workdir: str) -> None:
    from fedmq.coordinator.demo.plot import plot_smart_home

    plot_path = args.plot or (os.path.splitext(args.report)[0] + ".png" if args.report else
                              os.path.join(args.workdir or ".", "fedmq-demo.png"))
    if report["comparison"]:
        plot_smart_home(report, plot_path)
        print(f"fedmq demo: plot written to {plot_path}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        print(f"fedmq demo: report written to {args.report}")
