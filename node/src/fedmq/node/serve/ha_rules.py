"""What Home Assistant accepts in an MQTT discovery config (2025.4), as far as fedmq's entities use it: the
device classes of each platform and the units each sensor device class takes. Home Assistant creates no
entity for a ``binary_sensor`` with a sensor's device class, and refuses (or will refuse) a unit that does
not fit the device class, so ``fedmq node check`` and the serving node check the configured ones here."""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional

from fedmq.shared.topicmap.model import ModelSpec

BINARY_SENSOR_CLASSES = frozenset(
    "battery battery_charging carbon_monoxide cold connectivity door garage_door gas heat light lock moisture "
    "motion moving occupancy opening plug power presence problem running safety smoke sound tamper update "
    "vibration window".split())

# Numeric sensor device classes (a regressor's prediction) and, where Home Assistant restricts them, their units.
SENSOR_UNITS: Dict[str, Optional[FrozenSet[str]]] = {
    "apparent_power": frozenset({"VA", "kVA"}),
    "aqi": None,
    "atmospheric_pressure": frozenset({"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"}),
    "battery": frozenset({"%"}),
    "carbon_dioxide": frozenset({"ppm"}),
    "carbon_monoxide": frozenset({"ppm"}),
    "current": frozenset({"A", "mA"}),
    "distance": frozenset({"km", "m", "cm", "mm", "mi", "nmi", "yd", "in", "ft"}),
    "duration": frozenset({"d", "h", "min", "s", "ms"}),
    "energy": frozenset({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal",
                         "Gcal"}),
    "frequency": frozenset({"Hz", "kHz", "MHz", "GHz"}),
    "gas": frozenset({"m³", "ft³", "CCF", "L"}),
    "humidity": frozenset({"%"}),
    "illuminance": frozenset({"lx"}),
    "irradiance": frozenset({"W/m²", "BTU/(h⋅ft²)"}),
    "moisture": frozenset({"%"}),
    "monetary": None,
    "pm1": frozenset({"µg/m³"}),
    "pm10": frozenset({"µg/m³"}),
    "pm25": frozenset({"µg/m³"}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"}),
    "power_factor": frozenset({"%"}),
    "precipitation": frozenset({"cm", "in", "mm"}),
    "precipitation_intensity": frozenset({"in/d", "in/h", "mm/d", "mm/h"}),
    "pressure": frozenset({"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"}),
    "signal_strength": frozenset({"dB", "dBm"}),
    "sound_pressure": frozenset({"dB", "dBA"}),
    "speed": frozenset({"ft/s", "in/d", "in/h", "in/s", "km/h", "kn", "m/s", "mph", "mm/d", "mm/s"}),
    "temperature": frozenset({"°C", "°F", "K"}),
    "volatile_organic_compounds": frozenset({"µg/m³", "mg/m³"}),
    "volatile_organic_compounds_parts": frozenset({"ppm", "ppb"}),
    "voltage": frozenset({"V", "mV", "µV", "kV", "MV"}),
    "volume": frozenset({"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"}),
    "volume_flow_rate": frozenset({"m³/h", "ft³/min", "L/min", "gal/min", "mL/s"}),
    "water": frozenset({"L", "gal", "m³", "ft³", "CCF"}),
    "weight": frozenset({"kg", "g", "mg", "µg", "oz", "lb", "st"}),
    "wind_direction": frozenset({"°"}),
    "wind_speed": frozenset({"ft/s", "km/h", "kn", "m/s", "mph"}),
}
DEPRECATED_UNITS = {"C": "°C", "F": "°F", "°K": "K"}  # accepted by Home Assistant until 2025.7, then refused


def problems(device_class: Optional[str], unit: Optional[str], spec: Optional[ModelSpec]) -> List[str]:
    """Why Home Assistant would not take the prediction entity's ``device_class`` / ``unit`` (none: ``[]``).
    Without ``spec`` (the model not known yet) the class is checked against both platforms."""
    out: List[str] = []
    if unit in DEPRECATED_UNITS:
        out.append(f"unit {unit!r} is deprecated in Home Assistant (refused from 2025.7): use "
                   f"{DEPRECATED_UNITS[unit]!r}")
    if device_class is None:
        return out
    binary = spec is not None and spec.is_classifier and len(spec.classes) == 2
    multi = spec is not None and spec.is_classifier and len(spec.classes) > 2
    if multi:
        return out + [f"device_class {device_class!r}: a model of {len(spec.classes) if spec else '?'} classes is an "
                      "enum sensor, which takes no other device class: remove device_class"]
    if binary and device_class not in BINARY_SENSOR_CLASSES:
        return out + [f"device_class {device_class!r} is not a binary_sensor class, and a two-class model is a "
                      f"binary_sensor (Home Assistant would create no entity): use one of "
                      f"{', '.join(sorted(BINARY_SENSOR_CLASSES))}"]
    if spec is not None and not spec.is_classifier and device_class not in SENSOR_UNITS:
        return out + [f"device_class {device_class!r} is not a numeric sensor class (a regressor's prediction): "
                      f"use one of {', '.join(sorted(SENSOR_UNITS))}"]
    if spec is None and device_class not in BINARY_SENSOR_CLASSES and device_class not in SENSOR_UNITS:
        return out + [f"device_class {device_class!r} is neither a binary_sensor nor a numeric sensor class of Home "
                      "Assistant"]
    units = SENSOR_UNITS.get(device_class)
    if not binary and units is not None and (unit is not None or spec is not None) and unit not in units \
            and unit not in DEPRECATED_UNITS:
        out.append(f"device_class {device_class!r} takes the units {', '.join(sorted(units))}, not {unit!r}: set "
                   "serve.homeassistant.unit to one of them")
    return out
