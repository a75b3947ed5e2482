"""``fedmq demo --scenario appliances``: gateways learn which appliance their smart plug runs.

The plug simulator (:mod:`fedmq.coordinator.sim.appliances`) publishes ``--days`` of power and power-factor
readings for two plugs in each of ``--homes`` homes, in the homes' own formats, and each plug's label as the
household's ``input_select`` on statestream. Each plug runs only 2 to 4 of the 10 kinds of appliance (plus
"none"), so the gateways see different classes. Each gateway's node learns the appliance from the shape of
the last minutes of power draw; a home's two gateways aggregate in their home's group before the root. See
:mod:`fedmq.coordinator.demo.streams` for the run and the report.
"""

from __future__ import annotations

from typing import Any, Dict, List

from fedmq.coordinator.demo.streams import StreamScenario, Task
from fedmq.coordinator.sim.appliances import CLASSES, PlugSimulation, signals_for

PERIOD_S = 60.0
REPORT_S = 60.0
FEATURES: List[Dict[str, Any]] = [
    {"signal": "power"},
    {"signal": "power_factor"},
    {"signal": "power", "kind": "mean", "window": 5},
    {"signal": "power", "kind": "min", "window": 5},
    {"signal": "power", "kind": "max", "window": 5},
    {"signal": "power", "kind": "std", "window": 5},
    {"signal": "power", "kind": "mean", "window": 20},
    {"signal": "power", "kind": "max", "window": 20},
    {"signal": "power", "kind": "std", "window": 20},
    {"signal": "power_factor", "kind": "max", "window": 20},
    {"kind": "time_of_day"},
]


def _classifier(model: str, seed: int) -> Dict[str, Any]:
    kind = model if model in ("mlp", "softmax_regression") else "mlp"
    return {"kind": kind, "classes": list(CLASSES), "seed": seed, **({"hidden": [32]} if kind == "mlp" else {})}


APPLIANCES = StreamScenario(
    name="appliances", period_s=PERIOD_S, held_out_days=1.0,
    summary="which appliance each plug runs (" + ", ".join(CLASSES) + ")",
    tasks={"appliance": Task("appliances", FEATURES, {"signal": "appliance"}, model=_classifier, learning_rate=0.05,
                             entity={"name": "Appliance"})},
    simulation=lambda args: PlugSimulation(args.homes, args.seed, REPORT_S),
    signals=signals_for,
    about=lambda plug: {"owns": "+".join(plug.owns), "format": plug.format},
    group=lambda plug: plug.home,
)

