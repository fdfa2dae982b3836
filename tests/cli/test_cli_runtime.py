"""The runtime behind ``nodefleet up``, in-process, with services registered by the tests themselves."""

from __future__ import annotations

import asyncio
import fcntl
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from conftest import wait_for

from nodefleet.contracts import Topics
from nodefleet.embedded.mosquitto import free_port
from nodefleet.embedded.postgres import port_is_free
from nodefleet.paths import DYNSEC_ADMIN, OPERATOR, LocalCredentials
from nodefleet.up import services as up_services
from nodefleet.up.errors import StartupError, StartupInterrupted
from nodefleet.up.lock import LOCK_FILE
from nodefleet.up.options import RuntimeOptions
from nodefleet.up.services import ServiceLoadError, ServiceSpec, Unit, load_services
from nodefleet.up.system import Runtime
from nodefleet.settings import CommonSettings
from nodefleet.wire import BrokerAddress, BrokerRefused, Client

from .helpers import postmaster_pid

pytestmark = pytest.mark.timeout(60)


class EchoService:
    """A tiny service: answers ``<root>/echo/ping`` on ``<root>/echo/pong`` as its own MQTT client."""

    def __init__(self, *, fail_at_start: bool = False) -> None:
        self.fail_at_start = fail_at_start
        self.settings: CommonSettings | None = None
        self.database_up_at_stop: bool | None = None
        self.stopped = False

    def spec(self, name: str = "echo") -> ServiceSpec:
        return ServiceSpec(name=name, serve=self.serve, settings_class=CommonSettings)

    async def serve(self, settings: CommonSettings, *, ready: asyncio.Event | None = None) -> None:
        self.settings = settings
        if self.fail_at_start:
            raise RuntimeError("cannot open the widget store")
        ping, pong = f"{settings.topic_root}/echo/ping", f"{settings.topic_root}/echo/pong"
        try:
            async with Client(BrokerAddress.parse(settings.mqtt_url), client_id=f"echo-{uuid.uuid4().hex[:8]}") as mqtt:
                await mqtt.subscribe(ping, qos=1)
                assert ready is not None
                ready.set()
                async for message in mqtt.messages:
                    await mqtt.publish(pong, message.payload, qos=1)
        finally:
            self.stopped = True
            # Services stop before the database: it must still answer here.
            try:
                connection = await asyncpg.connect(settings.database_url, timeout=3)
                self.database_up_at_stop = await connection.fetchval("SELECT true")
                await connection.close()
            except Exception:
                self.database_up_at_stop = False


def options(data_dir: Path, mosquitto, topics: Topics, **extra) -> RuntimeOptions:
    values = dict(
        data_dir=data_dir, db_port=free_port(), broker_url=mosquitto.url,
        service_overrides={"topic_root": topics.root, "fleet_root": topics.fleet},
    )
    values.update(extra)
    return RuntimeOptions(**values)


async def test_runs_a_registered_service_with_the_embedded_database(data_dir: Path, mosquitto, topics: Topics) -> None:
    echo = EchoService()
    runtime = Runtime(options(data_dir, mosquitto, topics), services=[echo.spec()])
    info = await runtime.start()
    try:
        assert info.services == ["echo"] and info.embedded_database and not info.embedded_broker
        assert echo.settings is not None
        assert echo.settings.mqtt_url == mosquitto.url and echo.settings.database_url == info.database_url
        assert echo.settings.topic_root == topics.root
        async with Client(BrokerAddress.parse(mosquitto.url), client_id="echo-test") as mqtt:
            await mqtt.subscribe(f"{topics.root}/echo/pong", qos=1)
            await mqtt.publish(f"{topics.root}/echo/ping", b"hello", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(mqtt.messages))
        assert message.payload == b"hello"
        connection = await asyncpg.connect(info.database_url)
        assert await connection.fetchval("SELECT current_database()") == "nodefleet"
        await connection.close()
    finally:
        await runtime.stop()
    assert echo.stopped and echo.database_up_at_stop is True
    assert postmaster_pid(info.data_dir) is None and port_is_free("127.0.0.1", runtime.options.db_port)


