"""Demo scenarios where gateways learn from simulated sensor streams (``smart-home``, ``appliances``).

A private Mosquitto; a simulator publishes the history of every simulated unit (a home, a smart plug) in
the formats homes use (zigbee2mqtt, Tasmota, Home Assistant statestream); one gateway process per unit runs
a node per task on the unit's own topics, each task in its own federation with federated feature scaling,
serving its prediction as a Home Assistant entity. The report compares per unit and overall, on the days
that follow (held out: no node has seen them), the federated model, the model the gateway serves
(personalised as ``serve.personalise`` does it), one trained centrally on all units' data and each unit's
local-only model. A scenario is a :class:`StreamScenario`: its simulator, its tasks and its signals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fedmq.broker.process import MosquittoProcess
from fedmq.coordinator.checkpoint import MODEL, current_dir
from fedmq.coordinator.demo.processes import Processes, collect_rounds, report_row
from fedmq.coordinator.sim.publish import Publisher
from fedmq.coordinator.sim.scenario import stream_data, width, write_yaml
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

if TYPE_CHECKING:
    from fedmq.node.serve.config import Personalise

Samples = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Task:
    """What a gateway learns in one federation."""

    federation: str
    features: List[Dict[str, Any]]
    label: Dict[str, Any]
    model: Callable[[str, int], Dict[str, Any]]  # (--model, seed) -> the topic map's model, without features
    learning_rate: float
    entity: Dict[str, Any]  # the prediction's Home Assistant entity (serve.homeassistant)
    node_suffix: str = ""  # node id: the unit's gateway name and this


@dataclass(frozen=True)
class StreamScenario:
    """A simulator and what its gateways learn. Its units (``simulation(args).homes``) have a ``name`` and a
    ``format``; ``about(unit)`` describes one for the report, ``signals(unit)`` is its node's ``signals:``."""

    name: str
    period_s: float
    held_out_days: float
    tasks: Dict[str, Task]
    simulation: Callable[[argparse.Namespace], Any]
    signals: Callable[[Any], List[Dict[str, Any]]]
    about: Callable[[Any], Dict[str, Any]]
    group: Callable[[Any], str]
    summary: str  # what the scenario learns, for its first line
    gateway_suffix: str = ""  # a unit's gateway is named after it, with this

    def node_id(self, unit: str, task: str) -> str:
        """The node id of ``unit``'s gateway for ``task``."""
        return unit + self.gateway_suffix + self.tasks[task].node_suffix

    def node_config(self, unit: Any, task: str, broker: BrokerSettings, store: str,
                    federation: Optional[str] = None) -> Dict[str, Any]:
        """A node configuration that learns ``task`` from ``unit``'s simulated streams on ``broker``."""
        t = self.tasks[task]
        return {"node_id": self.node_id(unit.name, task), "federation": federation or t.federation,
                "group": self.group(unit), "broker": {"host": broker.host, "port": broker.port},
                "data": stream_data(self.signals(unit), t.features, t.label, broker, self.period_s, store),
                "min_samples": 50}


def _topic_map(scenario: StreamScenario, workdir: str, task: str, units: List[Any], args: argparse.Namespace,
               port: int) -> str:
    t = scenario.tasks[task]
    groups: Dict[str, Dict[str, List[str]]] = {}
    for unit in units:
        groups.setdefault(scenario.group(unit), {"nodes": []})["nodes"].append(scenario.node_id(unit.name, task))
    tm = {"federation": t.federation, "broker": {"host": "127.0.0.1", "port": port},
          "model": {**t.model(args.model, args.seed), "features": width(t.features)},
          "rounds": {"rounds": args.rounds, "min_nodes": len(units), "deadline_s": args.deadline, "quorum": 0.6,
                     "local_epochs": 2, "batch_size": 32, "learning_rate": t.learning_rate,
                     "wait_for_nodes_s": 90, "seed": args.seed},
          "scaling": "federated",
          "checkpoint": {"dir": os.path.join(workdir, f"checkpoints-{task}")},
          "tree": {"groups": groups}}
    path = os.path.join(workdir, f"{t.federation}.yaml")
    write_yaml(path, tm)
    return path


