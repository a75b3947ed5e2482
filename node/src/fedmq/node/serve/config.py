"""The ``serve:`` section of a node configuration (docs/serving.md): where and how often the node publishes
its predictions, when it stops, personalisation, and Home Assistant discovery."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, Dict, Optional

from fedmq.shared.topicmap.loader import read_broker
from fedmq.shared.topicmap.model import BrokerSettings, DataRef
from fedmq.shared.topicmap.reader import Reader

SERVE_KEYS = ("topic", "broker", "period_s", "max_model_age_s", "max_input_age_s", "runtime", "personalise",
              "homeassistant")
RUNTIMES = ("auto", "numpy", "tflite")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
DAY_S = 86400.0


@dataclass(frozen=True)
class Personalise:
    """Fine-tune the global model on the node's own newest samples before serving it."""

    epochs: int = 5
    learning_rate: Optional[float] = None  # None: 0.3 x the federation's (its last round's; 0.01 before one)
    batch_size: int = 32
    recent_samples: int = 20000  # the newest samples fine-tuned on (and checked on)
    holdout: float = 0.2  # share of them held out to choose the model to serve
    proximal_mu: float = 0.0  # FedProx's pull towards the global model while fine-tuning
    min_days: float = 3.0  # history needed first (a home's rhythm is weekly: a weekend alone misleads)
    local_epochs: int = 40  # > 0: also a local-only candidate, trained from scratch this many epochs
    refit: bool = True  # the chosen candidate trained again on every sample, the held-out ones included
    spread: str = "blocks"  # which samples are held out: "blocks" across the history, or the "newest"


@dataclass(frozen=True)
class HomeAssistant:
    """MQTT discovery for Home Assistant: one device per gateway, entities for the prediction and its health."""

    discovery_prefix: str = "homeassistant"
    device_id: str = ""
    device_name: str = ""
    name: str = ""  # the prediction entity's name
    device_class: Optional[str] = None
    unit: Optional[str] = None
    positive_class: Optional[Any] = None  # a binary classifier's "on" class (default: the last class)


@dataclass(frozen=True)
class ServeConfig:
    """What ``fedmq node run`` serves: predictions on ``topic``/state of ``broker`` every ``period_s``."""

    topic: str
    broker: BrokerSettings
    period_s: float = 60.0
    max_model_age_s: float = 7 * DAY_S
    max_input_age_s: float = 300.0
    runtime: str = "auto"
    personalise: Optional[Personalise] = None
    homeassistant: Optional[HomeAssistant] = None


def _id_problem(v: object) -> Optional[str]:
    return None if isinstance(v, str) and ID_PATTERN.match(v) else "must be letters, digits, '_' or '-'"


def _topic_problem(v: object) -> Optional[str]:
    if not isinstance(v, str) or not v or v.startswith("/") or v.endswith("/"):
        return "must be a topic without a leading or trailing '/'"
    return "must not contain MQTT wildcards" if "+" in v or "#" in v else None


def read_serve(r: Reader, value: Any, line: Optional[int], base_dir: str, node_id: str, data: Optional[DataRef]
               ) -> Optional[ServeConfig]:
    """Validate ``serve:``; None when absent. Serving needs a live MQTT data source (its feature window)."""
    if value is None:
        return None
    m = r.mapping(value, "serve", line, SERVE_KEYS)
    if m is None:
        return None
    if data is not None and data.kind != "mqtt":
        r.error(line, "serve", f"serving predicts on a live feature window, which data kind {data.kind!r} does not "
                "have", "use data: {kind: mqtt, ...} (docs/data.md), or remove serve:")
    period = float(data.options.get("period_s", 60.0)) if data is not None and data.kind == "mqtt" else 60.0
    broker = read_broker(r, m["broker"], "serve.broker", r.line_of(m, "broker"), base_dir) if "broker" in m else (
        data.options["broker"] if data is not None and data.kind == "mqtt" else BrokerSettings())
    return ServeConfig(
        topic=r.value(m, "topic", "serve", str, f"fedmq/{node_id}", check=_topic_problem,
                      fix="e.g. topic: fedmq/living-room-occupancy"),
        broker=broker,
        period_s=r.value(m, "period_s", "serve", float, period, minimum=0.05, maximum=DAY_S,
                         fix="seconds between predictions, e.g. period_s: 60"),
        max_model_age_s=r.value(m, "max_model_age_s", "serve", float, 7 * DAY_S, minimum=1.0,
                                fix="how old (since it arrived) a model may be and still serve, e.g. 604800"),
        max_input_age_s=r.value(m, "max_input_age_s", "serve", float, 3 * period, minimum=0.0,
                                fix="how old the newest complete row may be, e.g. 900"),
        runtime=r.value(m, "runtime", "serve", str, "auto", choices=RUNTIMES),
        personalise=_read_personalise(r, m.get("personalise"), r.line_of(m, "personalise")),
        homeassistant=_read_homeassistant(r, m.get("homeassistant", True), r.line_of(m, "homeassistant"), node_id),
    )


