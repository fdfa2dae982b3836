"""Per-node credentials and ACLs on both brokers, set by the provisioner over $CONTROL/dynamic-security/v1."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from nodefleet.contracts.provisioning import RegisterRequest

from .conftest import SERVICE
from .helpers import come_online, node_client, watching


async def test_node_credentials_are_confined_to_the_node(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="Water purifier"))
    other = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="Lamp"))
    cfg = reg.mqtt_config
    node = cfg.node_name
    assert cfg.topic_prefix == topics.prefix(node) and cfg.username == node

    async with watching(dynsec_broker, f"{topics.root}/#") as watcher, \
            node_client(dynsec_broker, cfg.username, cfg.password) as client:
        # Its inbox: allowed.  Another node's inbox, or everything: refused.
        granted = await client.subscribe(topics.node_inbox(node)[0], qos=1)
        assert granted[0] in (0, 1)
        for topic_filter in (topics.config(other.mqtt_config.node_name), f"{topics.root}/#", "#"):
            refused = await client.subscribe(topic_filter, qos=1)
            assert refused[0] == 128, topic_filter
        # Under its prefix: delivered.  Under another node's prefix: dropped by the broker.
        await client.publish(topics.telemetry(other.mqtt_config.node_name), b"{}", qos=1)
        await client.publish(f"{topics.root}/elsewhere", b"x", qos=1)
        await client.publish(topics.state(node), b"{}", qos=1)
        await watcher.wait(topics.state(node))
        await asyncio.sleep(0.3)
        assert watcher.payloads(topics.telemetry(other.mqtt_config.node_name)) == []
        assert watcher.payloads(f"{topics.root}/elsewhere") == []


async def test_wrong_password_and_revoked_node_are_refused(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="Heater"))
    cfg = reg.mqtt_config
    with pytest.raises(aiomqtt.MqttError):
        async with node_client(dynsec_broker, cfg.username, cfg.password + "x"):
            pass
    async with node_client(dynsec_broker, cfg.username, cfg.password):
        pass
    await provisioner.registry.removal.remove(cfg.node_name)
    with pytest.raises(aiomqtt.MqttError):
        async with node_client(dynsec_broker, cfg.username, cfg.password):
            pass
    assert (await provisioner.registry.registrations.status(reg.provisioning_id)).status == "revoked"


async def test_a_registration_cannot_be_claimed_by_a_second_chip(provisioner, dynsec_broker, topics):
    reg = await provisioner.registry.registrations.register(RegisterRequest(home_id="home", device_name="Fan"))
    cfg = reg.mqtt_config
    async with watching(dynsec_broker, topics.errors()) as errors:
        async with node_client(dynsec_broker, cfg.username, cfg.password) as first:
            await come_online(first, topics, cfg.node_name, "chip-aaaa")
            await _until(lambda: provisioner.registry.registrations.status(reg.provisioning_id), lambda s: s.is_provisioned)
        async with node_client(dynsec_broker, cfg.username, cfg.password) as second:
            await come_online(second, topics, cfg.node_name, "chip-bbbb")
            event = await errors.wait(topics.errors(), lambda p: b"chip_mismatch" in p)
        assert b"chip-bbbb" in event
    row = await provisioner.registry.store.device(cfg.node_name)
    assert row["chip_id"] == "chip-aaaa" and row["status"] == "provisioned"


async def _until(probe, check, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        while True:
            value = await probe()
            if check(value):
                return value
            await asyncio.sleep(0.05)


async def test_a_service_user_of_the_mosquitto_file_uses_every_topic(dynsec_mosquitto, topics):
    async with node_client(dynsec_mosquitto, *SERVICE) as client:
        assert (await client.subscribe(f"{topics.root}/#", qos=1))[0] in (0, 1)
        await client.publish(topics.state("any-node"), b"{}", qos=1)
    with pytest.raises(aiomqtt.MqttError):
        async with node_client(dynsec_mosquitto, SERVICE[0], "wrong"):
            pass


async def test_embedded_node_credentials_survive_a_broker_restart(tmp_path, database, topics):
    from broker_thread import BrokerThread

    from .conftest import ADMIN, running

    state = tmp_path / "dynsec.json"
    broker = BrokerThread(dynsec_admin=ADMIN, allow_anonymous=False, dynsec_file=state).start()
    try:
        async with running(broker, database, topics) as service:
            reg = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Survivor"))
            gone = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Gone"))
            await service.registry.removal.remove(gone.mqtt_config.node_name)
    finally:
        broker.stop()
    assert "Survivor".lower() in state.read_text() and reg.mqtt_config.password not in state.read_text()
    again = BrokerThread(port=broker.port, dynsec_admin=ADMIN, allow_anonymous=False, dynsec_file=state).start()
    try:
        cfg = reg.mqtt_config
        async with node_client(again, cfg.username, cfg.password) as client:
            assert (await client.subscribe(topics.node_inbox(cfg.node_name)[0], qos=1))[0] in (0, 1)
            assert (await client.subscribe(f"{topics.root}/#", qos=1))[0] == 128
        for username, password in ((cfg.username, "wrong"), (gone.mqtt_config.username, gone.mqtt_config.password)):
            with pytest.raises(aiomqtt.MqttError):
                async with node_client(again, username, password):
                    pass
    finally:
        again.stop()
