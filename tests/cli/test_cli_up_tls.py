"""``nodefleet up --node-tls`` and ``nodefleet provision``: a node provisioned from scratch speaks MQTT over TLS to the
embedded broker, checking its certificate against the authority made on the first start."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nodefleet.embedded.mosquitto import free_port
from nodefleet.sim import SimNode

from .helpers import cli_env, nodefleet
from .test_cli_up import up_env

pytestmark = pytest.mark.timeout(150)

FAST_CONFIG = {"v": 1, "version": 1, "telemetry_period": 1, "ap_after": 1}


async def test_a_node_provisioned_under_node_tls_connects_over_tls(launch_up, data_dir, topics, tmp_path):
    tls_port, mqtt_port = free_port(), free_port()
    up = launch_up("--mqtt-port", str(mqtt_port), "--db-port", str(free_port()), "--tls-port", str(tls_port),
                   "--node-tls", data_dir=data_dir, env=up_env(topics))
    banner = await up.wait_ready()
    assert "nodes registered now get it" in banner["tls"], banner
    node = SimNode(tmp_path / "dev", name="fresh")  # provisioning mode: nothing stored yet
    node.write("config.json", FAST_CONFIG)
    await node.start()
    try:
        result = await nodefleet("provision", "--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--name", "RO purifier", "--ssid", "simnet", "--wifi-password",
                                 "simpass", "--device-url", f"http://127.0.0.1:{node.http_port}", "--timeout", "60",
                                 env=cli_env(topics, data_dir=data_dir), timeout=90)
        assert result.code == 0, result.stdout + result.stderr + node.output()
        assert "is online" in result.stdout, result.stdout
        mqtt = json.loads((node.flash_dir / "mqtt.json").read_text())
        assert mqtt["tls"] is True and mqtt["port"] == tls_port, mqtt
        authority = x509.load_pem_x509_certificate((data_dir / "tls" / "ca.pem").read_bytes())
        assert (node.flash_dir / "ca.der").read_bytes() == authority.public_bytes(serialization.Encoding.DER)
        assert base64.b64encode((node.flash_dir / "ca.der").read_bytes())  # kept on flash for every connect
    finally:
        await node.stop()
    assert "Traceback" not in node.output(), node.output()
    assert "Traceback" not in up.stderr


async def test_node_tls_without_the_tls_port_is_refused_before_anything_starts(data_dir):
    result = await nodefleet("up", "--mqtt-port", str(free_port()), "--db-port", str(free_port()), "--tls-port", "-1",
                             "--node-tls", "--data-dir", str(data_dir), env=cli_env())
    assert result.code == 2 and "--node-tls" in result.stderr and "--tls-port" in result.stderr, result.stderr
    assert not (data_dir / "postgres").exists() and "Traceback" not in result.stderr
