"""Helpers of the CLI tests: run ``nodefleet`` as a subprocess, answer fleet requests in-test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodefleet.contracts import Topics
from nodefleet.contracts.queries import TELEMETRY_SERVICE
from nodefleet.fleet import ErrorReporter, Handler, answer
from nodefleet.paths import OPERATOR, LocalCredentials
from nodefleet.wire import BrokerAddress, Client


def cli_env(topics: Topics | None = None, *, data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``nodefleet`` subprocess: no NODEFLEET_* leaking in from outside.

    ``data_dir`` is where the commands look for the broker logins of a secured `nodefleet up`.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("NODEFLEET_")}
    # `nodefleet up` in a test takes a free port for the provisioner's HTTP edge, never the shared 8080.
    env["NODEFLEET_PROVISIONER_HTTP_PORT"] = "0"
    env["NODEFLEET_MQTT_WS_PORT"] = "0"  # and for MQTT over WebSockets, never the shared 8083
    env["NODEFLEET_MQTT_TLS_PORT"] = "0"  # and for MQTT over TLS, never the shared 8883
    if topics is not None:
        env["NODEFLEET_TOPIC_ROOT"] = topics.root
        env["NODEFLEET_FLEET_ROOT"] = topics.fleet
    if data_dir is not None:
        env["NODEFLEET_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def operator_url(data_dir: Path, port: int) -> str:
    """The operator's login to the secured `nodefleet up` that keeps its data in ``data_dir``."""
    stored = LocalCredentials.read(data_dir)
    assert stored is not None, f"no broker credentials in {data_dir}"
    return stored.url(OPERATOR, "127.0.0.1", port)


def database_url(data_dir: Path, port: int) -> str:
    """The embedded PostgreSQL of the `nodefleet up` that keeps its data in ``data_dir``, with its password."""
    stored = LocalCredentials.read(data_dir)
    assert stored is not None and stored.database_password, f"no database password in {data_dir}"
    return f"postgresql://postgres:{stored.database_password}@127.0.0.1:{port}/nodefleet"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def nodefleet(*args: str, env: dict[str, str], timeout: float = 20.0) -> Result:
    """Run one ``nodefleet`` command to completion."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodefleet", *args, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Result(process.returncode or 0, stdout.decode(), stderr.decode())


@contextlib.asynccontextmanager
async def responder(broker_url: str, topics: Topics, handlers: dict[str, Handler]) -> AsyncIterator[None]:
    """Answers telemetry fleet requests with ``handlers``, over a real broker (stands in for the service)."""
    errors = ErrorReporter(TELEMETRY_SERVICE, topics)
    async with Client(BrokerAddress.parse(broker_url), client_id=f"responder-{uuid.uuid4().hex[:8]}") as mqtt:
        await mqtt.subscribe(topics.requests(TELEMETRY_SERVICE), qos=1)

        async def serve() -> None:
            async for message in mqtt.messages:
                action = topics.request_action(str(message.topic))
                await answer(mqtt, message.payload, handlers, action, errors)  # type: ignore[arg-type]

        task = asyncio.create_task(serve())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def postmaster_pid(data_dir: Path) -> int | None:
    """The PostgreSQL server pid written in its data directory, if it runs."""
    try:
        return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


class UpProcess:
    """``nodefleet up`` as a child process; output goes to files so no pipe can fill up."""

    def __init__(self, args: list[str], *, env: dict[str, str], workdir: Path, uid: int | None = None) -> None:
        """``uid``: run as that user (and its own group), as a person without root would."""
        workdir.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:6]
        self.stdout_path = workdir / f"up-{tag}.out"
        self.stderr_path = workdir / f"up-{tag}.err"
        self.launched = time.monotonic()
        as_user: dict[str, Any] = {}
        if uid is not None:
            as_user = {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": [], "cwd": env.get("HOME", "/")}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nodefleet", "up", *args], env=env, **as_user,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,  # its own process group, as in a terminal
            )
        self.ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        """Wait for the banner; return its ``broker``/``database``/``services`` lines and the time to ready."""
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops" not in self.stdout:
            if self.process.poll() is not None:
                raise AssertionError(f"nodefleet up exited with {self.process.returncode}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nodefleet up not ready within {timeout} s:\n{self.stderr[-3000:]}")
            await asyncio.sleep(0.05)
        self.ready_after = time.monotonic() - self.launched
        banner = {}
        for line in self.stdout.splitlines():
            match = re.match(r"\s+(broker|database|data|http|websocket|tls|mqtts|services)\s+(\S.*)$", line)
            if match:
                banner[match.group(1)] = match.group(2)
        return banner

    async def stop(self, sig: int = signal.SIGINT, *, group: bool = False, timeout: float = 30.0) -> int:
        """Signal the process, or its whole process group as Ctrl-C in a terminal does."""
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"nodefleet up did not exit within {timeout} s:\n{self.stderr[-3000:]}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
    return [row.model_dump(mode="json") for row in rows]
