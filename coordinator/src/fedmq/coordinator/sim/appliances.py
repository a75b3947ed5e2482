"""A simulator of smart plugs: which appliance each plug runs, told by its power readings.

Each gateway watches one smart plug. A home owns some kinds of appliance, and each of its plugs runs two to
four of them in turn, with idle spells between runs: gateways see different classes (non-IID by label, as
real homes are). Every kind has a power signature of its own: the compressor cycles of a fridge or a
freezer, the short resistive load of a kettle, a microwave's pulsing magnetron, the heating, tumbling and
spinning phases of a washing machine, a laptop's charge that tails off, a lamp's few steady watts, a
heater's thermostat. Each appliance instance draws at its own scale, and readings carry noise. A plug
reports power and power factor every ``report_s`` in its home's format (Tasmota ``ENERGY``, zigbee2mqtt,
or Home Assistant statestream); the household's label for it is an ``input_select`` published on
statestream when it changes, as Home Assistant does. Simulated time runs on the clock topic of
:mod:`fedmq.coordinator.sim.homes`. Everything is deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np

from fedmq.coordinator.sim.homes import CLOCK_TOPIC, FORMATS, START

NONE = "none"  # the plug draws (almost) nothing
APPLIANCES = ("fridge", "freezer", "kettle", "microwave", "washing_machine", "dishwasher", "tv", "laptop", "lamp",
              "heater")
CLASSES = (NONE, *APPLIANCES)
GATEWAYS_PER_HOME = 2
Trace = Tuple[np.ndarray, np.ndarray]  # watts and power factor, one value per report


def _cycle(n: int, step: float, rng: np.random.Generator, on_s: float, off_s: float, on_w: float,
           off_w: float) -> np.ndarray:
    """On/off cycles (a compressor, a thermostat) with jittered lengths and a random phase."""
    out, t, on = np.empty(n), -float(rng.uniform(0, on_s + off_s)), bool(rng.random() < 0.5)
    edges: List[Tuple[float, bool]] = []
    while t < n * step:
        length = (on_s if on else off_s) * float(rng.uniform(0.8, 1.2))
        edges.append((t + length, on))
        t, on = t + length, not on
    i = 0
    for k in range(n):
        while edges[i][0] <= k * step:
            i += 1
        out[k] = on_w if edges[i][1] else off_w
    return out


def _phases(n: int, step: float, phases: List[Tuple[float, float]]) -> np.ndarray:
    """Consecutive phases ``(seconds, watts)``, the last one held to the end."""
    out = np.full(n, phases[-1][1])
    t = 0.0
    for seconds, watts in phases:
        out[int(t // step):int((t + seconds) // step)] = watts
        t += seconds
    return out


def _signature(kind: str, n: int, step: float, scale: float, rng: np.random.Generator) -> Trace:
    """``n`` reports of appliance ``kind`` running (watts before noise, power factor)."""
    pf = np.ones(n)
    if kind == "fridge" or kind == "freezer":
        on_s, off_s, on_w, factor = (900, 1800, 95, 0.62) if kind == "fridge" else (1500, 2100, 160, 0.72)
        w = _cycle(n, step, rng, on_s, off_s, on_w * scale, 1.5)
        pf = np.where(w > 10, factor, 0.3)
    elif kind == "kettle":
        w = np.full(n, 2000 * scale)
    elif kind == "microwave":
        w = np.where(rng.random(n) < 0.6, 1250 * scale, 650 * scale)
        pf *= 0.92
    elif kind == "washing_machine":
        w = _phases(n, step, [(720, 2100 * scale), (2400, 0), (480, 450 * scale)])
        tumble = w == 0
        w[tumble] = 250 * scale + rng.normal(0, 120, int(tumble.sum())).clip(-200, 300)
        pf = np.where(w > 1500, 1.0, 0.5)
    elif kind == "dishwasher":
        w = _phases(n, step, [(900, 1900 * scale), (1800, 60 * scale), (600, 1900 * scale), (1200, 15)])
        pf = np.where(w > 1000, 0.98, 0.7)
    elif kind == "tv":
        w = 110 * scale + rng.normal(0, 12, n)
        pf *= 0.95
    elif kind == "laptop":
        w = 18 * scale + 42 * scale * np.exp(-np.arange(n) * step / 3000) + rng.normal(0, 3, n)
        pf *= 0.55
    elif kind == "lamp":
        w = np.full(n, 9 * scale)
        pf *= 0.5
    elif kind == "heater":
        w = _cycle(n, step, rng, 360, 360, 1500 * scale, 0.5)
        pf = np.where(w > 10, 1.0, 0.0)
    else:  # none
        w, pf = np.full(n, 0.3), np.zeros(n)
    return np.maximum(w, 0.0), pf


# How long one run lasts (seconds, uniform between the two) and how likely a kind is picked next.
RUNS: Dict[str, Tuple[float, float, float]] = {
    "fridge": (3 * 3600, 8 * 3600, 1.0), "freezer": (3 * 3600, 8 * 3600, 1.0), "kettle": (120, 300, 2.0),
    "microwave": (120, 480, 1.5), "washing_machine": (3600, 6000, 0.6), "dishwasher": (4500, 6000, 0.6),
    "tv": (3600, 3 * 3600, 1.0), "laptop": (3600, 4 * 3600, 1.0), "lamp": (2 * 3600, 6 * 3600, 1.0),
    "heater": (3600, 3 * 3600, 0.8),
}
IDLE_S = (600.0, 7200.0)


@dataclass
class Plug:
    """One gateway's plug: the appliances it runs and its schedule, stepped through simulated time."""

    name: str  # the gateway's name, e.g. home1-gw2
    home: str
    format: str
    owns: Tuple[str, ...]
    scales: Dict[str, float]
    rng: np.random.Generator
    watts: np.ndarray = field(default_factory=lambda: np.empty(0))
    factor: np.ndarray = field(default_factory=lambda: np.empty(0))
    labels: Tuple[str, ...] = ()

    @property
    def device(self) -> str:
        """The plug's device name in its home's format."""
        return self.name.replace("-", "_") + "_plug"

    def extend(self, until: int, step: float) -> None:
        """Schedule runs and idle spells until report index ``until`` is covered."""
        labels = list(self.labels)
        watts, factor = [self.watts], [self.factor]
        while len(labels) < until:
            idle = int(self.rng.uniform(*IDLE_S) // step)
            kind = self.owns[int(self.rng.choice(len(self.owns), p=_weights(self.owns)))]
            low, high, _ = RUNS[kind]
            run = max(1, int(self.rng.uniform(low, high) // step))
            for name, n in ((NONE, idle), (kind, run)):
                w, pf = _signature(name, n, step, self.scales.get(name, 1.0), self.rng)
                watts.append(w)
                factor.append(pf)
                labels.extend([name] * n)
        self.watts, self.factor, self.labels = np.concatenate(watts), np.concatenate(factor), tuple(labels)


def _weights(kinds: Tuple[str, ...]) -> np.ndarray:
    w = np.array([RUNS[k][2] for k in kinds])
    return w / w.sum()


def plugs(homes: int, seed: int) -> List[Plug]:
    """The plugs of ``homes`` homes, ``GATEWAYS_PER_HOME`` each: a home owns 3 to 6 kinds of appliance and
    each of its plugs runs 2 to 4 of them."""
    out = []
    for h in range(homes):
        rng = np.random.default_rng([seed, 20_000, h])
        owned = [APPLIANCES[i] for i in rng.choice(len(APPLIANCES), int(rng.integers(3, 7)), replace=False)]
        for g in range(GATEWAYS_PER_HOME):
            grng = np.random.default_rng([seed, 20_000, h, g])
            count = min(len(owned), int(grng.integers(2, 5)))
            owns = tuple(owned[i] for i in grng.choice(len(owned), count, replace=False))
            scales = {k: float(grng.uniform(0.8, 1.25)) for k in owns}
            out.append(Plug(f"home{h + 1}-gw{g + 1}", f"home{h + 1}", FORMATS[(h + g) % len(FORMATS)], owns,
                            scales, grng))
    return out


def payloads(plug: Plug, t: float, watts: float, factor: float) -> List[Tuple[str, bytes]]:
    """A plug's report in its home's format."""
    volts = 230.0
    amps = round(watts / volts / max(factor, 0.05), 3) if watts > 1 else 0.0
    if plug.format == "tasmota":
        time_text = (START + dt.timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S")
        return [(f"tele/{plug.device}/SENSOR", _json({"Time": time_text, "ENERGY": {
            "Power": round(watts), "Factor": round(factor, 2), "Voltage": volts, "Current": amps}}))]
    if plug.format == "zigbee2mqtt":
        return [(f"zigbee2mqtt/{plug.device}", _json({"power": round(watts, 1), "power_factor": round(factor, 2),
                                                      "voltage": volts, "current": amps, "state": "ON"}))]
    return [(f"homeassistant/sensor/{plug.device}_power/state", f"{watts:.1f}".encode()),
            (f"homeassistant/sensor/{plug.device}_power_factor/state", f"{factor:.2f}".encode())]


def label_topic(plug: Plug) -> str:
    """Where the household's ``input_select`` for a plug publishes (Home Assistant statestream)."""
    return f"homeassistant/input_select/{plug.device}_appliance/state"


def _json(obj: Dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def signals_for(plug: Plug) -> List[Dict[str, object]]:
    """The node configuration's ``signals:`` for a plug: power and power factor, and the appliance label, a
    state that holds until it changes."""
    label = {"name": "appliance", "statestream": f"input_select.{plug.device}_appliance", "hold": True,
             "states": {kind: i for i, kind in enumerate(CLASSES)}}
    if plug.format == "tasmota":
        inputs: List[Dict[str, object]] = [
            {"name": "power", "tasmota": plug.device, "field": "ENERGY.Power", "aggregate": "mean"},
            {"name": "power_factor", "tasmota": plug.device, "field": "ENERGY.Factor", "aggregate": "mean"}]
    elif plug.format == "zigbee2mqtt":
        inputs = [{"name": "power", "zigbee2mqtt": plug.device, "field": "power", "aggregate": "mean"},
                  {"name": "power_factor", "zigbee2mqtt": plug.device, "field": "power_factor", "aggregate": "mean"}]
    else:
        inputs = [{"name": "power", "statestream": f"sensor.{plug.device}_power", "aggregate": "mean"},
                  {"name": "power_factor", "statestream": f"sensor.{plug.device}_power_factor", "aggregate": "mean"}]
    return [*inputs, label]


class PlugSimulation:
    """Every plug's messages in time order, ``(sim time, topic, payload)``, clock ticks included: a report
    per plug every ``report_s`` (1 % of them lost), and the plug's label whenever it changes."""

    def __init__(self, homes: int, seed: int = 0, report_s: float = 30.0) -> None:
        self.homes = plugs(homes, seed)
        self.report_s = report_s
        self.index = 0
        self.noise = np.random.default_rng([seed, 30_000])
        self.said: Dict[str, str] = {}

    @property
    def t(self) -> float:
        """Simulated seconds since the start."""
        return self.index * self.report_s

    def run(self, seconds: float, wall: Callable[[float], float] = lambda t: START.timestamp() + t
            ) -> Iterator[Tuple[float, str, bytes]]:
        """The messages of the next ``seconds`` of simulated time."""
        end = self.index + int(round(seconds / self.report_s))
        for plug in self.homes:
            plug.extend(end, self.report_s)
        while self.index < end:
            i, t = self.index, self.t
            self.index += 1
            yield t, CLOCK_TOPIC, f"{wall(t):.0f}".encode()
            for plug in self.homes:
                label = plug.labels[i]
                if self.said.get(plug.name) != label:
                    self.said[plug.name] = label
                    yield t, label_topic(plug), label.encode()
                if self.noise.random() < 0.01:
                    continue
                watts = float(plug.watts[i]) * float(self.noise.normal(1, 0.02)) + float(self.noise.normal(0, 0.2))
                for topic, payload in payloads(plug, t, max(watts, 0.0), float(plug.factor[i])):
                    yield t, topic, payload
