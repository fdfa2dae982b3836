"""``nodefleet devices``: every node the telemetry service knows."""

from __future__ import annotations

from typing import Any

from ..contracts.queries import DeviceRow, DevicesQuery
from ..settings import CommonSettings
from .group import main
from .options import fleet_options, format_option, timeout_option
from .output import Column, emit, note
from .requests import fleet_request, parse_rows
from .running import run
from .times import iso_time, relative


def availability(row: dict[str, Any]) -> str:
    """``online``, ``sleeping`` (asleep by plan: not lost, so not ``offline``), ``offline`` or ``unknown``."""
    if row.get("sleeping"):
        return "sleeping"
    return {True: "online", False: "offline"}.get(row.get("online"), "unknown")


def _wake(epoch: float | None) -> str:
    return "" if epoch is None else relative(epoch)  # "10 min from now"; "ago" once the wake is overdue


COLUMNS = (
    Column(key="node", title="node"),
    Column(key="availability", title="availability"),
    Column(key="availability_changed", title="since", human=relative, machine=iso_time),
    Column(key="sleep_until", title="wake", human=_wake, machine=iso_time),
    Column(key="last_seen", title="last seen", human=relative, machine=iso_time),
    Column(key="relay", title="relay"),
    Column(key="mode", title="mode"),
    Column(key="fw", title="firmware"),
    Column(key="chip_id", title="chip id"),
)


@main.command()
@fleet_options
@format_option
@timeout_option
def devices(settings: CommonSettings, fmt: str, timeout: float) -> None:
    """List every node: availability, last seen, relay and mode (latest state), firmware.

    A node asleep by plan shows as `sleeping`, with the wake it announced
    (`wake`); `offline` is a node that went away without saying so.

    Asks the telemetry service over MQTT, so a system must be running
    (`nodefleet up`, or the services against your own broker).

    \b
    Examples:
      nodefleet devices
      nodefleet devices --format json
      nodefleet devices --broker mqtt://192.168.1.10:1883 --format csv > nodes.csv
    """
    data = run(fleet_request(settings, DevicesQuery(), timeout=timeout))
    rows = [row.model_dump(mode="json") for row in parse_rows(data, DeviceRow, "devices")]
    for row in rows:
        row["availability"] = availability(row)
    rows.sort(key=lambda row: row["node"])
    emit(rows, COLUMNS, fmt, title=f"{len(rows)} node(s) under {settings.topic_root}/" if fmt == "table" else None)
    if not rows:
        note(f"no nodes known under {settings.topic_root}/ yet: a node appears once it publishes "
             f"(check --topic-root if yours differs)")
