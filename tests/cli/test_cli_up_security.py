"""``nodefleet up`` is secured by default: no anonymous clients, a login per service, per node and for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import stat
import uuid
from pathlib import Path

import pytest
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.contracts.ota import device_key
from nodefleet.contracts.provisioning import Registration
from nodefleet.embedded.mosquitto import free_port
from nodefleet.paths import (
    CREDENTIALS_FILE,
    DYNSEC_ADMIN,
    OPERATOR,
    LocalCredentials,
    mqtt_url,
)
from nodefleet.up.services import SERVICES
from nodefleet.wire import BrokerAddress, BrokerRefused, Client

from .helpers import cli_env, nodefleet
from .test_cli_up import mqtt_round_trip, up_env

pytestmark = pytest.mark.timeout(150)


async def refused(url: str) -> bool:
    """True if the broker refuses this login at CONNECT."""
    try:
        async with Client(BrokerAddress.parse(url), client_id=f"probe-{uuid.uuid4().hex[:8]}"):
            return False
    except BrokerRefused:
        return True


async def received(watcher_url: str, watch: list[str], publisher_url: str, topics: list[str]) -> set[str]:
    """The topics a watcher subscribed to ``watch`` receives (retained ones aside) when ``publisher_url``
    publishes to each of ``topics``."""
    async with Client(BrokerAddress.parse(watcher_url), client_id=f"watch-{uuid.uuid4().hex[:8]}") as watcher:
        for topic_filter in watch:
            await watcher.subscribe(topic_filter, qos=1)
        async with Client(BrokerAddress.parse(publisher_url), client_id=f"pub-{uuid.uuid4().hex[:8]}") as publisher:
            for topic in topics:
                await publisher.publish(topic, b"probe", qos=1)
        seen: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in watcher.messages:
                    if not message.retain:
                        seen.add(str(message.topic))
    return seen


def private(path: Path) -> bool:
    return path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


async def demo_nodes_online(broker: str, topics: Topics, data_dir: Path, count: int) -> set[str]:
    """The online demo nodes, as the CLI reports them with the logins from the data directory."""
    result = await nodefleet("devices", "--format", "json", "--broker", broker, env=cli_env(topics, data_dir=data_dir))
    online = {row["node"] for row in json.loads(result.stdout or "[]") if row["online"]}
    return online if len({name.rsplit("-", 1)[0] for name in online if name.startswith("demo-")}) >= count else set()


async def test_up_refuses_strangers_and_gives_every_client_its_own_login(
        launch_up, data_dir: Path, topics: Topics, tmp_path: Path) -> None:
    port = free_port()
    args = ("--mqtt-port", str(port), "--db-port", str(free_port()), "--demo", "2", "--log-format", "json")
    up = launch_up(*args, data_dir=data_dir, env=up_env(topics))
    banner = await up.wait_ready()
    print(f"secured nodefleet up with 2 demo nodes ready after {up.ready_after:.2f} s (fresh data directory)")
    assert "secured" in banner["broker"]
    stored = LocalCredentials.read(data_dir)
    assert stored is not None and stored.path == data_dir / CREDENTIALS_FILE
    assert f"logins     {stored.path}" in up.stdout
    services = set(SERVICES)
    assert set(stored.passwords) == {DYNSEC_ADMIN, OPERATOR} | services
    # The fleet's OTA master key, made on this first run, kept beside the logins.
    assert stored.ota_master is not None and re.fullmatch(r"[0-9a-f]{64}", stored.ota_master)
    await wait_for(lambda: (data_dir / "dynamic-security.json").exists(), timeout=5)  # saved a second after a change
    for name in (CREDENTIALS_FILE, "dynamic-security.json", "demo-nodes.json"):
        assert private(data_dir / name), f"{name} is readable by others"
    broker = f"mqtt://127.0.0.1:{port}"

    # Strangers are refused: no login, a wrong password, an unknown user.
    assert await refused(broker)
    assert await refused(mqtt_url(OPERATOR, "wrong", "127.0.0.1", port))
    assert await refused(mqtt_url("intruder", stored.passwords[OPERATOR], "127.0.0.1", port))
    # The banner's mosquitto_sub line is ready to paste.
    line = next(text for text in up.stdout.splitlines() if "mosquitto_sub" in text)
    words = shlex.split(line.split("mosquitto_sub", 1)[1].split("(")[0])
    pasted = mqtt_url(words[words.index("-u") + 1], words[words.index("-P") + 1], "127.0.0.1", port)
    assert await mqtt_round_trip(pasted, f"{topics.root}/pasted") == b"round trip"

    # The CLI finds the operator's login in the data directory; the services answer under their own logins.
    online = await wait_for(lambda: demo_nodes_online(broker, topics, data_dir, 2), timeout=30, interval=0.3)
    # Without the logins the CLI says why it was refused; an explicit user:password is used as given.
    elsewhere = tmp_path / "other-data"
    stranger = await nodefleet("devices", "--broker", broker, env=cli_env(topics, data_dir=elsewhere))
    assert stranger.code == 1 and "refused the login" in stranger.stderr and "NODEFLEET_DATA_DIR" in stranger.stderr
    wrong = await nodefleet("devices", "--broker", mqtt_url(OPERATOR, "wrong", "127.0.0.1", port),
                            env=cli_env(topics, data_dir=data_dir))
    assert wrong.code == 1 and "check the user and password" in wrong.stderr

    # Demo nodes were registered by the provisioner: each logs in as itself and stays under its prefix.
    saved = json.loads((data_dir / "demo-nodes.json").read_text())["registrations"]
    logins = [Registration.model_validate(entry).mqtt_config for entry in saved]
    assert {login.node_name for login in logins} == {name for name in online if name.startswith("demo-")}
    first, second = logins
    assert first.username == first.node_name and first.password != second.password
    # Each demo node got its own OTA key, derived from the master, and keeps it on its flash.
    for login in logins:
        assert login.ota_key == device_key(bytes.fromhex(stored.ota_master), login.node_name).hex()
        assert json.loads((data_dir / "demo-nodes" / login.node_name / "mqtt.json").read_text())["ota_key"] == \
            login.ota_key
    node = mqtt_url(first.username, first.password, "127.0.0.1", port)
    operator = stored.url(OPERATOR, "127.0.0.1", port)
    own = f"{first.topic_prefix}/telemetry"
    foreign = [f"{second.topic_prefix}/set/switch", f"{topics.root}/{uuid.uuid4().hex[:6]}/state",
               f"{topics.fleet}/provisioner/request/register"]
    assert await received(operator, [own, *foreign], node, [own, *foreign]) == {own}
    # It receives only what is addressed to it, not another node's commands.
    mine, theirs = f"{first.topic_prefix}/set/switch", f"{second.topic_prefix}/set/switch"
    assert await received(node, [f"{first.topic_prefix}/set/#", f"{topics.root}/#"], operator, [mine, theirs]) == {mine}
    assert await refused(mqtt_url(first.username, second.password, "127.0.0.1", port))

    # A restart (here on another port) reuses the logins, the registered demo nodes and their flash.
    flash = data_dir / "demo-nodes" / first.node_name
    reserved = json.loads((flash / "seq.json").read_text())["telemetry"]
    assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]
    port = free_port()
    again = launch_up("--mqtt-port", str(port), *args[2:], data_dir=data_dir, env=up_env(topics))
    await again.wait_ready()
    # Demo telemetry within seconds of the start, with sequence numbers past those of the first run.
    async with Client(BrokerAddress.parse(stored.url(OPERATOR, "127.0.0.1", port)),
                      client_id=f"tail-{uuid.uuid4().hex[:6]}") as tail:
        await tail.subscribe(f"{first.topic_prefix}/telemetry")
        async with asyncio.timeout(12):
            message = await anext(aiter(tail.messages))
    assert json.loads(message.payload)["seq"] >= reserved
    print(f"secured nodefleet up with 2 demo nodes ready after {again.ready_after:.2f} s (existing data directory)")
    assert LocalCredentials.read(data_dir).passwords == stored.passwords  # type: ignore[union-attr]
    assert LocalCredentials.read(data_dir).ota_master == stored.ota_master  # type: ignore[union-attr]
    assert json.loads((data_dir / "demo-nodes.json").read_text())["registrations"] == saved
    assert not await refused(mqtt_url(first.username, first.password, "127.0.0.1", port))
    await wait_for(lambda: demo_nodes_online(f"mqtt://127.0.0.1:{port}", topics, data_dir, 2), timeout=30, interval=0.3)
    assert '"registered"' not in again.stderr  # nothing registered twice
    assert LocalCredentials.read(data_dir).serves("127.0.0.1", port)  # type: ignore[union-attr]
    assert await again.stop(signal.SIGINT, group=True) == 0, again.stderr[-3000:]
    # Stopped: the commands no longer log in to whatever listens on that port next.
    assert not LocalCredentials.read(data_dir).serves("127.0.0.1", port)  # type: ignore[union-attr]


async def test_insecure_is_an_explicit_open_broker(launch_up, data_dir: Path, topics: Topics) -> None:
    port = free_port()
    up = launch_up("--insecure", "--mqtt-port", str(port), "--db-port", str(free_port()), "--demo", "1",
                   "--log-format", "json", data_dir=data_dir, env=up_env(topics))
    banner = await up.wait_ready()
    print(f"insecure nodefleet up with 1 demo node ready after {up.ready_after:.2f} s")
    assert "INSECURE" in banner["broker"] and "insecure_broker" in up.stderr
    # The file keeps only the database's password: no broker logins, no listener for the commands to log in to.
    kept = LocalCredentials.read(data_dir)
    assert kept is not None and kept.passwords == {} and kept.listener is None and kept.database_password
    assert "logins" not in up.stdout
    broker = f"mqtt://127.0.0.1:{port}"
    assert await mqtt_round_trip(broker, f"{topics.root}/anonymous") == b"round trip"
    assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t", up.stdout)  # no login to paste
    # Demo nodes still register (the provisioner hands out passwords the open broker does not check).
    await wait_for(lambda: demo_nodes_online(broker, topics, data_dir, 1), timeout=30, interval=0.3)
    assert '"credentials": "none"' in up.stderr
    assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]


async def test_insecure_with_an_external_broker_is_a_usage_error(data_dir: Path) -> None:
    result = await nodefleet("up", "--insecure", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--data-dir",
                             str(data_dir), env=cli_env())
    assert result.code == 2 and "--insecure" in result.stderr and "--broker" in result.stderr
    assert not data_dir.exists()


async def test_sim_nodes_register_to_join_a_secured_up(launch_up, data_dir: Path, topics: Topics, tmp_path: Path) -> None:
    port = free_port()
    up = launch_up("--mqtt-port", str(port), "--db-port", str(free_port()), "--log-format", "json",
                   data_dir=data_dir, env=up_env(topics))
    await up.wait_ready()
    broker = f"mqtt://127.0.0.1:{port}"
    env = cli_env(topics, data_dir=data_dir)
    # The operator's login is not handed to nodes: they must be registered.
    refused_sim = await nodefleet("sim", "--nodes", "1", "--duration", "1", "--broker", broker, env=env)
    assert refused_sim.code == 2 and "--register" in refused_sim.stderr
    workdir = tmp_path / "sim"
    sim = asyncio.create_task(nodefleet("sim", "--nodes", "2", "--register", "--duration", "10", "--name-prefix", "bench",
                                        "--workdir", str(workdir), "--broker", broker, env=env, timeout=40))
    try:
        online = await wait_for(lambda: _online_named(broker, env, "bench-"), timeout=30, interval=0.3)
        assert len(online) == 2
        saved = json.loads((workdir / "registrations.json").read_text())["registrations"]
        assert {entry["mqtt_config"]["node_name"] for entry in saved} == online
        assert all(entry["mqtt_config"]["username"] == entry["mqtt_config"]["node_name"] for entry in saved)
    finally:
        result = await sim
    assert result.code == 0, result.stderr
    assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]


async def _online_named(broker: str, env: dict[str, str], prefix: str) -> set[str]:
    result = await nodefleet("devices", "--format", "json", "--broker", broker, env=env)
    online = {row["node"] for row in json.loads(result.stdout or "[]") if row["online"] and row["node"].startswith(prefix)}
    return online if len(online) >= 2 else set()


async def test_an_external_brokers_login_is_used_and_never_shown(launch_up, data_dir: Path, topics: Topics,
                                                                 secured_mosquitto) -> None:
    from broker_security import SERVICE

    login = mqtt_url(SERVICE[0], SERVICE[1], secured_mosquitto.host, secured_mosquitto.port)
    up = launch_up("--broker", login, "--db-port", str(free_port()), "--log-format", "json",
                   data_dir=data_dir, env=up_env(topics))
    banner = await up.wait_ready()
    assert banner["broker"] == f"mqtt://{SERVICE[0]}:PASSWORD@127.0.0.1:{secured_mosquitto.port}  (external)"
    kept = LocalCredentials.read(data_dir)  # the embedded database's password only: that broker is not ours
    assert kept is not None and kept.passwords == {} and kept.listener is None and "mosquitto_sub" not in up.stdout
    # The services logged in with the URL's user: the telemetry service answers.
    result = await nodefleet("devices", "--broker", login, env=cli_env(topics, data_dir=data_dir))
    assert result.code == 0, result.stderr
    assert await up.stop(signal.SIGINT, group=True) == 0, up.stderr[-3000:]
    assert SERVICE[1] not in up.stdout and SERVICE[1] not in up.stderr
