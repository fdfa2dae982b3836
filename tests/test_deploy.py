"""The container deployment stays in step with the code (no Docker engine needed).

The Mosquitto container's entry point (deploy/mosquitto/init-dynsec.sh) runs
here against the system's Mosquitto 2.0 with the deployed mosquitto.conf.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from ws_probe import check_websocket_security

from nodefleet.contracts import Topics
from nodefleet.embedded import mosquitto
from nodefleet.embedded.dynsec import MOSQUITTO_PLUGIN
from nodefleet.embedded.mosquitto import free_port
from nodefleet.processes import stop_process
from nodefleet.tls import ensure_authority
from nodefleet.wire import BrokerAddress, BrokerRefused, BrokerUnavailable, Client
from services.provisioner.credentials import DynamicSecurity

ROOT = Path(__file__).resolve().parents[1]
INIT_SCRIPT = ROOT / "deploy/mosquitto/init-dynsec.sh"
IMAGE_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
SERVICE_USERS = ("telemetry", "scheduler", "ota", "operator")


def service_packages() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def test_compose_runs_every_service_with_its_module() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    commands = {name: spec.get("command") for name, spec in compose["services"].items()}
    for name in service_packages():
        assert commands.get(name) == ["python", "-m", f"services.{name}"], f"compose.yaml lacks the {name} service"
    assert {"mosquitto", "postgres"} <= set(commands)


def test_compose_services_are_configured_only_by_environment() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in service_packages():
        env = compose["services"][name]["environment"]
        assert re.fullmatch(r"mqtt://[a-z]+:\$\{NODEFLEET_MQTT_[A-Z]+_PASSWORD:\?[^}]+\}"
                            r"@mosquitto:\$\{NODEFLEET_MQTT_PORT:-1883\}",
                            env["NODEFLEET_MQTT_URL"]), env["NODEFLEET_MQTT_URL"]
        assert env["NODEFLEET_DATABASE_URL"].startswith("postgresql://")


def _conf(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def test_compose_broker_refuses_anonymous_and_gives_each_service_its_user() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    conf = _conf((ROOT / "deploy/mosquitto/mosquitto.conf").read_text())
    assert conf["allow_anonymous"] == "false" and conf["plugin"] == IMAGE_PLUGIN
    # The plugin's file lives in the data volume: the provisioner's node users survive a restart.
    broker = compose["services"]["mosquitto"]
    assert conf["plugin_opt_config_file"].startswith("/mosquitto/data/") and "mosquitto-data:/mosquitto/data" in broker["volumes"]
    assert broker["entrypoint"] == ["/bin/sh", "/nodefleet/init-dynsec.sh"]
    assert "./deploy/mosquitto/init-dynsec.sh:/nodefleet/init-dynsec.sh:ro" in broker["volumes"]
    admin = broker["environment"]["NODEFLEET_MQTT_ADMIN_USER"]
    # user:${PASSWORD_VARIABLE:?message}, separated by spaces once compose has put the passwords in.
    logins = dict(re.findall(r"([a-z]+):(\$\{[^}]+\})", broker["environment"]["NODEFLEET_MQTT_SERVICE_LOGINS"]))
    assert broker["environment"]["NODEFLEET_MQTT_ADMIN_PASSWORD"].startswith("${NODEFLEET_MQTT_ADMIN_PASSWORD:?")
    for name in service_packages():
        env = compose["services"][name]["environment"]
        user, password = env["NODEFLEET_MQTT_URL"].removeprefix("mqtt://").split("@")[0].split(":", 1)
        if name == "provisioner":
            assert (user, env["NODEFLEET_PROVISIONER_CREDENTIALS"]) == (admin, "dynsec")
            assert password == broker["environment"]["NODEFLEET_MQTT_ADMIN_PASSWORD"]
        else:
            assert logins.get(user) == password, f"{name} logs in as {user}, which the broker does not create"
        assert compose["services"][name]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert "operator" in logins


def test_new_env_defines_every_secret_compose_needs() -> None:
    made = subprocess.run(["sh", str(ROOT / "deploy/new-env.sh")], capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in made.splitlines() if line and not line.startswith("#"))
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "compose.yaml").read_text())) - {"NODEFLEET_PUBLIC_HOST"}
    assert required and required <= set(values)
    secrets = [values[name] for name in required]
    assert all(re.fullmatch(r"[0-9a-f]{64}" if name == "NODEFLEET_OTA_MASTER_KEY" else r"[0-9a-f]{32}", values[name])
               for name in required) and len(set(secrets)) == len(secrets)
    assert "NODEFLEET_PUBLIC_HOST" in made  # named, for the user to fill in


def test_production_broker_holds_the_limits_the_tests_use() -> None:
    conf = dict(
        line.split(None, 1) for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert int(conf["max_inflight_messages"]) == mosquitto.INFLIGHT
    assert int(conf["max_queued_messages"]) == mosquitto.QUEUED
    assert conf["set_tcp_nodelay"] == "true"


def test_image_holds_the_source_the_services_load() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    for folder in ("nodefleet", "services", "firmware"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert "WORKDIR /app" in dockerfile


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")


def test_image_is_slim_unprivileged_and_pinned() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "--no-deps --no-build-isolation ." in dockerfile and "-r deploy/requirements.txt" in dockerfile
    pins = [line for line in (ROOT / "deploy/requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+-]*", line) for line in pins), pins
    pinned = {_requirement_name(line) for line in pins}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_requirement_name(d) for d in project["dependencies"]} <= pinned
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert {_requirement_name(d) for d in build} <= pinned and "--no-build-isolation" in dockerfile
    assert "tests" in (ROOT / ".dockerignore").read_text().split()


def test_postgres_health_check_uses_tcp() -> None:
    """pg_isready on the socket passes while a new volume is still initialised by a socket-only server."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    test = compose["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready -h 127.0.0.1" in test[-1]


