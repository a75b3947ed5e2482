"""``fedmq demo --scenario smart-home``: gateways in simulated homes learn occupancy and a temperature forecast.

The home simulator publishes ``--days`` of sensor history for ``--homes`` homes (zigbee2mqtt, Tasmota and
statestream formats; gateways installed at different times, so some homes have little data); each home's
gateway runs two nodes on its own topics, one learning occupancy from the other signals, one forecasting the
temperature an hour ahead (see :mod:`fedmq.coordinator.demo.streams` for the run and the report).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from fedmq.coordinator.demo.streams import StreamScenario, Task
from fedmq.coordinator.sim.homes import Simulation, signals_for
from fedmq.coordinator.sim.scenario import TASKS

PERIOD_S = 300.0


def _classifier(model: str, seed: int) -> Dict[str, Any]:
    kind = model if model in ("mlp", "softmax_regression") else "softmax_regression"
    return {"kind": kind, "classes": [0, 1], "seed": seed, **({"hidden": [16]} if kind == "mlp" else {})}


def _simulation(args: argparse.Namespace) -> Simulation:
    return Simulation(args.homes, args.seed, PERIOD_S, history_s=args.days * 86400)


SMART_HOME = StreamScenario(
    name="smart-home", period_s=PERIOD_S, held_out_days=2.0, gateway_suffix="-gw",
    summary="occupancy and 1-hour temperature forecast",
    tasks={"occupancy": Task("smarthome", *TASKS["occupancy"], model=_classifier, learning_rate=0.1,
                             entity={"name": "Occupancy", "device_class": "occupancy"}),
           "forecast": Task("smarthome-temp", *TASKS["forecast"], learning_rate=0.02, node_suffix="-forecast",
                            model=lambda model, seed: {"kind": "sgd_regressor", "seed": seed},  # numpy-trained
                            entity={"name": "Temperature in 1 h", "device_class": "temperature", "unit": "°C"})},
    simulation=_simulation,
    signals=lambda home: signals_for(home.name, home.format),
    about=lambda home: {"household": home.household, "format": home.format},
    group=lambda home: home.name,
)