async def test_a_service_failing_at_start_leaves_nothing_running(data_dir: Path, mosquitto, topics: Topics) -> None:
    good, bad = EchoService(), EchoService(fail_at_start=True)
    runtime = Runtime(options(data_dir, mosquitto, topics), services=[good.spec("good"), bad.spec("bad")])
    with pytest.raises(StartupError, match="service bad failed while starting: RuntimeError: cannot open the widget store"):
        await runtime.start()
    assert good.stopped
    assert postmaster_pid(data_dir) is None and port_is_free("127.0.0.1", runtime.options.db_port)
    with open(data_dir / LOCK_FILE) as lock:  # released: another `up` may use the directory
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_a_crashed_service_is_restarted(monkeypatch, data_dir: Path, mosquitto, database: str, topics: Topics) -> None:
    monkeypatch.setattr(up_services, "RESTART_BACKOFF", 0.05)
    runs: list[str] = []

    async def flaky(settings: CommonSettings) -> None:  # no ``ready``: started once it survives a moment
        runs.append(settings.database_url)
        await asyncio.sleep(0.3 if len(runs) == 1 else 3600)
        raise ConnectionError("lost the widget")

    spec = ServiceSpec(name="flaky", serve=flaky, settings_class=CommonSettings)
    runtime = Runtime(options(data_dir, mosquitto, topics, database_url=database), services=[spec])
    info = await runtime.start()
    try:
        assert info.database_url == database and not info.embedded_database
        await wait_for(lambda: len(runs) == 2, timeout=5)
    finally:
        await runtime.stop()
    assert not (data_dir).exists()  # an external database needs no data directory


async def test_stop_while_starting_stops_what_started(data_dir: Path, mosquitto, topics: Topics) -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def never_ready(settings: CommonSettings, *, ready: asyncio.Event) -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    spec = ServiceSpec(name="slow", serve=never_ready, settings_class=CommonSettings)
    runtime = Runtime(options(data_dir, mosquitto, topics), services=[spec])
    starting = asyncio.create_task(runtime.start())
    await asyncio.wait_for(entered.wait(), 20)
    assert postmaster_pid(data_dir) is not None
    runtime.request_stop()
    with pytest.raises(StartupInterrupted):
        await asyncio.wait_for(starting, 20)
    assert cancelled.is_set() and postmaster_pid(data_dir) is None


