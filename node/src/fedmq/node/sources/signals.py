"""Signals: which topic carries a sensor's value, where in the payload it is, and how it becomes a number.

Presets spell the topic layouts of the tools homes already run, so a common device is one line:
``zigbee2mqtt: DEVICE`` (``zigbee2mqtt/DEVICE``, JSON), ``tasmota: DEVICE`` (``tele/DEVICE/SENSOR``,
JSON) and ``statestream: DOMAIN.ENTITY`` (Home Assistant's ``homeassistant/DOMAIN/ENTITY/state``, plain).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any, Dict, Optional, Tuple

from fedmq.shared.topicmap.reader import Reader, join_path
from fedmq.shared.topics import level_problem

MAX_PAYLOAD_BYTES = 64 * 1024
AGGREGATES = ("last", "mean")
# Words sensors publish for two-state things (zigbee2mqtt, Tasmota, Home Assistant), case-insensitive.
STATE_WORDS = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0, "open": 1.0, "closed": 0.0, "detected": 1.0,
               "clear": 0.0, "home": 1.0, "not_home": 0.0, "yes": 1.0, "no": 0.0}
PRESETS = ("zigbee2mqtt", "tasmota", "statestream")
# Where each preset's payload carries the reading's own time (zigbee2mqtt with last_seen turned on; Tasmota's
# telemetry always); Home Assistant's statestream publishes plain values, without one.
TIME_FIELDS = {"zigbee2mqtt": "last_seen", "tasmota": "Time", "statestream": ""}
UNSET_WORDS = ("unknown", "unavailable")  # Home Assistant's states for "no value now"
SIGNAL_KEYS = ("name", "topic", *PRESETS, "base", "field", "states", "aggregate", "hold", "unset", "time_field")


class NoValue(ValueError):
    """A reading that says the signal has no value now (``unset`` words such as Home Assistant's
    ``unavailable``, or JSON null): a held signal forgets its value, a label leaves the row unlabelled."""


class BadValue(ValueError):
    """A payload that does not hold the signal's value; ``reason`` names the kind of problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Signal:
    """One sensor reading: ``topic`` (MQTT filter, wildcards allowed), ``field`` (a dotted JSON path, or
    '' for the plain payload), ``states`` (words mapped to numbers) and how a period's readings combine."""

    name: str
    topic: str
    field: str = ""
    states: Dict[str, float] = _field(default_factory=dict)
    aggregate: str = "last"
    hold: bool = False  # a state (input_select, a mode, a binary state): its value holds until it changes
    unset: Tuple[str, ...] = UNSET_WORDS  # words (any case) that mean "no value now"
    time_field: str = ""  # a dotted JSON path to the reading's own time ('' none)

    def names(self) -> Dict[float, str]:
        """The words of ``states`` by the number each stands for (a label's class names)."""
        return {v: k for k, v in self.states.items()}

    def value(self, payload: bytes) -> float:
        """The number this payload carries for the signal; raise BadValue with the reason otherwise."""
        text = payload_text(payload)
        return self.pick(text, parse_json(text) if self.field else None)

    def pick(self, text: str, obj: Any) -> float:
        """The signal's number from a payload already decoded (``obj``: its JSON, when ``field`` is set)."""
        if not self.field:
            return self.number(text)
        for part in self.field.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise BadValue("field missing")
            obj = obj[part]
        return self.number(obj)

    def number(self, v: Any) -> float:
        """A payload value as a number: numbers, true/false, ON/OFF and the like, or a named state; NoValue
        for an ``unset`` word or null."""
        if v is None or (isinstance(v, str) and v.lower() in self.unset and v not in self.states):
            raise NoValue(str(v))
        if isinstance(v, bool):
            return 1.0 if v else 0.0
        if isinstance(v, (int, float)):
            f = float(v)
        elif isinstance(v, str):
            if v in self.states:
                return self.states[v]
            word = STATE_WORDS.get(v.lower())
            if word is not None:
                return word
            try:
                f = float(v)
            except ValueError:
                raise BadValue("not a number or known state") from None
        else:
            raise BadValue("wrong type")
        if not math.isfinite(f):
            raise BadValue("not finite")
        return f


