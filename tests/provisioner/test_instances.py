"""Two provisioner instances on one broker and database: each request answered once, each node provisioned once."""

from __future__ import annotations

import asyncio
import uuid

from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.fleet import Requester

from .conftest import ADMIN, running
from .helpers import come_online, node_client, watching


async def test_two_instances_share_the_work(dynsec_mosquitto, database, topics):
    async with running(dynsec_mosquitto, database, topics, instance="a", shared_group="provisioner", http_port=-1), \
            running(dynsec_mosquitto, database, topics, instance="b", shared_group="provisioner", http_port=-1) as b, \
            node_client(dynsec_mosquitto, *ADMIN) as client:
        requester = Requester(client, topics, client_id=f"t{uuid.uuid4().hex[:8]}")
        await requester.start()

        async def feed():
            async for message in client.messages:
                requester.feed(message)

        feeder = asyncio.create_task(feed())
        try:
            replies = await asyncio.gather(*(
                requester.request(PROVISIONER_SERVICE, "register", {"home_id": "home", "device_name": f"Lamp {i}"})
                for i in range(6)))
        finally:
            feeder.cancel()
        rows = await b.registry.store.list(home_id=None, status=None)
        assert len(rows) == 6  # not 12: each request reached one instance

        node = replies[0]["mqtt_config"]
        async with watching(dynsec_mosquitto, topics.config(node["node_name"])) as watcher, \
                node_client(dynsec_mosquitto, node["username"], node["password"]) as device:
            await come_online(device, topics, node["node_name"], "chip-one")
            await watcher.wait(topics.config(node["node_name"]))
            await asyncio.sleep(0.5)
            assert len(watcher.payloads(topics.config(node["node_name"]))) == 1
