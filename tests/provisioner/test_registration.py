"""Registration over MQTT fleet requests and the HTTP edge; bad input; expiry."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import pytest

from nodefleet.contracts.provisioning import PROVISIONER_SERVICE
from nodefleet.fleet import Requester, RequestError

from .conftest import ADMIN, running
from .helpers import http, node_client


async def _requester(client, topics):
    requester = Requester(client, topics, client_id=f"test-{uuid.uuid4().hex[:8]}")
    await requester.start()

    async def feed():
        async for message in client.messages:
            requester.feed(message)

    return requester, asyncio.create_task(feed())


async def test_register_and_status_over_mqtt(service, dynsec_mosquitto, topics):
    async with node_client(dynsec_mosquitto, *ADMIN) as client:
        requester, feeder = await _requester(client, topics)
        try:
            reply = await requester.request(PROVISIONER_SERVICE, "register",
                                            {"home_id": "home", "device_name": "Kitchen lamp", "chip_id": "c0ffee"})
            assert reply["mqtt_config"]["node_name"].startswith("kitchen-lamp-")
            assert reply["mqtt_config"]["broker_port"] == dynsec_mosquitto.port
            status = await requester.request(PROVISIONER_SERVICE, "status",
                                             {"provisioning_id": reply["provisioning_id"]})
            assert status == {"provisioning_id": reply["provisioning_id"], "is_provisioned": False,
                              "device_id": reply["mqtt_config"]["node_name"], "status": "pending",
                              "connected_at": None, "config_version": 1, "config_applied": None,
                              "chip_id": "c0ffee", "reported_chip_id": None, "error": None}
            # Bad input: each a clear error reply, nothing registered.
            bad = [
                ({"home_id": "nowhere", "device_name": "x"}, "unknown home"),
                ({"home_id": "home", "device_name": "Kitchen lamp", "chip_id": "another-chip"}, "already exists"),
                ({"home_id": "home", "device_name": "y" * 65}, "at most 64"),
                ({"home_id": "home", "device_name": "z", "extra": 1}, "Extra inputs"),
                ({"home_id": "home"}, "Field required"),
            ]
            for data, why in bad:
                with pytest.raises(RequestError, match=why):
                    await requester.request(PROVISIONER_SERVICE, "register", data)
            with pytest.raises(RequestError, match="unknown time zone"):
                await requester.request(PROVISIONER_SERVICE, "home", {"home_id": "cabin", "tz": "Mars/Olympus"})
            assert await requester.request(PROVISIONER_SERVICE, "home", {"home_id": "cabin", "tz": "America/New_York"})
            rows = await requester.request(PROVISIONER_SERVICE, "list", {})
            assert [r["device_name"] for r in rows] == ["Kitchen lamp"]
        finally:
            feeder.cancel()


async def test_http_edge(service, topics):
    port = service.http_port
    status, reg = await http(port, "POST", "/api/provision/register/", {"home_id": "home", "device_name": "Pump"})
    assert status == 201 and reg["mqtt_config"]["password"] and len(reg["provisioning_id"]) == 32
    status, body = await http(port, "GET", f"/api/provision/status/{reg['provisioning_id']}")
    assert status == 200 and body["is_provisioned"] is False and body["device_id"] == reg["mqtt_config"]["node_name"]

    cases = [
        (("POST", "/api/provision/register/", b"{not json"), 400, "not valid JSON"),
        (("POST", "/api/provision/register/", [1, 2]), 400, "JSON object"),
        (("POST", "/api/provision/register/", {"home_id": "nope", "device_name": "x"}), 404, "unknown home"),
        (("POST", "/api/provision/register/", {"home_id": "home", "device_name": ""}), 400, "device_name"),
        (("POST", "/api/provision/register/", b"x" * 20_000), 413, "larger than"),
        (("POST", "/api/provision/register/", {"home_id": "home", "device_name": "bad\u0007name"}), 400, "printable"),
        (("POST", "/api/provision/register/", {"home_id": "home", "device_name": "x", "chip_id": "c" * 65}), 400,
         "chip_id"),
        (("POST", "/api/provision/register/", {"home_id": "Home Sweet", "device_name": "x"}), 400, "home_id"),
        (("GET", "/api/provision/register/", None), 405, "use POST"),
        (("DELETE", "/api/provision/status/" + "0" * 32, None), 405, "use GET"),
        (("GET", "/api/provision/status/" + "0" * 32, None), 404, "no registration"),
        (("GET", "/api/provision/status/xyz", None), 400, "32 hex"),
        (("GET", "/elsewhere", None), 404, "no such path"),
    ]
    for (method, path, body), expected, why in cases:
        status, answer = await http(port, method, path, body)
        assert status == expected and why in answer["error"], (path, status, answer)
    status, answer = await http(port, "GET", "/", raw=b"\x00garbage\r\n\r\n")
    assert status == 400
    status, answer = await http(port, "POST", "/api/provision/register/",
                                raw=b"POST /api/provision/register/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411
    # Still serving, and only the one good registration was written.
    assert len(await service.registry.store.list(home_id=None, status=None)) == 1


async def test_pending_registration_expires_and_its_credentials_go(dynsec_broker, database, topics):
    async with running(dynsec_broker, database, topics, pending_ttl=2.0, expiry_interval=0.2) as service:
        _, reg = await http(service.http_port, "POST", "/api/provision/register/",
                            {"home_id": "home", "device_name": "Late"})
        cfg = reg["mqtt_config"]
        async with node_client(dynsec_broker, cfg["username"], cfg["password"]):
            pass
        async with asyncio.timeout(10):
            while (await service.registry.registrations.status(reg["provisioning_id"])).status != "revoked":
                await asyncio.sleep(0.1)
        with pytest.raises(aiomqtt.MqttError):
            async with node_client(dynsec_broker, cfg["username"], cfg["password"]):
                pass


async def test_broker_refusal_writes_nothing(service, monkeypatch):
    from services.provisioner.credentials import CredentialError

    async def refuse(*args, **kwargs):
        raise CredentialError("the broker refused createClient: injected")

    monkeypatch.setattr(service.registry.credentials, "add", refuse)
    status, answer = await http(service.http_port, "POST", "/api/provision/register/",
                                {"home_id": "home", "device_name": "Nope"})
    assert status == 503 and "injected" in answer["error"]
    assert await service.registry.store.list(home_id=None, status=None) == []