def payload_text(payload: bytes) -> str:
    """A sensor payload as text; raise BadValue if it is too large or not UTF-8."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadValue("too large")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadValue("not UTF-8") from None


def parse_json(text: str) -> Any:
    """The JSON value of a payload; raise BadValue if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadValue("not JSON") from None


def preset_topic(preset: str, device: str, base: Optional[str]) -> Tuple[str, Optional[str]]:
    """The topic of a preset's device, or the problem with the device name."""
    if preset == "statestream":
        domain, _, entity = device.partition(".")
        if not domain or not entity or level_problem(domain) or level_problem(entity):
            return "", "must be a Home Assistant entity id, DOMAIN.OBJECT_ID (e.g. sensor.living_room_temperature)"
        return f"{base or 'homeassistant'}/{domain}/{entity}/state", None
    problem = level_problem(device)
    if problem:
        return "", f"device name {problem}"
    if preset == "tasmota":
        return f"{base or 'tele'}/{device}/SENSOR", None
    return f"{base or 'zigbee2mqtt'}/{device}", None


def _topic_problem(topic: object) -> Optional[str]:
    if not isinstance(topic, str) or not topic or len(topic) > 1024:
        return "must be a non-empty MQTT topic filter"
    levels = topic.split("/")
    if any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) or "#" in levels[:-1]:
        return "wildcards '+' and '#' must fill a whole level, and '#' must be last"
    return None


def read_signal(r: Reader, item: Any, path: str, line: Optional[int]) -> Optional[Signal]:
    """One entry of ``signals:`` (validated; issues recorded on ``r``)."""
    m = r.mapping(item, path, line, SIGNAL_KEYS, ("name",))
    if m is None:
        return None
    name = r.value(m, "name", path, str, "", check=level_problem,
                   fix="a short name of letters, digits, '-', '_' or '.', used by features and label")
    presets = [p for p in PRESETS if p in m]
    base = r.value(m, "base", path, str, None)
    field_path = r.value(m, "field", path, str, "")
    if len(presets) + ("topic" in m) != 1:
        r.error(r.line_of(m, ""), path, "needs exactly one of topic, zigbee2mqtt, tasmota, statestream",
                "e.g. {name: temp, zigbee2mqtt: living_room_sensor, field: temperature}")
        return None
    if presets:
        device = r.value(m, presets[0], path, str, "")
        topic, problem = preset_topic(presets[0], device, base)
        if problem:
            r.error(r.line_of(m, presets[0]), join_path(path, presets[0]), problem, "")
        if presets[0] != "statestream" and not field_path:
            r.error(r.line_of(m, ""), join_path(path, "field"), f"a {presets[0]} device publishes JSON: name the field",
                    "e.g. field: temperature (zigbee2mqtt) or field: ENERGY.Power (tasmota)")
    else:
        topic = r.value(m, "topic", path, str, "", check=_topic_problem,
                        fix="a topic such as sensors/kitchen/temp or zigbee2mqtt/+ ")
    states = r.value(m, "states", path, dict, {})
    for key, v in (states or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            r.error(r.line_of(states, key), join_path(join_path(path, "states"), str(key)),
                    f"must map to a number, not {v!r}", "e.g. states: {home: 1, away: 0}")
    aggregate = r.value(m, "aggregate", path, str, "last", choices=AGGREGATES)
    unset = r.value(m, "unset", path, list, list(UNSET_WORDS))
    if not all(isinstance(w, str) for w in unset or []):
        r.error(r.line_of(m, "unset"), join_path(path, "unset"), "must be a list of words",
                "e.g. unset: [unknown, unavailable, none]")
        unset = list(UNSET_WORDS)
    time_field = r.value(m, "time_field", path, str, TIME_FIELDS[presets[0]] if presets else "")
    return Signal(name=name, topic=topic, field=field_path,
                  states={str(k): float(v) for k, v in (states or {}).items() if isinstance(v, (int, float))},
                  aggregate=aggregate, hold=r.value(m, "hold", path, bool, False),
                  unset=tuple(str(w).lower() for w in unset or []), time_field=time_field)
