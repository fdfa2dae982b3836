"""The control plane's fleet requests on nodefleet.wire and on FastStream (NODEFLEET_TELEMETRY_REQUEST_PLANE):
the same reply bytes, the same error events, logins on both brokers, and a broker restart survived."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from nodefleet.contracts import FleetRequest, Topics
from nodefleet.contracts.queries import TELEMETRY_SERVICE, DeviceRow, DevicesQuery
from nodefleet.embedded.mosquitto import Mosquitto
from nodefleet.fleet import ErrorReporter, typed
from nodefleet.wire import BrokerAddress, Client
from services.telemetry.control import ControlPlane
from services.telemetry.settings import TelemetrySettings

PLANES = ("wire", "faststream")
ROWS = [DeviceRow(node="n1", online=True, last_seen=1_795_000_000.5, relay="ON", mode="auto", state_seq=3)]


class _Devices:
    async def devices(self, query: DevicesQuery) -> list[DeviceRow]:
        return ROWS


def _url(broker, login: tuple[str, str] | None) -> str:
    if login is None:
        return broker.url
    address = BrokerAddress.parse(broker.url)
    return f"mqtt://{login[0]}:{login[1]}@{address.host}:{address.port}"


@contextlib.asynccontextmanager
async def control_plane(url: str, topics: Topics, plane: str) -> AsyncIterator[ControlPlane]:
    settings = TelemetrySettings(mqtt_url=url, topic_root=topics.root, fleet_root=topics.fleet, instance=plane,
                                 client_id=f"telemetry-{uuid.uuid4().hex[:8]}", request_plane=plane)
    control = ControlPlane(settings, {"devices": typed(_Devices().devices)},
                           ErrorReporter(TELEMETRY_SERVICE, settings.topics))
    task = asyncio.create_task(control.run())
    try:
        await asyncio.wait_for(control.ready.wait(), 15)
        yield control
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _exchange(url: str, topics: Topics, requests: list[tuple[str, bytes]], *, timeout: float = 10
                    ) -> tuple[list[bytes], list[dict]]:
    """Publish raw requests, return the raw replies (in order of arrival) and the error events seen."""
    client_id = f"asker-{uuid.uuid4().hex[:8]}"
    reply_topic = topics.reply(client_id)
    async with Client(BrokerAddress.parse(url), client_id=client_id, nodelay=True) as mqtt:
        await mqtt.subscribe(reply_topic, qos=1)
        await mqtt.subscribe(topics.errors(), qos=0)
        replies, errors = [], []
        expected = sum(1 for _, body in requests if b"reply_to" in body)
        for action, body in requests:
            await mqtt.publish(topics.request(TELEMETRY_SERVICE, action), body.replace(b"REPLY", reply_topic.encode()),
                               qos=1)

        async def collect() -> None:
            async for message in mqtt.messages:
                if message.topic == reply_topic:
                    replies.append(message.payload)
                else:
                    errors.append(json.loads(message.payload))
                if len(replies) == expected and len(errors) >= len(requests) - 1:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), timeout)
    return replies, errors


def _request(transaction: str, data: dict) -> bytes:
    return FleetRequest(transaction=transaction, reply_to="REPLY", data=data).model_dump_json().encode()


REQUESTS = [
    ("devices", _request("t1", {})),
    ("devices", _request("t2", {"bogus": 1})),  # extra field: a ValidationError answered and reported
    ("nope", _request("t3", {})),  # unknown action
    ("devices", b'{"v": 1, "transaction": "t4"}'),  # no reply_to: reported, not answered
]


@pytest.mark.parametrize("login", [None, ("service", "service-pw")], ids=["anonymous", "login"])
async def test_both_planes_answer_with_the_same_bytes_and_report_the_same_errors(
        request: pytest.FixtureRequest, broker, login, topics: Topics) -> None:
    if login is not None:  # the same broker kind, with the users and ACL of tests/broker_security.py
        broker = request.getfixturevalue("secured_mosquitto" if isinstance(broker, Mosquitto) else "secured_amqtt")
    url = _url(broker, login)
    seen = {}
    for plane in PLANES:
        async with control_plane(url, topics, plane):
            replies, errors = await _exchange(url, topics, REQUESTS)
        seen[plane] = (sorted(replies), sorted((e["code"], e["detail"][:40]) for e in errors))
    assert seen["wire"] == seen["faststream"]
    replies, errors = seen["wire"]
    assert len(replies) == 3
    first = json.loads(replies[0])
    assert first["transaction"] == "t1" and first["status"] == "ok"
    assert first["data"] == [row.model_dump(mode="json") for row in ROWS]
    assert [code for code, _ in errors] == ["bad_request"] * 3


async def test_the_faststream_plane_answers_again_after_a_broker_restart(topics: Topics) -> None:
    mosquitto = Mosquitto()
    mosquitto.start()
    try:
        async with control_plane(mosquitto.url, topics, "faststream"):
            replies, _ = await _exchange(mosquitto.url, topics, REQUESTS[:1])
            assert len(replies) == 1
            mosquitto.stop()
            await asyncio.sleep(1.0)
            mosquitto.start()
            for _ in range(30):  # its own (zmqtt's) reconnect policy, then the subscription again
                replies, _ = await _exchange(mosquitto.url, topics, REQUESTS[:1], timeout=1)
                if replies:
                    break
            assert len(replies) == 1, "the FastStream plane did not answer within 30 s of the broker's restart"
    finally:
        mosquitto.stop()