def test_mosquitto_has_a_websocket_listener_with_the_same_security() -> None:
    lines = [line.strip() for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()]
    # The entry point moves exactly these two lines to the configured ports.
    assert "listener 1883 0.0.0.0" in lines and "listener 8083 0.0.0.0" in lines
    assert lines[lines.index("listener 8083 0.0.0.0") + 1] == "protocol websockets"
    # One set of users and ACLs for both listeners.
    assert "per_listener_settings false" in lines


# -- the Mosquitto container's entry point, on the real Mosquitto -----------------------------


class InitScriptBroker:
    """init-dynsec.sh with the deployed mosquitto.conf, its paths and port moved to a temporary directory."""

    def __init__(self, folder: Path, *, admin_password: str, logins: dict[str, str]) -> None:
        self.folder = folder
        self.port = free_port()
        self.dynsec_file = folder / "data" / "dynamic-security.json"
        self.ws_port = free_port()
        conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
        conf = conf.replace(IMAGE_PLUGIN, MOSQUITTO_PLUGIN).replace("/mosquitto/data/", f"{folder}/data/")
        (folder / "mosquitto.conf").write_text(conf)
        self.env = {
            **os.environ,
            "NODEFLEET_DYNSEC_FILE": str(self.dynsec_file),
            "NODEFLEET_MOSQUITTO_CONF": str(folder / "mosquitto.conf"),
            "NODEFLEET_DYNSEC_PLUGIN": MOSQUITTO_PLUGIN,
            "NODEFLEET_DYNSEC_INIT_PORT": str(free_port()),
            # The listeners move as compose.yaml moves them (the entry point rewrites mosquitto.conf's lines).
            "NODEFLEET_MQTT_PORT": str(self.port),
            "NODEFLEET_MQTT_WS_PORT": str(self.ws_port),
            "NODEFLEET_MQTT_LISTEN_HOST": "127.0.0.1",
            "NODEFLEET_MQTT_ADMIN_PASSWORD": admin_password,
            "NODEFLEET_MQTT_SERVICE_LOGINS": " ".join(f"{user}:{password}" for user, password in logins.items()),
        }
        self.log = folder / "init.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> float:
        """Run the entry point until Mosquitto listens; the seconds it took."""
        began = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["sh", str(INIT_SCRIPT)], env=self.env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"init-dynsec.sh exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return time.monotonic() - began
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"Mosquitto did not listen within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        # The script execs Mosquitto, so this pid is the broker itself.
        stop_process(self.process, 5)

    def url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"


@pytest.fixture
def init_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="nodefleet-init-dynsec-"))
    folder.chmod(0o755)  # Mosquitto drops to its own user and must reach the data folder
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def _refused(url: str) -> bool:
    try:
        async with Client(BrokerAddress.parse(url), client_id="refused-probe"):
            return False
    except BrokerRefused:
        return True


@contextlib.asynccontextmanager
async def _provisioner(url: str) -> AsyncIterator[DynamicSecurity]:
    """The provisioner's own dynamic-security client, logged in as the admin."""
    async with Client(BrokerAddress.parse(url), client_id="init-test-provisioner") as mqtt:
        dynsec = DynamicSecurity(mqtt, timeout=5)
        await dynsec.start(mqtt)

        async def feed() -> None:
            async for message in mqtt.messages:
                dynsec.feed(message)

        reader = asyncio.create_task(feed())
        try:
            yield dynsec
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _received(url: str, watch: str, publisher_url: str, publishes: list[str]) -> set[str]:
    """Topics a watcher on ``watch`` gets when ``publisher_url`` publishes to each of ``publishes``."""
    async with Client(BrokerAddress.parse(url), client_id="init-test-watcher") as watcher:
        await watcher.subscribe(watch, qos=1)
        async with Client(BrokerAddress.parse(publisher_url), client_id="init-test-node") as node:
            for topic in publishes:
                await node.publish(topic, b"x", qos=1)
        seen: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in watcher.messages:
                    seen.add(str(message.topic))
        return seen


