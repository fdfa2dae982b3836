"""The embedded broker keeps persistent sessions and their unacknowledged QoS 1 messages across a clean restart,
and across a kill -9 what its last interval's write held."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

from broker_thread import BrokerThread

from nodefleet.embedded.mosquitto import free_port
from nodefleet.wire import BrokerAddress, Client


async def _sequence_back(address: BrokerAddress, client_id: str, count: int) -> list[int]:
    """The ``seq`` of the first ``count`` messages the persistent session ``client_id`` gets on its return."""
    got: list[int] = []
    async with Client(address, client_id=client_id, clean_session=False) as keeper:
        async with asyncio.timeout(10):
            async for message in keeper.messages:
                got.append(json.loads(message.payload)["seq"])
                if len(got) == count:
                    break
    return got


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
        # Back with the same client id and no new SUBSCRIBE: the session, its filter and its queue are there.
        assert await _sequence_back(address, client_id, 50) == list(range(50))
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


_BROKER = """
import asyncio, sys
from pathlib import Path
from nodefleet.embedded.broker import EmbeddedBroker

async def main():
    broker = EmbeddedBroker(host="127.0.0.1", port=int(sys.argv[1]), sessions_file=Path(sys.argv[2]), save_interval=0.3)
    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_kill_9_loses_at_most_the_last_save_interval(tmp_path: Path, root: str):
    """The broker in its own process, SIGKILLed: the sessions file its last interval wrote brings the queue back."""
    sessions, port = tmp_path / "sessions.json", free_port()
    topic, client_id = f"{root}/n1/telemetry", f"keeper-{uuid.uuid4().hex[:6]}"
    address = BrokerAddress("127.0.0.1", port)

    async def start() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", _BROKER, str(port), str(sessions),
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        assert process.stdout is not None
        async with asyncio.timeout(20):
            while (line := await process.stdout.readline()) != b"ready\n":  # its log lines come first
                assert line, "the broker process ended before it was ready"
        return process

    process = await start()
    try:
        async with Client(address, client_id=client_id, clean_session=False) as keeper:
            assert await keeper.subscribe(topic, qos=1) == [1]
        async with Client(address, client_id="pub") as publisher:
            for seq in range(50):
                await publisher.publish(topic, json.dumps({"seq": seq}), qos=1)  # acknowledged by the broker
        await asyncio.sleep(1.0)  # three intervals: the queue is on disk
        process.kill()
        await process.wait()
        document = json.loads(sessions.read_text())
        assert [len(s["pending"]) for s in document["sessions"] if s["client_id"] == client_id] == [50]
        process = await start()
        assert await _sequence_back(address, client_id, 50) == list(range(50))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
