"""`nodefleet provision` end to end: a simulated firmware node in provisioning mode on loopback, a real provisioner."""

from __future__ import annotations

import asyncio
import secrets

from click.testing import CliRunner

from nodefleet.cli import main
from nodefleet.contracts.ota import device_key
from nodefleet.embedded.mosquitto import free_port
from nodefleet.sim import SimNode

from .conftest import admin_url, running
from .helpers import http

FAST_CONFIG = {"v": 1, "version": 1, "telemetry_period": 1, "ap_after": 1}


async def _cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    return result.exit_code, result.output


async def _portal_up(node: SimNode, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                status, _ = await http(node.http_port, "GET", "/api/info")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)


async def _until(check, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)


async def test_provision_a_simulated_node_then_change_and_remove_it(tmp_path, dynsec_broker, database, topics):
    broker = ["--broker", admin_url(dynsec_broker), "--topic-root", topics.root, "--fleet-root", topics.fleet]
    node = SimNode(tmp_path / "dev", name="unprovisioned")
    node.write("config.json", FAST_CONFIG)
    master = secrets.token_bytes(32)
    async with running(dynsec_broker, database, topics, ota_master_key=master.hex()) as service:
        await node.start()
        try:
            await _portal_up(node)
            # Device unreachable: the step and what to do.
            code, out = await _cli("provision", *broker, "--name", "RO", "--ssid", "simnet", "--wifi-password", "x",
                                   "--device-url", f"http://127.0.0.1:{free_port()}", "--timeout", "5")
            assert code == 1 and "step 'device info' failed" in out and "nodefleet-XXXX" in out, out
            # Registering through the HTTP edge instead of MQTT reaches the same registry.
            code, out = await _cli("provision", *broker, "--name", "Via HTTP", "--ssid", "s", "--wifi-password", "p",
                                   "--backend-url", f"http://127.0.0.1:{service.http_port}",
                                   "--device-url", f"http://127.0.0.1:{free_port()}")
            assert code == 1 and "step 'device info' failed" in out, out
            # Retrying the same device replaces its pending registration (the first attempt failed).
            code, out = await _cli("provision", *broker, "--name", "Via HTTP", "--ssid", "s", "--wifi-password", "p",
                                   "--backend-url", f"http://127.0.0.1:{service.http_port}",
                                   "--device-url", f"http://127.0.0.1:{free_port()}")
            assert code == 1 and "step 'device info' failed" in out, out
            assert len(await service.registry.store.list(home_id="home", status="revoked")) == 1

            code, out = await _cli("provision", *broker, "--name", "RO purifier", "--ssid", "simnet",
                                   "--wifi-password", "simpass", "--device-url", f"http://127.0.0.1:{node.http_port}",
                                   "--timeout", "30")
            assert code == 0, out + node.output()
            assert "is online" in out
            rows = await service.registry.store.list(home_id="home", status="provisioned")
            assert [r["device_name"] for r in rows] == ["RO purifier"]
            pending = await service.registry.store.list(home_id="home", status="pending")
            assert sorted(r["device_name"] for r in pending) == ["RO", "Via HTTP"]
            name = rows[0]["node"]
            assert rows[0]["chip_id"]
            # The node's OTA key went with its MQTT settings and is kept in its mqtt.json.
            assert node.read("mqtt.json")["ota_key"] == device_key(master, name).hex()
            await _until(lambda: (node.read("config.json") or {}).get("tz_name") == "Europe/Berlin")

            code, out = await _cli("device", "config", name, "--set", "telemetry_period=7", *broker)
            assert code == 0 and "config version 2" in out, out
            await _until(lambda: node.read("config.json")["version"] == 2)
            code, out = await _cli("device", "config", name, "--set", "telemetry_period=-1", *broker)
            assert code == 1 and "telemetry_period" in out, out

            code, out = await _cli("device", "list", "--format", "json", *broker)
            assert code == 0 and name in out

            code, out = await _cli("device", "remove", name, "--yes", *broker)
            assert code == 0 and "revoked" in out, out
            assert (await service.registry.store.device(name))["status"] == "revoked"
            assert "Traceback" not in node.output()
        finally:
            await node.stop()

        # Backend unreachable names the register step.
        code, out = await _cli("provision", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--name", "X",
                               "--ssid", "s", "--wifi-password", "p", "--device-url", "http://127.0.0.1:9")
        assert code == 1 and "step 'register' failed" in out, out
