"""A simulator of smart homes: realistic sensor streams in the formats homes publish.

Each home has a household with its own schedule (families, shift workers, homes empty on weekdays,
people at home all day: non-IID across homes). Occupancy drives heating, CO2, light, motion and
appliance power; room temperature follows the outdoor temperature through a first-order heat balance.
Sensors report every ``report_s`` with noise; some messages are dropped or duplicated, and sensors go
offline for a while. A home publishes in one of three formats: zigbee2mqtt (JSON on
``zigbee2mqtt/<device>``), Tasmota (JSON on ``tele/<device>/SENSOR``) or Home Assistant's statestream
(plain values on ``homeassistant/<domain>/<entity>/state``). Simulated time runs as fast as the broker
takes it; a clock topic carries it. Everything is deterministic for a seed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import numpy as np

FORMATS = ("zigbee2mqtt", "tasmota", "statestream")
HOUSEHOLDS = ("family", "shift", "empty_weekdays", "at_home", "night_owl")
# Share of the simulated history each home's gateway has seen (gateways installed at different times):
# the homes with little data are the ones that gain most from federating.
HISTORY_SHARE = (1.0, 0.12, 0.6, 0.25, 0.9, 0.18)
CLOCK_TOPIC = "fedmq-sim/clock"
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday in winter: heating matters


@dataclass(frozen=True)
class Reading:
    """The true state of a home's sensors at one time (before noise, drops and formats)."""

    t: float
    temperature: float
    co2: float
    illuminance: float
    power: float
    occupancy: bool
    motion: bool


def household(index: int, seed: int) -> str:
    """The household type of home ``index``."""
    return HOUSEHOLDS[(index + seed) % len(HOUSEHOLDS)]


def home_format(index: int) -> str:
    """The publishing format of home ``index`` (the three formats in turn)."""
    return FORMATS[index % len(FORMATS)]


def device(home: str, kind: str) -> str:
    """A home's device name for a sensor kind (``climate``, ``motion``, ``plug``)."""
    return f"{home}_{kind}"


