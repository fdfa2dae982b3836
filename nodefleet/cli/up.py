"""``nodefleet up``: the whole system in one process, on embedded defaults."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import click

from .. import logging as nodefleet_logging
from ..paths import default_data_dir
from ..runtime import (
    DEFAULT_DB_PORT,
    DEFAULT_MQTT_PORT,
    Runtime,
    RuntimeInfo,
    RuntimeOptions,
    StartupError,
    Unit,
    run,
)
from ..settings import CommonSettings
from . import main

# The demo nodes exist only once the simulator is part of the package.
DEMO_AVAILABLE = importlib.util.find_spec("nodefleet.sim") is not None


def print_banner(info: RuntimeInfo) -> None:
    """Where everything is, as aligned lines on stdout (logs go to stderr)."""
    broker_kind = "embedded amqtt" if info.embedded_broker else "external"
    database_kind = "embedded PostgreSQL" if info.embedded_database else "external"
    services = ", ".join(info.services) if info.services else "none found (no services/<name> package installed)"
    lines = [
        click.style(f"nodefleet is up (ready in {info.startup_seconds:.1f} s)", bold=True),
        f"  broker     {info.broker_url}  ({broker_kind})",
        f"  database   {info.database_url}  ({database_kind})",
    ]
    if info.embedded_database:
        lines.append(f"  data       {info.data_dir}")
    lines.append(f"  services   {services}")
    if info.extras:
        lines.append(f"  also       {', '.join(info.extras)}")
    hint = "" if info.broker_url.endswith(f":{DEFAULT_MQTT_PORT}") else f" --broker {info.broker_url}"
    lines.append(f"  try        nodefleet devices{hint}   |   nodefleet telemetry tail{hint}")
    lines.append("  Ctrl-C stops everything (twice forces).")
    click.echo("\n".join(lines))


def _options(function: Any) -> Any:
    options = [
        click.option("--mqtt-port", type=click.IntRange(1, 65535), default=DEFAULT_MQTT_PORT, show_default=True,
                     help="Port of the embedded MQTT broker"),
        click.option("--mqtt-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
                     help="Address the embedded broker listens on (0.0.0.0 lets devices on your network in)"),
        click.option("--db-port", type=click.IntRange(1, 65535), default=DEFAULT_DB_PORT, show_default=True,
                     help="Port of the embedded PostgreSQL (loopback only)"),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help=f"Where the embedded PostgreSQL keeps its data  [default: {default_data_dir()}]"),
        click.option("--broker", metavar="URL", help="Use this broker (mqtt://[user:password@]host:port) "
                     "instead of the embedded one"),
        click.option("--database", metavar="DSN", help="Use this PostgreSQL (postgresql://user@host:port/db) "
                     "instead of the embedded one"),
        click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True,
                     help="auto: readable on a terminal, JSON lines otherwise"),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                     show_default=True),
    ]
    if DEMO_AVAILABLE:
        options.append(click.option("--demo", type=click.IntRange(min=0), default=0, metavar="N",
                                    help="Also run N simulated nodes against the broker"))
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@_options
def up(*, mqtt_port: int, mqtt_host: str, db_port: int, data_dir: Path | None, broker: str | None,
       database: str | None, log_format: str, log_level: str, demo: int = 0) -> None:
    """Run everything in one process: MQTT broker, PostgreSQL and every service.

    With nothing but the package installed, starts an embedded MQTT broker
    (amqtt), an embedded PostgreSQL whose data stays in the data directory
    across restarts, and each service as its own MQTT client.  Prints where
    everything is, then logs.  Ctrl-C (or SIGTERM) stops it all cleanly.

    \b
    Examples:
      nodefleet up
      nodefleet up --mqtt-port 1884 --db-port 15433
      nodefleet up --broker mqtt://127.0.0.1:1883      # your own Mosquitto
      nodefleet up --database postgresql://me@db.local:5432/nodefleet
    """
    nodefleet_logging.configure(log_format, log_level)  # type: ignore[arg-type]
    options = RuntimeOptions(
        data_dir=(data_dir or default_data_dir()).expanduser().resolve(),
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        db_port=db_port,
        broker_url=broker,
        database_url=database,
        log_format=log_format,  # type: ignore[arg-type]
        log_level=log_level,
    )
    extras = [_demo_unit(demo)] if demo else []
    try:
        code = asyncio.run(run(Runtime(options, extras=extras), on_ready=print_banner))
    except StartupError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code)


def _demo_unit(count: int) -> Any:
    """The hook for simulated nodes: ``nodefleet.sim.run_demo(count=, mqtt_url=, ready=, topic_root=)``."""
    sim = importlib.import_module("nodefleet.sim")
    run_demo = getattr(sim, "run_demo", None)
    if run_demo is None:
        raise click.UsageError("--demo needs nodefleet.sim.run_demo, which this build lacks")

    # The nodes publish under the same root as the services read (NODEFLEET_TOPIC_ROOT).
    topic_root = CommonSettings().topic_root

    def make(broker_url: str, database_url: str) -> Unit:
        return Unit(name=f"demo ({count} simulated nodes)",
                    run=lambda ready: run_demo(count=count, mqtt_url=broker_url, ready=ready, topic_root=topic_root))

    return make
