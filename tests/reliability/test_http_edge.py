"""The provisioner's HTTP edge under hostile clients: garbage, huge bodies, bodies that never finish, a crowd.

Every bad request gets a clear 4xx (or 503 for the crowd) in bounded time, is counted and reported on the
errors topic; memory stays bounded; a good registration works right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from provisioner.conftest import running
from provisioner.helpers import http, watching

from nodefleet.contracts import Topics
from services.provisioner import http as edge

REGISTER = edge.REGISTER
GOOD = {"home_id": "home", "device_name": "Pump"}


def post(body: bytes, *, length: str | None = None, extra: str = "") -> bytes:
    declared = str(len(body)) if length is None else length
    return (f"POST {REGISTER} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {declared}\r\n\r\n").encode() + body


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def padded(document: dict, size: int) -> bytes:
    body = json.dumps(document).encode()
    return body + b" " * (size - len(body))


CASES = [
    (post(b"[" * edge.MAX_BODY), 400, "nested too deeply"),
    (post(b'{"a":' * 2500 + b"1" + b"}" * 2500), 400, "nested too deeply"),
    (post(b'{"home_id": "home", "device_name": ' + b"9" * 5000 + b"}"), 400, "not valid JSON"),
    (post(b'{"home_id": "home", "device_name": 1e999}'), 400, "device_name"),
    (post(b'{"home_id": "home", "device_name": "\xff\xfe"}'), 400, "not valid JSON"),
    (post(b"\x00\x01\x02\x03"), 400, "not valid JSON"),
    (post(b""), 400, "not valid JSON"),
    (post(json.dumps({**GOOD, "admin": True, "extra": [1] * 100}).encode()), 400, "xtra"),
    (post(b"{}", length="+2"), 411, "decimal digits"),
    (post(b"{}", length="-1"), 411, "decimal digits"),
    (post(b"{}", length="1_0"), 411, "decimal digits"),
    (post(b"{}", length="9" * 5000), 413, "larger than"),
    (post(b"x" * (edge.MAX_BODY + 1)), 413, "larger than"),
    (post(b"{}", extra="Transfer-Encoding: chunked\r\n"), 411, "chunked"),
    (post(b"{}", extra="X-Pad: " + "a" * edge.MAX_HEAD + "\r\n"), 431, "request head larger"),
    (b"GET " + b"/" * 100 + b" HTTP/1.1 extra\r\n\r\n", 400, "malformed request line"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed request line"),
]


async def test_garbage_gets_a_clear_4xx_is_counted_and_reported(logged_mosquitto, database, topics: Topics):
    # 500 POSTs from one address in seconds: without the registration limit, which has its own test below.
    async with running(logged_mosquitto, database, topics, register_limit=0) as service, \
            watching(logged_mosquitto, topics.errors()) as errors:
        port = service.http_port
        before = rss_kib()
        for raw, expected, why in CASES:
            started = time.monotonic()
            status, answer = await http(port, "POST", REGISTER, raw=raw)
            assert status == expected and why in answer["error"], (raw[:60], status, answer)
            assert time.monotonic() - started < 2.0
        # A body right at the limit is read and taken; a hundred rounds of the worst cases keep memory flat.
        status, _ = await http(port, "POST", REGISTER, raw=post(padded(GOOD, edge.MAX_BODY)))
        assert status == 201
        for _ in range(100):
            await asyncio.gather(*(http(port, "POST", REGISTER, raw=raw) for raw, _, _ in CASES[:4]))
        assert rss_kib() - before < 20_000
        assert service.errors.counts["http_bad_request"] == len(CASES) + 400
        event = json.loads(await errors.wait(topics.errors(), lambda p: b"http_bad_request" in p))
        assert event["service"] == "provisioner" and event["detail"].startswith("400")
        status, reg = await http(port, "POST", REGISTER, GOOD)
        assert status == 201 and reg["mqtt_config"]["password"]


async def _stalled(port: int, data: bytes, *, drip: float = 0.0) -> tuple[int, float]:
    """Send ``data`` (a byte every ``drip`` seconds if set), never the rest; the status and when it came."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not drip:
            writer.write(data)
            return _status(await asyncio.wait_for(reader.read(), 10)), time.monotonic() - started
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            # Waiting for the answer between bytes: a byte sent after it would be reset and could lose it.
            with contextlib.suppress(TimeoutError):
                return _status(await asyncio.wait_for(reader.read(4096), drip)), time.monotonic() - started
        raise AssertionError("the whole request went out without an answer")
    finally:
        writer.close()


def _status(head: bytes) -> int:
    return int(head.split(b" ")[1])


async def test_requests_that_never_finish_and_a_crowd_are_bounded(logged_mosquitto, database, topics: Topics,
                                                                  monkeypatch):
    monkeypatch.setattr(edge, "READ_TIMEOUT", 1.0)
    async with running(logged_mosquitto, database, topics) as service:
        port = service.http_port
        stalled = await asyncio.gather(
            _stalled(port, b"POST /api/provision/reg"),
            _stalled(port, post(b'{"home_id": "ho', length="40")),
            _stalled(port, post(json.dumps(GOOD).encode()), drip=0.05),
        )
        for status, took in stalled:
            assert status == 408 and 0.9 < took < 3.0, stalled
        # A crowd of idle connections: those past the limit are answered 503 at once; the rest time out.
        crowd = edge.MAX_CONNECTIONS + 36
        started = time.monotonic()
        results = await asyncio.gather(*(_stalled(port, b"") for _ in range(crowd)))
        statuses = sorted(status for status, _ in results)
        assert statuses.count(408) == edge.MAX_CONNECTIONS and statuses.count(503) == crowd - edge.MAX_CONNECTIONS
        assert max(took for status, took in results if status == 503) < 1.0
        assert time.monotonic() - started < 4.0
        assert service.errors.counts["http_bad_request"] == len(stalled) + crowd
        status, reg = await http(port, "POST", REGISTER, GOOD)
        assert status == 201 and reg["mqtt_config"]["node_name"]


async def _register_from(source: str, port: int) -> tuple[int, bytes]:
    """One registration sent from the loopback address ``source``; (status, head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(post(json.dumps(GOOD).encode()))
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return _status(answer), answer.split(b"\r\n\r\n")[0]


async def test_a_registration_flood_is_slowed_per_address_and_reported(logged_mosquitto, database, topics: Topics):
    async with running(logged_mosquitto, database, topics, register_limit=5, register_window=60.0) as service, \
            watching(logged_mosquitto, topics.errors()) as errors:
        port = service.http_port
        flood = [await _register_from("127.0.0.1", port) for _ in range(25)]
        assert [status for status, _ in flood] == [201] * 5 + [429] * 20
        assert b"Retry-After: 12" in flood[-1][1]  # one registration comes back every 60/5 s
        assert service.errors.counts["registrations_throttled"] == 20
        event = json.loads(await errors.wait(topics.errors(), lambda p: b"registrations_throttled" in p))
        assert event["service"] == "provisioner" and "127.0.0.1" in event["detail"]
        # Another address has its own bucket: the flooder costs it nothing.
        assert (await _register_from("127.0.0.2", port))[0] == 201
