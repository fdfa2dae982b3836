"""The node over MQTT with TLS, on both brokers: it checks the broker's certificate against the authority it was
provisioned with, and says why when that fails. The heap TLS costs at 110K is measured beside a plain node."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nodefleet.embedded.broker import EmbeddedBroker
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.tls import ca_der_base64, ensure_authority

from .conftest import SLOW, watching
from .http import request

pytestmark = pytest.mark.timeout(120)

HEAP = 110 * 1024


@pytest.fixture(params=["mosquitto", "embedded"])
async def tls_broker(request, tmp_path) -> AsyncIterator[Any]:
    files = ensure_authority(tmp_path / "data", ["127.0.0.1", "localhost"])
    if request.param == "mosquitto":
        with Mosquitto(tls=files) as broker:
            yield broker
    else:
        broker = EmbeddedBroker(port=free_port(), tls_port=free_port(), tls_files=files)
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()


async def _errors(node, code: str, timeout: float = 15.0) -> list[dict]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        saved = node.read("errlog.json")
        found = [e for e in (saved or {}).get("items", []) if e["code"] == code]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {code} in the node's error log; its output:\n{node.output()}")


async def test_a_node_over_tls_comes_online_and_takes_commands(make_node, topics, tls_broker):
    tls = make_node("node-tls", provisioned=False)
    tls.provision(broker=tls_broker.tls_url, topic_prefix=topics.prefix("node-tls"), keepalive=5, max_backoff=1)
    plain = make_node("node-plain", broker=tls_broker)
    peaks = {}
    for node in (plain, tls):
        async with watching(tls_broker, topics, node.name) as watch:
            await node.start()
            assert await watch.wait("status", lambda s: s == "online", timeout=SLOW) == "online", node.output()
            ack = await watch.command("switch", {"state": "ON", "for": 60})
            assert ack["status"] == "ok"
            await asyncio.sleep(1.2)  # the heap sampler looks once a second
            peaks[node.name] = (await node.ctl())["heap_live_peak"]
            if node is tls:
                # A restart: the node connects over TLS again by itself.
                mark = watch.mark()
                assert (await watch.command("restart", {}))["status"] == "ok"
                await watch.wait("status", lambda s: s == "online", since=mark, timeout=SLOW)
                assert (await watch.command("switch", {"state": "OFF"}))["status"] == "ok"
            watch.assert_valid()
        await node.stop()
        assert "Traceback" not in node.output(), node.output()
    cost = peaks["node-tls"] - peaks["node-plain"]
    print(f"node tls: live heap peak {peaks['node-tls']} B over TLS, {peaks['node-plain']} B plain "
          f"(TLS costs {cost} B of the 110 KB heap; {HEAP - peaks['node-tls']} B spare)")
    assert json.loads((tls.flash_dir / "mqtt.json").read_text())["tls"] is True
    assert cost < 12 * 1024, peaks  # the context and the session's state; mbedTLS's record buffers are not here


async def test_a_node_with_another_authority_refuses_the_broker_and_says_why(make_node, topics, tls_broker, tmp_path):
    other = ensure_authority(tmp_path / "other", ["127.0.0.1"])
    node = make_node("node-wrong", provisioned=False)
    node.provision(broker=f"mqtts://127.0.0.1:{tls_broker.tls_port}?ca={other.ca}",
                   topic_prefix=topics.prefix("node-wrong"), keepalive=5, max_backoff=1)
    async with watching(tls_broker, topics, node.name) as watch:
        await node.start()
        failed = await _errors(node, "mqtt_connect")
        assert len(failed) == 1, failed  # once per outage, not at every retry
        assert failed[0]["msg"] == "cannot reach the broker: The certificate is not correctly signed by the trusted CA", failed
        await asyncio.sleep(2.5)  # a few retries, at max_backoff 1 s
        assert watch.found("status") == [] and node.running, node.output()  # never in, never crashed
    assert "Traceback" not in node.output(), node.output()


async def test_a_node_reaching_the_broker_by_a_name_its_certificate_is_not_for_refuses_it(make_node, topics,
                                                                                          tmp_path):
    files = ensure_authority(tmp_path / "named", ["localhost"])  # 127.0.0.1 is not one of its names
    with Mosquitto(tls=files) as broker:
        node = make_node("node-name", provisioned=False)
        node.provision(broker=f"mqtts://127.0.0.1:{broker.tls_port}?ca={files.ca}",
                       topic_prefix=topics.prefix("node-name"), keepalive=5, max_backoff=1)
        await node.start()
        failed = await _errors(node, "mqtt_connect")
        assert "does not match with the expected CN" in failed[0]["msg"], failed


async def test_the_provisioning_api_takes_the_authority(make_node, tmp_path):
    files = ensure_authority(tmp_path / "data", ["127.0.0.1"])
    node = make_node("node-prov", provisioned=False)
    await node.start()
    base = {"broker": "127.0.0.1", "port": 8883, "topic_prefix": "home/node-prov", "node_name": "node-prov",
            "username": "node-prov", "password": "pw"}
    ca = ca_der_base64(files.ca)
    status, body = await request(node.http_port, "POST", "/api/mqtt", {**base, "ca": ca})
    assert status == 200, body
    assert (node.flash_dir / "ca.der").read_bytes() == base64.b64decode(ca)
    assert node.read("mqtt.json")["tls"] is True
    pem = base64.b64encode(files.ca.read_bytes()).decode()  # PEM, base64 again: not what it takes
    status, body = await request(node.http_port, "POST", "/api/mqtt", {**base, "ca": pem[:1400]})
    assert status == 400 and "DER" in body["error"], body
    status, body = await request(node.http_port, "POST", "/api/mqtt", base)  # plain again: the authority goes
    assert status == 200 and not (node.flash_dir / "ca.der").exists() and "tls" not in node.read("mqtt.json")


async def test_a_node_over_tls_comes_back_after_the_broker_restarts(make_node, topics, tmp_path):
    files = ensure_authority(tmp_path / "data", ["127.0.0.1"])
    broker = Mosquitto(tls=files)
    broker.start()
    try:
        node = make_node("node-back", provisioned=False)
        node.provision(broker=broker.tls_url, topic_prefix=topics.prefix("node-back"), keepalive=5, max_backoff=1)
        async with watching(broker, topics, node.name) as watch:
            await node.start()
            await watch.wait("status", lambda s: s == "online", timeout=SLOW)
        broker.stop()
        await asyncio.sleep(9)  # the node sees the connection go and retries against a closed port (backoff grows)
        broker.start()
        async with watching(broker, topics, node.name) as watch:
            # Back: its status again (retained, or seen as it comes), then a command over the new session.
            await watch.wait("status", lambda s: s == "online", timeout=SLOW)
            ack = await watch.command("switch", {"state": "ON"}, timeout=20)
            assert ack["status"] == "ok", node.output()
        assert node.running and "Traceback" not in node.output(), node.output()
    finally:
        broker.stop()
