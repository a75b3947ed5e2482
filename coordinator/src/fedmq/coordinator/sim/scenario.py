"""The smart-home scenario's configuration: what a gateway of a simulated home learns from.

One node per home learns occupancy from the home's other signals (CO2, temperature, light, appliance
power, motion, the time of day and week); ``FORECAST`` is the second task, the temperature one hour ahead.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import yaml

from fedmq.coordinator.sim.homes import CLOCK_TOPIC, Home, signals_for
from fedmq.shared.topicmap.model import BrokerSettings

OCCUPANCY_FEATURES: List[Dict[str, Any]] = [
    {"signal": "co2"},
    {"signal": "co2", "kind": "slope", "window": 6},
    {"signal": "temperature"},
    {"signal": "temperature", "kind": "slope", "window": 6},
    {"signal": "illuminance"},
    {"signal": "power"},
    {"signal": "power", "kind": "mean", "window": 6},
    {"signal": "power", "kind": "max", "window": 6},
    {"signal": "motion", "kind": "mean", "window": 6},
    {"kind": "time_of_day"},
    {"kind": "day_of_week"},
]
FORECAST_FEATURES: List[Dict[str, Any]] = [
    {"signal": "temperature"},
    {"signal": "temperature", "kind": "lag", "steps": [1, 3, 6]},
    {"signal": "temperature", "kind": "slope", "window": 6},
    {"signal": "co2"},
    {"signal": "motion", "kind": "mean", "window": 6},
    {"signal": "power", "kind": "mean", "window": 6},
    {"kind": "time_of_day"},
]
TASKS: Dict[str, Tuple[List[Dict[str, Any]], Dict[str, Any]]] = {
    "occupancy": (OCCUPANCY_FEATURES, {"signal": "occupancy"}),
    "forecast": (FORECAST_FEATURES, {"signal": "temperature", "horizon_s": 3600}),
}


def width(features: List[Dict[str, Any]]) -> int:
    """Columns of x the declared features make."""
    return sum(
        2
        if f.get("kind") in ("time_of_day", "day_of_week")
        else len(f.get("steps", [1]))
        if f.get("kind") == "lag"
        else 1
        for f in features
    )


def data_section(
    home: Home, broker: BrokerSettings, period_s: float, store: str, task: str = "occupancy"
) -> Dict[str, Any]:
    """The node configuration's ``data:`` for one simulated home."""
    features, label = TASKS[task]
    return stream_data(signals_for(home.name, home.format), features, label, broker, period_s, store)


def stream_data(signals: List[Dict[str, Any]], features: List[Dict[str, Any]], label: Dict[str, Any],
                broker: BrokerSettings, period_s: float, store: str) -> Dict[str, Any]:
    """A node configuration's ``data:`` for simulated signals on ``broker``, timed by the simulator's clock."""
    b: Dict[str, Any] = {"host": broker.host, "port": broker.port}
    if broker.username:
        b.update(username=broker.username, password_file=broker.password_file)
    return {
        "kind": "mqtt",
        "broker": b,
        "clock_topic": CLOCK_TOPIC,
        "timezone": "UTC",
        "period_s": period_s,
        "max_age_s": 3 * period_s,
        "store": {"path": store, "max_age_days": 30},
        "signals": signals,
        "features": features,
        "label": label,
    }


def node_config(
    home: Home,
    federation: str,
    broker: BrokerSettings,
    period_s: float,
    *,
    store: str,
    task: str = "occupancy",
    group: Optional[str] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """A whole node configuration for a simulated home's gateway."""
    return {
        "node_id": f"{home.name}-gw" + ("" if task == "occupancy" else f"-{task}"),
        "federation": federation,
        "group": group if group is not None else home.name,
        "broker": {"host": broker.host, "port": broker.port},
        "data": data_section(home, broker, period_s, store, task),
        "min_samples": 50,
        **(extra or {}),
    }


def write_yaml(path: str, obj: Dict[str, Any]) -> None:
    """Write a configuration file."""
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(obj, fh, sort_keys=False)
