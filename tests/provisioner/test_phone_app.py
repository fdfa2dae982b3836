"""The phone app's flow over raw HTTP, as an app developer following the seed would drive it.

Temporary chip ids, a retried registration, `curl -d` bodies, wrong methods, and un-provisioning through
the node's own `DELETE /api/restart` (a real MicroPython node).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from nodefleet.contracts.provisioning import is_temporary_chip
from nodefleet.sim import SimNode
from nodefleet.wire import WireError

from .conftest import running
from .helpers import come_online, http, node_client, watching

REGISTER = "/api/provision/register/"
STATUS = "/api/provision/status/"


def curl_d(path: str, body: dict) -> bytes:
    """What `curl -d '{...}' URL` sends: a JSON body declared as a form."""
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


async def _status(port: int, provisioning_id: str) -> dict:
    status, body = await http(port, "GET", STATUS + provisioning_id)
    assert status == 200, body
    return body


async def _until_status(port: int, provisioning_id: str, wanted: str, timeout: float = 15.0) -> dict:
    async with asyncio.timeout(timeout):
        while (body := await _status(port, provisioning_id))["status"] != wanted:
            await asyncio.sleep(0.05)
    return body


async def _info(node: SimNode) -> dict:
    status, info = await http(node.http_port, "GET", "/api/info")
    assert status == 200 and info["mode"] == "normal", info
    return info


def test_what_counts_as_a_temporary_chip_id():
    assert is_temporary_chip(None) and is_temporary_chip("temp_1234567890")
    assert not is_temporary_chip("a1b2c3d4e5f6") and not is_temporary_chip("temporary")


async def test_temporary_chip_ids_are_placeholders_bound_at_the_first_online(service, dynsec_mosquitto, topics):
    port = service.http_port
    registrations = []
    for name in ("Pump", "Lamp"):
        # Plain `curl -d`: the body is JSON whatever its declared type.
        status, reg = await http(port, "POST", REGISTER, raw=curl_d(REGISTER, {
            "home_id": "home", "device_name": name, "chip_id": "temp_1234567890"}))
        assert status == 201, reg  # the same temporary id twice is no clash
        registrations.append(reg)
    assert (await _status(port, registrations[0]["provisioning_id"]))["chip_id"] is None
    for reg, chip in zip(registrations, ("chip-aaaa", "chip-bbbb")):
        cfg = reg["mqtt_config"]
        async with node_client(dynsec_mosquitto, cfg["username"], cfg["password"]) as client:
            await come_online(client, topics, cfg["node_name"], chip)
            body = await _until_status(port, reg["provisioning_id"], "provisioned")
        assert body["is_provisioned"] and body["chip_id"] == chip and body["error"] is None


async def test_a_real_chip_id_that_differs_is_an_error_the_status_names(service, dynsec_mosquitto, topics):
    port = service.http_port
    _, reg = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Bound", "chip_id": "chip-right"})
    cfg = reg["mqtt_config"]
    async with watching(dynsec_mosquitto, topics.errors()) as errors, \
            node_client(dynsec_mosquitto, cfg["username"], cfg["password"]) as client:
        await come_online(client, topics, cfg["node_name"], "chip-wrong")
        await errors.wait(topics.errors(), lambda p: b"chip_mismatch" in p)
        body = await _until_status(port, reg["provisioning_id"], "chip_mismatch")
        assert body["is_provisioned"] is False
        assert (body["chip_id"], body["reported_chip_id"]) == ("chip-right", "chip-wrong")
        assert "chip-right" in body["error"] and "chip-wrong" in body["error"] and "temp_" in body["error"]
        # The right chip then provisions it, and the refusal is gone from the status.
        await come_online(client, topics, cfg["node_name"], "chip-right")
        body = await _until_status(port, reg["provisioning_id"], "provisioned")
        assert body["reported_chip_id"] is None and body["error"] is None


async def test_retrying_the_same_device_replaces_its_pending_registration(service, dynsec_mosquitto, topics):
    port = service.http_port
    status, first = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Pump"})
    assert status == 201
    # The attempt failed on the device's side; the app starts over with the same name.
    status, second = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Pump",
                                                        "chip_id": "temp_999"})
    assert status == 201, second
    assert (await _status(port, first["provisioning_id"]))["status"] == "revoked"
    old, new = first["mqtt_config"], second["mqtt_config"]
    with pytest.raises(WireError):  # the replaced registration's login is gone from the broker
        async with node_client(dynsec_mosquitto, old["username"], old["password"]):
            pass
    async with node_client(dynsec_mosquitto, new["username"], new["password"]) as client:
        await come_online(client, topics, new["node_name"], "chip-pump")
        await _until_status(port, second["provisioning_id"], "provisioned")
    # A provisioned device is never replaced.
    status, answer = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Pump"})
    assert status == 409 and "already exists" in answer["error"]

    # A real chip id: the same chip again replaces its pending registration (even renamed), another chip does not.
    _, tank = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Tank", "chip_id": "chip-t1"})
    status, answer = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Tank",
                                                        "chip_id": "chip-t2"})
    assert status == 409 and "already exists" in answer["error"]
    status, renamed = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Water tank",
                                                         "chip_id": "chip-t1"})
    assert status == 201, renamed
    assert (await _status(port, tank["provisioning_id"]))["status"] == "revoked"
    active = await service.registry.store.list(home_id="home", status=None)
    assert sorted(r["device_name"] for r in active if r["status"] != "revoked") == ["Pump", "Water tank"]


async def test_delete_restart_on_the_node_unprovisions_it_in_the_registry(tmp_path, dynsec_broker, database, topics):
    async with running(dynsec_broker, database, topics) as service:
        port = service.http_port
        _, reg = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "RO purifier",
                                                     "chip_id": "temp_1"})
        cfg = reg["mqtt_config"]
        node = SimNode(tmp_path / "ro", name=cfg["node_name"])
        url = f"mqtt://{cfg['username']}:{cfg['password']}@{dynsec_broker.host}:{dynsec_broker.port}"
        node.provision(broker=url, topic_prefix=cfg["topic_prefix"], keepalive=5, max_backoff=1)
        await node.start()
        try:
            body = await _until_status(port, reg["provisioning_id"], "provisioned")
            chip = body["chip_id"]
            assert chip and not is_temporary_chip(chip)
            # The node's own HTTP API: a wrong method on a known path is 405, an unknown path 404.
            assert (await http(node.http_port, "GET", "/api/restart"))[0] == 405
            assert (await http(node.http_port, "POST", "/api/state"))[0] == 405
            assert (await http(node.http_port, "GET", "/nowhere"))[0] == 404

            status, answer = await http(node.http_port, "DELETE", "/api/restart")
            assert status == 200 and answer["next"] == "provisioning mode"
            body = await _until_status(port, reg["provisioning_id"], "unprovisioned")
            assert body["is_provisioned"] is False and body["chip_id"] == chip
            async with asyncio.timeout(15):
                while True:
                    try:
                        status, info = await http(node.http_port, "GET", "/api/info")
                        if status == 200 and info.get("mode") == "provisioning":
                            break
                    except (OSError, ValueError, IndexError):
                        pass
                    await asyncio.sleep(0.1)
            assert (await http(node.http_port, "GET", "/api/wifi"))[0] == 405  # the portal too
            # New WiFi on the portal, same login: the node is provisioned again (its late log is not news).
            assert (await http(node.http_port, "POST", "/api/wifi", {"ssid": "simnet", "password": "simpass"}))[0] == 200
            assert (await http(node.http_port, "POST", "/api/restart"))[0] == 200
            await _until_status(port, reg["provisioning_id"], "provisioned")
            # A copy of that log entry arriving now (a boot ago) is stale: the node stays provisioned.
            info = await _info(node)
            async with node_client(dynsec_broker, cfg["username"], cfg["password"]) as client:
                entry = {"v": 1, "seq": 999, "level": "info", "code": "unprovisioned",
                         "msg": f"unprovisioned at boot {info['boot_count'] - 2}: WiFi settings wiped"}
                await client.publish(topics.log(cfg["node_name"]), json.dumps(entry), qos=1)
            await asyncio.sleep(0.5)
            assert (await _status(port, reg["provisioning_id"]))["status"] == "provisioned"
            assert "Traceback" not in node.output()
        finally:
            await node.stop()


async def test_an_unprovisioned_device_registered_again_gives_way(service, dynsec_mosquitto, topics):
    """After `DELETE /api/restart` the app runs the whole flow again, with the same name: a new registration."""
    port = service.http_port
    _, first = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Pump", "chip_id": "temp_1"})
    cfg = first["mqtt_config"]
    async with node_client(dynsec_mosquitto, cfg["username"], cfg["password"]) as client:
        await come_online(client, topics, cfg["node_name"], "chip-pump")
        await _until_status(port, first["provisioning_id"], "provisioned")
        entry = {"v": 1, "seq": 1, "level": "info", "code": "unprovisioned",
                 "msg": "unprovisioned at boot 0: WiFi settings wiped by DELETE /api/restart"}
        await client.publish(topics.log(cfg["node_name"]), json.dumps(entry), qos=1)
        await _until_status(port, first["provisioning_id"], "unprovisioned")
    status, second = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Pump",
                                                        "chip_id": "temp_2"})
    assert status == 201, second
    assert (await _status(port, first["provisioning_id"]))["status"] == "revoked"
    new = second["mqtt_config"]
    async with node_client(dynsec_mosquitto, new["username"], new["password"]) as client:
        await come_online(client, topics, new["node_name"], "chip-pump")  # the chip moves to the new registration
        body = await _until_status(port, second["provisioning_id"], "provisioned")
    assert body["chip_id"] == "chip-pump"


async def test_the_chip_of_an_unprovisioned_device_moves_to_its_new_registration(service, dynsec_mosquitto, topics):
    port = service.http_port
    _, first = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "Old name"})
    cfg = first["mqtt_config"]
    async with node_client(dynsec_mosquitto, cfg["username"], cfg["password"]) as client:
        await come_online(client, topics, cfg["node_name"], "chip-moved")
        await _until_status(port, first["provisioning_id"], "provisioned")
        entry = {"v": 1, "seq": 1, "level": "info", "code": "unprovisioned", "msg": "unprovisioned at boot 0: wiped"}
        await client.publish(topics.log(cfg["node_name"]), json.dumps(entry), qos=1)
        await _until_status(port, first["provisioning_id"], "unprovisioned")
    # Registered anew under another name, without its chip id: the chip moves at the first online.
    _, second = await http(port, "POST", REGISTER, {"home_id": "home", "device_name": "New name"})
    new = second["mqtt_config"]
    async with node_client(dynsec_mosquitto, new["username"], new["password"]) as client:
        await come_online(client, topics, new["node_name"], "chip-moved")
        body = await _until_status(port, second["provisioning_id"], "provisioned")
    assert body["chip_id"] == "chip-moved"
    assert (await _status(port, first["provisioning_id"]))["status"] == "revoked"
