"""``nodefleet schedule set|show|history NODE``: a node's NodeLogic rules (changed through the scheduler, shown from
the retained schedule topic, the node's state and the scheduler's view)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import click
from pydantic import ValidationError

from ..contracts import WEEKDAYS, State
from ..contracts.queries import TELEMETRY_SERVICE, LogRow, LogsQuery, RunEventsQuery
from ..contracts.scheduling import (
    SCHEDULE_REJECTED,
    SCHEDULER_SERVICE,
    RunEventRow,
    ScheduleChange,
    ScheduleChanged,
    ShowAnswer,
    ShowQuery,
)
from ..settings import CommonSettings
from .connect import Connection, connect
from .errors import CliError
from .group import main
from .options import fleet_options, format_option, node_name
from .output import Column, emit, note
from .requests import parse_rows, request_on
from .running import run
from .times import iso_time, local_time, parse_duration

RETAINED_WAIT = 1.0  # seconds to wait for the retained schedule (none arrives if the node has none)
DAYS_HELP = "mon-fri, sat,sun, mon-wed,fri or daily"


def parse_days(text: str) -> list[str]:
    """``mon-fri``, ``sat,sun``, ``daily`` -> the listed weekdays in week order."""
    if text.strip().lower() in ("daily", "all", "every"):
        return list(WEEKDAYS)
    days: set[str] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise click.BadParameter(f"{part!r} is not a day or range of days: use {DAYS_HELP}")
        a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days.update(WEEKDAYS[i % 7] for i in range(a, b + (7 if b < a else 0) + 1))
    return [d for d in WEEKDAYS if d in days]


def seconds(text: str, what: str) -> int:
    value = parse_duration(text)
    if value is None or value < 1 or value != int(value):
        raise click.BadParameter(f"{text!r} is not a duration for {what}: use e.g. 30s, 20m, 1h30m")
    return int(value)


async def _retained(connection: Connection, *topics: str) -> dict[str, Any]:
    """The retained JSON of each topic that has one (waits at most RETAINED_WAIT for those that do not)."""
    for topic in topics:
        await connection.client.subscribe(topic, qos=1)
    found: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RETAINED_WAIT):
            async for message in connection.client.messages:
                topic = str(message.topic)
                if topic in topics and topic not in found:
                    try:
                        found[topic] = json.loads(message.payload) if message.payload else None  # type: ignore[arg-type]
                    except ValueError:
                        found[topic] = None
                    if len(found) == len(topics):
                        break
    return {topic: value for topic, value in found.items() if value is not None}


async def _request(connection: Connection, action: str, query: Any, timeout: float) -> Any:
    return await request_on(connection, SCHEDULER_SERVICE, action, query, timeout=timeout)


@main.group()
def schedule() -> None:
    """A node's NodeLogic rules (its retained schedule topic) and what the scheduler did with them."""


@schedule.command(name="set")
@click.argument("node", callback=node_name)
@click.option("--at", "at", required=True, metavar="HH:MM", help="Start, node-local time")
@click.option("--for", "duration", required=True, metavar="DURATION", help="How long: 30s, 20m, 1h30m")
@click.option("--days", default="daily", show_default=True, help=f"Days: {DAYS_HELP}")
@click.option("--action", type=click.Choice(["on", "off"]), default="on", show_default=True)
@click.option("--every", metavar="DURATION", help="Repeat every DURATION from --at until --end (interval rule)")
@click.option("--end", metavar="HH:MM", help="With --every: no run starts at or after this time")
@click.option("--id", "rule_id", metavar="ID", help="Rule id; a rule with this id is replaced  [default: from --at]")
@click.option("--disabled", is_flag=True, help="Store the rule switched off")
@click.option("--replace", is_flag=True, help="Drop the node's other rules (also those the new rule conflicts with)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the scheduler")
@fleet_options
def set_(settings: CommonSettings, node: str, at: str, duration: str, days: str, action: str, every: str | None,
         end: str | None, rule_id: str | None, disabled: bool, replace: bool, timeout: float) -> None:
    """Add or replace one rule of NODE's schedule; the scheduler publishes it (retained) with the next version.

    The scheduler must be running (`nodefleet up` runs it): it applies the
    change to the version in force, so changes made at the same moment all
    land.  A rule the node would refuse is refused here, with the node's reason.

    \b
    Examples:
      nodefleet schedule set kitchen --at 06:00 --for 30m --days mon-fri
      nodefleet schedule set garden --at 06:00 --for 20m --every 4h --end 22:00 --id water
    """
    rule: dict[str, Any] = {"id": rule_id or f"{action}-{at.replace(':', '')}", "at": at,
                            "duration": seconds(duration, "--for"), "days": parse_days(days), "action": action,
                            "enabled": not disabled}
    if every is not None or end is not None:
        if every is None or end is None:
            raise click.UsageError("an interval rule needs both --every and --end")
        rule.update(every=seconds(every, "--every"), end=end)
    run(_set(settings, node, rule, replace, timeout))


