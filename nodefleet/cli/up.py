"""``nodefleet up``: the whole system in one process, on embedded defaults."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path
from typing import Any

import click

from .. import logging as nodefleet_logging
from ..contracts.provisioning import HTTP_REGISTER_PATH, HTTP_STATUS_PATH
from ..embedded.postgres import SYSTEM_USER
from ..paths import DATA_DIR_VARIABLE, default_data_dir
from ..settings import CommonSettings
from ..sim import run_demo
from ..tls import DEFAULT_TLS_PORT
from ..up.errors import StartupError
from ..up.logins import without_password
from ..up.options import DEFAULT_DB_PORT, DEFAULT_HTTP_PORT, DEFAULT_MQTT_PORT, RuntimeInfo, RuntimeOptions
from ..up.services import Unit
from ..up.system import Runtime, hands_out_ota_keys, run
from ..wire import BrokerAddress
from .group import main

DEMO_FILE = "demo-nodes.json"
WIDE_OPEN_HOSTS = ("0.0.0.0", "::")
HTTP_PORT_VARIABLE = "NODEFLEET_PROVISIONER_HTTP_PORT"
WS_PORT_VARIABLE = "NODEFLEET_MQTT_WS_PORT"
DEFAULT_WS_PORT = 8083  # as compose.yaml's Mosquitto
TLS_PORT_VARIABLE = "NODEFLEET_MQTT_TLS_PORT"
HTTP_HOST_VARIABLE = "NODEFLEET_PROVISIONER_HTTP_HOST"


def print_banner(info: RuntimeInfo) -> None:
    """Where everything is, as aligned lines on stdout (logs go to stderr)."""
    if not info.embedded_broker:
        broker_kind = "external"
    elif info.secured:
        broker_kind = "embedded amqtt, secured: no anonymous clients, a user per node"
    else:
        broker_kind = click.style("embedded amqtt, INSECURE: anyone may connect, node passwords are not checked",
                                  fg="red", bold=True)
    database_kind = "embedded PostgreSQL" if info.embedded_database else "external"
    services = ", ".join(info.services) if info.services else "none found (no services/<name> package installed)"
    broker_url = shown(info.broker_url)
    lines = [
        click.style(f"nodefleet is up (ready in {info.startup_seconds:.1f} s)", bold=True),
        f"  broker     {broker_url}  ({broker_kind})",
        f"  database   {without_password(info.database_url)}  ({database_kind})",
    ]
    if info.embedded_database:
        lines.append(f"  data       {info.data_dir}")
    if info.credentials_file is not None:
        lines.append(f"  logins     {info.credentials_file}  (mode 0600; the nodefleet commands read it)")
    if info.http_url is not None:
        edge = info.http_url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")
        lines.append(f"  http       {edge}  (the provisioner's HTTP edge for the phone app: POST "
                     f"{HTTP_REGISTER_PATH}, GET {HTTP_STATUS_PATH}<id>)")
    if info.ws_url is not None:
        ws = info.ws_url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")
        lines.append(f"  websocket  {ws}  (MQTT over WebSockets for apps and browsers: the same access as "
                     f"the MQTT port)")
    if info.tls_url is not None:
        tls = info.tls_url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")
        nodes = "nodes registered now get it" if info.node_tls else "--node-tls hands it to nodes"
        lines.append(f"  tls        {tls}  (MQTT over TLS, the same access; {nodes})")
    lines.append(f"  services   {services}")
    if info.extras:
        lines.append(f"  also       {', '.join(info.extras)}")
    hint = "" if broker_url.endswith(f":{DEFAULT_MQTT_PORT}") else f" --broker {broker_url}"
    # The commands find the logins in the data directory; a directory other than the default must be named.
    env = "" if info.credentials_file is None or info.data_dir == default_data_dir().expanduser().resolve() \
        else f"{DATA_DIR_VARIABLE}={shlex.quote(str(info.data_dir))} "
    lines.append(f"  try        {env}nodefleet devices{hint}   |   {env}nodefleet telemetry tail{hint}")
    if info.embedded_broker:  # an external broker's logins are its owner's
        lines += connection_lines(info)
    lines.append("  Ctrl-C stops everything (twice forces).")
    click.echo("\n".join(lines))


def shown(url: str) -> str:
    """A broker URL fit for the screen: a password replaced by the word PASSWORD."""
    address = BrokerAddress.parse(url)
    if address.password is None:
        return url
    return f"mqtt://{address.username}:PASSWORD@{address.host}:{address.port}"


def connection_lines(info: RuntimeInfo) -> list[str]:
    """Ready-to-paste logins for mosquitto_sub/pub and an openHAB MQTT broker thing (the operator user)."""
    address = BrokerAddress.parse(info.operator_url or info.broker_url)
    host = "127.0.0.1" if address.host in WIDE_OPEN_HOSTS else address.host
    login = ""
    openhab_login = ""
    if address.username is not None and address.password is not None:
        login = f" -u {shlex.quote(address.username)} -P {shlex.quote(address.password)}"
        openhab_login = f', username="{address.username}", password="{address.password}"'
    topic_root = CommonSettings().topic_root
    mosquitto = f"mosquitto_sub -h {host} -p {address.port}{login} -t '{topic_root}/#' -v"
    openhab = (f'Bridge mqtt:broker:nodefleet "nodefleet" [ host="{host}", port={address.port}, '
               f"secure=false{openhab_login} ]")
    lines = [f"  mqtt       {mosquitto}   (mosquitto_pub: same -h -p -u -P)", f"  openHAB    {openhab}"]
    if info.tls_url is not None:
        tls = BrokerAddress.parse(info.tls_url)
        lines.insert(1, f"  mqtts      mosquitto_sub -h {host} -p {tls.port} --cafile {shlex.quote(str(tls.ca))}{login} "
                        f"-t '{topic_root}/#' -v")
    return lines


def _options(function: Any) -> Any:
    options = [
        click.option("--mqtt-port", type=click.IntRange(1, 65535), default=DEFAULT_MQTT_PORT, show_default=True,
                     help="Port of the embedded MQTT broker"),
        click.option("--mqtt-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
                     help="Address the embedded broker listens on (0.0.0.0 lets devices on your network in)"),
        click.option("--db-port", type=click.IntRange(1, 65535), default=DEFAULT_DB_PORT, show_default=True,
                     help="Port of the embedded PostgreSQL (loopback only; password in the data directory)"),
        click.option("--pg-system-user", default=SYSTEM_USER, show_default=True, metavar="NAME",
                     envvar="NODEFLEET_PG_SYSTEM_USER",
                     help="As root: the system user the embedded PostgreSQL runs as (created on first start)"),
        click.option("--http-port", type=click.IntRange(-1, 65535), default=DEFAULT_HTTP_PORT, show_default=True,
                     envvar=HTTP_PORT_VARIABLE, show_envvar=True,
                     help="Port of the provisioner's HTTP edge (the phone app's register and status); 0 picks a "
                          "free one, -1 turns it off. It listens on --mqtt-host unless "
                          "NODEFLEET_PROVISIONER_HTTP_HOST says otherwise"),
        click.option("--ws-port", type=click.IntRange(-1, 65535), default=DEFAULT_WS_PORT, show_default=True,
                     envvar=WS_PORT_VARIABLE, show_envvar=True,
                     help="Port of the embedded broker's MQTT over WebSockets (apps, browsers; same logins and "
                          "topic rules), on --mqtt-host; 0 picks a free one, -1 turns it off"),
        click.option("--tls-port", type=click.IntRange(-1, 65535), default=DEFAULT_TLS_PORT, show_default=True,
                     envvar=TLS_PORT_VARIABLE, show_envvar=True,
                     help="Port of the embedded broker's MQTT over TLS (same logins and topic rules), on "
                          "--mqtt-host, with a certificate authority made in <data dir>/tls on first start; "
                          "0 picks a free one, -1 turns it off"),
        click.option("--node-tls", is_flag=True,
                     help="Nodes registered from now on connect over TLS: they are handed the TLS port and the "
                          "authority, and check the broker's certificate. Nodes on your network reach the broker "
                          "by NODEFLEET_PROVISIONER_BROKER_HOST (its name or address goes into the certificate)"),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help=f"Where the embedded PostgreSQL, the retained messages and the broker logins are kept  "
                          f"[default: ${DATA_DIR_VARIABLE} or {default_data_dir()}]"),
        click.option("--broker", metavar="URL", help="Use this broker (mqtt://[user:password@]host:port) "
                     "instead of the embedded one; every service logs in with this URL's user, and per-node "
                     "credentials need its dynamic-security plugin and NODEFLEET_PROVISIONER_CREDENTIALS=dynsec"),
        click.option("--database", metavar="DSN", help="Use this PostgreSQL (postgresql://user@host:port/db) "
                     "instead of the embedded one"),
        click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True,
                     help="auto: readable on a terminal, JSON lines otherwise"),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
                     show_default=True),
        click.option("--insecure", is_flag=True,
                     help="LOCAL EXPERIMENTS ONLY: the embedded broker lets anyone in without a password and the "
                          "provisioner's node credentials are not checked (default: secured, a user per node and "
                          "service, passwords in the data directory)"),
        click.option("--demo", type=click.IntRange(min=0), default=0, metavar="N",
                     help="Also run N simulated nodes against the broker"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@_options
def up(*, mqtt_port: int, mqtt_host: str, db_port: int, pg_system_user: str, http_port: int, ws_port: int,
       tls_port: int, node_tls: bool, data_dir: Path | None, broker: str | None, database: str | None, log_format: str, log_level: str,
       insecure: bool, demo: int) -> None:
    """Run everything in one process: MQTT broker, PostgreSQL and every service.

    With nothing but the package installed, starts an embedded MQTT broker
    (amqtt), an embedded PostgreSQL whose data stays in the data directory
    across restarts, and each service as its own MQTT client.  Prints where
    everything is, then logs.  Ctrl-C (or SIGTERM) stops it all cleanly.

    The embedded broker is secured: no anonymous clients; each service, the
    CLI (user `operator`) and every registered node log in with their own
    password (generated once, kept in the data directory, mode 0600); a node
    may only publish under its own prefix.  --insecure turns all of that off.

    \b
    Examples:
      nodefleet up
      nodefleet up --mqtt-port 1884 --db-port 15433 --http-port 8081 --ws-port 8084   # beside another one
      nodefleet up --broker mqtt://provisioner:PASSWORD@127.0.0.1:1883   # your own Mosquitto
      nodefleet up --database postgresql://me@db.local:5432/nodefleet
      nodefleet up --node-tls                          # nodes registered from now on use MQTT over TLS
      nodefleet up --insecure --demo 3                 # open broker, for experiments
    """
    if insecure and broker:
        raise click.UsageError("--insecure only opens the embedded broker; with --broker your broker's own "
                               "access rules apply")
    nodefleet_logging.configure(log_format, log_level)  # type: ignore[arg-type]
    directory = (data_dir or default_data_dir()).expanduser().resolve()
    options = RuntimeOptions(
        data_dir=directory,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        db_port=db_port,
        postgres_system_user=pg_system_user,
        http_port=http_port,
        ws_port=ws_port,
        tls_port=tls_port,
        node_tls=node_tls,
        http_host=os.environ.get(HTTP_HOST_VARIABLE) or None,
        broker_url=broker,
        database_url=database,
        log_format=log_format,  # type: ignore[arg-type]
        log_level=log_level,
        secure=not insecure,
    )
    if insecure:
        nodefleet_logging.get_logger(__name__).warning(
            "insecure_broker", hint="anyone who reaches the broker may read and switch every node")
    extras = [_demo_unit(demo, store=directory / DEMO_FILE, scope=_demo_scope(broker, insecure),
                         keyed=hands_out_ota_keys(options))] if demo else []
    try:
        code = asyncio.run(run(Runtime(options, extras=extras), on_ready=print_banner))
    except StartupError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code)


def _demo_scope(broker: str | None, insecure: bool) -> str:
    """Which broker the demo nodes register for, and whether it checks the credentials they are given."""
    if broker is None:
        return "embedded, open" if insecure else "embedded, checked"
    checked = os.environ.get("NODEFLEET_PROVISIONER_CREDENTIALS", "none").strip().lower() == "dynsec"
    return f"{broker.rpartition('@')[2]}, {'checked' if checked else 'open'}"  # the address, not the password


def _demo_unit(count: int, *, store: Path, scope: str, keyed: bool) -> Any:
    """The simulated nodes: ``nodefleet.sim.run_demo``, which registers them with the provisioner."""
    # The nodes publish under the same root as the services read (NODEFLEET_TOPIC_ROOT).
    settings = CommonSettings()

    def make(broker_url: str, database_url: str) -> Unit:
        # ``broker_url`` logs in as the operator; each node gets its own login from its registration.
        return Unit(name=f"demo ({count} simulated nodes)",
                    run=lambda ready: run_demo(count=count, mqtt_url=broker_url, ready=ready,
                                               topic_root=settings.topic_root, fleet_root=settings.fleet_root,
                                               register=True, store=store, scope=scope, keyed=keyed))

    return make
