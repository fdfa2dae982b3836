"""Homie values: a node's state and readings appear on its Homie properties; a Homie set switches the node."""

from __future__ import annotations

import asyncio
import json
import re

from nodefleet.contracts import State, SwitchCommand, Telemetry, Topics
from nodefleet.contracts.provisioning import RegisterRequest
from nodefleet.contracts.topics import Command

from .helpers import come_online, node_client, watching


async def test_homie_values_follow_the_node_and_a_homie_set_switches_it(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="Lamp"))
    cfg = reg.mqtt_config
    node = cfg.node_name
    power, temperature = Topics.homie(node, "relay", "power"), Topics.homie(node, "climate", "temperature")
    async with watching(dynsec_broker, Topics.homie_device(node), topics.errors()) as watcher, \
            node_client(dynsec_broker, cfg.username, cfg.password) as client:
        await client.subscribe(topics.set(node, Command.SWITCH), qos=1)
        await come_online(client, topics, node, "chip-lamp", caps=("switch", "temperature"))
        await watcher.wait(Topics.homie(node, "$state"), lambda p: p == b"ready")

        await client.publish(topics.state(node), State(seq=1, relay="ON", mode="manual").model_dump_json(),
                             qos=1, retain=True)
        assert await watcher.wait(power) == b"true"
        await client.publish(topics.telemetry(node), Telemetry(seq=1, readings={"temperature": 21.5,
                                                                               "humidity": 40}).model_dump_json(),
                             qos=1)
        assert await watcher.wait(temperature) == b"21.5"
        # Not declared in its description (no humidity capability): not mirrored.
        await asyncio.sleep(0.2)
        assert watcher.payloads(Topics.homie(node, "climate", "humidity")) == []

        # openHAB switches it off through Homie: the node gets a target state, never a toggle.
        async with watching(dynsec_broker) as controller:
            await controller.client.publish(Topics.homie(node, "relay", "power", "set"), "false", qos=1)
            await controller.client.publish(Topics.homie(node, "relay", "power", "set"), "maybe", qos=1)
            async with asyncio.timeout(10):
                async for message in client.messages:
                    command = SwitchCommand.model_validate_json(message.payload)  # type: ignore[arg-type]
                    break
        assert command.state == "OFF" and command.run_id is None
        event = json.loads(await watcher.wait(topics.errors(), lambda p: b"bad_homie_set" in p))
        assert "true or false" in event["detail"]
        assert provisioner.homie.forwarded == 1

        # A repeated state is not published again; a change is.
        await client.publish(topics.state(node), State(seq=2, relay="ON", mode="manual").model_dump_json(),
                             qos=1, retain=True)
        await client.publish(topics.state(node), State(seq=3, relay="OFF", mode="manual").model_dump_json(),
                             qos=1, retain=True)
        await watcher.wait(power, lambda p: p == b"false")
        assert watcher.payloads(power) == [b"true", b"false"]

    await provisioner.registry.removal.remove(node)
    async with watching(dynsec_broker, Topics.homie_device(node)) as after:
        await asyncio.sleep(0.5)
        assert [t for t, _, retained in after.messages if retained] == []


# Homie 4.0 (https://homieiot.github.io/specification/spec-core-v4_0_0/): what a controller such as openHAB's
# MQTT binding needs of the tree the provisioner publishes.
HOMIE_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
HOMIE_STATES = {"init", "ready", "disconnected", "sleeping", "lost", "alert"}
HOMIE_DATATYPES = {"integer", "float", "boolean", "string", "enum", "color", "datetime", "duration"}
HOMIE_UNITS = {"°C", "°F", "°", "L", "gal", "V", "W", "A", "%", "m", "ft", "Pa", "psi", "#"}


def check_homie_tree(device: str, tree: dict[str, str]) -> list[str]:
    """What is missing or wrong in one device's retained Homie 4 attributes (``tree``: topic under the device -> value)."""
    problems = []
    if not HOMIE_ID.fullmatch(device):
        problems.append(f"device id {device!r} is not a Homie id")
    if tree.get("$homie") != "4.0":
        problems.append(f"$homie is {tree.get('$homie')!r}, not 4.0")
    if not tree.get("$name"):
        problems.append("$name is missing")
    if tree.get("$state") not in HOMIE_STATES:
        problems.append(f"$state {tree.get('$state')!r} is not a Homie state")
    nodes = (tree.get("$nodes") or "").split(",")
    if not tree.get("$nodes"):
        problems.append("$nodes is missing")
    for node in filter(None, nodes):
        if not HOMIE_ID.fullmatch(node):
            problems.append(f"node id {node!r} is not a Homie id")
        for attribute in ("$name", "$type", "$properties"):
            if not tree.get(f"{node}/{attribute}"):
                problems.append(f"{node}/{attribute} is missing")
        for prop in filter(None, (tree.get(f"{node}/$properties") or "").split(",")):
            where = f"{node}/{prop}"
            if not HOMIE_ID.fullmatch(prop):
                problems.append(f"property id {prop!r} is not a Homie id")
            datatype = tree.get(f"{where}/$datatype")
            if not tree.get(f"{where}/$name"):
                problems.append(f"{where}/$name is missing")
            if datatype not in HOMIE_DATATYPES:
                problems.append(f"{where}/$datatype {datatype!r} is not a Homie datatype")
            if datatype in ("enum", "color") and not tree.get(f"{where}/$format"):
                problems.append(f"{where}/$format is required for {datatype}")
            if tree.get(f"{where}/$settable", "false") not in ("true", "false"):
                problems.append(f"{where}/$settable must be true or false")
            if datatype in ("integer", "float") and tree.get(f"{where}/$unit") not in HOMIE_UNITS:
                problems.append(f"{where}/$unit {tree.get(f'{where}/$unit')!r} is not a Homie unit")
    return problems


async def test_homie_tree_has_what_the_specification_requires(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="RO purifier"))
    cfg = reg.mqtt_config
    node = cfg.node_name
    async with watching(dynsec_broker, Topics.homie_device(node)) as watcher, \
            node_client(dynsec_broker, cfg.username, cfg.password) as client:
        await come_online(client, topics, node, "chip-ro", caps=("switch", "temperature", "humidity"))
        await watcher.wait(Topics.homie(node, "$state"), lambda p: p == b"ready")
    # A controller that connects later sees the whole description retained.
    async with watching(dynsec_broker, Topics.homie_device(node)) as late:
        await late.wait(Topics.homie(node, "$state"))
        await asyncio.sleep(0.5)
    prefix = Topics.homie(node, "$homie").removesuffix("$homie")
    tree = {topic.removeprefix(prefix): payload.decode() for topic, payload, retained in late.messages if retained}
    assert check_homie_tree(node, tree) == [], tree
    assert tree["relay/power/$settable"] == "true" and tree["relay/power/$datatype"] == "boolean"
    assert {tree["climate/temperature/$unit"], tree["climate/humidity/$unit"]} == {"°C", "%"}


def test_the_homie_check_finds_what_is_missing():
    tree = {"$homie": "3.0", "$name": "x", "$state": "up", "$nodes": "relay",
            "relay/$name": "Relay", "relay/$properties": "power,mode",
            "relay/power/$name": "Power", "relay/power/$datatype": "float", "relay/mode/$datatype": "enum"}
    problems = check_homie_tree("Bad_Name", tree)
    for expected in ("device id", "$homie", "$state", "relay/$type", "relay/power/$unit", "relay/mode/$name",
                     "relay/mode/$format"):
        assert any(expected in p for p in problems), (expected, problems)
