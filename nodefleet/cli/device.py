"""``nodefleet device ...``: the provisioner's registry from the command line (list, config, remove, home, home-login)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..contracts.provisioning import PROVISIONER_SERVICE
from ..settings import CommonSettings
from .errors import CliError
from .group import main
from .options import fleet_options, format_option, node_name
from .output import Column, emit, note
from .requests import service_request
from .running import run

provisioner_timeout = click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="SECONDS",
    help="How long to wait for the provisioner's answer",
)


async def provisioner_request(settings: CommonSettings, action: str, data: dict[str, Any], *, timeout: float) -> Any:
    """One request to the provisioner over MQTT; CliError that says what to do on any failure."""
    return await service_request(settings, PROVISIONER_SERVICE, action, data, timeout=timeout)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON if it parses (15, true, "x"), else plain text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: use key=value, e.g. telemetry_period=30 or pins.outputs.relay=25")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


@main.group()
def device() -> None:
    """Registered devices: list them, change their config, remove them, define homes and their operator logins."""


COLUMNS = (
    Column(key="node", title="node"),
    Column(key="home_id", title="home"),
    Column(key="device_name", title="name"),
    Column(key="status", title="status"),
    Column(key="chip_id", title="chip id"),
    Column(key="config_version", title="config"),
    Column(key="config_applied", title="applied"),
    Column(key="created", title="registered"),
    Column(key="first_connected", title="first online"),
)


@device.command("list")
@fleet_options
@format_option
@provisioner_timeout
@click.option("--home", "home_id", help="Only devices of this home")
@click.option("--status", type=click.Choice(["pending", "provisioned", "unprovisioned", "revoked"]), help="Only devices in this state")
def list_devices(settings: CommonSettings, fmt: str, timeout: float, home_id: str | None, status: str | None) -> None:
    """List registered devices (from the provisioner's registry)."""
    data = {k: v for k, v in {"home_id": home_id, "status": status}.items() if v}
    rows = run(provisioner_request(settings, "list", data, timeout=timeout))
    emit(rows, COLUMNS, fmt, title="registered devices")
    if not rows and fmt == "table":
        note("no devices registered yet: register one with `nodefleet provision`")


@device.command("config")
@fleet_options
@provisioner_timeout
@click.argument("node", callback=node_name)
@click.option("--set", "assignments", multiple=True, required=True, metavar="KEY=VALUE",
              help="A config value, repeatable: telemetry_period=30, power_on=last, pins.outputs.relay=25, tz_name=Europe/Berlin")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the node reports that it applied the new version")
@click.option("--apply-timeout", type=click.FloatRange(min=0.1, max=300), default=15.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the node to apply it")
def config(settings: CommonSettings, timeout: float, node: str, assignments: tuple[str, ...], wait: bool,
           apply_timeout: float) -> None:
    """Change NODE's config; the new version is published (retained) and the node reports the version it applied."""
    changes = dict(parse_assignment(a) for a in assignments)
    data = {"node": node, "set": changes, "wait": apply_timeout if wait else 0}
    # The provisioner answers once the node applied it or apply_timeout passed.
    answer = run(provisioner_request(settings, "config", data, timeout=timeout + (apply_timeout if wait else 0)))
    version = answer["version"]
    if not wait:
        click.echo(f"{node}: config version {version} published")
    elif answer["applied"]:
        click.echo(f"{node}: config version {version} applied by the node")
    elif answer.get("rejected"):
        raise CliError(f"{node} rejected config version {version}: {answer['rejected']}. It keeps the version it "
                       f"had; set a value it can use and try again.")
    else:
        click.echo(f"{node}: config version {version} published; the node has not applied it yet (offline?). "
                   f"It applies it when it connects; if it rejected it, `nodefleet logs {node}` says why "
                   f"(code bad_config).")


@device.command("remove")
@fleet_options
@provisioner_timeout
@click.argument("node", callback=node_name)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal)")
def remove(settings: CommonSettings, timeout: float, node: str, yes: bool) -> None:
    """Revoke NODE: credentials removed from the broker, its retained config, schedule, state and discovery cleared.

    Asks first on a terminal; in a script pass --yes.
    """
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(f"not removing {node}: there is no terminal to confirm on; pass --yes to remove it")
        click.confirm(f"Revoke {node}'s credentials and clear its retained topics?", abort=True)
    run(provisioner_request(settings, "remove", {"node": node}, timeout=timeout))
    click.echo(f"{node}: revoked")


@device.command("home")
@fleet_options
@provisioner_timeout
@click.argument("home_id")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of the home, e.g. Europe/Berlin")
def home(settings: CommonSettings, timeout: float, home_id: str, tz: str) -> None:
    """Create HOME_ID (or change its time zone); devices register into a home."""
    run(provisioner_request(settings, "home", {"home_id": home_id, "tz": tz}, timeout=timeout))
    click.echo(f"home {home_id}: time zone {tz}")


@device.command("home-login")
@fleet_options
@provisioner_timeout
@click.argument("home_id")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as one JSON object (for scripts)")
def home_login(settings: CommonSettings, timeout: float, home_id: str, as_json: bool) -> None:
    """Make HOME_ID's operator login: a broker login for openHAB, Home Assistant or any MQTT client that reaches
    only this home's nodes (their topics, commands and schedules; none of another home, no fleet request).

    Running it again gives a new password (the old one stops working) and rebuilds what the login reaches from
    the registry.  Nodes that register into the home later, or are removed, are added or taken away by the
    provisioner.  The password is shown only here.
    """
    answer = run(provisioner_request(settings, "home_login", {"home_id": home_id}, timeout=timeout))
    if as_json:
        click.echo(json.dumps(answer))
        return
    nodes = answer["nodes"]
    click.echo(f"home {home_id}: operator login {answer['username']}")
    click.echo(f"password: {answer['password']}  (shown only now; run this again for a new one)")
    click.echo(f"reaches {len(nodes)} node(s) now{': ' + ', '.join(nodes) if nodes else ''}, and those registered "
               f"into the home later")
    if nodes:
        topics = settings.topics
        click.echo(f"for each node, e.g. {nodes[0]}: read {', '.join(topics.operator_subscribe(nodes[0]))}; "
                   f"send {', '.join(topics.operator_publish(nodes[0]))}")
