"""First online: provisioned, chip bound, retained config and discovery; config changes; removal clears it all."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from nodefleet.contracts import Config, Topics
from nodefleet.contracts.provisioning import (
    ConfigRequest,
    HaSensor,
    HaSwitch,
    RegisterRequest,
)
from nodefleet.contracts.topics import Command
from services.provisioner import discovery
from services.provisioner.store import Conflict, RegistryError

from .conftest import running
from .helpers import come_online, node_client, watching


async def _retained(broker, topic_filter: str, settle: float = 0.5) -> dict[str, bytes]:
    """What a fresh subscriber receives as retained under ``topic_filter``."""
    async with watching(broker, topic_filter) as watcher:
        await asyncio.sleep(settle)
        return {t: p for t, p, retain in watcher.messages if retain}


async def test_first_online_config_discovery_and_removal(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="RO purifier",
                                                              chip_id="chip-1234"))
    cfg = reg.mqtt_config
    node = cfg.node_name
    async with watching(dynsec_broker, topics.config(node), Topics.homie_device(node),
                        f"homeassistant/+/{node}/#") as watcher, \
            node_client(dynsec_broker, cfg.username, cfg.password) as client:
        await client.subscribe(topics.config(node), qos=1)
        await come_online(client, topics, node, "chip-1234", caps=("switch", "temperature"))
        config = Config.model_validate_json(await watcher.wait(topics.config(node)))
        assert config.version == 1 and config.tz_name == "Europe/Berlin"
        # Berlin: the offset now plus the two changes of the coming year.
        assert len(config.tz) == 3 and {o.offset for o in config.tz} == {3600, 7200}
        switch = HaSwitch.model_validate_json(await watcher.wait(topics.ha_discovery("switch", node, "relay")))
        assert switch.command_topic == topics.set(node, Command.SWITCH) and switch.availability_topic == topics.status(node)
        sensor = HaSensor.model_validate_json(await watcher.wait(topics.ha_discovery("sensor", node, "temperature")))
        assert sensor.state_topic == topics.telemetry(node) and sensor.device.name == "RO purifier"
        assert await watcher.wait(Topics.homie(node, "$homie")) == b"4.0"
        assert await watcher.wait(Topics.homie(node, "$state")) == b"ready"
        status = await provisioner.registry.registrations.status(reg.provisioning_id)
        assert status.is_provisioned and status.connected_at is not None
        # Homie's $state follows availability.
        await client.publish(topics.status(node), "offline", qos=1, retain=True)
        assert await watcher.wait(Topics.homie(node, "$state"), lambda p: p == b"lost") == b"lost"
        await come_online(client, topics, node, "chip-1234", caps=("switch", "temperature"))
        async with asyncio.timeout(10):
            while watcher.payloads(Topics.homie(node, "$state"))[-1] != b"ready":
                await asyncio.sleep(0.05)

        # A config change bumps the version and reaches the node.
        changed = await provisioner.registry.configs.change_config(
            ConfigRequest(node=node, set={"telemetry_period": 15, "pins.outputs.relay": 25, "tz_name": "UTC"}))
        assert changed.version == 2
        got = Config.model_validate_json(await watcher.wait(topics.config(node), lambda p: b'"version":2' in p))
        assert got.telemetry_period == 15 and got.pins.outputs.relay == 25 and [o.offset for o in got.tz] == [0]
        for bad, why in (({"telemetry_period": 0}, "greater than"), ({"version": 9}, "managed"),
                         ({"pins.nothing": 1}, "does not exist"), ({"tz_name": "Nowhere/Else"}, "unknown time zone")):
            with pytest.raises(RegistryError, match=why):
                await provisioner.registry.configs.change_config(ConfigRequest(node=node, set=bad))
        assert (await provisioner.registry.store.device(node))["config_version"] == 2

    # Removal: credentials revoked, retained config, state and discovery cleared.
    await provisioner.registry.removal.remove(node)
    with pytest.raises(Conflict):
        await provisioner.registry.removal.remove(node)
    with pytest.raises(Conflict):
        await provisioner.registry.configs.change_config(ConfigRequest(node=node, set={"telemetry_period": 5}))
    left = await _retained(dynsec_broker, f"{topics.prefix(node)}/#")
    left.update(await _retained(dynsec_broker, Topics.homie_device(node), settle=0.2))
    left.update(await _retained(dynsec_broker, f"homeassistant/+/{node}/#", settle=0.2))
    assert left == {}
    assert set(discovery.removal(topics, node)) >= {topics.ha_discovery("switch", node, "relay")}


async def test_bad_info_is_reported_and_the_node_stays_pending(service, dynsec_mosquitto, topics):
    reg = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Odd"))
    cfg = reg.mqtt_config
    async with watching(dynsec_mosquitto, topics.errors()) as errors, \
            node_client(dynsec_mosquitto, cfg.username, cfg.password) as client:
        await client.publish(topics.status(cfg.node_name), "online", qos=1, retain=True)
        await client.publish(topics.info(cfg.node_name), b"{not json", qos=1, retain=True)
        await errors.wait(topics.errors(), lambda p: b"bad_info" in p)
    assert not (await service.registry.registrations.status(reg.provisioning_id)).is_provisioned


async def test_a_chip_other_than_the_registered_one_is_refused(service, dynsec_mosquitto, topics):
    reg = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Bound", chip_id="chip-right"))
    cfg = reg.mqtt_config
    async with watching(dynsec_mosquitto, topics.errors()) as errors, \
            node_client(dynsec_mosquitto, cfg.username, cfg.password) as client:
        await come_online(client, topics, cfg.node_name, "chip-wrong")
        event = await errors.wait(topics.errors(), lambda p: b"chip_mismatch" in p)
        assert b"chip-right" in event and b"chip-wrong" in event
        await come_online(client, topics, cfg.node_name, "chip-right")
        async with asyncio.timeout(10):
            while not (await service.registry.registrations.status(reg.provisioning_id)).is_provisioned:
                await asyncio.sleep(0.05)


async def test_a_chip_still_bound_to_another_device_is_refused_until_that_one_is_removed(service, dynsec_mosquitto,
                                                                                        topics):
    old = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Old pump"))
    new = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="New pump"))
    async with watching(dynsec_mosquitto, topics.errors()) as errors:
        async with node_client(dynsec_mosquitto, old.mqtt_config.username, old.mqtt_config.password) as client:
            await come_online(client, topics, old.mqtt_config.node_name, "chip-reused")
            async with asyncio.timeout(10):
                while not (await service.registry.registrations.status(old.provisioning_id)).is_provisioned:
                    await asyncio.sleep(0.05)
        # The same board, registered again without removing its old registration.
        async with node_client(dynsec_mosquitto, new.mqtt_config.username, new.mqtt_config.password) as client:
            await come_online(client, topics, new.mqtt_config.node_name, "chip-reused")
            event = await errors.wait(topics.errors(), lambda p: b"chip_in_use" in p)
            assert old.mqtt_config.node_name.encode() in event and b"nodefleet device remove" in event
            refused = await service.registry.registrations.status(new.provisioning_id)
            assert not refused.is_provisioned and refused.status == "chip_in_use"
            assert refused.reported_chip_id == "chip-reused" and "nodefleet device remove" in (refused.error or "")
            await service.registry.removal.remove(old.mqtt_config.node_name)
            await come_online(client, topics, new.mqtt_config.node_name, "chip-reused")
            async with asyncio.timeout(10):
                while not (await service.registry.registrations.status(new.provisioning_id)).is_provisioned:
                    await asyncio.sleep(0.05)


async def test_a_node_provisioned_but_never_sent_its_config_gets_it_from_the_next_instance(dynsec_broker, database,
                                                                                           topics):
    """The provisioner killed between the first online's UPDATE and the config's publish (the window
    tests/reliability/test_service_kills.py falls in now and then): the next instance, seeing the node online from
    before it started, sends the config; a node that reported running its config is not sent it again."""
    async with running(dynsec_broker, database, topics) as first:
        regs = [await first.registry.registrations.register(RegisterRequest(home_id="home", device_name=f"Lamp {i}"))
                for i in range(2)]
    lost, settled = (reg.mqtt_config for reg in regs)
    db = await asyncpg.connect(database)
    try:  # what the killed instance's UPDATE left: provisioned, its config never published
        await db.execute("UPDATE provisioner_devices SET status = 'provisioned', chip_id = 'chip-' || node,"
                         " config_applied = CASE WHEN node = $2 THEN config_version END WHERE node = ANY($1)",
                         [lost.node_name, settled.node_name], settled.node_name)
    finally:
        await db.close()
    for cfg in (lost, settled):
        async with node_client(dynsec_broker, cfg.username, cfg.password) as client:
            await come_online(client, topics, cfg.node_name, f"chip-{cfg.node_name}")
    async with watching(dynsec_broker, topics.config(lost.node_name), topics.config(settled.node_name)) as watcher:
        async with running(dynsec_broker, database, topics):
            config = Config.model_validate_json(await watcher.wait(topics.config(lost.node_name)))
            await asyncio.sleep(1.0)
    assert config.version == 1
    assert len(watcher.payloads(topics.config(lost.node_name))) == 1
    assert watcher.payloads(topics.config(settled.node_name)) == []  # it runs version 1: nothing to send