def _node_config(scenario: StreamScenario, unit: Any, task: str, broker: BrokerSettings, workdir: str
                 ) -> Dict[str, Any]:
    store = os.path.join(workdir, "stores", f"{unit.name}-{task}.sqlite")
    return {**scenario.node_config(unit, task, broker, store),
            "cache_dir": os.path.join(workdir, "cache", f"{unit.name}-{task}"), "trainer": "numpy",
            "serve": _serving(unit.name, task, scenario.tasks[task].entity)}


def _serving(unit: str, task: str, entity: Dict[str, Any]) -> Dict[str, Any]:
    """A gateway node's ``serve:`` section: its prediction as a Home Assistant entity of the unit's gateway."""
    return {"topic": f"fedmq/{unit}/{task}", "period_s": 2, "personalise": True,
            "homeassistant": {"device_id": f"{unit}_gateway", "device_name": f"{unit} gateway", **entity}}


def _replay(spec: ModelSpec, sources: Dict[str, Any], messages: List[Tuple[float, str, bytes]]) -> Dict[str, Samples]:
    """Each unit's samples from recorded messages, built exactly as its gateway builds them, with the labels
    as the model's classes spell them."""
    pairs = [(topic, payload) for _, topic, payload in messages]
    out = {}
    for unit, src in sources.items():
        x, y = src.replay(pairs)
        out[unit] = (x, normalise_labels(spec, y, src.label_names))
    return out


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


def _fit(spec: ModelSpec, train: Samples, seed: int, lr: float) -> Tuple[Dict[str, np.ndarray], Scaling]:
    """A model of the same kind trained on ``train`` alone (its own scaling), as a gateway's local candidate is."""
    from fedmq.node.serve.personalise import local_model
    from fedmq.shared.messages import TrainParams

    made = local_model(SavedModel(spec, initial_weights(spec), None, "demo", 0), *train, TrainParams(40, 32, lr), seed)
    assert made.scaling is not None
    return made.weights, made.scaling


def compare_task(scenario: StreamScenario, task: str, workdir: str, units: List[str],
                 history: List[Tuple[float, str, bytes]], future: List[Tuple[float, str, bytes]], seed: int,
                 personalisation: Optional["Personalise"] = None) -> Dict[str, Any]:
    """:func:`compare` for ``task`` of a scenario run in ``workdir`` (its topic map, node configurations and
    final checkpoint), on the simulated ``history`` and the ``future`` held out."""
    tm = load_topic_map(os.path.join(workdir, f"{scenario.tasks[task].federation}.yaml"))
    sources = _sources({u: os.path.join(workdir, f"node-{u}-{task}.yaml") for u in units})
    return compare(tm.model, _final_model(os.path.join(workdir, f"checkpoints-{task}"), tm.model),
                   _replay(tm.model, sources, history), _replay(tm.model, sources, future), seed,
                   tm.policy.learning_rate, scenario.period_s, personalisation)


def compare(spec: ModelSpec, federated: Tuple[Dict[str, np.ndarray], Optional[Scaling]],
            train: Dict[str, Samples], test: Dict[str, Samples], seed: int, learning_rate: float,
            period_s: float, personalisation: Optional["Personalise"] = None) -> Dict[str, Any]:
    """Per home and overall: the federated model, a central one (all homes' data), each home's own, and the
    federated model personalised on the home's data as its gateway does (``serve.personalise``; by default
    as a gateway's defaults do it)."""
    from fedmq.node.serve.config import Personalise
    from fedmq.node.serve.personalise import better_or_equal, personalise

    train = {h: (x, normalise_labels(spec, y)) for h, (x, y) in train.items()}
    test = {h: (x, normalise_labels(spec, y)) for h, (x, y) in test.items()}
    everything = (np.concatenate([t[0] for t in train.values()]), np.concatenate([t[1] for t in train.values()]))
    central = _fit(spec, everything, seed, learning_rate)
    global_model = SavedModel(spec, federated[0], federated[1], "demo", 0)
    rows: Dict[str, Dict[str, Any]] = {}
    for home, data in test.items():
        local = _fit(spec, train[home], seed, learning_rate) if len(train[home][0]) else None
        mine = personalise(global_model, *train[home], personalisation or Personalise(), seed, learning_rate,
                           period_s)[0]
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
    both = float(np.mean([better_or_equal(global_model, r["personalised"], r["federated"]) and
                          (r["local"] is None or better_or_equal(global_model, r["personalised"], r["local"]))
                          for r in rows.values()]))
    return {"metric": "accuracy" if spec.is_classifier else "rmse_celsius", "homes": rows, "overall": overall,
            "personalised_at_least_as_good": round(share, 4), "served_at_least_as_good_as_both": round(both, 4)}


