"""The provisioning-mode portal (firmware/provision.py on firmware/httpd.py) under hostile clients, on the real
interpreter at 110K: the access point's API is open to anyone in WiFi range, before the node has a password.

Malformed and oversized requests, stalled ones and a crowd of idle connections: each answered with a 4xx (or
a 503, or closed) in bounded time; nothing of a refused request is stored; the portal keeps answering, and a
right provisioning afterwards still brings the node online.
"""

from __future__ import annotations

import asyncio

from node.http import poll, request

from .test_node_http import RESET, _send, idle_crowd

WIFI = {"ssid": "simnet", "password": "simpass"}


def post(path: str, body: bytes, length: int | str | None = None) -> bytes:
    declared = len(body) if length is None else length
    return f"POST {path} HTTP/1.0\r\nHost: 192.0.2.1\r\nContent-Length: {declared}\r\n\r\n".encode() + body


CASES = [
    (b"\x00\x01\x02\r\n\r\n", {400}),
    (b"GET\r\n\r\n", {400}),
    (b"GET /nowhere HTTP/1.0\r\n\r\n", {404}),
    (b"PUT /api/wifi HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", {405}),
    (post("/api/wifi", b"x" * 3000), {413}),
    (post("/api/wifi", b'{"ssid": "\xff\xfe", "password": "x"}'), {400}),
    (post("/api/mqtt", b'{"port": 1e999999}'), {400}),
    (post("/api/wifi", b"{oops"), {400}),
    (post("/api/wifi", b'["ssid", "password"]'), {400}),
    (post("/api/mqtt", b'{"broker": 5, "port": "x", "topic_prefix": [], "node_name": {}}'), {400}),
    (post("/api/mqtt", b'{"broker": "b", "port": 1883, "topic_prefix": "p", "node_name": "n", "ca": "-----BEGIN"}'),
     {400}),
    # Answered, but the client may see a reset instead (the rest of the head is left unread).
    (b"G\xff\xfeT / HTTP/1.0\r\n\r\n", {400, RESET}),
    (post("/api/wifi", b"{}", length="abc"), {400, RESET}),
    (post("/api/wifi", b"{}", length=-1), {413, RESET}),
    (b"GET /api/info HTTP/1.0\r\n" + b"X-Pad: a\r\n" * 60 + b"\r\n", {200, 431, RESET}),
    (post("/api/mqtt", b"[" * 2000), {400, 500, RESET}),
    (b"GET / HTTP/1.0\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", {431, RESET}),
]


async def test_the_portal_answers_hostile_clients_and_still_provisions(make_node, watch, mosquitto, topics):
    node = make_node(provisioned=False)
    await node.start()
    port = node.http_port
    status, info = await request(port, "GET", "/api/info")
    assert status == 200 and info["mode"] == "provisioning"
    free_before = info["heap_free"]

    for raw, expected in CASES:
        status, took = await _send(port, raw)
        assert status in expected and took < 2.0, (raw[:50], status, took)
    # A head that never ends and a body that never comes: closed with a 400 after the node's 5 s read timeout.
    stalled = await asyncio.gather(_send(port, b"GET /api/info HTTP/1.0\r\nHost: no"),
                                   _send(port, post("/api/wifi", b"{", length=100)))
    assert all(status == 400 and took < 8.0 for status, took in stalled), stalled
    # A crowd of idle connections: httpd.MAX_OPEN (4) kept, the rest refused with a 503 at once.
    async with idle_crowd(port) as refused:
        assert refused >= 25, refused
    # The ones it kept are closed by the head's 5 s deadline; then it serves again, nothing refused was stored.
    info = await poll(port, "/api/info", lambda i: i.get("mode") == "provisioning", timeout=15)
    assert not info["wifi_stored"] and not info["mqtt_stored"], info
    assert node.read("wifi.json") is None and node.read("mqtt.json") is None
    assert node.restarts == 0 and node.running
    board = await node.ctl()
    print(f"portal: {len(CASES)} malformed answered, 2 stalled closed after {[round(t, 1) for _, t in stalled]} s, "
          f"{refused} of 30 idle refused with 503; heap free {free_before} B before, {info['heap_free']} B after; "
          f"live heap peak {board['heap_live_peak']} B")

    # Still a portal that provisions: online over MQTT.
    mqtt = {"broker": mosquitto.host, "port": mosquitto.port, "topic_prefix": topics.prefix("node-1"),
            "node_name": "node-1"}
    assert (await request(port, "POST", "/api/wifi", WIFI))[0] == 200
    assert (await request(port, "POST", "/api/mqtt", mqtt))[0] == 200
    mark = watch.mark()
    assert (await request(port, "POST", "/api/restart"))[0] == 200
    assert await watch.wait("status", lambda s: s == "online", since=mark, timeout=20) == "online"
    assert "Traceback" not in node.output(), node.output()[-3000:]
