"""Connecting a command to the broker: a fresh client id, and a CliError that says why it could not."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt

from .. import mqtt
from ..contracts import Topics
from ..settings import CommonSettings
from .errors import CliError

CONNECT_TIMEOUT = 5.0
NOT_RUNNING_HINT = "is `nodefleet up` running? use --broker mqtt://host:port (or set NODEFLEET_MQTT_URL)"
REFUSED_HINT = ("the broker wants a user and password: run the command as the user who ran `nodefleet up` (with "
                "NODEFLEET_DATA_DIR set if it used --data-dir), or give them: --broker mqtt://user:password@host:port")
WRONG_LOGIN_HINT = "check the user and password in --broker (or NODEFLEET_MQTT_URL)"
# CONNACK codes that mean the login was refused: 3.1.1's 4 and 5, as paho 2 reports them (MQTT 5 numbering) or not.
REFUSED_CODES = (4, 5, 134, 135)


@dataclass(frozen=True)
class Connection:
    client: aiomqtt.Client
    client_id: str
    topics: Topics


@contextlib.asynccontextmanager
async def connect(settings: CommonSettings) -> AsyncIterator[Connection]:
    """A connected MQTT client with a fresh client id; CliError if the broker is unreachable."""
    address = mqtt.BrokerAddress.parse(settings.mqtt_url)
    client_id = f"nodefleet-cli-{uuid.uuid4().hex[:12]}"
    client = mqtt.client(address, client_id=client_id)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await client.__aenter__()
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {CONNECT_TIMEOUT:g} s"
        if isinstance(exc, aiomqtt.MqttCodeError) and getattr(exc.rc, "value", exc.rc) in REFUSED_CODES:
            hint = WRONG_LOGIN_HINT if address.username else REFUSED_HINT
            raise CliError(f"the broker at {address.url} refused the login ({reason}): {hint}") from exc
        raise CliError(f"cannot reach the broker at {address.url} ({reason}): {NOT_RUNNING_HINT}") from exc
    try:
        yield Connection(client=client, client_id=client_id, topics=settings.topics)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
