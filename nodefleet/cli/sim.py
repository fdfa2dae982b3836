"""``nodefleet sim``: N simulated nodes (the real firmware on MicroPython) against a broker."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import click

from ..contracts.provisioning import Registration
from ..mqtt import BrokerAddress
from ..paths import OPERATOR, CredentialsFileError, LocalCredentials, default_data_dir
from ..settings import CommonSettings
from ..sim import SimError, SimFleet
from ..sim_registration import RegistrationError, register_nodes
from .connect import NOT_RUNNING_HINT
from .errors import CliError
from .group import main
from .options import fleet_options
from .output import note
from .running import run, stop_on_signals

REGISTRATIONS_FILE = "registrations.json"


@main.command()
@fleet_options
@click.option("--nodes", "count", type=click.IntRange(min=1, max=500), default=10, show_default=True,
              help="How many nodes to run (one MicroPython process each)")
@click.option("--telemetry-period", type=click.IntRange(min=1, max=86400), default=10, show_default=True,
              metavar="SECONDS", help="Telemetry period of every node")
@click.option("--name-prefix", default="sim", show_default=True, help="Nodes are named PREFIX-000, PREFIX-001, ...")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the nodes' flash directories live  [default: a new temporary directory]")
@click.option("--duration", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Stop after this long (0 = until Ctrl-C)")
@click.option("--register", is_flag=True,
              help="Register each node with the provisioner first, so it logs in as its own user (needed on a "
                   "secured broker such as `nodefleet up`'s); kept in --workdir and reused when given")
def sim(settings: CommonSettings, count: int, telemetry_period: int, name_prefix: str, workdir: Path | None,
        duration: float, register: bool) -> None:
    """Run simulated nodes: the node firmware on the MicroPython unix port.

    Each node connects with its last will, publishes online, info and state,
    answers commands and sends telemetry, exactly as an ESP32 would.

    \b
    Examples:
      nodefleet sim --nodes 10 --register                # against `nodefleet up`
      nodefleet sim --nodes 100 --telemetry-period 30 --broker mqtt://127.0.0.1:1883   # an open broker
    """
    address = BrokerAddress.parse(settings.mqtt_url)
    try:
        socket.create_connection((address.host, address.port), timeout=3).close()
    except OSError as exc:
        raise CliError(f"cannot reach the broker at {address.url} ({exc}): {NOT_RUNNING_HINT}") from exc
    if not register and _is_local_operator(address):
        raise click.UsageError("the broker of `nodefleet up` refuses nodes without their own login: add --register "
                               "(each node is registered with the provisioner and logs in as itself)")
    registrations: list[Registration] = []
    if register:
        store = workdir / REGISTRATIONS_FILE if workdir else None
        if workdir:
            workdir.mkdir(parents=True, exist_ok=True)
        try:
            registrations = run(register_nodes(count=count, mqtt_url=settings.mqtt_url, topics=settings.topics,
                                               store=store, scope=address.url, name_prefix=name_prefix))
        except RegistrationError as exc:
            raise CliError(f"{exc} (is the provisioner running? `nodefleet up` runs it)") from exc
    try:
        fleet = SimFleet(mqtt_url=settings.mqtt_url, count=count, topics=settings.topics, name_prefix=name_prefix,
                         telemetry_period=telemetry_period, workdir=workdir, registrations=registrations)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name-prefix") from exc
    run(_serve(fleet, duration))


def _is_local_operator(address: BrokerAddress) -> bool:
    """Whether the nodes would log in as the operator of a secured `nodefleet up` (its login picked up here)."""
    if address.username != OPERATOR:
        return False
    try:
        stored = LocalCredentials.read(default_data_dir())
    except CredentialsFileError:
        return False
    return stored is not None and stored.passwords.get(OPERATOR) == address.password


async def _serve(fleet: SimFleet, duration: float) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        try:
            await fleet.start()
        except SimError as exc:
            await fleet.stop()
            raise CliError(str(exc)) from exc
        try:
            note(f"{len(fleet.nodes)} simulated nodes running under {fleet.topics.root}/ "
                 f"(flash in {fleet.workdir}); Ctrl-C stops them")
            try:
                await asyncio.wait_for(stop.wait(), duration or None)
            except TimeoutError:
                pass
            note(f"stopping: {fleet.alive()} of {len(fleet.nodes)} nodes were running")
        finally:
            await fleet.stop()
