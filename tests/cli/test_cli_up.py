"""``nodefleet up`` as a real subprocess: start, reach it, stop it, restart it, refuse taken ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
import ws_probe
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.ota import device_key
from nodefleet.contracts.provisioning import HTTP_REGISTER_PATH
from nodefleet.embedded.mosquitto import Mosquitto, free_port
from nodefleet.embedded.postgres import EmbeddedPostgres, port_is_free
from nodefleet.paths import LocalCredentials
from nodefleet.up.services import SERVICES
from nodefleet.wire import BrokerAddress, Client

from .helpers import (
    children_of,
    cli_env,
    database_url,
    nodefleet,
    operator_url,
    postmaster_pid,
    process_alive,
)

pytestmark = pytest.mark.timeout(120)


SERVICES = ", ".join(SERVICES)


def up_env(topics: Topics) -> dict[str, str]:
    """Own topic roots and client id, so the services inside never meet other tests' sessions."""
    return cli_env(topics, NODEFLEET_TELEMETRY_CLIENT_ID=f"telemetry-{uuid.uuid4().hex[:8]}")


async def mqtt_round_trip(broker_url: str, topic: str) -> bytes:
    async with Client(BrokerAddress.parse(broker_url), client_id=f"up-test-{uuid.uuid4().hex[:8]}") as mqtt:
        await mqtt.subscribe(topic, qos=1)
        await mqtt.publish(topic, b"round trip", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(mqtt.messages))
    return message.payload  # type: ignore[return-value]


async def test_up_starts_stops_cleanly_and_keeps_data(launch_up, data_dir: Path, topics: Topics) -> None:
    mqtt_port, db_port, http_port, ws_port, tls_port = (free_port() for _ in range(5))
    ports = ("--mqtt-port", str(mqtt_port), "--db-port", str(db_port), "--http-port", str(http_port),
             "--ws-port", str(ws_port), "--tls-port", str(tls_port), "--log-format", "json")
    up = launch_up(*ports, data_dir=data_dir, env=up_env(topics))
    banner = await up.wait_ready()
    print(f"nodefleet up ready after {up.ready_after:.2f} s (fresh data directory, from launch)")
    broker_url = f"mqtt://127.0.0.1:{mqtt_port}"
    assert banner["broker"].startswith(broker_url) and "embedded" in banner["broker"]
    # The provisioner's HTTP edge is where the banner says, and answers the phone app.
    assert banner["http"].startswith(f"http://127.0.0.1:{http_port}  ") and "/api/provision/register/" in banner["http"]
    assert await _http_status(http_port, "/api/provision/status/" + "0" * 32) == 404
    # MQTT over WebSockets is where the banner says, for the operator's login only.
    assert banner["websocket"].startswith(f"ws://127.0.0.1:{ws_port}/  ")
    operator = BrokerAddress.parse(operator_url(data_dir, mqtt_port))
    assert not await asyncio.to_thread(ws_probe.refused, ws_port, operator.username, operator.password)
    assert await asyncio.to_thread(ws_probe.refused, ws_port)
    assert f":{db_port}/nodefleet" in banner["database"] and banner["data"] == str(data_dir)
    assert banner["services"] == SERVICES and banner["services"].startswith("telemetry")
    assert await mqtt_round_trip(operator_url(data_dir, mqtt_port), f"{topics.root}/probe") == b"round trip"
    # MQTT over TLS, with the authority made on this first start (the operator's login, the same access).
    ca = data_dir / "tls" / "ca.pem"
    assert banner["tls"].startswith(f"mqtts://127.0.0.1:{tls_port}?ca={ca}  "), banner["tls"]
    over_tls = operator_url(data_dir, mqtt_port).replace("mqtt://", "mqtts://").replace(f":{mqtt_port}",
                                                                                      f":{tls_port}?ca={ca}")
    assert await mqtt_round_trip(over_tls, f"{topics.root}/probe") == b"round trip"
    assert (data_dir / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
    first_ca = ca.read_bytes()
    # The database takes only its password (kept beside the broker logins, readable by this user alone).
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{db_port}/nodefleet")
    assert (data_dir / "broker-credentials.json").stat().st_mode & 0o777 == 0o600
    dsn = database_url(data_dir, db_port)
    connection = await asyncpg.connect(dsn)
    await connection.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('written in the first run')")
    await connection.close()

    # One `up` per data directory: a second one is refused before it starts anything.
    second = await nodefleet("up", "--mqtt-port", str(free_port()), "--db-port", str(free_port()),
                             "--data-dir", str(data_dir), env=up_env(topics))
    assert second.code == 2 and f"pid {up.pid}" in second.stderr and "--data-dir" in second.stderr

    server_pid = postmaster_pid(data_dir)
    children = children_of(up.pid)
    assert server_pid is not None and process_alive(server_pid)
    assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]
    assert not process_alive(server_pid) and not any(process_alive(pid) for pid in children)
    assert port_is_free("127.0.0.1", mqtt_port) and port_is_free("127.0.0.1", db_port)
    events = [json.loads(line)["event"] for line in up.stderr.splitlines() if line.startswith("{")]
    stop_order = [event for event in events if event in ("service_stopped", "broker_stopped", "postgres_stopped")]
    assert stop_order[-2:] == ["broker_stopped", "postgres_stopped"] and events[-1] == "stopped"
    assert "Traceback" not in up.stderr

    # The second run also brings demo nodes: they must stop with it.
    again = launch_up(*ports, "--demo", "2", data_dir=data_dir, env=up_env(topics))
    await again.wait_ready()
    print(f"nodefleet up ready after {again.ready_after:.2f} s (existing data directory, from launch)")
    connection = await asyncpg.connect(dsn)
    assert await connection.fetchval("SELECT note FROM kept") == "written in the first run"
    await connection.close()
    assert ca.read_bytes() == first_ca  # the same authority: nodes provisioned before still trust the broker
    await wait_for(lambda: _demo_nodes_online(broker_url, topics, data_dir), timeout=20, interval=0.3)
    children = children_of(again.pid)
    assert len(children) >= 2
    assert await again.stop(signal.SIGINT, group=True) == 0, again.stderr[-3000:]
    assert postmaster_pid(data_dir) is None and not any(process_alive(pid) for pid in children)


