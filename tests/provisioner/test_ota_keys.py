"""The OTA key handout: each node's key derived from the master key, and the node's OTA topics under its ACL."""

from __future__ import annotations

import asyncio
import secrets

from structlog.testing import capture_logs

from nodefleet.contracts import OtaTopic
from nodefleet.contracts.ota import device_key
from nodefleet.contracts.provisioning import (
    HTTP_REGISTER_PATH,
    MqttConfig,
    RegisterRequest,
    Registration,
)

from .conftest import running
from .helpers import http, node_client, watching


async def test_each_node_gets_the_key_derived_from_the_master(dynsec_broker, database, topics):
    master = secrets.token_bytes(32)
    with capture_logs() as logs:
        async with running(dynsec_broker, database, topics, ota_master_key=master.hex()) as service:
            first = await service.registry.registrations.register(RegisterRequest(home_id="home",
                                                                                  device_name="Purifier"))
            # Through the phone app's HTTP edge: the key is in the JSON it forwards to the node.
            status, body = await http(service.http_port, "POST", HTTP_REGISTER_PATH,
                                      {"home_id": "home", "device_name": "Lamp"})
            assert status == 201, body
            second = Registration.model_validate(body)
    assert [entry for entry in logs if entry["event"] == "ota_off"] == []
    # The key itself is never logged.
    assert not any(master.hex() in str(entry) for entry in logs)
    keys = {}
    for registration in (first, second):
        config = registration.mqtt_config
        assert config.ota_key == device_key(master, config.node_name).hex()
        keys[config.node_name] = config.ota_key
    assert len(set(keys.values())) == 2 and all(len(key) == 64 for key in keys.values())
    assert body["mqtt_config"]["ota_key"] == second.mqtt_config.ota_key


async def test_without_a_master_key_nodes_get_none(dynsec_mosquitto, database, topics):
    with capture_logs() as logs:
        async with running(dynsec_mosquitto, database, topics, ota_master_key=None) as service:
            registration = await service.registry.registrations.register(RegisterRequest(home_id="home",
                                                                                         device_name="Fan"))
            status, body = await http(service.http_port, "POST", HTTP_REGISTER_PATH, {"home_id": "home",
                                                                                      "device_name": "Heater"})
    # Said once at the start, where `docker compose logs provisioner` shows it.
    off = [entry for entry in logs if entry["event"] == "ota_off"]
    assert len(off) == 1 and "NODEFLEET_OTA_MASTER_KEY" in off[0]["detail"] and "openssl rand -hex 32" in off[0]["detail"]
    assert registration.mqtt_config.ota_key is None
    assert status == 201 and body["mqtt_config"]["ota_key"] is None
    # A config stored before the key existed still reads.
    old = body["mqtt_config"]
    del old["ota_key"]
    assert MqttConfig.model_validate(old).ota_key is None


async def test_a_node_reads_its_own_offer_and_sends_want_and_progress_but_never_offers(provisioner, dynsec_broker,
                                                                                      topics):
    register = provisioner.registry.registrations.register
    cfg = (await register(RegisterRequest(home_id="home", device_name="Purifier"))).mqtt_config
    other = (await register(RegisterRequest(home_id="home", device_name="Lamp"))).mqtt_config.node_name
    node = cfg.node_name
    async with watching(dynsec_broker, f"{topics.root}/+/ota/#", topics.ota_streams()) as watcher, \
            node_client(dynsec_broker, cfg.username, cfg.password) as client:
        for topic_filter in [*topics.node_ota_inbox(node), topics.ota_streams()]:
            assert (await client.subscribe(topic_filter, qos=0))[0] == 0, topic_filter
        for topic_filter in (*topics.node_ota_inbox(other), topics.all_ota(OtaTopic.OFFER)):
            assert (await client.subscribe(topic_filter, qos=0))[0] == 128, topic_filter
        # Offers and frames are the ota service's: the broker drops them from a node.
        for topic in (topics.ota(node, OtaTopic.OFFER), topics.ota(node, OtaTopic.DATA),
                      topics.ota(other, OtaTopic.OFFER), topics.ota_stream("1.4.0")):
            await client.publish(topic, b"forged", qos=1)
        await client.publish(topics.ota(node, OtaTopic.WANT), b"want", qos=1)
        await client.publish(topics.ota(node, OtaTopic.PROGRESS), b"progress", qos=1)
        await watcher.wait(topics.ota(node, OtaTopic.PROGRESS))
        await watcher.wait(topics.ota(node, OtaTopic.WANT))
        await asyncio.sleep(0.3)
        assert [payload for _, payload, _ in watcher.messages if payload == b"forged"] == []
