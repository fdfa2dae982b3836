"""``nodefleet logs NODE``: a node's device error logs, newest first."""

from __future__ import annotations

import click

from ..contracts.queries import LogRow, LogsQuery
from ..settings import CommonSettings
from .group import main
from .options import fleet_options, format_option, node_name, timeout_option
from .output import Column, emit, note
from .requests import fleet_request, parse_rows
from .running import run
from .times import iso_time, local_time

COLUMNS = (
    Column(key="received", title="received", human=local_time, machine=iso_time),
    Column(key="time", title="device time", human=local_time, machine=iso_time),
    Column(key="level", title="level"),
    Column(key="code", title="code"),
    Column(key="msg", title="message"),
    Column(key="reset_cause", title="reset cause"),
    Column(key="seq", title="seq", justify="right"),
)


@main.command()
@click.argument("node", callback=node_name)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most this many entries")
@click.option("--traces", is_flag=True, help="Also print each entry's crash trace, if it has one (table format)")
@format_option
@timeout_option
@fleet_options
def logs(settings: CommonSettings, node: str, limit: int, traces: bool, fmt: str, timeout: float) -> None:
    """Show NODE's device error logs (level, code, message, reset cause), newest first.

    Nodes keep errors and crash reports on flash until they are sent, so
    entries may arrive late; "device time" is when the node logged them.

    \b
    Examples:
      nodefleet logs kitchen
      nodefleet logs kitchen --limit 10 --traces
      nodefleet logs kitchen --format json
    """
    data = run(fleet_request(settings, LogsQuery(node=node, limit=limit), timeout=timeout))
    rows = [row.model_dump(mode="json") for row in parse_rows(data, LogRow, "logs")]
    emit(rows, COLUMNS if fmt == "table" else (Column(key="node", title="node"), *COLUMNS, Column(key="trace", title="trace")),
         fmt, title=f"{node}: {len(rows)} log entr{'y' if len(rows) == 1 else 'ies'}" if fmt == "table" else None)
    if traces and fmt == "table":
        for row in rows:
            if row.get("trace"):
                click.echo(f"\n--- {row['code']} (seq {row['seq']}, {local_time(row['received'])})\n{row['trace']}")
    if not rows:
        note(f"no logs from node {node!r}: either it never reported an error, or the name is wrong "
             f"(check it with `nodefleet devices`)")