def _wait_for_gateways(watcher: MqttLink, federations: List[str], expected: int, timeout: float) -> int:
    """Wait until ``expected`` nodes announced themselves online (their data links are subscribed by then)."""
    online: Dict[str, str] = {}
    end = time.monotonic() + timeout
    while sum(s == "online" for s in online.values()) < expected and time.monotonic() < end:
        msg = watcher.get(timeout=0.2)
        if msg is None or not any(Topics(f).parse_last(msg.topic, "status") for f in federations):
            continue
        try:
            status = Status.decode(msg.payload)
        except MessageError:
            continue
        online[status.node] = status.state
    return sum(s == "online" for s in online.values())


def run_stream_scenario(scenario: StreamScenario, args: argparse.Namespace, workdir: str, procs: Processes) -> int:
    """``scenario`` in ``workdir``; returns the exit code (0 when every round of every federation ran)."""
    t0 = time.monotonic()
    tasks = scenario.tasks
    federations = {task: t.federation for task, t in tasks.items()}
    broker_proc = MosquittoProcess(os.path.join(workdir, "broker")).start()
    try:
        broker = BrokerSettings(host=broker_proc.host, port=broker_proc.port)
        sim = scenario.simulation(args)
        history = list(sim.run(args.days * 86400))
        future = list(sim.run(scenario.held_out_days * 86400))
        names = [u.name for u in sim.homes]
        configs: Dict[str, Dict[str, str]] = {task: {} for task in tasks}
        for unit in sim.homes:
            for task in tasks:
                configs[task][unit.name] = os.path.join(workdir, f"node-{unit.name}-{task}.yaml")
                write_yaml(configs[task][unit.name], _node_config(scenario, unit, task, broker, workdir))
        maps = {task: _topic_map(scenario, workdir, task, sim.homes, args, broker.port) for task in tasks}
        print(f"fedmq demo: Mosquitto on {broker.host}:{broker.port}; {len(names)} simulated gateways "
              f"({'; '.join(f'{u.name} ' + ', '.join(map(str, scenario.about(u).values())) for u in sim.homes)}); "
              f"{args.days:g} days of history; {scenario.summary}, {args.rounds} rounds each", flush=True)
        watcher = MqttLink(f"fedmq-demo-watch-{os.getpid()}", broker, persistent=False)
        for task in tasks:
            topics = Topics(federations[task])
            watcher.subscribe(topics.metrics())
            for unit in sim.homes:
                watcher.subscribe(topics.status((scenario.group(unit),), "+"))
        watcher.start()
        try:
            for name in names:  # one gateway process per unit, running a node per task
                procs.spawn(["node", "run", *(configs[task][name] for task in tasks), "--exit-when-done"],
                            os.path.join(workdir, "logs", f"{name}-gw.log"))
            up = _wait_for_gateways(watcher, list(federations.values()), len(tasks) * len(names), 60)
            print(f"fedmq demo: {up} gateway nodes online; publishing the sensor history...", flush=True)
            with Publisher(broker) as pub:
                sent = pub.publish(history)
            print(f"fedmq demo: {sent} sensor messages published in {time.monotonic() - t0:.1f} s; starting the "
                  "coordinators (rounds start once every gateway has enough samples)", flush=True)
            coordinators = {task: procs.spawn(["coordinator", "run", maps[task], "--fresh", "--quiet"],
                                              os.path.join(workdir, "logs", f"coordinator-{task}.log"))
                            for task in tasks}
            rounds = collect_rounds(watcher, {Topics(federations[t]).metrics(): t for t in tasks}, coordinators,
                                    args.rounds, args.deadline,
                                    regressors=[t for t in tasks if "classes" not in tasks[t].model(args.model, 0)])
        finally:
            watcher.stop()
        done = all(len(rounds[t]) == args.rounds for t in tasks)
        if done:
            procs.wait_all(15.0)  # the gateways leave once they have the final model: it is what they serve
        procs.stop_all()
        served = published_predictions(broker, names, list(tasks))
        report: Dict[str, Any] = {"scenario": scenario.name, "homes": {u.name: scenario.about(u) for u in sim.homes},
                                  "days": args.days, "held_out_days": scenario.held_out_days, "seed": args.seed,
                                  "rounds": {t: [report_row(r) for r in rounds[t]] for t in tasks}, "comparison": {},
                                  "predictions": served}
        for task in tasks:
            if rounds[task]:
                report["comparison"][task] = compare_task(scenario, task, workdir, names, history, future, args.seed)
        report["seconds"] = round(time.monotonic() - t0, 2)
        _print_comparison(report)
        _print_predictions(served, broker, list(tasks))
        missing = [f"{h} {t}" for h in names for t in tasks if t not in served[h]["states"]]
        missing += [f"{h} entities" for h in names if len(served[h]["entities"]) < PER_NODE * len(tasks)]
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