async def _set(settings: CommonSettings, node: str, rule: dict[str, Any], replace: bool, timeout: float) -> None:
    # The scheduler owns schedule changes: it applies this one to the version in force and publishes the next,
    # so two people setting rules at the same moment both keep theirs.
    change = ScheduleChange(node=node, change=uuid.uuid4().hex, rule=rule, replace=replace)
    async with connect(settings) as connection:
        answer = ScheduleChanged.model_validate(await _request(connection, "set", change, timeout))
    note(f"{node}: schedule version {answer.schedule['version']} published with "
         f"{len(answer.schedule['rules'])} rule(s)")


RULE_COLUMNS = (
    Column(key="id", title="rule"),
    Column(key="at", title="at"),
    Column(key="duration", title="for (s)", justify="right"),
    Column(key="days", title="days", human=lambda d: ",".join(d or WEEKDAYS)),
    Column(key="action", title="action"),
    Column(key="every", title="every (s)", justify="right"),
    Column(key="end", title="end"),
    Column(key="enabled", title="enabled"),
)


@schedule.command()
@click.argument("node", callback=node_name)
@format_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the scheduler's view")
@fleet_options
def show(settings: CommonSettings, node: str, fmt: str, timeout: float) -> None:
    """Show the schedule NODE and the scheduler run, and (if the scheduler runs) its open and next run.

    A retained schedule the node or the scheduler rejected is marked with the
    reason, and the command exits 1: the rules shown are the version still in
    force, not the rejected ones.
    """
    shown = run(_show(settings, node, timeout))
    rejected = shown["rejected"]
    if fmt == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        _print_show(node, shown, fmt)
    if rejected is not None:
        held = shown["running"]["version"] if shown["running"] else shown["node_applied"]
        raise CliError(f"{node}'s retained schedule version {rejected['version']} was rejected: {rejected['reason']}; "
                       f"{'version ' + str(held) if held else 'no schedule'} stays in force. Fix it with "
                       f"`nodefleet schedule set {node} ...`")


async def _show(settings: CommonSettings, node: str, timeout: float) -> dict[str, Any]:
    """What is retained, what the node reports it applied, what the scheduler holds, and the verdict."""
    async with connect(settings) as connection:
        topics = connection.topics
        found = await _retained(connection, topics.schedule(node), topics.state(node))
        retained = found.get(topics.schedule(node))
        try:
            applied = State.model_validate(found[topics.state(node)]).schedule if topics.state(node) in found else None
        except ValidationError:
            applied = None
        try:
            view = ShowAnswer.model_validate(await _request(connection, "show", ShowQuery(node=node), timeout))
        except CliError as exc:  # no scheduler running: the retained schedule and the node's word alone
            view = None
            note(f"no view from the scheduler ({exc})")
        retained_version = retained.get("version") if isinstance(retained, dict) else None
        running: dict[str, Any] | None
        rejected: dict[str, Any] | None = None
        if view is not None:
            running = view.schedule
            if view.rejected:
                rejected = {"version": retained_version, "reason": view.rejected, "by": "scheduler"}
        else:
            node_refused = applied is not None and retained_version is not None and applied != retained_version
            running = retained if not node_refused else None
            if node_refused:
                reason = await _node_refusal(connection, node, timeout)
                rejected = {"version": retained_version, "reason": reason, "by": "node"}
    return {"retained": retained, "running": running, "node_applied": applied, "rejected": rejected,
            "scheduler": view.model_dump(mode="json") if view else None}


