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
from typing import Any, Dict, List, Tuple

from fedmq.node.serve.config import HomeAssistant
from fedmq.shared import __version__
from fedmq.shared.topicmap.model import ModelSpec

ENTITIES = ("prediction", "model_version", "last_round", "local_accuracy", "local_rmse", "samples", "data_problem")
PER_NODE = 6  # entities a node announces: the prediction and five diagnostics
ORIGIN = {"name": "fedmq", "sw_version": __version__, "support_url": "https://github.com/fedmq/fedmq"}


def object_id(text: str) -> str:
    """``text`` as a discovery object id (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def config_topic(ha: HomeAssistant, component: str, node_id: str, entity: str) -> str:
    """Where an entity's discovery config is published."""
    return f"{ha.discovery_prefix}/{component}/{ha.device_id}/{object_id(node_id)}_{entity}/config"


def owned(ha: HomeAssistant, node_id: str, topic: str) -> bool:
    """Whether a discovery config topic is one of this node's entities (of any model kind, in any component)."""
    parts = topic.split("/")
    prefix = ha.discovery_prefix.split("/")
    return (len(parts) == len(prefix) + 4 and parts[:len(prefix)] == prefix and parts[-3] == ha.device_id
            and parts[-1] == "config" and parts[-2] in {f"{object_id(node_id)}_{e}" for e in ENTITIES})


def configs(ha: HomeAssistant, node_id: str, federation: str, spec: ModelSpec, state_topic: str,
            availability_topic: str) -> Dict[str, Dict[str, Any]]:
    """Every discovery config of this node, by topic, for a model of ``spec``."""
    device = {"identifiers": [f"fedmq_{ha.device_id}"], "name": ha.device_name, "manufacturer": "fedmq",
              "model": "fedmq gateway", "sw_version": __version__}
    node_available = {"topic": availability_topic, "payload_available": "online", "payload_not_available": "offline"}
    base = {"state_topic": state_topic, "device": device, "origin": ORIGIN}
    out: Dict[str, Dict[str, Any]] = {}

    def add(component: str, entity: str, payload: Dict[str, Any], *, serving: bool = False) -> None:
        availability: List[Dict[str, Any]] = [node_available]
        if serving:  # unavailable while no prediction is served (a stale model, missing inputs)
            availability.append({"topic": state_topic,
                                 "value_template": "{{ 'online' if value_json.value is not none else 'offline' }}"})
        out[config_topic(ha, component, node_id, entity)] = {
            **base, **payload, "unique_id": f"fedmq_{object_id(federation)}_{object_id(node_id)}_{entity}",
            "object_id": f"{object_id(node_id)}_{entity}", "availability": availability,
            "availability_mode": "all"}

    component, entity, payload = _prediction(ha, spec)
    add(component, entity, {**payload, "json_attributes_topic": state_topic}, serving=True)
    diagnostic = {"entity_category": "diagnostic"}
    add("sensor", "model_version", {**diagnostic, "name": "Model version", "icon": "mdi:counter",
                                    "value_template": "{{ value_json.model_version }}"})
    add("sensor", "last_round", {**diagnostic, "name": "Last federated round", "icon": "mdi:sync",
                                 "value_template": "{{ value_json.round }}"})
    if spec.is_classifier:
        add("sensor", "local_accuracy", {**diagnostic, "name": "Local accuracy", "unit_of_measurement": "%",
                                         "state_class": "measurement", "icon": "mdi:target",
                                         "value_template": "{{ (value_json.local_accuracy * 100) | round(1) "
                                                           "if value_json.local_accuracy is not none else none }}"})
    else:
        add("sensor", "local_rmse", {**diagnostic, "name": "Local error (RMSE)", "state_class": "measurement",
                                     **({"unit_of_measurement": ha.unit} if ha.unit else {}), "icon": "mdi:target",
                                     "value_template": "{{ value_json.local_rmse | round(3) "
                                                       "if value_json.local_rmse is not none else none }}"})
    add("sensor", "samples", {**diagnostic, "name": "Samples stored", "state_class": "measurement",
                              "icon": "mdi:database", "value_template": "{{ value_json.samples }}"})
    add("sensor", "data_problem", {**diagnostic, "name": "Data problem", "icon": "mdi:alert-circle-outline",
                                   "value_template": "{{ (value_json.problem or 'none')[:255] }}"})
    return out


def _prediction(ha: HomeAssistant, spec: ModelSpec) -> Tuple[str, str, Dict[str, Any]]:
    """The prediction entity: a binary_sensor for two classes, an enum sensor for more, else a measurement."""
    common = {"name": ha.name, "icon": "mdi:brain"}
    if spec.is_classifier and len(spec.classes) == 2:
        positive = ha.positive_class if ha.positive_class is not None else spec.classes[-1]
        payload = {**common, "payload_on": "ON", "payload_off": "OFF",
                   "value_template": "{{ 'ON' if value_json.value == " + json.dumps(positive) + " else 'OFF' }}"}
        return "binary_sensor", "prediction", _with_class(payload, ha)
    if spec.is_classifier:
        return "sensor", "prediction", {**common, "device_class": "enum", "options": [str(c) for c in spec.classes],
                                        "value_template": "{{ value_json.value }}"}
    payload = {
        **common,
        "state_class": "measurement",
        "value_template": "{{ value_json.value | round(3) if value_json.value is not none else none }}",
        **({"unit_of_measurement": ha.unit} if ha.unit else {}),
    }
    return "sensor", "prediction", _with_class(payload, ha)


def _with_class(payload: Dict[str, Any], ha: HomeAssistant) -> Dict[str, Any]:
    return {**payload, **({"device_class": ha.device_class} if ha.device_class else {})}
