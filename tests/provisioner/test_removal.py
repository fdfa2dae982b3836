"""Removal as Home Assistant and `nodefleet devices` see it, on a real Mosquitto with the real telemetry service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

from nodefleet.contracts import Topics
from nodefleet.contracts.provisioning import RegisterRequest
from services.provisioner import discovery
from services.telemetry.app import serve as serve_telemetry
from services.telemetry.settings import TelemetrySettings

from .conftest import SERVICE
from .helpers import come_online, node_client, watching


async def _devices(broker, topics: Topics) -> list[dict]:
    """`nodefleet devices --format json`, as the telemetry user (an ordinary service login)."""
    url = f"mqtt://{SERVICE[0]}:{SERVICE[1]}@{broker.host}:{broker.port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodefleet", "devices", "--broker", url, "--topic-root", topics.root,
        "--fleet-root", topics.fleet, "--format", "json", env=dict(os.environ),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_removal_clears_discovery_first_and_the_node_leaves_the_devices_list(service, dynsec_mosquitto,
                                                                                  database, topics):
    settings = TelemetrySettings(
        mqtt_url=f"mqtt://{SERVICE[0]}:{SERVICE[1]}@{dynsec_mosquitto.host}:{dynsec_mosquitto.port}",
        database_url=database, topic_root=topics.root, fleet_root=topics.fleet,
        client_id=f"telemetry-{uuid.uuid4().hex[:8]}", instance="test", flush_interval=0.02,
        maintenance_interval=3600)
    ready = asyncio.Event()
    telemetry = asyncio.create_task(serve_telemetry(settings, ready=ready))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        reg = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Pump"))
        cfg = reg.mqtt_config
        node = cfg.node_name
        async with node_client(dynsec_mosquitto, cfg.username, cfg.password) as client:
            await come_online(client, topics, node, "chip-pump", caps=("switch", "temperature"))
            await client.publish(topics.state(node), json.dumps({"v": 1, "seq": 1, "relay": "OFF", "mode": "auto"}),
                                 qos=1, retain=True)
            async with asyncio.timeout(15):
                while not (await service.registry.registrations.status(reg.provisioning_id)).is_provisioned:
                    await asyncio.sleep(0.05)
                await service.registry.announcer.idle()
        async with asyncio.timeout(15):
            while [d["node"] for d in await _devices(dynsec_mosquitto, topics)] != [node]:
                await asyncio.sleep(0.2)

        # What Home Assistant subscribes to: its discovery configs and the entity's state and availability.
        async with watching(dynsec_mosquitto, f"homeassistant/+/{node}/#", Topics.homie_device(node),
                            f"{topics.prefix(node)}/#") as watcher:
            await asyncio.sleep(0.5)  # the retained copies first
            mark = len(watcher.messages)
            await service.registry.removal.remove(node)
            node_topics = {topics.state(node), topics.status(node), topics.info(node), topics.config(node),
                           topics.schedule(node)}
            wanted = set(discovery.removal(topics, node)) | node_topics
            async with asyncio.timeout(10):
                while {t for t, p, _ in watcher.messages[mark:] if p == b""} != wanted:
                    await asyncio.sleep(0.05)
        cleared = [t for t, p, _ in watcher.messages[mark:] if p == b""]
        first_node_topic = min(cleared.index(t) for t in node_topics)
        last_discovery = max(cleared.index(t) for t in discovery.removal(topics, node))
        assert last_discovery < first_node_topic, cleared
        assert cleared.index(topics.ha_discovery("switch", node, "relay")) < cleared.index(topics.state(node))

        # `nodefleet devices` no longer lists it; the registry keeps it as revoked.
        async with asyncio.timeout(15):
            while await _devices(dynsec_mosquitto, topics):
                await asyncio.sleep(0.2)
        assert (await service.registry.store.device(node))["status"] == "revoked"
        assert telemetry.done() is False
    finally:
        telemetry.cancel()
        try:
            await telemetry
        except asyncio.CancelledError:
            pass
