"""Provisioning mode end to end over the HTTP API on a loopback port, then online over MQTT."""

from __future__ import annotations

from .http import poll, request

BAD_PASSWORD = {"ssid": "simnet", "password": "wrong-one"}


async def test_provisioning_api_end_to_end(make_node, watch, mosquitto, topics):
    node = make_node(provisioned=False)
    await node.start()
    port = node.http_port

    status, info = await request(port, "GET", "/api/info")
    assert status == 200 and info["mode"] == "provisioning" and info["error"] is None
    assert info["chip_id"] and info["mac"] and "switch" in info["caps"] and info["heap_free"] > 20_000
    status, page = await request(port, "GET", "/")
    assert status == 200 and "<form" in page
    assert (await node.ctl())["ap"] is True
    assert (await node.ctl())["led"] == "provisioning"

    # Bad bodies get a clear 4xx and the portal keeps answering.
    assert (await request(port, "POST", "/api/wifi", b"{ssid"))[0] == 400
    assert (await request(port, "POST", "/api/wifi", [1, 2]))[0] == 400
    status, err = await request(port, "POST", "/api/wifi", {"ssid": "simnet", "dhcp": False})
    assert status == 400 and "static" in err["error"]
    assert (await request(port, "POST", "/api/wifi", {"ssid": "", "password": "x"}))[0] == 400
    assert (await request(port, "POST", "/api/mqtt", {"broker": "h", "port": 99999, "topic_prefix": "a",
                                                      "node_name": "n"}))[0] == 400
    assert (await request(port, "POST", "/api/wifi", b"x" * 3000))[0] == 413
    assert (await request(port, "GET", "/", raw=b"\x00garbage\r\n\r\n"))[0] in (400, 404)
    assert (await request(port, "GET", "/nowhere"))[0] == 404

    # Wrong WiFi password: the node tries, comes back to provisioning and says why; nothing is lost.
    assert (await request(port, "POST", "/api/wifi", BAD_PASSWORD))[0] == 200
    mqtt = {"broker": mosquitto.host, "port": mosquitto.port, "topic_prefix": topics.prefix("node-1"),
            "node_name": "node-1", "ota_key": "5a" * 32}
    assert (await request(port, "POST", "/api/mqtt", {**mqtt, "ota_key": "5a" * 33}))[0] == 400
    assert (await request(port, "POST", "/api/mqtt", mqtt))[0] == 200
    assert node.read("mqtt.json")["ota_key"] == "5a" * 32  # the OTA key from the registration is kept
    assert (await request(port, "POST", "/api/restart"))[0] == 200
    info = await poll(port, "/api/info", lambda i: i.get("mode") == "provisioning" and i.get("error"))
    assert "wrong password" in info["error"] and info["wifi_stored"] and info["mqtt_stored"]
    assert node.read("wifi.json")["password"] == "wrong-one"

    # Right password: online over MQTT.
    assert (await request(port, "POST", "/api/wifi", {"ssid": "simnet", "password": "simpass"}))[0] == 200
    mark = watch.mark()
    assert (await request(port, "POST", "/api/restart"))[0] == 200
    assert await watch.wait("status", lambda s: s == "online", since=mark, timeout=15) == "online"
    info = await watch.wait("info", since=mark)
    assert info["boot_count"] >= 3 and info["boot_reason"] == "soft"
    assert node.read("prov_err.json") is None


async def test_button_at_boot_and_delete_restart(make_node, watch):
    node = make_node(env={"NF_BUTTON": "1"})
    await node.start()
    status, info = await request(node.http_port, "GET", "/api/info")
    assert info["mode"] == "provisioning" and info["wifi_stored"]
    # DELETE /api/restart wipes the WiFi credentials and comes back in provisioning mode.
    assert (await request(node.http_port, "DELETE", "/api/restart"))[0] == 200
    info = await poll(node.http_port, "/api/info", lambda i: node.restarts and not i["wifi_stored"])
    assert info["mode"] == "provisioning" and info["mqtt_stored"]


async def test_stored_wifi_that_fails_at_boot_is_retried_later(make_node, watch):
    # The router is down at boot: provisioning mode says why, then tries the stored WiFi again.
    node = make_node(env={"NF_WIFI": "0", "NF_PROV_RETRY": "2"})
    await node.start()
    info = await poll(node.http_port, "/api/info", lambda i: i.get("mode") == "provisioning")
    assert info["error"] == "wifi: no network in range" and info["wifi_stored"]
    node.env["NF_WIFI"] = "1"  # the router is back for the next boot
    assert await watch.wait("status", lambda s: s == "online", timeout=20) == "online"
