"""Plumbing shared by the operator commands: broker options, connecting, fleet requests, output.

The operator commands talk only MQTT.  Errors the user sees are
:class:`CliError` (a click exception, exit code 1) and say what to do next.

A broker URL without a user that points at the broker of a secured
``nodefleet up`` on this machine logs in as its ``operator`` user, with the
password ``nodefleet up`` keeps in the data directory (``$NODEFLEET_DATA_DIR``
or the default one); a URL with ``user:password@`` is used as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import io
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from .. import logging as nodefleet_logging
from .. import wire
from ..contracts import Topics
from ..contracts.queries import TELEMETRY_SERVICE
from ..contracts.topics import TopicError, validate_node_name
from ..errors import NodefleetError
from ..fleet import Requester, RequestError
from ..paths import OPERATOR, CredentialsFileError, LocalCredentials, default_data_dir
from ..settings import CommonSettings

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
NOT_RUNNING_HINT = "is `nodefleet up` running? use --broker mqtt://host:port (or set NODEFLEET_MQTT_URL)"
REFUSED_HINT = ("the broker wants a user and password: run the command as the user who ran `nodefleet up` (with "
                "NODEFLEET_DATA_DIR set if it used --data-dir), or give them: --broker mqtt://user:password@host:port")
WRONG_LOGIN_HINT = "check the user and password in --broker (or NODEFLEET_MQTT_URL)"
FORMATS = ("table", "csv", "json")


class CliError(NodefleetError, click.ClickException):
    """An error shown to the user as ``Error: <message>`` with exit code 1."""


# -- options -------------------------------------------------------------------


def fleet_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --broker, --topic-root and --fleet-root; the command receives ``settings``."""

    @click.option("--broker", metavar="URL",
                  help="Broker as mqtt://[user:password@]host[:port]  "
                       "[default: $NODEFLEET_MQTT_URL or mqtt://127.0.0.1:1883]")
    @click.option("--topic-root", metavar="ROOT", help="Root of node topics  [default: $NODEFLEET_TOPIC_ROOT or home]")
    @click.option("--fleet-root", metavar="ROOT",
                  help="Root of fleet request topics  [default: $NODEFLEET_FLEET_ROOT or fleet]")
    @functools.wraps(command)
    def wrapper(*args: Any, broker: str | None, topic_root: str | None, fleet_root: str | None, **kwargs: Any) -> Any:
        nodefleet_logging.configure("console", "warning")
        settings = build_settings(broker=broker, topic_root=topic_root, fleet_root=fleet_root)
        return command(*args, settings=settings, **kwargs)

    return wrapper


