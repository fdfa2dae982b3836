"""Homie values: a node's state and readings appear on its Homie properties; a Homie set switches the node."""

from __future__ import annotations

import asyncio
import json

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
