"""Raw garbage at every topic the four services subscribe to, through `nodefleet up` on a real Mosquitto.

Node topics (telemetry, provisioner, scheduler and ota all read some), retained garbage on config, schedule and
the OTA offer, every fleet request topic (and an unknown one), request envelopes of the wrong shape: each
service reports rejections on the errors topic, keeps running and answers a valid request after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from cli.test_cli_up import up_env

from nodefleet.contracts import Command, NodeTopic, OtaTopic, Topics
from nodefleet.contracts.requests import REQUESTS
from nodefleet.embedded.mosquitto import free_port
from nodefleet.fleet import Requester
from nodefleet.up.services import SERVICES
from nodefleet.wire import BrokerAddress, Client

from .garbage import payloads

pytestmark = pytest.mark.timeout(150)
NODE = "junk-1"
LIMIT = 256 * 1024  # past any service's own limit; the broker carries it


def node_topics(topics: Topics) -> list[str]:
    return [*(topics.node(NODE, kind) for kind in NodeTopic), *(topics.set(NODE, c) for c in Command),
            *(topics.ota(NODE, kind) for kind in OtaTopic), topics.ota_stream("9.9.9")]


def request_topics(topics: Topics) -> list[str]:
    return [*(topics.request(service, action) for service, action in REQUESTS),
            *(topics.request(service, "no_such_action") for service, _ in REQUESTS)]


def bad_envelopes(reply_to: str) -> list[bytes]:
    """Well-formed JSON envelopes that are still wrong: bad data, a reply topic with wildcards, no transaction."""
    return [json.dumps({"v": 1, "transaction": "t1", "reply_to": reply_to, "data": {"zzz": [1] * 50}}).encode(),
            json.dumps({"v": 1, "transaction": "t2", "reply_to": "#", "data": {}}).encode(),
            json.dumps({"v": 1, "reply_to": reply_to}).encode(),
            json.dumps({"v": 2, "transaction": "t3", "reply_to": reply_to, "data": []}).encode()]


async def test_garbage_at_every_service_topic_leaves_them_serving(launch_up, data_dir: Path, mosquitto,
                                                                   topics: Topics):
    up = launch_up("--broker", mosquitto.url, "--db-port", str(free_port()), data_dir=data_dir, env=up_env(topics))
    await up.wait_ready()
    address = BrokerAddress.parse(mosquitto.url)
    client_id = f"junk-{uuid.uuid4().hex[:8]}"
    async with Client(address, client_id=client_id) as client:
        requester = Requester(client, topics, client_id=client_id)
        await requester.start()
        await client.subscribe(topics.errors(), qos=1)
        events: list[dict] = []
        replies: list[dict] = []

        async def feed() -> None:
            async for message in client.messages:
                if requester.feed(message):
                    replies.append({"seen": True})
                elif message.topic == topics.errors():
                    events.append(json.loads(message.payload))

        feeder = asyncio.create_task(feed())
        try:
            sent = 0
            started = time.monotonic()
            garbage = [(name, payload) for name, payload in payloads(LIMIT)]
            garbage += [("bad envelope", payload) for payload in bad_envelopes(requester.reply_topic)]
            for topic in node_topics(topics) + request_topics(topics):
                for name, payload in garbage:
                    await client.publish(topic, payload, qos=1)
                    sent += 1
            for topic in (topics.config(NODE), topics.schedule(NODE), topics.ota(NODE, OtaTopic.OFFER)):
                await client.publish(topic, b"\xff\x00 retained garbage", qos=1, retain=True)
                sent += 1
            took = time.monotonic() - started
            # Every service still answers, and telemetry still stores a good message after the garbage.
            good = {"v": 1, "seq": 1, "readings": {"temperature": 21.5}}
            await client.publish(topics.telemetry("good-1"), json.dumps(good), qos=1)
            answers = {
                "telemetry": await requester.request("telemetry", "devices", {}, timeout=30),
                "provisioner": await requester.request("provisioner", "list", {}, timeout=30),
                "scheduler": await requester.request("scheduler", "show", {"node": NODE}, timeout=30),
                "ota": await requester.request("ota", "releases", {}, timeout=30),
            }
            assert isinstance(answers["provisioner"], list) and isinstance(answers["ota"], list)
            async with asyncio.timeout(30):
                while True:
                    rows = await requester.request("telemetry", "telemetry", {"node": "good-1", "since": 0})
                    if rows:
                        break
                    await asyncio.sleep(0.2)
            assert [row["readings"]["temperature"] for row in rows] == [21.5]
            async with asyncio.timeout(15):
                while {e["service"] for e in events} < set(SERVICES):
                    await asyncio.sleep(0.1)
        finally:
            feeder.cancel()
        by_service = {s: sorted({e["code"] for e in events if e["service"] == s}) for s in SERVICES}
        print(f"garbage: {sent} messages in {took:.1f} s; error codes by service: {by_service}")
        for topic in (topics.config(NODE), topics.schedule(NODE), topics.ota(NODE, OtaTopic.OFFER)):
            await client.publish(topic, b"", qos=1, retain=True)
    assert up.process.returncode is None
    assert await up.stop(signal.SIGTERM) == 0, up.stderr[-3000:]
    assert "Traceback" not in up.stderr, up.stderr[-5000:]


async def _scheduler_after(scheduler, mosquitto, topics: Topics, payload: bytes) -> tuple[bool, list[dict]]:
    """Start a scheduler, send ``payload`` as a node's retained schedule; (still running, error events)."""
    await scheduler()
    task = scheduler.tasks[0]
    async with Client(BrokerAddress.parse(mosquitto.url), client_id=f"junk-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topics.errors(), qos=1)
        await client.publish(topics.schedule(NODE), payload, qos=1, retain=True)
        events: list[dict] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                async for message in client.messages:
                    events.append(json.loads(message.payload))
        await client.publish(topics.schedule(NODE), b"", qos=1, retain=True)
    return not task.done(), events


async def test_deep_json_on_a_schedule_topic_is_rejected(scheduler, mosquitto, topics: Topics):
    running, events = await _scheduler_after(scheduler, mosquitto, topics, b"[" * 1500)
    assert running and any(e["code"] == "bad_schedule" for e in events)


async def test_a_schedule_version_past_int32_is_rejected(scheduler, mosquitto, topics: Topics):
    running, events = await _scheduler_after(scheduler, mosquitto, topics, b'{"v": 1, "version": 1' + b"0" * 400 + b"}")
    assert running and any(e["code"] == "bad_schedule" for e in events)