def build_settings(*, broker: str | None, topic_root: str | None, fleet_root: str | None) -> CommonSettings:
    """Settings from the environment, with the given options on top; bad values are usage errors."""
    given = {"mqtt_url": broker, "topic_root": topic_root, "fleet_root": fleet_root}
    try:
        settings = CommonSettings(**{key: value for key, value in given.items() if value is not None})
        address = wire.BrokerAddress.parse(settings.mqtt_url)
        settings.topics  # noqa: B018 - validates both roots
    except (ValidationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    login = local_login(address)
    return settings if login is None else settings.model_copy(update={"mqtt_url": login})


def local_login(address: wire.BrokerAddress) -> str | None:
    """The operator's URL when ``address`` (without a user) is the broker of a secured `nodefleet up` here."""
    if address.username is not None:
        return None
    try:
        stored = LocalCredentials.read(default_data_dir())
    except CredentialsFileError as exc:
        note(f"note: {exc}")
        return None
    if stored is None or OPERATOR not in stored.passwords or not stored.serves(address.host, address.port):
        return None
    return stored.url(OPERATOR, address.host, address.port)


def node_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a NODE argument must be a valid node name."""
    if value is None:
        return None
    try:
        return validate_node_name(value)
    except TopicError as exc:
        raise click.BadParameter(str(exc)) from exc


format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="table for people, csv or json for scripts",
)
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
    help="How long to wait for the telemetry service's answer",
)


# -- running -------------------------------------------------------------------


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine to completion."""
    return asyncio.run(coroutine)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on Ctrl-C or SIGTERM (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class Connection:
    client: wire.Client
    client_id: str
    topics: Topics


@contextlib.asynccontextmanager
async def connect(settings: CommonSettings) -> AsyncIterator[Connection]:
    """A connected MQTT client with a fresh client id; CliError if the broker is unreachable."""
    address = wire.BrokerAddress.parse(settings.mqtt_url)
    client_id = f"nodefleet-cli-{uuid.uuid4().hex[:12]}"
    client = wire.Client(address, client_id=client_id)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await client.__aenter__()
    except (wire.WireError, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {CONNECT_TIMEOUT:g} s"
        if isinstance(exc, wire.BrokerRefused) and exc.bad_login:
            hint = WRONG_LOGIN_HINT if address.username else REFUSED_HINT
            raise CliError(f"the broker at {address.url} refused the login ({reason}): {hint}") from exc
        raise CliError(f"cannot reach the broker at {address.url} ({reason}): {NOT_RUNNING_HINT}") from exc
    try:
        yield Connection(client=client, client_id=client_id, topics=settings.topics)
    finally:
        with contextlib.suppress(wire.WireError):
            await client.__aexit__(None, None, None)


async def request_on(connection: Connection, service: str, action: str, data: Any, *, timeout: float) -> Any:
    """One fleet request to ``service`` over an open connection; CliError that says what to do on any failure."""
    requester = Requester(connection.client, connection.topics, client_id=connection.client_id)
    await requester.start()

    async def feed() -> None:
        async for message in connection.client.messages:
            requester.feed(message)

    reader = asyncio.create_task(feed())
    try:
        return await requester.request(service, action, data, timeout=timeout)
    except RequestError as exc:
        if str(exc).startswith("no answer"):
            raise CliError(f"{exc} (start it with `nodefleet up`, or check --broker and --fleet-root)") from exc
        raise CliError(f"the {service} service answered with an error: {exc}") from exc
    except wire.WireError as exc:
        raise CliError(f"lost the broker connection ({exc}): {NOT_RUNNING_HINT}") from exc
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, wire.WireError):
            await reader


async def service_request(settings: CommonSettings, service: str, action: str, data: Any, *, timeout: float) -> Any:
    """Connect, send one request to ``service`` and return the answer's ``data``."""
    async with connect(settings) as connection:
        return await request_on(connection, service, action, data, timeout=timeout)


async def fleet_request(settings: CommonSettings, query: Any, *, timeout: float) -> Any:
    """Send one query to the telemetry service and return the answer's ``data``."""
    return await service_request(settings, TELEMETRY_SERVICE, query.action, query, timeout=timeout)


def parse_rows(data: Any, model: type[T], what: str) -> list[T]:
    """Validate an answer's rows; a mismatch means the service speaks another contract version."""
    if not isinstance(data, list):
        raise CliError(f"unexpected answer to {what}: expected a list of rows, got {type(data).__name__}; "
                       f"are the CLI and the telemetry service the same version?")
    try:
        return [model.model_validate(row) for row in data]  # type: ignore[attr-defined]
    except ValidationError as exc:
        raise CliError(f"unexpected row in the answer to {what}: {exc.errors()[0]['msg']}; "
                       f"are the CLI and the telemetry service the same version?") from exc


# -- times -----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = "a duration back from now (30s, 15m, 1h, 7d, 1h30m) or an ISO time (2026-11-21T09:00, 2026-11-21T09:00:00Z)"


def parse_duration(text: str) -> float | None:
    """Seconds in ``1h30m``-style text, or None if it is not a duration."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(compact))


def parse_time(text: str, *, now: float | None = None) -> float:
    """Epoch seconds for ``now``, a duration back from now, or an ISO time (naive = local time)."""
    now = time.time() if now is None else now
    if text.strip().lower() == "now":
        return now
    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration nor a time: use {TIME_HELP}") from None
    return moment.timestamp()  # a naive time is taken as local time


class TimeArg(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def relative(epoch: float | None, *, now: float | None = None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``; ``never`` for None."""
    if epoch is None:
        return "never"
    delta = (time.time() if now is None else now) - epoch
    if abs(delta) < 1:
        return "just now"
    suffix = "ago" if delta > 0 else "from now"
    delta = abs(delta)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if delta < limit:
            return f"{int(delta // size)} {unit} {suffix}"
    return f"{int(delta // 86400)} d {suffix}"


def local_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- output --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Column:
    """One output column: ``human`` formats a table cell, ``machine`` a CSV cell."""

    key: str
    title: str
    human: Callable[[Any], str] = lambda value: "" if value is None else str(value)
    machine: Callable[[Any], Any] = lambda value: "" if value is None else value
    justify: str = "left"


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[Column], fmt: str, *, title: str | None = None) -> None:
    """Print rows as a rich table, CSV (header first) or a JSON array (the rows as answered)."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(column.key for column in columns)
        for row in rows:
            writer.writerow(column.machine(row.get(column.key)) for column in columns)
        click.echo(buffer.getvalue(), nl=False)
    elif rows:  # an empty table says nothing; the caller explains the empty result
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column.title, justify=column.justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*(column.human(row.get(column.key)) for column in columns))
        console().print(table)


def console() -> Console:
    """A console on the current stdout; wide when it is not a terminal, so pipes get whole lines."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def note(message: str) -> None:
    """Something the user should read that is not data (goes to stderr)."""
    click.echo(message, err=True)