async def _http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(answer.split(b" ")[1])


async def _register(port: int, device_name: str) -> tuple[int, dict]:
    """Register a device through the provisioner's HTTP edge, as the phone app does."""
    body = json.dumps({"home_id": "home", "device_name": device_name}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {HTTP_REGISTER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


async def _demo_nodes_online(broker_url: str, topics: Topics, data_dir: Path) -> bool:
    """Both demo nodes (registered by the provisioner: ``demo-000-<hex>``) are online."""
    result = await nodefleet("devices", "--format", "json", "--broker", broker_url,
                             env=cli_env(topics, data_dir=data_dir))
    online = {row["node"].rsplit("-", 1)[0] for row in json.loads(result.stdout or "[]") if row["online"]}
    return {"demo-000", "demo-001"} <= online


async def test_up_with_external_broker_end_to_end(launch_up, data_dir: Path, topics: Topics) -> None:
    master = os.urandom(32)
    with Mosquitto() as broker:
        # An OTA master key in the environment is the one every service uses; none is made.
        env = {**up_env(topics), "NODEFLEET_OTA_MASTER_KEY": master.hex()}
        up = launch_up("--broker", broker.url, "--db-port", str(free_port()), data_dir=data_dir, env=env)
        banner = await up.wait_ready()
        assert banner["broker"] == f"{broker.url}  (external)" and banner["services"] == SERVICES
        status, registration = await _register(int(banner["http"].split()[0].rsplit(":", 1)[1]), "Porch light")
        assert status == 201, registration
        node = registration["mqtt_config"]["node_name"]
        assert registration["mqtt_config"]["ota_key"] == device_key(master, node).hex()
        assert LocalCredentials.read(data_dir).ota_master is None  # type: ignore[union-attr]
        async with Client(BrokerAddress.parse(broker.url), client_id="e2e-node") as node:
            await node.publish(topics.status("porch"), b"online", qos=1, retain=True)
            await node.publish(topics.state("porch"), b'{"v":1,"seq":4,"relay":"ON","mode":"manual"}', qos=1, retain=True)
            for seq in (1, 2, 3):
                payload = json.dumps({"v": 1, "seq": seq, "readings": {"temperature": 20 + seq}})
                await node.publish(topics.telemetry("porch"), payload, qos=1)
            await node.publish(topics.log("porch"), b'{"v":1,"seq":1,"code":"dht_timeout","msg":"no answer"}', qos=1)
        cli = cli_env(topics)
        for _ in range(100):  # the service commits in batches: wait until all three rows are there
            query = await nodefleet("telemetry", "query", "porch", "--since", "5m", "--format", "json",
                                    "--broker", broker.url, env=cli)
            if query.code == 0 and len(json.loads(query.stdout)) == 3:
                break
            await asyncio.sleep(0.1)
        assert query.code == 0, query.stderr
        assert [row["readings"]["temperature"] for row in json.loads(query.stdout)] == [21, 22, 23]
        devices = await nodefleet("devices", "--broker", broker.url, env=cli)
        porch = next(line for line in devices.stdout.splitlines() if "porch" in line)
        assert "online" in porch and "ON" in porch and "manual" in porch
        logs = await nodefleet("logs", "porch", "--format", "json", "--broker", broker.url, env=cli)
        assert [row["code"] for row in json.loads(logs.stdout)] == ["dht_timeout"]
        assert await up.stop(signal.SIGTERM) == 0, up.stderr[-3000:]


@pytest.mark.parametrize("taken", ["--mqtt-port", "--db-port", "--http-port", "--ws-port", "--tls-port"])
async def test_a_taken_port_is_named_and_nothing_starts(taken: str, data_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"--mqtt-port": str(free_port()), "--db-port": str(free_port()), "--http-port": str(free_port()),
                 "--ws-port": str(free_port()), "--tls-port": str(free_port()), taken: str(busy)}
        result = await nodefleet("up", *[item for pair in ports.items() for item in pair], "--data-dir", str(data_dir),
                                 env=cli_env())
    assert result.code == 2, result.stderr
    assert f"port {busy}" in result.stderr and taken in result.stderr
    assert not (data_dir / "postgres").exists()  # checked before anything was started
    assert "Traceback" not in result.stderr


async def test_an_unreachable_broker_stops_the_database_again(data_dir: Path) -> None:
    result = await nodefleet("up", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--db-port", str(free_port()),
                             "--data-dir", str(data_dir), env=cli_env())
    assert result.code == 1 and "cannot reach the broker" in result.stderr and "--broker" in result.stderr
    assert (data_dir / "postgres" / "PG_VERSION").exists() and postmaster_pid(data_dir) is None


async def test_a_second_ctrl_c_forces(data_dir: Path, mosquitto, tmp_path: Path) -> None:
    script = Path(__file__).with_name("stubborn_up.py")
    output = tmp_path / "stubborn.out"
    with open(output, "wb") as out:
        # The script's directory comes first on its path: the repository's nodefleet must come next, not an install.
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        process = subprocess.Popen([sys.executable, str(script), str(data_dir), str(free_port()), mosquitto.url],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        await wait_for(lambda: "READY" in output.read_text(), timeout=30)
        server_pid = postmaster_pid(data_dir)
        process.send_signal(signal.SIGINT)
        await wait_for(lambda: "stopping slowly" in output.read_text(), timeout=10)
        process.send_signal(signal.SIGINT)
        await wait_for(lambda: process.poll() is not None, timeout=10)
        assert process.returncode == 130, output.read_text()[-3000:]
        assert server_pid is not None and not process_alive(server_pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if postmaster_pid(data_dir) is not None:
            EmbeddedPostgres(data_dir / "postgres", port=0).stop("immediate")


async def test_a_killed_up_is_cleaned_up_by_the_next(launch_up, data_dir: Path, mosquitto, topics: Topics) -> None:
    args = ("--broker", mosquitto.url, "--db-port", str(free_port()))
    env = up_env(topics)
    killed = launch_up(*args, data_dir=data_dir, env=env)
    await killed.wait_ready()
    orphan = postmaster_pid(data_dir)
    killed.kill()  # kill -9: no cleanup at all, PostgreSQL (its own session) keeps running
    assert orphan is not None and process_alive(orphan)
    following = launch_up(*args, data_dir=data_dir, env=env)
    await following.wait_ready()
    assert not process_alive(orphan) and "stopping_orphan_postgres" in following.stderr
    assert await following.stop(signal.SIGINT, group=True) == 0, following.stderr[-3000:]
    assert postmaster_pid(data_dir) is None
