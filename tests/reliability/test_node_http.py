"""The node's local web server (firmware/httpd.py) under hostile clients, on the real interpreter at 110K.

Malformed requests, huge and never-ending bodies, a crowd of idle connections: each should be answered with a
4xx (or closed) in bounded time while the node keeps its relay, answers MQTT commands, never restarts and keeps
its heap bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from node.http import request


def post(body: bytes, length: int | str | None = None) -> bytes:
    declared = len(body) if length is None else length
    return f"POST /api/switch HTTP/1.0\r\nHost: node\r\nContent-Length: {declared}\r\n\r\n".encode() + body


RESET = None
"""No answer: the node answered but closed with the rest of the request unread, so the client got a reset."""

CASES = [
    (b"\x00\x01\x02\r\n\r\n", {400}),
    (b"GET\r\n\r\n", {400}),
    (b"GET /nowhere HTTP/1.0\r\n\r\n", {404}),
    (post(b"x" * 3000), {413}),
    (post(b'{"state": "\xff\xfe"}'), {400}),
    (post(b'{"state": 1e999999}'), {400}),
    (post(b"{oops"), {400}),
    # Answered, but the client may see a reset instead (the rest of the head is left unread).
    (b"G\xff\xfeT / HTTP/1.0\r\n\r\n", {400, RESET}),
    (post(b"{}", length="abc"), {400, RESET}),
    (post(b"{}", length=-1), {413, RESET}),
    (b"GET /api/state HTTP/1.0\r\n" + b"X-Pad: a\r\n" * 60 + b"\r\n", {200, 431, RESET}),
    # Deeply nested JSON: MicroPython's json raises RuntimeError, answered as an internal error (or, in about one
    # run of three, the connection closes without an answer).
    (post(b"[" * 2000), {400, 500, RESET}),
]


async def _send(port: int, data: bytes, *, wait: float = 30) -> tuple[int | None, float]:
    """Send ``data``, read until the node closes; (status or None, seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), wait)
    except ConnectionError:
        answer = b""
    finally:
        writer.close()
    return (int(answer.split()[1]) if answer else None), time.monotonic() - started


HEAP_GOAL = 90 * 1024
"""20 KB of the 110 KB heap to spare (tests/node/test_heap.py)."""
HEAP_CEILING = 106 * 1024
"""What hostile HTTP clients may take the live peak to today (measured 101-103 KB; a normal GET about 96 KB)."""


async def _unharmed(node, watch, limit: int = HEAP_GOAL) -> dict:
    """The node still takes a command, never restarted, and its live heap peak stayed within ``limit``."""
    ack = await watch.command("switch", {"state": "OFF"}, timeout=20)
    assert ack["status"] == "ok"
    await asyncio.sleep(1.2)  # the heap sampler looks once a second
    board = await node.ctl()
    assert board["relay"] == 0 and node.restarts == 0 and node.running, node.output()[-2000:]
    assert board["heap_live_peak"] <= limit, board
    return board


async def test_malformed_and_stalled_requests_are_answered_in_bounded_time(node, watch):
    port = node.http_port
    # At once, in the node's first seconds online: before the schedule checks left the resident heap
    # (firmware/rulecheck.py) some of these got a 500 (MemoryError) there in about half the runs.
    assert (await watch.command("switch", {"state": "ON"}))["status"] == "ok"
    for raw, expected in CASES:
        status, took = await _send(port, raw)
        assert status in expected and took < 2.0, (raw[:50], status, took)
    # A head that never ends and a body that never comes: closed with a 400 after the node's 5 s read timeout.
    stalled = await asyncio.gather(_send(port, b"GET /api/state HTTP/1.0\r\nHost: no"),
                                   _send(port, post(b"{", length=100)))
    assert all(status == 400 and took < 8.0 for status, took in stalled), stalled
    # Unharmed: it serves again, at the instant the two stalled visits end.
    status, state = await request(port, "GET", "/api/state")
    assert status == 200 and state["relay"] == "ON"
    board = await _unharmed(node, watch, HEAP_CEILING)
    print(f"node http: {len(CASES)} malformed answered, 2 stalled closed after {[round(t, 1) for _, t in stalled]} s;"
          f" live heap peak {board['heap_live_peak']} B")


async def test_a_huge_header_line_leaves_the_node_unharmed(node, watch):
    # The head is read in pieces up to 2 KB (httpd.MAX_HEAD): a 40 KB line is refused, not held (it ran the heap out).
    status, took = await _send(node.http_port, b"GET / HTTP/1.0\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert status in (431, None) and took < 2.0, (status, took)  # None: the 431 went out, the unread rest reset it
    board = await _unharmed(node, watch, HEAP_CEILING)
    print(f"node http: 40 KB header line answered {status} in {took:.2f} s; live heap peak {board['heap_live_peak']} B")


@contextlib.asynccontextmanager
async def idle_crowd(port: int, size: int = 30) -> AsyncIterator[int]:
    """``size`` connections that send nothing, held open for the block; how many were refused with a 503 at once."""
    crowd = [await asyncio.open_connection("127.0.0.1", port) for _ in range(size)]
    try:
        refused = 0
        for reader, _ in crowd:
            with contextlib.suppress(TimeoutError, ConnectionError):
                refused += (await asyncio.wait_for(reader.read(12), 2.0)).startswith(b"HTTP/1.0 503")
        yield refused
    finally:
        for _, writer in crowd:
            writer.close()


async def test_a_crowd_of_idle_connections_leaves_the_node_unharmed(node, watch):
    # Two visits at once (localpage.MAX_VISITS); the rest get a 503 at once. 30 idle ones used to run the heap out.
    async with idle_crowd(node.http_port) as refused:
        assert refused >= 25, refused
        board = await _unharmed(node, watch, HEAP_CEILING)
        print(f"node http: 30 idle connections, {refused} refused with 503; live heap peak {board['heap_live_peak']} B")
    # The two it kept were closed by the head's 5 s deadline; a visitor is served again.
    await asyncio.sleep(5.5)
    status, state = await request(node.http_port, "GET", "/api/state")
    assert status == 200 and state["relay"] == "OFF"


async def test_the_local_api_leaves_20_kb_of_heap_spare(node, watch):
    # The page's modules (httpd, web) are let go once no visit is under way (localpage.py): held for 30 s after a
    # visit they took the live peak from 85 KB to about 94 KB.
    await asyncio.sleep(1.2)  # the heap sampler looks once a second
    before = (await node.ctl())["heap_live_peak"]
    status, state = await request(node.http_port, "GET", "/api/state")
    assert status == 200 and state["relay"] in ("ON", "OFF"), state
    board = await _unharmed(node, watch)
    print(f"node http: GET /api/state, live heap peak {before} B before, {board['heap_live_peak']} B after")
