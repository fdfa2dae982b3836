"""`nodefleet device config`: a simulated firmware node applies the new version and the provisioner records it."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from nodefleet.cli import main
from nodefleet.contracts.provisioning import RegisterRequest
from nodefleet.sim import SimNode

from .conftest import admin_url
from .helpers import watching


async def _cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
    return result.exit_code, result.output


async def _until(check, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.1)


async def test_the_node_applies_a_config_and_rejects_one_it_cannot_use(tmp_path, service, dynsec_mosquitto, topics):
    broker = ["--broker", admin_url(dynsec_mosquitto), "--topic-root", topics.root, "--fleet-root", topics.fleet]
    reg = await service.registry.registrations.register(RegisterRequest(home_id="home", device_name="Pump"))
    cfg = reg.mqtt_config
    name = cfg.node_name
    node = SimNode(tmp_path / "pump", name=name)
    node.provision(broker=f"mqtt://{cfg.username}:{cfg.password}@{dynsec_mosquitto.host}:{dynsec_mosquitto.port}",
                   topic_prefix=cfg.topic_prefix, keepalive=5, max_backoff=1)

    async def applied(version: int) -> bool:
        return (await service.registry.store.device(name))["config_applied"] == version

    async with watching(dynsec_mosquitto, topics.log(name)) as logs:
        await node.start()
        try:
            # First online: the provisioner's version 1 is applied and reported back.
            await _until(lambda: applied(1))

            code, out = await _cli("device", "config", name, "--set", "telemetry_period=5", *broker)
            assert code == 0 and f"{name}: config version 2 applied by the node" in out, out
            assert (await service.registry.store.device(name))["config_applied"] == 2
            assert node.read("config.json")["telemetry_period"] == 5
            status = await service.registry.registrations.status(reg.provisioning_id)
            assert (status.config_version, status.config_applied) == (2, 2)
            code, out = await _cli("device", "list", "--format", "json", *broker)
            assert code == 0 and [(r["config_version"], r["config_applied"]) for r in json.loads(out)] == [(2, 2)]

            # Pin 34 passes the provisioner's model but is input-only on the ESP32: the node refuses it.
            code, out = await _cli("device", "config", name, "--set", "pins.outputs.relay=34", *broker)
            assert code == 1 and f"{name} rejected config version 3: pins.outputs.relay=34" in out, out
            assert "It keeps the version it had" in out
            entry = json.loads(await logs.wait(topics.log(name), lambda p: b"bad_config" in p))
            assert "version 3 rejected" in entry["msg"] and "pins.outputs.relay=34" in entry["msg"]
            row = await service.registry.store.device(name)
            assert (row["config_version"], row["config_applied"]) == (3, 2)
            assert node.read("config.json")["version"] == 2

            # --no-wait answers at once; the node still applies the next good version.
            code, out = await _cli("device", "config", name, "--set", "pins.outputs.relay=25", "--no-wait", *broker)
            assert code == 0 and out.strip() == f"{name}: config version 4 published", out
            await _until(lambda: applied(4))
            assert "Traceback" not in node.output()
        finally:
            await node.stop()
