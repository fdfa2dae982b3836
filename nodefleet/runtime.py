"""``nodefleet up`` in one process: embedded PostgreSQL, embedded broker, every service.

Start order is database, broker, services (each its own MQTT client), then
extra units such as the demo nodes; stop order is the reverse.

The embedded broker is secured unless ``secure=False``: it refuses anonymous
clients, each service logs in as its own user (passwords generated once and
kept in the data directory, see ``paths.LocalCredentials``), and the
provisioner is its dynamic-security admin, so every node it registers gets its
own user and ACL.  An external broker (``broker_url``) decides for itself.  Both ports
are checked before anything starts, and whatever did start is stopped again
if a later step fails, so a failed start leaves nothing behind.

Errors (see ``runtime_checks``): :class:`StartupError`, with the exit code
the CLI should use, for anything that prevents the system from coming up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .embedded.postgres import (
    SYSTEM_USER,
    EmbeddedPostgres,
    PostgresError,
    port_is_free,
)
from .logging import get_logger
from .paths import OPERATOR, CredentialsFileError, LocalCredentials
from .runtime_access import BrokerAccess
from .runtime_checks import (
    EXIT_FORCED,
    EXIT_USAGE,
    LOCK_FILE,
    DataDirLock,
    StartupError,
    StartupInterrupted,
    edge_port,
    probe_broker,
    probe_database,
    without_password,
    ws_port,
)
from .runtime_services import (
    SERVICE_NAMES,
    ServiceSpec,
    ServiceStartError,
    Supervised,
    Unit,
    discover_services,
)
from .settings import LogFormat

__all__ = [
    "SERVICE_NAMES",
    "DATABASE_NAME",
    "DEFAULT_DB_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MQTT_PORT",
    "LOCK_FILE",
    "Runtime",
    "RuntimeInfo",
    "RuntimeOptions",
    "ServiceSpec",
    "StartupError",
    "StartupInterrupted",
    "Unit",
    "discover_services",
    "run",
]

log = get_logger(__name__)

DEFAULT_MQTT_PORT = 1883
DEFAULT_DB_PORT = 15432
DEFAULT_HTTP_PORT = 8080
DATABASE_NAME = "nodefleet"


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    # The embedded broker may listen wider than loopback so devices on the network reach it.
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = DEFAULT_MQTT_PORT
    db_port: int = DEFAULT_DB_PORT
    # As root, the embedded PostgreSQL runs as this system user, made on first start.
    postgres_system_user: str = SYSTEM_USER
    # The provisioner's HTTP edge (the phone app): 0 picks a free port, -1 turns it off; host None: mqtt_host.
    http_port: int = DEFAULT_HTTP_PORT
    http_host: str | None = None
    # MQTT over WebSockets on the embedded broker (apps, browsers): -1 off, 0 a free port (the CLI's default: 8083).
    ws_port: int = -1
    broker_url: str | None = None
    database_url: str | None = None
    log_format: LogFormat = "auto"
    log_level: str = "info"
    service_timeout: float = 30.0
    # Extra settings every service gets (e.g. topic roots in tests).
    service_overrides: dict[str, Any] = field(default_factory=dict)
    # The embedded broker refuses anonymous clients and checks node credentials; False for local experiments only.
    secure: bool = True

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None


@dataclass(frozen=True, kw_only=True)
class RuntimeInfo:
    """Where things are once the system is up (for the banner and for tests)."""

    broker_url: str
    database_url: str
    data_dir: Path
    embedded_broker: bool
    embedded_database: bool
    services: list[str]
    extras: list[str]
    startup_seconds: float
    # Set when the embedded broker is secured: where its passwords are and the operator's login.
    credentials_file: Path | None = None
    operator_url: str | None = None
    # Where the provisioner's HTTP edge listens (None: off, or no provisioner).
    http_url: str | None = None
    # The embedded broker's MQTT over WebSockets (None: off, or an external broker).
    ws_url: str | None = None

    @property
    def secured(self) -> bool:
        return self.credentials_file is not None


class Runtime:
    """Starts and stops the whole system; ``services`` defaults to those that exist."""

    def __init__(
        self,
        options: RuntimeOptions,
        *,
        services: Sequence[ServiceSpec] | None = None,
        extras: Sequence[Callable[[str, str], Unit]] = (),
    ) -> None:
        self.options = options
        self._services = services
        # Each extra is built from (broker URL, database URL) once both are known.
        self._extras = extras
        self._stack = contextlib.AsyncExitStack()
        self._abort = asyncio.Event()
        self._postgres: EmbeddedPostgres | None = None
        self._lock: DataDirLock | None = None
        self._access = BrokerAccess(embedded=options.embedded_broker)
        self._ws_port: int | None = None
        self._ws_url: str | None = None

    # -- start ---------------------------------------------------------------
    async def start(self) -> RuntimeInfo:
        """Bring everything up; on failure stop what started and raise StartupError."""
        began = time.monotonic()
        try:
            if self.options.embedded_database:
                self._lock_data_dir()
                await self._stop_orphan_postgres()
            self._check_ports()
            specs = list(self._services) if self._services is not None else _discover()
            edge = self._edge(specs)
            database_url = await self._start_database()
            self._checkpoint()
            broker_url = await self._start_broker([spec.name for spec in specs])
            self._checkpoint()
            overrides = {
                "database_url": database_url,
                "log_format": self.options.log_format,
                "log_level": self.options.log_level,
                **self.options.service_overrides,
            }
            units = [_unit(spec, {**overrides, **self._access.service_settings(spec.name, broker_url),
                                  **(edge if spec.name == "provisioner" else {})}) for spec in specs]
            units += [make(self._access.login(OPERATOR, broker_url), database_url) for make in self._extras]
            for unit in units:
                await self._start_unit(unit)
                self._checkpoint()
        except BaseException:
            await self.stop()
            raise
        info = RuntimeInfo(
            broker_url=broker_url,
            database_url=database_url,
            data_dir=self.options.data_dir,
            embedded_broker=self.options.embedded_broker,
            embedded_database=self.options.embedded_database,
            services=[spec.name for spec in specs],
            extras=[unit.name for unit in units[len(specs):]],
            startup_seconds=round(time.monotonic() - began, 3),
            credentials_file=self._access.credentials.path if self._access.credentials else None,
            operator_url=self._access.login(OPERATOR, broker_url) if self._access.credentials else None,
            http_url=f"http://{edge['http_host']}:{edge['http_port']}" if edge.get("http_port", -1) >= 0 else None,
            ws_url=self._ws_url,
        )
        log.info("up_ready", broker=without_password(info.broker_url), database=without_password(info.database_url),
                 data_dir=str(info.data_dir), services=info.services, extras=info.extras,
                 startup_seconds=info.startup_seconds)
        return info

    def _checkpoint(self) -> None:
        if self._abort.is_set():
            raise StartupInterrupted

    def _check_ports(self) -> None:
        """Refuse to start anything if a port we would listen on is taken."""
        host, mqtt_host = self.options.host, self.options.mqtt_host
        if self.options.embedded_broker and not port_is_free(mqtt_host, self.options.mqtt_port):
            raise StartupError(
                f"MQTT port {self.options.mqtt_port} on {mqtt_host} is already taken (another broker, or another "
                f"`nodefleet up`?): choose another with --mqtt-port, or use that broker with "
                f"--broker mqtt://{mqtt_host}:{self.options.mqtt_port}",
                exit_code=EXIT_USAGE,
            )
        if self.options.embedded_broker:
            self._ws_port = ws_port(mqtt_host, self.options.ws_port)
        if self.options.embedded_database and not port_is_free(host, self.options.db_port):
            raise StartupError(
                f"database port {self.options.db_port} on {host} is already taken: choose another with "
                f"--db-port, or use an existing server with --database postgresql://...",
                exit_code=EXIT_USAGE,
            )

    def _edge(self, specs: list[ServiceSpec]) -> dict[str, Any]:
        """The provisioner's HTTP edge settings, its port checked (and chosen, for 0) before anything starts."""
        if not any(spec.name == "provisioner" for spec in specs):
            return {}
        host = self.options.http_host or self.options.mqtt_host
        port = edge_port(host, self.options.http_port)
        return {"http_host": host, "http_port": -1 if port is None else port}

    async def _start_database(self) -> str:
        if not self.options.embedded_database:
            assert self.options.database_url is not None
            await probe_database(self.options.database_url)
            return self.options.database_url
        server = self._embedded_postgres()
        try:
            self._postgres = server
            self._stack.push_async_callback(self._stop_postgres)
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(server.create_database, DATABASE_NAME)
        except PostgresError as exc:
            raise StartupError(f"the embedded PostgreSQL did not start: {exc} (its log: {server.log_file})") from exc
        log.info("postgres_started", dsn=without_password(server.dsn(DATABASE_NAME)), data_dir=str(server.data_dir))
        return server.dsn(DATABASE_NAME)

    def _embedded_postgres(self) -> EmbeddedPostgres:
        try:
            # Made on first start and kept with the broker logins (mode 0600); every service logs in with it.
            password = LocalCredentials.for_database(self.options.data_dir)
        except (CredentialsFileError, OSError) as exc:
            raise StartupError(f"cannot keep the database password in {self.options.data_dir}: {exc}") from exc
        return EmbeddedPostgres(self.options.data_dir / "postgres", port=self.options.db_port, host=self.options.host,
                                password=password, system_user=self.options.postgres_system_user)

    async def _stop_orphan_postgres(self) -> None:
        """We hold the data directory's lock, so a server running on it was left by an `up` that was killed."""
        server = self._embedded_postgres()
        if not await asyncio.to_thread(lambda: server.running):
            return
        log.warning("stopping_orphan_postgres", data_dir=str(server.data_dir))
        try:
            await asyncio.to_thread(server.stop, "fast")
        except PostgresError as exc:
            raise StartupError(f"a PostgreSQL left running on {server.data_dir} did not stop ({exc}); "
                               f"stop it by hand or choose another --data-dir") from exc

    def _lock_data_dir(self) -> None:
        self._lock = DataDirLock.acquire(self.options.data_dir)
        self._stack.callback(self._lock.release)

    async def _stop_postgres(self) -> None:
        server, self._postgres = self._postgres, None
        if server is None:
            return
        try:
            await asyncio.to_thread(server.stop, "fast")  # rolls back open transactions, then a clean shutdown
        except PostgresError as exc:
            log.error("postgres_stop_failed", error=str(exc), log_file=str(server.log_file))
            return
        log.info("postgres_stopped", mode="fast")

    async def _start_broker(self, services: list[str]) -> str:
        if not self.options.embedded_broker:
            assert self.options.broker_url is not None
            await probe_broker(self.options.broker_url)
            return self.options.broker_url
        try:
            from .embedded.broker import BrokerPortInUse, EmbeddedBroker
        except ImportError as exc:
            raise StartupError(
                f"the embedded MQTT broker is not available ({exc}): use an existing broker with --broker mqtt://host:port"
            ) from exc
        try:
            if self.options.secure:
                self._access = BrokerAccess.secured(self.options.data_dir, services, host=self.options.mqtt_host,
                                                    port=self.options.mqtt_port)
            else:
                self._access = BrokerAccess.open(self.options.data_dir)
        except (CredentialsFileError, OSError) as exc:
            raise StartupError(f"cannot keep the broker credentials in {self.options.data_dir}: {exc}") from exc
        try:
            # Retained config, schedules and states must survive a restart of `nodefleet up`.
            # Hashing the users' passwords is slow on purpose: off the event loop.
            broker = await asyncio.to_thread(
                EmbeddedBroker, host=self.options.mqtt_host, port=self.options.mqtt_port, ws_port=self._ws_port,
                retained_file=self.options.data_dir / "retained.json",
                **self._access.broker_options(self.options.data_dir),
            )
            await broker.start()
        except BrokerPortInUse as exc:
            raise StartupError(str(exc), exit_code=EXIT_USAGE) from exc
        except Exception as exc:
            raise StartupError(f"the embedded MQTT broker did not start: {exc}; or use --broker mqtt://host:port") from exc
        self._stack.push_async_callback(self._stop_broker, broker)
        self._ws_url = broker.ws_url
        log.info("broker_started", url=broker.url, secured=self.options.secure)
        return broker.url

    async def _stop_broker(self, broker: Any) -> None:
        try:
            await asyncio.wait_for(broker.stop(), 10)
        except Exception as exc:  # stopping must go on to the database
            log.error("broker_stop_failed", error=repr(exc))
            return
        try:
            self._access.stopped()
        except OSError as exc:
            log.warning("credentials_update_failed", error=str(exc))
        log.info("broker_stopped")

    async def _start_unit(self, unit: Unit) -> None:
        supervised = Supervised(unit)
        self._stack.push_async_callback(self._stop_unit, supervised)
        try:
            await supervised.start(timeout=self.options.service_timeout, abort=self._abort)
        except ServiceStartError as exc:
            raise StartupError(f"{exc}; see the log above") from exc
        log.info("service_started", service=unit.name)

    async def _stop_unit(self, supervised: Supervised) -> None:
        await supervised.stop(timeout=10.0)
        log.info("service_stopped", service=supervised.unit.name)

    # -- stop ----------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask a running or starting system to stop (from a signal handler)."""
        self._abort.set()

    async def stop(self) -> None:
        """Stop everything that started, in reverse order; safe to call twice."""
        self._abort.set()
        await self._stack.aclose()

    def force_stop(self) -> None:
        """Second Ctrl-C: stop PostgreSQL at once and leave the process without further cleanup."""
        server = self._postgres
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop("immediate")
        log.warning("forced_exit")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FORCED)

    async def wait_for_stop_request(self) -> None:
        await self._abort.wait()


def _unit(spec: ServiceSpec, overrides: dict[str, Any]) -> Unit:
    try:
        return spec.unit(overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
        raise StartupError(f"the settings of service {spec.name} are invalid ({problems}): fix the matching "
                           f"NODEFLEET_* environment variables") from exc


def _discover() -> list[ServiceSpec]:
    try:
        return discover_services()
    except Exception as exc:
        raise StartupError(f"a service could not be loaded: {type(exc).__name__}: {exc}") from exc


async def run(runtime: Runtime, *, on_ready: Callable[[RuntimeInfo], None], handle_signals: bool = True) -> int:
    """Start, report ready, wait for SIGINT/SIGTERM, stop; return the exit code.

    A second signal forces: PostgreSQL stops immediately and the process exits 130.
    """
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(name: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("stopping", signal=name, hint="press Ctrl-C again to force")
            runtime.request_stop()
        else:
            runtime.force_stop()

    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        try:
            info = await runtime.start()
        except StartupInterrupted:
            log.info("stopped_while_starting")
            return 0
        on_ready(info)
        await runtime.wait_for_stop_request()
        await runtime.stop()
        log.info("stopped")
        return 0
    finally:
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
