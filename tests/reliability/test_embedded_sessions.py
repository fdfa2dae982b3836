"""The embedded broker keeps persistent sessions and their unacknowledged QoS 1 messages across a clean restart."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from broker_thread import BrokerThread

from nodefleet.wire import BrokerAddress, Client


async def test_a_persistent_session_and_its_queue_survive_a_restart(tmp_path: Path, root: str):
    sessions = tmp_path / "sessions.json"
    broker = BrokerThread(sessions_file=sessions).start()
    port, topic, client_id = broker.port, f"{root}/n1/telemetry", f"keeper-{uuid.uuid4().hex[:6]}"
    try:
        address = BrokerAddress("127.0.0.1", port)
        async with Client(address, client_id=client_id, clean_session=False) as keeper:
            assert await keeper.subscribe(topic, qos=1) == [1]
        async with Client(address, client_id="pub") as publisher:
            for seq in range(50):
                await publisher.publish(topic, json.dumps({"seq": seq}), qos=1)
        broker.stop()
        document = json.loads(sessions.read_text())
        assert [len(s["pending"]) for s in document["sessions"] if s["client_id"] == client_id] == [50]
        broker = BrokerThread(port=port, sessions_file=sessions).start()
        assert not sessions.exists()  # taken: a crash after this start must not replay them
        got: list[int] = []
        # Back with the same client id and no new SUBSCRIBE: the session, its filter and its queue are there.
        async with Client(address, client_id=client_id, clean_session=False) as keeper:
            async with asyncio.timeout(10):
                async for message in keeper.messages:
                    got.append(json.loads(message.payload)["seq"])
                    if len(got) == 50:
                        break
        assert got == list(range(50))
        broker.stop()
        broker = BrokerThread(port=port, sessions_file=sessions).start()
        async with Client(address, client_id=client_id, clean_session=False) as keeper:
            async with Client(address, client_id="pub") as publisher:
                await publisher.publish(topic, b'{"seq": 50}', qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(keeper.messages))
        # Acknowledged ones stay delivered; the subscription survived a second restart too.
        assert json.loads(message.payload)["seq"] == 50
    finally:
        broker.stop()
