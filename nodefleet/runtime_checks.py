"""What ``nodefleet up`` checks before and while starting, and the errors it reports.

Errors: :class:`StartupError` carries the exit code the CLI uses (2 for a
taken port or data directory, 1 for anything else);
:class:`StartupInterrupted` means a stop was requested while starting.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

import aiomqtt
import asyncpg

from . import mqtt

LOCK_FILE = "nodefleet-up.lock"
PROBE_TIMEOUT = 5.0
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_FORCED = 130


class StartupError(RuntimeError):
    """The system could not come up; the message says what to do next."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartupInterrupted(Exception):
    """A stop was requested while starting; everything started has been stopped."""


class DataDirLock:
    """One `nodefleet up` per data directory; the lock dies with the process that holds it."""

    def __init__(self, file: IO[str]) -> None:
        self._file: IO[str] | None = file

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            file = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise StartupError(f"cannot use data directory {data_dir}: {exc}; choose another with --data-dir",
                               exit_code=EXIT_USAGE) from exc
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise StartupError(
                f"another `nodefleet up` (pid {holder}) is using the data directory {data_dir}: "
                f"stop it, or choose another directory with --data-dir",
                exit_code=EXIT_USAGE,
            ) from exc
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        return cls(file)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def edge_port(host: str, port: int) -> int | None:
    """The port the provisioner's HTTP edge gets: ``port`` if free (StartupError naming --http-port if taken),
    a free one for 0, None for -1 (off)."""
    if port < 0:
        return None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"HTTP port {port} on {host} (the provisioner's HTTP edge) is already taken (another `nodefleet up`, "
                f"or another web server?): choose another with --http-port (0 picks a free one, -1 turns the edge "
                f"off)", exit_code=EXIT_USAGE) from exc
        return probe.getsockname()[1]


def ws_port(host: str, port: int) -> int | None:
    """The embedded broker's MQTT-over-WebSockets port: ``port`` if free (StartupError naming --ws-port if
    taken), a free one for 0, None for -1 (off)."""
    if port < 0:
        return None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"WebSocket port {port} on {host} (MQTT over WebSockets) is already taken (another `nodefleet up`, "
                f"or another broker?): choose another with --ws-port (0 picks a free one, -1 turns it off)",
                exit_code=EXIT_USAGE) from exc
        return probe.getsockname()[1]


async def probe_broker(url: str) -> None:
    """Connect once to an external broker, so a wrong --broker fails now and clearly."""
    try:
        address = mqtt.BrokerAddress.parse(url)
    except mqtt.BrokerUrlError as exc:
        raise StartupError(str(exc), exit_code=EXIT_USAGE) from exc
    probe = mqtt.client(address, client_id=f"nodefleet-up-probe-{os.getpid()}")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with probe:
                pass
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        raise StartupError(f"cannot reach the broker at {address.url} ({exc}): check --broker, or leave it out "
                           f"to run the embedded one") from exc


async def probe_database(dsn: str) -> None:
    """Connect once to an external database, so a wrong --database fails now and clearly."""
    try:
        connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
    except Exception as exc:
        raise StartupError(f"cannot reach the database {without_password(dsn)} ({exc}): check --database, or "
                           f"leave it out to run the embedded PostgreSQL") from exc
    await connection.close()


def without_password(dsn: str) -> str:
    """The DSN with its password masked, for messages and banners."""
    scheme, sep, rest = dsn.partition("://")
    if "@" not in rest or ":" not in rest.split("@", 1)[0]:
        return dsn
    credentials, host = rest.split("@", 1)
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