class Home:
    """One home's physics and household, stepped in order through simulated time."""

    def __init__(self, index: int, seed: int, installed: float = 0.0) -> None:
        self.index = index
        self.installed = installed  # simulated time from which its sensors publish
        self.name = f"home{index + 1}"
        self.household = household(index, seed)
        self.format = home_format(index)
        self.rng = np.random.default_rng([seed, index])
        self.temperature = 19.0
        self.co2 = 450.0
        self.people = 1 + int(self.rng.integers(0, 4))
        self.insulation = float(self.rng.uniform(0.02, 0.06))  # heat loss per hour and degree
        self.heater_kw = float(self.rng.uniform(2.0, 4.0))
        self.day_plan: Dict[int, List[Tuple[float, float]]] = {}
        self.offline_until = -1.0

    def _plan(self, day: int) -> List[Tuple[float, float]]:
        """Hours of the day someone is home: [(from, to), ...], jittered per day."""
        if day not in self.day_plan:
            weekday = (START + dt.timedelta(days=day)).weekday()

            def j(s: float = 0.8) -> float:
                return float(self.rng.normal(0, s))

            kind, weekend = self.household, weekday >= 5
            if self.rng.random() < 0.08:  # ill, or a day off: at home all day
                self.day_plan[day] = [(0, 24)]
                return self.day_plan[day]
            if kind == "family":
                plan = [(0, 7.5 + j()), (16 + j(), 24)] if not weekend else [(0, 10 + j()), (13 + j(), 24)]
            elif kind == "shift":
                plan = [(7 + j(), 21 + j())] if day % 4 < 2 else [(0, 5 + j()), (15 + j(), 24)]
            elif kind == "empty_weekdays":
                plan = [(0, 24)] if weekend else [(0, 0.01)]
            elif kind == "night_owl":
                plan = [(0, 3 + j()), (11 + j(), 24)] if not weekend else [(0, 24)]
            else:  # at_home
                plan = [(0, 9.5 + j()), (11 + j(), 24)]
            if self.rng.random() < 0.15:  # out for the evening
                start = 18.5 + j()
                plan = [(a, min(b, start)) for a, b in plan] + [(start + 3 + j(0.5), 24)]
            self.day_plan[day] = plan
        return self.day_plan[day]

    def occupied(self, t: float) -> bool:
        """Someone is home at ``t`` (seconds since START)."""
        day, hour = int(t // 86400), (t % 86400) / 3600
        return any(a <= hour < b for a, b in self._plan(day))

    def step(self, t: float, dt_s: float) -> Reading:
        """Advance the home's state by ``dt_s`` seconds to time ``t``; return the true readings."""
        hour = (t % 86400) / 3600
        day = t // 86400
        outdoor = 3 + 5 * math.sin(2 * math.pi * (hour - 9) / 24) + 3 * math.sin(2 * math.pi * day / 9)
        occ = self.occupied(t)
        awake = occ and not (0 <= hour < 6.5)
        setpoint = 21.0 if awake else 17.0
        heat = self.heater_kw if self.temperature < setpoint else 0.0
        gains = 0.1 * self.people if occ else 0.0
        h = dt_s / 3600
        self.temperature += h * (self.insulation * (outdoor - self.temperature) + 0.35 * heat + gains)
        generation = 35.0 * self.people if occ else 0.0  # ppm per hour
        self.co2 += h * (generation * (1.6 if awake else 1.0) - 0.5 * (self.co2 - 420.0))
        daylight = max(0.0, math.sin(math.pi * (hour - 7.5) / 9.5)) * 400 if 7.5 <= hour <= 17 else 0.0
        lamps = 250.0 if awake and daylight < 150 else 0.0
        cooking = 1800.0 if awake and (11.5 <= hour < 12.5 or 18 <= hour < 19.2) and self.rng.random() < 0.7 else 0.0
        power = 60.0 + (180.0 if awake else 15.0) + cooking + float(self.rng.exponential(40.0 if awake else 5.0))
        motion = awake and self.rng.random() < 0.6
        return Reading(t, self.temperature, self.co2, daylight + lamps, power + 1000 * heat * 0.05, occ, motion)


def payloads(home: Home, r: Reading, noise: np.random.Generator) -> List[Tuple[str, bytes]]:
    """The messages a home's sensors publish for reading ``r``, in its format (with sensor noise)."""
    temp = round(r.temperature + float(noise.normal(0, 0.1)), 2)
    co2 = int(r.co2 + noise.normal(0, 15))
    lux = int(max(0.0, r.illuminance + noise.normal(0, 10)))
    power = round(r.power + float(noise.normal(0, 3)), 1)
    n = home.name
    if home.format == "zigbee2mqtt":
        return [(f"zigbee2mqtt/{device(n, 'climate')}", _json({"temperature": temp, "humidity": 45, "co2": co2,
                                                                "illuminance": lux, "linkquality": 120})),
                (f"zigbee2mqtt/{device(n, 'motion')}", _json({"occupancy": r.motion, "presence": r.occupancy,
                                                               "battery": 97})),
                (f"zigbee2mqtt/{device(n, 'plug')}", _json({"power": power, "state": "ON"}))]
    if home.format == "tasmota":
        time_text = (START + dt.timedelta(seconds=r.t)).strftime("%Y-%m-%dT%H:%M:%S")
        return [(f"tele/{device(n, 'climate')}/SENSOR", _json({"Time": time_text, "BME280": {"Temperature": temp,
                                                               "Humidity": 45.0}, "SCD40": {"CarbonDioxide": co2},
                                                               "BH1750": {"Illuminance": lux}})),
                (f"tele/{device(n, 'motion')}/SENSOR", _json({"Time": time_text, "Switch1": "ON" if r.motion else "OFF",
                                                              "Switch2": "ON" if r.occupancy else "OFF"})),
                (f"tele/{device(n, 'plug')}/SENSOR", _json({"Time": time_text, "ENERGY": {"Power": power}}))]
    return [(f"homeassistant/sensor/{n}_temperature/state", str(temp).encode()),
            (f"homeassistant/sensor/{n}_co2/state", str(co2).encode()),
            (f"homeassistant/sensor/{n}_illuminance/state", str(lux).encode()),
            (f"homeassistant/sensor/{n}_power/state", str(power).encode()),
            (f"homeassistant/binary_sensor/{n}_motion/state", b"on" if r.motion else b"off"),
            (f"homeassistant/binary_sensor/{n}_presence/state", b"on" if r.occupancy else b"off")]


def _json(obj: Dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def signals_for(home: str, fmt: str) -> List[Dict[str, object]]:
    """The node configuration's ``signals:`` for a simulated home (one line per signal, with presets)."""
    if fmt == "zigbee2mqtt":
        climate, motion, plug = device(home, "climate"), device(home, "motion"), device(home, "plug")
        return [{"name": "temperature", "zigbee2mqtt": climate, "field": "temperature"},
                {"name": "co2", "zigbee2mqtt": climate, "field": "co2"},
                {"name": "illuminance", "zigbee2mqtt": climate, "field": "illuminance"},
                {"name": "power", "zigbee2mqtt": plug, "field": "power", "aggregate": "mean"},
                {"name": "motion", "zigbee2mqtt": motion, "field": "occupancy", "aggregate": "mean"},
                {"name": "occupancy", "zigbee2mqtt": motion, "field": "presence"}]
    if fmt == "tasmota":
        climate, motion, plug = device(home, "climate"), device(home, "motion"), device(home, "plug")
        return [{"name": "temperature", "tasmota": climate, "field": "BME280.Temperature"},
                {"name": "co2", "tasmota": climate, "field": "SCD40.CarbonDioxide"},
                {"name": "illuminance", "tasmota": climate, "field": "BH1750.Illuminance"},
                {"name": "power", "tasmota": plug, "field": "ENERGY.Power", "aggregate": "mean"},
                {"name": "motion", "tasmota": motion, "field": "Switch1", "aggregate": "mean"},
                {"name": "occupancy", "tasmota": motion, "field": "Switch2"}]
    return [{"name": "temperature", "statestream": f"sensor.{home}_temperature"},
            {"name": "co2", "statestream": f"sensor.{home}_co2"},
            {"name": "illuminance", "statestream": f"sensor.{home}_illuminance"},
            {"name": "power", "statestream": f"sensor.{home}_power", "aggregate": "mean"},
            {"name": "motion", "statestream": f"binary_sensor.{home}_motion", "aggregate": "mean"},
            {"name": "occupancy", "statestream": f"binary_sensor.{home}_presence"}]


class Simulation:
    """Every home's messages in time order: ``(sim time, topic, payload)``, clock ticks included.

    Each home reports every ``report_s``; 2 % of messages are dropped, 1 % duplicated, and each home's
    sensors go offline for a few hours now and then. With ``history_s``, the homes' gateways were installed
    at different times within that first stretch (``HISTORY_SHARE``), so some homes have far less data.
    """

    def __init__(self, homes: int, seed: int = 0, report_s: float = 300.0, start: float = 0.0,
                 history_s: float = 0.0) -> None:
        self.homes = [Home(i, seed, start + history_s * (1 - HISTORY_SHARE[i % len(HISTORY_SHARE)]))
                      for i in range(homes)]
        self.seed = seed
        self.report_s = report_s
        self.t = start
        self.noise = np.random.default_rng([seed, 10_000])

    @staticmethod
    def wall(t: float) -> float:
        """Unix time of simulated time ``t``."""
        return START.timestamp() + t

    def run(self, seconds: float) -> Iterator[Tuple[float, str, bytes]]:
        """The messages of the next ``seconds`` of simulated time."""
        end = self.t + seconds
        while self.t < end:
            self.t += self.report_s
            yield self.t, CLOCK_TOPIC, f"{self.wall(self.t):.0f}".encode()
            for home in self.homes:
                reading = home.step(self.t, self.report_s)
                if self.t < home.offline_until or self.t < home.installed:
                    continue
                if self.noise.random() < 0.002:  # an outage of one to four hours
                    home.offline_until = self.t + float(self.noise.uniform(3600, 4 * 3600))
                    continue
                for topic, payload in payloads(home, reading, self.noise):
                    r = self.noise.random()
                    if r < 0.02:
                        continue  # dropped
                    yield self.t, topic, payload
                    if r > 0.99:
                        yield self.t, topic, payload  # duplicated