async def _node_refusal(connection: Connection, node: str, timeout: float) -> str:
    """The node's newest ``bad_schedule`` log entry, from the telemetry service's store."""
    try:
        rows = parse_rows(await request_on(connection, TELEMETRY_SERVICE, "logs", LogsQuery(node=node, limit=50),
                                           timeout=timeout), LogRow, "logs")
    except CliError as exc:
        return f"the node did not apply it (its reason is in its log; no answer from telemetry: {exc})"
    for row in rows:
        if row.code == SCHEDULE_REJECTED:
            return row.msg
    return "the node did not apply it (no bad_schedule entry in its log yet)"


def _print_show(node: str, shown: dict[str, Any], fmt: str) -> None:
    running, rejected, applied = shown["running"], shown["rejected"], shown["node_applied"]
    if isinstance(running, dict):
        rows = [{k: r.get(k) for k in ("id", "at", "duration", "days", "action", "every", "end", "enabled")}
                for r in running.get("rules", []) if isinstance(r, dict)]
        who = "the scheduler holds" if shown["scheduler"] else "retained"
        emit(rows, RULE_COLUMNS, fmt, title=f"{node}: schedule version {running.get('version')} in force ({who})")
    elif shown["retained"] is None and rejected is None:
        note(f"{node} has no schedule: set one with `nodefleet schedule set {node} --at 06:00 --for 30m`")
    elif applied is not None:
        click.echo(f"{node}: the node keeps version {applied} (its rules are retained no more; the scheduler, "
                   f"which `nodefleet up` runs, shows them)")
    else:
        click.echo(f"{node}: no valid schedule in force")
    if applied is not None:
        click.echo(f"node: applied version {applied}")
    if rejected is not None:
        click.echo(f"REJECTED: retained version {rejected['version']} (by the {rejected['by']}): {rejected['reason']}")
    view = shown["scheduler"]
    if view is not None:
        for label in ("open", "next"):
            item = view.get(label)
            if item is not None:
                click.echo(f"{'open now' if label == 'open' else label}: {item['run_id']} {item['action']} "
                           f"{local_time(item['start'])} - {local_time(item['end'])}")


HISTORY_COLUMNS = (
    Column(key="ts", title="recorded", human=local_time, machine=iso_time),
    Column(key="kind", title="kind"),
    Column(key="run_id", title="run"),
    Column(key="action", title="action"),
    Column(key="start", title="start", human=local_time, machine=iso_time),
    Column(key="end", title="end", human=local_time, machine=iso_time),
    Column(key="detail", title="detail"),
    Column(key="instance", title="scheduler"),
)


@schedule.command()
@click.argument("node", callback=node_name)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@format_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS")
@fleet_options
def history(settings: CommonSettings, node: str, limit: int, fmt: str, timeout: float) -> None:
    """NODE's runs, backups, misses and skipped runs, newest first.

    The scheduler publishes them as run events; the telemetry service stores
    them for NODEFLEET_TELEMETRY_LOG_RETENTION_DAYS days and answers this, so
    it must be running (the scheduler need not be).  The JSON output also carries `sent` (a backup: when the broker acknowledged
    the command) and `received` (when telemetry got the event).
    """
    rows = run(_history(settings, node, limit, timeout))
    emit(rows, HISTORY_COLUMNS, fmt, title=f"{node}: {len(rows)} run event(s)" if fmt == "table" else None)
    if not rows:
        note(f"no run events for {node!r} yet: they appear once one of its rules falls due")


async def _history(settings: CommonSettings, node: str, limit: int, timeout: float) -> list[dict[str, Any]]:
    async with connect(settings) as connection:
        try:
            data = await request_on(connection, TELEMETRY_SERVICE, "run_events", RunEventsQuery(node=node, limit=limit),
                                    timeout=timeout)
        except CliError as exc:
            raise CliError(f"{exc}; the telemetry service keeps the run history") from exc
    return [row.model_dump(mode="json") for row in parse_rows(data, RunEventRow, "schedule history")]
