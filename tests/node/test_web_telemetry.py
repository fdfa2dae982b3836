"""The local web page and JSON API in normal mode; telemetry with seq unique across reboots."""

from __future__ import annotations

import base64

from nodefleet.contracts import Telemetry

from .http import request


async def test_local_page_and_api(make_node, watch):
    node = make_node(config={"web_password": "s3cret"})
    await node.start()
    await watch.wait("state")
    port = node.http_port
    status, _ = await request(port, "GET", "/api/state")
    assert status == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"me:s3cret").decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"me:nope").decode()}
    assert (await request(port, "GET", "/", headers=wrong))[0] == 401

    status, page = await request(port, "GET", "/", headers=auth)
    assert status == 200 and "relay <b>OFF</b>" in page and "STOP" in page
    mark = watch.mark()
    status, state = await request(port, "POST", "/api/switch", {"state": "ON"}, headers=auth)
    assert status == 200 and state["relay"] == "ON"
    await watch.wait("state", lambda s: s["relay"] == "ON", since=mark)
    assert (await node.ctl())["relay"] == 1
    status, state = await request(port, "POST", "/api/stop", {}, headers=auth)
    assert state["mode"] == "stopped" and (await node.ctl())["relay"] == 0
    status, err = await request(port, "POST", "/api/switch", {"state": "ON"}, headers=auth)
    assert status == 400 and "resume" in err["error"]
    assert (await request(port, "POST", "/api/stop", {"resume": True}, headers=auth))[1]["mode"] == "auto"
    status, state = await request(port, "POST", "/api/logic", {"enabled": False}, headers=auth)
    assert state["mode"] == "logic_disabled"
    status, err = await request(port, "POST", "/api/switch", b"{oops", headers=auth)
    assert status == 400 and "JSON" in err["error"]
    status, full = await request(port, "GET", "/api/state", headers=auth)
    assert status == 200 and full["uptime"] >= 0 and isinstance(full["rules"], list)
    assert (await request(port, "GET", "/api/info", headers=auth))[1]["mode"] == "normal"


async def test_telemetry_seq_never_repeats_across_power_cuts(make_node, watch):
    node = make_node()
    await node.start()
    first = Telemetry.model_validate(await watch.wait("telemetry", timeout=10))
    assert {"temperature", "humidity", "rssi", "heap_free"} <= set(first.readings)
    assert first.readings["heap_free"] > 20_000
    await node.kill()
    mark = watch.mark()
    await node.start()
    second = Telemetry.model_validate(await watch.wait("telemetry", since=mark, timeout=10))
    seqs = [t["seq"] for t in watch.found("telemetry")]
    assert len(seqs) == len(set(seqs)) and second.seq > first.seq
