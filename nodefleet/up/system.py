"""``nodefleet up`` in one process: the start and stop order of the whole system.

Start order is database, broker, services (each its own MQTT client), then
extra units such as the demo nodes; stop order is the reverse.  Every port is
checked before anything starts, and whatever did start is stopped again if a
later step fails, so a failed start leaves nothing behind.  :func:`run` adds
the signals: the first SIGINT/SIGTERM stops cleanly, a second one forces.

Every service gets the same settings, the fleet's OTA master key among them
(``NODEFLEET_OTA_MASTER_KEY``, else the one made on the first run and kept with
the local logins; see :func:`hands_out_ota_keys`), so the provisioner and the ota
service derive the same node keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from ..logging import get_logger
from ..paths import OPERATOR, CredentialsFileError, LocalCredentials
from .broker import Broker
from .database import Database
from .edge import edge_settings
from .errors import EXIT_FORCED, StartupError, StartupInterrupted
from .lock import DataDirLock
from .logins import without_password
from .options import RuntimeInfo, RuntimeOptions
from .services import (
    ServiceLoadError,
    ServiceSpec,
    ServiceStartError,
    Supervised,
    Unit,
    load_services,
)

log = get_logger(__name__)

OTA_MASTER_VARIABLE = "NODEFLEET_OTA_MASTER_KEY"


class Runtime:
    """Starts and stops the whole system; ``services`` defaults to :data:`~nodefleet.up.services.SERVICES`."""

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
        self.database = Database(options)
        self.broker = Broker(options)

    # -- start ---------------------------------------------------------------
    async def start(self) -> RuntimeInfo:
        """Bring everything up; on failure stop what started and raise StartupError."""
        began = time.monotonic()
        try:
            if self.options.embedded_database:
                self._stack.callback(DataDirLock.acquire(self.options.data_dir).release)
                await self.database.stop_orphan()
            self.broker.check_port()
            self.database.check_port()
            specs = list(self._services) if self._services is not None else _load()
            edge = edge_settings(self.options) if any(spec.name == "provisioner" for spec in specs) else {}
            # Before the broker and database keep their logins in the same file, so theirs keep the key.
            ota = _ota_master(self.options)
            self._stack.push_async_callback(self.database.stop)
            database_url = await self.database.start()
            self._checkpoint()
            self._stack.push_async_callback(self.broker.stop)
            broker_url = await self.broker.start([spec.name for spec in specs])
            self._checkpoint()
            access = self.broker.access
            overrides = {
                "database_url": database_url,
                "log_format": self.options.log_format,
                "log_level": self.options.log_level,
                **ota,
                **self.options.service_overrides,
            }
            units = [_unit(spec, {**overrides, **access.service_settings(spec.name, broker_url),
                                  **({**edge, **self.broker.node_settings()} if spec.name == "provisioner" else {})})
                     for spec in specs]
            units += [make(access.login(OPERATOR, broker_url), database_url) for make in self._extras]
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
            credentials_file=access.credentials.path if access.credentials else None,
            operator_url=access.login(OPERATOR, broker_url) if access.credentials else None,
            http_url=f"http://{edge['http_host']}:{edge['http_port']}" if edge.get("http_port", -1) >= 0 else None,
            ws_url=self.broker.ws_url,
            tls_url=self.broker.tls_url,
            node_tls=bool(self.broker.node_settings()),
        )
        log.info("up_ready", broker=without_password(info.broker_url), database=without_password(info.database_url),
                 data_dir=str(info.data_dir), services=info.services, extras=info.extras,
                 startup_seconds=info.startup_seconds)
        return info

    def _checkpoint(self) -> None:
        if self._abort.is_set():
            raise StartupInterrupted

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
        self.database.stop_now()
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


def hands_out_ota_keys(options: RuntimeOptions) -> bool:
    """Whether the services of this run get an OTA master key (and so the provisioner hands out node keys).

    From the environment, or kept in the data directory when the run keeps anything there (an embedded
    broker or database); with an external broker and database nothing is kept locally, so only the
    environment's key counts.
    """
    return bool(os.environ.get(OTA_MASTER_VARIABLE, "").strip()) or options.embedded_broker or options.embedded_database


def _ota_master(options: RuntimeOptions) -> dict[str, str]:
    """The OTA master key every service gets: none to pass when the environment has one (each service reads
    it there), else the one kept in the data directory, made on the first run."""
    if os.environ.get(OTA_MASTER_VARIABLE, "").strip():
        return {}
    if not hands_out_ota_keys(options):
        log.warning("ota_master_not_kept", hint=f"with an external broker and database nothing is kept in the data "
                    f"directory: set {OTA_MASTER_VARIABLE} (`openssl rand -hex 32`, the same every run) to turn OTA on")
        return {}
    try:
        return {"ota_master_key": LocalCredentials.for_ota(options.data_dir)}
    except (CredentialsFileError, OSError) as exc:
        raise StartupError(f"cannot keep the OTA master key in {options.data_dir}: {exc}") from exc


def _load() -> list[ServiceSpec]:
    try:
        return load_services()
    except ServiceLoadError as exc:
        raise StartupError(f"a service could not be loaded: {exc}") from exc


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
