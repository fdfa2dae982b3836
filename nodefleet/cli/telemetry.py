"""``nodefleet telemetry tail`` (live, straight from the broker) and ``telemetry query`` (stored rows)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiomqtt
import click
from pydantic import ValidationError

from ..contracts import Topics
from ..contracts.payloads import Telemetry
from ..contracts.queries import TelemetryQuery, TelemetryRow
from ..contracts.topics import NodeTopic, TopicError
from ..settings import CommonSettings
from .connect import NOT_RUNNING_HINT, connect
from .errors import CliError
from .group import main
from .options import fleet_options, format_option, node_name, timeout_option
from .output import Column, emit, note
from .requests import fleet_request, parse_rows
from .running import run, stop_on_signals
from .times import TIME_HELP, TimeArg, iso_time, local_time

BASE_KEYS = ("node", "time", "received", "seq")


@main.group()
def telemetry() -> None:
    """Live and stored telemetry of the nodes (temperature, humidity, rssi, ...)."""


# -- tail ----------------------------------------------------------------------


@telemetry.command()
@click.argument("node", required=False, callback=node_name)
@fleet_options
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N messages (default: until Ctrl-C)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text lines for people, one JSON object per line for scripts")
def tail(settings: CommonSettings, node: str | None, count: int | None, fmt: str) -> None:
    """Print telemetry as it arrives, from every node or from NODE, until Ctrl-C.

    Subscribes straight to the broker: works even when the telemetry
    service is not running, and shows only what arrives from now on.

    \b
    Examples:
      nodefleet telemetry tail
      nodefleet telemetry tail kitchen --count 5
      nodefleet telemetry tail --format json | jq .readings.temperature
    """
    run(_tail(settings, node=node, count=count, fmt=fmt))


async def _tail(settings: CommonSettings, *, node: str | None, count: int | None, fmt: str) -> None:
    topics = settings.topics
    topic_filter = topics.node_or_all(NodeTopic.TELEMETRY, node)
    stop = asyncio.Event()
    # Handlers first: a Ctrl-C right after "listening" must still end cleanly.
    with stop_on_signals(stop):
        async with connect(settings) as connection:
            client = connection.client
            await client.subscribe(topic_filter, qos=0)
            note(f"listening on {topic_filter} (Ctrl-C stops)")
            reader = asyncio.create_task(_print_messages(client, topics, count=count, fmt=fmt))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not reader.done():
                reader.cancel()
                return
    try:
        reader.result()
    except aiomqtt.MqttError as exc:
        raise CliError(f"lost the broker connection ({exc}): {NOT_RUNNING_HINT}") from exc


async def _print_messages(client: aiomqtt.Client, topics: Topics, *, count: int | None, fmt: str) -> None:
    shown = 0
    async for message in client.messages:
        received = time.time()
        try:
            node = topics.parse(str(message.topic)).node
            reading = Telemetry.model_validate_json(message.payload)  # type: ignore[arg-type]
        except ValidationError as exc:
            note(f"skipped a malformed message on {message.topic}: {exc.errors()[0]['msg']}")
            continue
        except (TopicError, ValueError) as exc:
            note(f"skipped a message on {message.topic}: {exc}")
            continue
        click.echo(_format_message(node, reading, received, fmt))
        shown += 1
        if count is not None and shown >= count:
            return


def _format_message(node: str, reading: Telemetry, received: float, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"node": node, "time": reading.ts, "received": received, "seq": reading.seq,
                           "uptime": reading.uptime, "readings": reading.readings})
    values = " ".join(f"{name}={value}" for name, value in sorted(reading.readings.items()))
    clock = local_time(reading.ts if reading.ts is not None else received)
    return f"{clock}  {node}  seq={reading.seq}  {values}".rstrip()


# -- query ---------------------------------------------------------------------


@telemetry.command()
@click.argument("node", callback=node_name)
@click.option("--since", type=TimeArg(), default="1h", show_default=True, help=f"Start: {TIME_HELP}")
@click.option("--until", type=TimeArg(), help="End (default: now); same forms as --since")
@click.option("--limit", type=click.IntRange(1, 100_000), default=10_000, show_default=True, help="At most this many rows")
@format_option
@timeout_option
@fleet_options
def query(settings: CommonSettings, node: str, since: float, until: float | None, limit: int, fmt: str,
          timeout: float) -> None:
    """Show the stored telemetry of NODE between two times, oldest first.

    \b
    Examples:
      nodefleet telemetry query kitchen                  # the last hour
      nodefleet telemetry query kitchen --since 7d --format csv > kitchen.csv
      nodefleet telemetry query kitchen --since 2026-11-20T06:00 --until 2026-11-20T07:00
    """
    if until is not None and until <= since:
        raise click.BadParameter("--until must be later than --since", param_hint="--until")
    request = TelemetryQuery(node=node, since=since, until=until, limit=limit)
    data = run(fleet_request(settings, request, timeout=timeout))
    rows = parse_rows(data, TelemetryRow, "telemetry")
    if fmt == "json":
        emit([row.model_dump(mode="json") for row in rows], (), fmt)
    else:
        flat, columns = _flatten(rows)
        if fmt == "csv":
            columns.insert(0, Column(key="node", title="node"))
        emit(flat, columns, fmt, title=f"{node}: {len(rows)} row(s)" if fmt == "table" else None)
    window = f"between {local_time(since)} and {local_time(until) if until else 'now'}"
    if not rows:
        note(f"no telemetry from node {node!r} {window}: check the name with `nodefleet devices`, or widen --since")
    elif len(rows) >= limit:
        note(f"showing the first {limit} rows {window}: raise --limit or narrow --since/--until")


def _flatten(rows: list[TelemetryRow]) -> tuple[list[dict[str, Any]], list[Column]]:
    """One column per reading name seen in any row (prefixed if it clashes with a base column)."""
    names = sorted({name for row in rows for name in row.readings})
    keys = {name: f"reading_{name}" if name in BASE_KEYS else name for name in names}
    flat = [
        {"node": row.node, "time": row.time, "received": row.received, "seq": row.seq,
         **{keys[name]: value for name, value in row.readings.items()}}
        for row in rows
    ]
    columns = [
        Column(key="time", title="time", human=local_time, machine=iso_time),
        Column(key="seq", title="seq", justify="right"),
        *(Column(key=keys[name], title=name, justify="right") for name in names),
        Column(key="received", title="received", human=local_time, machine=iso_time),
    ]
    return flat, columns
