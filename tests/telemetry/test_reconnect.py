"""The service rides out a broker restart."""

from __future__ import annotations

import json
import time

import asyncpg
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.wire import BrokerAddress, Client

from .helpers import make_settings, start, stop
from .test_queries_and_schema import _ask


async def test_broker_restart_is_ridden_out(database, topics: Topics):
    broker = Mosquitto()
    broker.start()
    settings = make_settings(broker, database, topics)
    task = await start(settings)
    db = await asyncpg.connect(database)
    try:
        broker.stop()
        await wait_for(lambda: not task.done(), timeout=1)
        broker = Mosquitto(port=broker.port)
        broker.start()
        # This broker keeps no sessions across a restart: the service must subscribe again by itself.
        async def stored() -> bool:
            async with Client(BrokerAddress.parse(broker.url), client_id="restart-pub") as mqtt:
                body = {"v": 1, "seq": int(time.time() * 1000), "ts": time.time(), "readings": {"t": 1}}
                await mqtt.publish(topics.telemetry("r1"), json.dumps(body), qos=1)
            return await db.fetchval("SELECT count(*) FROM telemetry") > 0

        await wait_for(stored, timeout=20, interval=0.5)
        devices = await wait_for(lambda: _ask(broker, topics, "devices", {}), timeout=20)
        assert [d["node"] for d in devices] == ["r1"]
    finally:
        await db.close()
        await stop(task)
        broker.stop()

