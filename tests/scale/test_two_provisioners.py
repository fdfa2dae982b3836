"""Two provisioner instances on one broker (Mosquitto and the embedded one, both with dynamic security):
each registration is handled once, and each first online provisions once (one config, one set of discovery)."""

from __future__ import annotations

import asyncio
import uuid

from provisioner.conftest import ADMIN, running
from provisioner.helpers import come_online, node_client, watching

from nodefleet.contracts import NodeTopic, Topics
from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.contracts.topics import HA_DISCOVERY_BASE, HOMIE_BASE
from nodefleet.fleet import replies_to
from services.provisioner import discovery

DEVICES = 4


async def _register(broker, topics: Topics, count: int) -> list[dict]:
    async with (node_client(broker, *ADMIN) as client,
                replies_to(client, topics, client_id=f"t{uuid.uuid4().hex[:8]}") as requester):
        tag = uuid.uuid4().hex[:6]
        return await asyncio.gather(*(
            requester.request(PROVISIONER_SERVICE, "register", {"home_id": "home", "device_name": f"Lamp {tag} {i}"})
            for i in range(count)))


async def test_each_registration_and_first_online_handled_once(dynsec_broker, database, topics: Topics):
    async with running(dynsec_broker, database, topics, instance="a", shared_group="provisioner", http_port=-1) as a, \
            running(dynsec_broker, database, topics, instance="b", shared_group="provisioner", http_port=-1):
        replies = await _register(dynsec_broker, topics, DEVICES)
        rows = await a.registry.store.list(home_id=None, status=None)
        assert len(rows) == DEVICES, "each request reached one instance"
        nodes = [reply["mqtt_config"] for reply in replies]
        names = [node["node_name"] for node in nodes]
        assert len(set(names)) == DEVICES
        filters = [topics.all_nodes(NodeTopic.CONFIG), f"{HOMIE_BASE}/#", f"{HA_DISCOVERY_BASE}/#"]
        async with watching(dynsec_broker, *filters) as watcher:
            for node in nodes:
                async with node_client(dynsec_broker, node["username"], node["password"]) as device:
                    await come_online(device, topics, node["node_name"], f"chip-{node['node_name']}")
            for name in names:
                await watcher.wait(topics.config(name))
                await watcher.wait(discovery.homie_state(name, "online")[0])
            await asyncio.sleep(1.0)  # a second instance's copy would have come by now
        rows = await a.registry.store.list(home_id=None, status=None)
    assert sorted(r["status"] for r in rows) == ["provisioned"] * DEVICES
    for name in names:
        assert len(watcher.payloads(topics.config(name))) == 1, f"{name}: one retained config"
        # Homie attributes and Home Assistant configs; $state mirrors availability and is not discovery.
        published = [t for t, _, _ in watcher.messages
                     if t.split("/")[1:3].count(name) and t != topics.config(name) and not t.endswith("$state")]
        assert published, f"{name}: no discovery"
        assert len(published) == len(set(published)), f"{name}: discovery more than once: {sorted(published)}"