@pytest.mark.timeout(90)
async def test_init_script_secures_a_real_mosquitto(init_folder: Path) -> None:
    logins = {user: f"{user}-pw-{index}" for index, user in enumerate(SERVICE_USERS)}
    broker = InitScriptBroker(init_folder, admin_password="admin-pw", logins=logins)
    topics = Topics(root="deploytest")
    try:
        seconds = broker.start()
        print(f"init-dynsec.sh: first start (creates the users) until listening: {seconds:.2f} s")
        assert "created" in broker.log.read_text()
        assert broker.dynsec_file.exists() and broker.dynsec_file.stat().st_mode & 0o077 == 0
        # No anonymous clients, no wrong passwords, no leftover set-up admin.
        assert await _refused(f"mqtt://127.0.0.1:{broker.port}")
        assert await _refused(broker.url("telemetry", "wrong"))
        assert await _refused(broker.url("nodefleet-init", "anything"))
        operator = broker.url("operator", logins["operator"])
        # The provisioner (the admin) creates a node; the node reaches only its own prefix.
        async with _provisioner(broker.url("provisioner", "admin-pw")) as dynsec:
            await dynsec.add("porch-a1b2c3", "node-pw", publish=topics.node_outbox("porch-a1b2c3"),
                              subscribe=topics.node_inbox("porch-a1b2c3"))
        node = broker.url("porch-a1b2c3", "node-pw")
        own, other = topics.state("porch-a1b2c3"), topics.state("kitchen-d4e5f6")
        assert await _received(operator, f"{topics.root}/#", node, [own, other]) == {own}
        # MQTT over WebSockets (apps, browsers): the same logins and ACLs, through a real WebSocket client.
        await check_websocket_security(broker.ws_port, topics=topics, operator=("operator", logins["operator"]),
                                       node="porch-a1b2c3", node_password="node-pw", other="kitchen-d4e5f6")
        # A service may use every ordinary topic but not the control topics.
        assert await _received(operator, f"{topics.root}/#", broker.url("scheduler", logins["scheduler"]),
                               [other]) == {other}
        async with Client(BrokerAddress.parse(broker.url("telemetry", logins["telemetry"])), client_id="t") as service:
            command = {"commands": [{"command": "createClient", "username": "intruder", "password": "pw"}]}
            await service.publish("$CONTROL/dynamic-security/v1", json.dumps(command), qos=1)
        await asyncio.sleep(0.3)
        assert await _refused(broker.url("intruder", "pw"))
    finally:
        broker.stop()
    # A restart keeps the file as it is: the node made at run time still logs in; no second set-up.
    log_before = broker.log.read_text()
    try:
        broker.start()
        assert broker.log.read_text().count("created") == log_before.count("created")
        assert not await _refused(node)
        assert await _refused(broker.url("porch-a1b2c3", "wrong"))
    finally:
        broker.stop()


@pytest.mark.timeout(90)
async def test_init_script_adds_a_tls_listener_when_tls_init_made_the_files(init_folder: Path, tmp_path: Path) -> None:
    # As compose's tls-init makes them: root's, in a 0700 directory the mosquitto user cannot read.
    made = subprocess.run([sys.executable, "-m", "nodefleet.tls", str(tmp_path / "volume"), "--host", "mosquitto"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert made.returncode == 0, made.stdout + made.stderr
    files = tmp_path / "volume" / "tls"
    wrong = ensure_authority(tmp_path / "other", ["127.0.0.1"])
    broker = InitScriptBroker(init_folder, admin_password="admin-pw", logins={"operator": "op-pw"})
    tls_port = free_port()
    broker.env.update({"NODEFLEET_MQTT_TLS_DIR": str(files), "NODEFLEET_MQTT_TLS_PORT": str(tls_port)})
    try:
        broker.start()
        assert f"MQTT over TLS on 127.0.0.1:{tls_port}" in broker.log.read_text()
        deadline = time.monotonic() + 10  # the plain listener is up; the TLS one follows once its files are read
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, broker.log.read_text()
                await asyncio.sleep(0.05)
        operator = f"mqtts://operator:op-pw@127.0.0.1:{tls_port}?ca={files / 'ca.pem'}"
        assert await _received(operator, "deploytest/#", operator, ["deploytest/tls"]) == {"deploytest/tls"}
        assert await _refused(f"mqtts://operator:wrong@127.0.0.1:{tls_port}?ca={files / 'ca.pem'}")
        with pytest.raises(BrokerUnavailable, match="not trusted"):
            await _refused(f"mqtts://operator:op-pw@127.0.0.1:{tls_port}?ca={wrong.ca}")
    finally:
        broker.stop()


def test_init_script_without_admin_password_starts_nothing(init_folder: Path) -> None:
    broker = InitScriptBroker(init_folder, admin_password="", logins={})
    broker.env.pop("NODEFLEET_MQTT_ADMIN_PASSWORD")
    result = subprocess.run(["sh", str(INIT_SCRIPT)], env=broker.env, capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode != 0 and "NODEFLEET_MQTT_ADMIN_PASSWORD" in result.stderr
    assert not broker.dynsec_file.exists()