def published_predictions(broker: BrokerSettings, homes: List[str], tasks: List[str], wait_s: float = 10.0
                          ) -> Dict[str, Any]:
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
        while time.monotonic() < end and any(len(out[h]["states"]) < len(tasks)
                                                or len(out[h]["entities"]) < PER_NODE * len(tasks) for h in homes):
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


def _print_predictions(served: Dict[str, Any], broker: BrokerSettings, tasks: List[str]) -> None:
    print(f"fedmq demo: predictions and Home Assistant entities on {broker.host}:{broker.port} "
          "(discovery prefix homeassistant):")
    for home, got in served.items():
        parts = []
        for task in tasks:
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
        print(f"  {'gateway':<10} {'':<28} {'samples':>7}  {'federated':>9} {'served':>8} {'central':>8} {'local':>8}")
        for home, row in comp["homes"].items():
            local = "-" if row["local"] is None else f"{row['local']:.3f}"
            about = str(next(iter(report["homes"][home].values())))[:28]
            print(f"  {home:<10} {about:<28} {row['train_samples']:>7}  "
                  f"{row['federated']:>9.3f} {row['personalised']:>8.3f} {row['central']:>8.3f} {local:>8}")
        o = comp["overall"]
        print(f"  {'overall':<39} {'':>7}  {o['federated']:>9.3f} {o['personalised']:>8.3f} {o['central']:>8.3f} "
              f"{o['local']:>8.3f}")
        print(f"  the served (personalised) model is at least as good as the federated one on "
              f"{comp['personalised_at_least_as_good']:.0%} of gateways, and as the better of federated and "
              f"local-only on {comp['served_at_least_as_good_as_both']:.0%}")
    print(f"fedmq demo: {report['seconds']:.1f} s in all", flush=True)


def _write_outputs(args: argparse.Namespace, report: Dict[str, Any], workdir: str) -> None:
    from fedmq.coordinator.demo.plot import plot_gateways

    plot_path = args.plot or (os.path.splitext(args.report)[0] + ".png" if args.report else
                              os.path.join(args.workdir or ".", "fedmq-demo.png"))
    if report["comparison"]:
        plot_gateways(report, plot_path, f"fedmq demo --scenario {report['scenario']}")
        print(f"fedmq demo: plot written to {plot_path}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        print(f"fedmq demo: report written to {args.report}")
