"""Retained discovery for openHAB and Home Assistant, from a node's capabilities.

Homie 4 (openHAB's MQTT binding discovers Homie 3 and 4) describes the
device, and its property values live on Homie's own topics, so
:mod:`services.provisioner.homie` mirrors them.  Home Assistant discovery
configs (read by Home Assistant and by openHAB) point at our own node topics,
so their values and commands need no bridge.  Removal publishes the same
topics empty, which deletes the retained messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodefleet.contracts import OFFLINE, ONLINE, SLEEPING, NodeTopic, Topics
from nodefleet.contracts.provisioning import HaDevice, HaSensor, HaSwitch
from nodefleet.contracts.topics import Command

HOMIE_VERSION = "4.0"
RELAY_NODE, POWER = "relay", "power"  # the switch: homie/<node>/relay/power (boolean, settable)
CLIMATE_NODE = "climate"  # the sensors: homie/<node>/climate/<reading> (float)
SET = "set"  # Homie's command suffix of a settable property


@dataclass(frozen=True, slots=True)
class Sensor:
    reading: str
    name: str
    unit: str
    device_class: str


SENSORS = {
    "temperature": Sensor("temperature", "Temperature", "°C", "temperature"),
    "humidity": Sensor("humidity", "Humidity", "%", "humidity"),
}


def _homie(node: str, device_name: str, caps: list[str]) -> list[tuple[str, str]]:
    nodes = []
    out: list[tuple[str, str]] = [
        (Topics.homie(node, "$homie"), HOMIE_VERSION),
        (Topics.homie(node, "$name"), device_name),
    ]
    if "switch" in caps:
        nodes.append(RELAY_NODE)
        out += [
            (Topics.homie(node, RELAY_NODE, "$name"), "Relay"),
            (Topics.homie(node, RELAY_NODE, "$type"), "switch"),
            (Topics.homie(node, RELAY_NODE, "$properties"), POWER),
            (Topics.homie(node, RELAY_NODE, POWER, "$name"), "Power"),
            (Topics.homie(node, RELAY_NODE, POWER, "$datatype"), "boolean"),
            (Topics.homie(node, RELAY_NODE, POWER, "$settable"), "true"),
            (Topics.homie(node, RELAY_NODE, POWER, "$retained"), "true"),
        ]
    sensors = [SENSORS[c] for c in caps if c in SENSORS]
    if sensors:
        nodes.append(CLIMATE_NODE)
        out += [
            (Topics.homie(node, CLIMATE_NODE, "$name"), "Climate"),
            (Topics.homie(node, CLIMATE_NODE, "$type"), "sensor"),
            (Topics.homie(node, CLIMATE_NODE, "$properties"), ",".join(s.reading for s in sensors)),
        ]
        for s in sensors:
            out += [
                (Topics.homie(node, CLIMATE_NODE, s.reading, "$name"), s.name),
                (Topics.homie(node, CLIMATE_NODE, s.reading, "$datatype"), "float"),
                (Topics.homie(node, CLIMATE_NODE, s.reading, "$unit"), s.unit),
            ]
    out.append((Topics.homie(node, "$nodes"), ",".join(nodes)))
    return out


def _home_assistant(topics: Topics, node: str, device_name: str, caps: list[str], fw: str) -> list[tuple[str, str]]:
    common = {
        "availability_topic": topics.status(node),
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": HaDevice(identifiers=[f"nodefleet_{node}"], name=device_name, sw_version=fw),
    }
    out: list[tuple[str, str]] = []
    if "switch" in caps:
        switch = HaSwitch(name="Relay", unique_id=f"nodefleet_{node}_relay", state_topic=topics.state(node),
                          value_template="{{ value_json.relay }}", command_topic=topics.set(node, Command.SWITCH),
                          **common)
        out.append((topics.ha_discovery("switch", node, "relay"), switch.model_dump_json()))
    for cap in caps:
        sensor = SENSORS.get(cap)
        if sensor is None:
            continue
        entity = HaSensor(name=sensor.name, unique_id=f"nodefleet_{node}_{sensor.reading}",
                          state_topic=topics.node(node, NodeTopic.TELEMETRY),
                          value_template=f"{{{{ value_json.readings.{sensor.reading} }}}}",
                          unit_of_measurement=sensor.unit, device_class=sensor.device_class, **common)
        out.append((topics.ha_discovery("sensor", node, sensor.reading), entity.model_dump_json()))
    return out


def messages(topics: Topics, node: str, *, device_name: str, caps: list[str], fw: str) -> list[tuple[str, str]]:
    """Every retained discovery message of a node, as (topic, payload)."""
    return _homie(node, device_name, caps) + _home_assistant(topics, node, device_name, caps, fw)


def removal(topics: Topics, node: str) -> list[str]:
    """Every discovery topic a node may have had (all capabilities), to be cleared with empty retained publishes."""
    every = list(SENSORS) + ["switch"]
    values = [Topics.homie(node, RELAY_NODE, POWER)] + [Topics.homie(node, CLIMATE_NODE, r) for r in SENSORS]
    return [topic for topic, _ in messages(topics, node, device_name="-", caps=every, fw="-")] + values + [
        Topics.homie(node, "$state")
    ]


def homie_state(node: str, status: str) -> tuple[str, str]:
    """Homie's ``$state`` follows the node's availability: ready while online, sleeping while it sleeps by plan
    (Homie 4 has that state), lost otherwise."""
    return Topics.homie(node, "$state"), {ONLINE: "ready", SLEEPING: "sleeping"}.get(status, "lost")
