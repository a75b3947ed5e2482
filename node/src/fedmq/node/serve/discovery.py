"""Home Assistant MQTT discovery for a serving node (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery).

One device per gateway (``device_id``, shared by every node the gateway runs); per node a prediction entity
and diagnostic entities, all reading the node's one retained state topic. Configs are published retained
under ``<discovery_prefix>/<component>/<device_id>/<node>_<entity>/config``. The prediction is unavailable
while the node does not serve (its state has no value) or the node is offline (its availability topic, set
by the MQTT last will); the diagnostics stay available with the node, so the reason can be seen.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from fedmq.node.serve import ha_rules
from fedmq.node.serve.config import HomeAssistant
from fedmq.shared import __version__
from fedmq.shared.topicmap.model import ModelSpec

ENTITIES = ("prediction", "model_version", "last_round", "local_accuracy", "local_rmse", "samples", "data_problem")
PER_NODE = 6  # entities a node announces once it has a model: the prediction and five diagnostics
MAX_CONFIG_BYTES = 1 << 16
# The prediction's attributes: what changes with the prediction or the model, not the time of every period
# (an attribute that changes each period would write a recorder row each period).
ATTRIBUTES = ("{{ {'confidence': value_json.get('confidence'), 'probabilities': value_json.get('probabilities'), "
              "'problem': value_json.problem, 'personalised': value_json.personalised, "
              "'model_received': value_json.model_received} | tojson }}")
ORIGIN = {"name": "fedmq", "sw_version": __version__, "support_url": "https://github.com/fedmq/fedmq"}


def object_id(text: str) -> str:
    """``text`` as a discovery object id (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def config_topic(ha: HomeAssistant, component: str, node_id: str, entity: str) -> str:
    """Where an entity's discovery config is published."""
    return f"{ha.discovery_prefix}/{component}/{ha.device_id}/{object_id(node_id)}_{entity}/config"


def owned(ha: HomeAssistant, node_id: str, federation: str, topic: str, payload: bytes) -> bool:
    """Whether a retained discovery config is one this node announced, under any device id (the gateway's
    ``device_id`` may have changed since) and for any model kind: its topic names one of the node's entities
    and its ``unique_id`` is that entity's."""
    parts = topic.split("/")
    prefix = ha.discovery_prefix.split("/")
    if not (len(parts) == len(prefix) + 4 and parts[:len(prefix)] == prefix and parts[-1] == "config"):
        return False
    entity = next((e for e in ENTITIES if parts[-2] == f"{object_id(node_id)}_{e}"), None)
    if entity is None or len(payload) > MAX_CONFIG_BYTES:
        return False
    try:
        config = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("unique_id") == unique_id(federation, node_id, entity)


def unique_id(federation: str, node_id: str, entity: str) -> str:
    """An entity's unique id: the same whatever the gateway's device id."""
    return f"fedmq_{object_id(federation)}_{object_id(node_id)}_{entity}"


def configs(ha: HomeAssistant, node_id: str, federation: str, spec: Optional[ModelSpec], state_topic: str,
            availability_topic: str) -> Dict[str, Dict[str, Any]]:
    """Every discovery config of this node, by topic, for a model of ``spec``; before the first model
    (``spec`` None) the diagnostics only, so a new gateway shows in Home Assistant with its problem."""
    device = {"identifiers": [f"fedmq_{ha.device_id}"], "name": ha.device_name, "manufacturer": "fedmq",
              "model": "fedmq gateway", "sw_version": __version__}
    node_available = {"topic": availability_topic, "payload_available": "online", "payload_not_available": "offline"}
    base = {"state_topic": state_topic, "device": device, "origin": ORIGIN}
    label = ha.name or node_id  # names the node's entities apart from another node's on the same gateway
    out: Dict[str, Dict[str, Any]] = {}

    def add(component: str, entity: str, payload: Dict[str, Any], *, serving: bool = False) -> None:
        availability: List[Dict[str, Any]] = [node_available]
        if serving:  # unavailable while no prediction is served (a stale model, missing inputs)
            availability.append({"topic": state_topic,
                                 "value_template": "{{ 'online' if value_json.value is not none else 'offline' }}"})
        out[config_topic(ha, component, node_id, entity)] = {
            **base, **payload, "unique_id": unique_id(federation, node_id, entity),
            "object_id": f"{object_id(node_id)}_{entity}", "availability": availability,
            "availability_mode": "all"}

    if spec is not None:
        component, entity, payload = _prediction(ha, spec, label)
        add(component, entity, {**payload, "json_attributes_topic": state_topic,
                                "json_attributes_template": ATTRIBUTES}, serving=True)
    diagnostic = {"entity_category": "diagnostic"}
    add("sensor", "model_version", {**diagnostic, "name": f"{label} model version", "icon": "mdi:counter",
                                    "value_template": "{{ value_json.model_version }}"})
    add("sensor", "last_round", {**diagnostic, "name": f"{label} last federated round", "icon": "mdi:sync",
                                 "value_template": "{{ value_json.round }}"})
    if spec is not None and spec.is_classifier:
        add("sensor", "local_accuracy", {**diagnostic, "name": f"{label} local accuracy", "unit_of_measurement": "%",
                                         "state_class": "measurement", "icon": "mdi:target",
                                         "suggested_display_precision": 1,
                                         "value_template": "{{ (value_json.local_accuracy * 100) | round(1) "
                                                           "if value_json.local_accuracy is not none else none }}"})
    elif spec is not None:
        add("sensor", "local_rmse", {**diagnostic, "name": f"{label} local error (RMSE)", "state_class": "measurement",
                                     **({"unit_of_measurement": ha.unit} if ha.unit else {}), "icon": "mdi:target",
                                     "suggested_display_precision": 2,
                                     "value_template": "{{ value_json.local_rmse | round(3) "
                                                       "if value_json.local_rmse is not none else none }}"})
    add("sensor", "samples", {**diagnostic, "name": f"{label} samples stored", "state_class": "measurement",
                              "icon": "mdi:database", "value_template": "{{ value_json.samples }}"})
    add("sensor", "data_problem", {**diagnostic, "name": f"{label} data problem", "icon": "mdi:alert-circle-outline",
                                   "value_template": "{{ (value_json.problem or 'none')[:255] }}",
                                   # what the stream dropped: changes only when something is dropped
                                   "json_attributes_topic": state_topic,
                                   "json_attributes_template": "{{ {'dropped_rows': value_json.stream.dropped_rows, "
                                                               "'dropped_readings': value_json.stream.dropped_readings}"
                                                               " | tojson }}"})
    return out


def _prediction(ha: HomeAssistant, spec: ModelSpec, name: str) -> Tuple[str, str, Dict[str, Any]]:
    """The prediction entity: a binary_sensor for two classes, an enum sensor for more, else a measurement. A
    device class (one Home Assistant takes for that platform) gives its icon; else fedmq's."""
    unit = ha_rules.DEPRECATED_UNITS.get(ha.unit or "", ha.unit)  # 'C' is sent as '°C'
    device_class = ha.device_class if not ha_rules.problems(ha.device_class, unit, spec) else None
    common: Dict[str, Any] = {"name": name, **({"device_class": device_class} if device_class else
                                               {"icon": "mdi:brain"})}
    if spec.is_classifier and len(spec.classes) == 2:
        positive = ha.positive_class if ha.positive_class is not None else spec.classes[-1]
        return "binary_sensor", "prediction", {
            **common, "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ 'ON' if value_json.value == " + json.dumps(positive) + " else 'OFF' }}"}
    if spec.is_classifier:
        return "sensor", "prediction", {"name": name, "icon": "mdi:brain", "device_class": "enum",
                                        "options": [str(c) for c in spec.classes],
                                        "value_template": "{{ value_json.value }}"}
    return "sensor", "prediction", {
        **common,
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "value_template": "{{ value_json.value | round(3) if value_json.value is not none else none }}",
        **({"unit_of_measurement": unit} if unit else {}),
    }