def _read_personalise(r: Reader, value: Any, line: Optional[int]) -> Optional[Personalise]:
    if value in (None, False):
        return None
    if value is True:
        return Personalise()
    m = r.mapping(value, "serve.personalise", line, ("epochs", "learning_rate", "batch_size", "recent_samples",
                                                    "holdout", "proximal_mu", "min_days", "local_epochs", "refit",
                                                    "spread"))
    p, d = "serve.personalise", Personalise()
    return Personalise(epochs=r.value(m, "epochs", p, int, d.epochs, minimum=1, maximum=1000),
                       learning_rate=r.value(m, "learning_rate", p, float, None, minimum=1e-9, maximum=10.0),
                       batch_size=r.value(m, "batch_size", p, int, d.batch_size, minimum=1),
                       recent_samples=r.value(m, "recent_samples", p, int, d.recent_samples, minimum=10),
                       holdout=r.value(m, "holdout", p, float, d.holdout, minimum=0.05, maximum=0.5),
                       proximal_mu=r.value(m, "proximal_mu", p, float, d.proximal_mu, minimum=0.0, maximum=1000.0),
                       min_days=r.value(m, "min_days", p, float, d.min_days, minimum=0.0, maximum=365.0),
                       local_epochs=r.value(m, "local_epochs", p, int, d.local_epochs, minimum=0, maximum=1000),
                       refit=r.value(m, "refit", p, bool, d.refit),
                       spread=r.value(m, "spread", p, str, d.spread, choices=("blocks", "newest")))


def _read_homeassistant(r: Reader, value: Any, line: Optional[int], node_id: str) -> Optional[HomeAssistant]:
    if value is False:
        return None
    m: Optional[Dict[str, Any]] = {} if value is True else r.mapping(value, "serve.homeassistant", line, (
        "discovery_prefix", "device_id", "device_name", "name", "device_class", "unit", "positive_class"))
    p = "serve.homeassistant"
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "gateway"
    device_id = r.value(m, "device_id", p, str, host, check=_id_problem,
                        fix="one id per gateway, shared by its nodes, e.g. device_id: kitchen_gateway")
    return HomeAssistant(
        discovery_prefix=r.value(m, "discovery_prefix", p, str, "homeassistant", check=_topic_problem),
        device_id=device_id,
        device_name=r.value(m, "device_name", p, str, device_id),
        name=r.value(m, "name", p, str, node_id),
        device_class=r.value(m, "device_class", p, str, None),
        unit=r.value(m, "unit", p, str, None),
        positive_class=r.value(m, "positive_class", p, (int, str), None),
    )


def describe_serving(s: ServeConfig) -> str:
    """One line for ``fedmq node check``: where, how often and how the node serves."""
    ha = s.homeassistant
    return (f"predictions on {s.broker.host}:{s.broker.port} {s.topic}/state every {s.period_s:g}s"
            + (", personalised" if s.personalise else "")
            + (f"; Home Assistant discovery under {ha.discovery_prefix}/ as device {ha.device_id}" if ha else ""))