async def test_unreachable_external_parts_are_named(data_dir: Path, mosquitto, topics: Topics) -> None:
    no_broker = Runtime(options(data_dir, mosquitto, topics, broker_url=f"mqtt://127.0.0.1:{free_port()}",
                                database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x"), services=[])
    with pytest.raises(StartupError, match="cannot reach the database .* check --database"):
        await no_broker.start()
    runtime = Runtime(options(data_dir, mosquitto, topics, broker_url=f"mqtt://127.0.0.1:{free_port()}"), services=[])
    with pytest.raises(StartupError, match="cannot reach the broker .* check --broker"):
        await runtime.start()
    assert postmaster_pid(data_dir) is None  # the database it had started is stopped again


def test_loads_the_listed_services_through_the_seam(tmp_path: Path, monkeypatch) -> None:
    package = f"fakeservices_{uuid.uuid4().hex[:8]}"
    root = tmp_path / package
    (root / "echo").mkdir(parents=True)
    (root / "broken").mkdir()
    for path in (root / "__init__.py", root / "echo" / "__init__.py", root / "broken" / "__init__.py"):
        path.write_text("")
    (root / "echo" / "app.py").write_text("async def serve(settings, *, ready=None):\n    pass\n")
    (root / "echo" / "settings.py").write_text(
        "from nodefleet.settings import CommonSettings\n\n"
        "class EchoSettings(CommonSettings):\n    volume: int = 3\n"
    )
    (root / "broken" / "app.py").write_text("serve = None\n")
    (root / "broken" / "settings.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        [spec] = load_services(["echo"], package=package)
        assert spec.name == "echo" and spec.settings_class.__name__ == "EchoSettings" and spec.reports_ready
        assert spec.unit({"mqtt_url": "mqtt://example:1884"}).name == "echo"
        with pytest.raises(ServiceLoadError, match="must define `async def serve"):
            load_services(["broken"], package=package)
        # A listed service that is not there is an error, not skipped.
        with pytest.raises(ServiceLoadError, match="service missing cannot be loaded"):
            load_services(["echo", "missing"], package=package)
    finally:
        for name in [name for name in sys.modules if name.startswith(package)]:
            del sys.modules[name]


class StrictSettings(CommonSettings):
    volume: int = 3


async def test_bad_service_settings_are_a_clear_error(monkeypatch, data_dir: Path, mosquitto, database: str,
                                                      topics: Topics) -> None:
    monkeypatch.setenv("NODEFLEET_VOLUME", "loud")
    spec = ServiceSpec(name="strict", serve=EchoService().serve, settings_class=StrictSettings)
    runtime = Runtime(options(data_dir, mosquitto, topics, database_url=database), services=[spec])
    with pytest.raises(StartupError, match="settings of service strict are invalid.*volume"):
        await runtime.start()


class ProvisionerSettingsStandIn(CommonSettings):
    """The provisioner settings the runtime sets: how node credentials reach the broker, where its HTTP edge is."""

    credentials: str = "none"
    http_host: str = "127.0.0.1"
    http_port: int = 8080


@pytest.mark.parametrize("secure", [True, False])
async def test_each_service_logs_in_to_the_embedded_broker_as_itself(secure: bool, data_dir: Path, database: str,
                                                                     topics: Topics) -> None:
    echo, provisioner = EchoService(), EchoService()
    specs = [echo.spec("echo"), ServiceSpec(name="provisioner", serve=provisioner.serve,
                                            settings_class=ProvisionerSettingsStandIn)]
    extra_urls: list[str] = []

    def extra(broker_url: str, database_url: str) -> Unit:
        extra_urls.append(broker_url)
        return Unit(name="extra", run=lambda ready: asyncio.sleep(3600), reports_ready=False)

    runtime = Runtime(RuntimeOptions(data_dir=data_dir, mqtt_port=free_port(), database_url=database, secure=secure,
                                     http_port=0, service_overrides={"topic_root": topics.root, "fleet_root": topics.fleet}),
                      services=specs, extras=[extra])
    info = await runtime.start()
    try:
        echo_login, admin_login = (BrokerAddress.parse(s.settings.mqtt_url) for s in (echo, provisioner))  # type: ignore[union-attr]
        # The provisioner alone gets the HTTP edge: a free port (asked with 0) chosen before start, in the info.
        edge_port = provisioner.settings.http_port  # type: ignore[union-attr]
        assert edge_port > 0 and info.http_url == f"http://127.0.0.1:{edge_port}"
        assert not hasattr(echo.settings, "http_port")
        # Every service gets the fleet's OTA master key, made in the data directory (an open broker's run too).
        stored = LocalCredentials.read(data_dir)
        assert stored is not None and stored.ota_master is not None
        assert {s.settings.ota_master for s in (echo, provisioner)} == {bytes.fromhex(stored.ota_master)}  # type: ignore[union-attr]
        if not secure:
            assert info.credentials_file is None and stored.passwords == {}  # the key, but no logins
            assert echo_login.username is None and admin_login.username is None
            assert provisioner.settings.credentials == "none"  # type: ignore[union-attr]
            async with Client(BrokerAddress.parse(info.broker_url), client_id="anonymous"):
                pass
            return
        stored = LocalCredentials.read(data_dir)
        assert stored is not None and info.credentials_file == stored.path
        assert (echo_login.username, echo_login.password) == ("echo", stored.passwords["echo"])
        assert (admin_login.username, admin_login.password) == (DYNSEC_ADMIN, stored.passwords[DYNSEC_ADMIN])
        assert provisioner.settings.credentials == "dynsec"  # type: ignore[union-attr]
        assert extra_urls == [info.operator_url] and BrokerAddress.parse(info.operator_url).username == OPERATOR
        with pytest.raises(BrokerRefused):
            async with Client(BrokerAddress.parse(info.broker_url), client_id="anonymous"):
                pass
        # The echo service answers the operator: both logged in as themselves.
        async with Client(BrokerAddress.parse(info.operator_url), client_id="operator-test") as mqtt:
            await mqtt.subscribe(f"{topics.root}/echo/pong", qos=1)
            await mqtt.publish(f"{topics.root}/echo/ping", b"hello", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(mqtt.messages))
        assert message.payload == b"hello"
    finally:
        await runtime.stop()
    if secure:  # the commands no longer log in to whatever listens on that port next
        assert LocalCredentials.read(data_dir).listener is None  # type: ignore[union-attr]
