"""The options the operator commands share: the broker and topic roots (as settings), NODE, --format, --timeout.

A broker URL without a user that points at the broker of a secured
``nodefleet up`` on this machine logs in as its ``operator`` user, with the
password ``nodefleet up`` keeps in the data directory (``$NODEFLEET_DATA_DIR``
or the default one); a URL with ``user:password@`` is used as given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from .. import logging as nodefleet_logging
from .. import mqtt
from ..contracts.topics import TopicError, validate_node_name
from ..paths import OPERATOR, CredentialsFileError, LocalCredentials, default_data_dir
from ..settings import CommonSettings
from .output import note

FORMATS = ("table", "csv", "json")


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
        address = mqtt.BrokerAddress.parse(settings.mqtt_url)
        settings.topics  # noqa: B018 - validates both roots
    except (ValidationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    login = local_login(address)
    return settings if login is None else settings.model_copy(update={"mqtt_url": login})


def local_login(address: mqtt.BrokerAddress) -> str | None:
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
