"""Simulated nodes registered through the provisioner, as the phone app registers a real device.

``register_nodes`` sends fleet requests (``list``, ``remove``, ``register``)
with the operator's login and returns each node's registration: its node
name, topic prefix and its own broker login.  ``nodefleet up --demo`` and
``nodefleet sim --register`` use it, so simulated nodes on a secured broker log
in as themselves and may publish only under their own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .contracts import Topics
from .contracts.provisioning import (
    PROVISIONER_SERVICE,
    DeviceRow,
    ListRequest,
    NodeRequest,
    RegisterRequest,
    Registration,
)
from .errors import RequestError, WireError
from .fleet import Requester
from .logging import get_logger
from .wire import BrokerAddress, Client

log = get_logger(__name__)

HOME = "home"
"""The provisioner's default home, where simulated nodes are registered."""
REQUEST_TIMEOUT = 15.0
# Registrations in flight at once (each hashes a password on the broker).
CONCURRENCY = 8


class RegistrationError(RequestError):
    """The provisioner did not answer, or refused; the message says which request."""


class _Provisioner:
    """Fleet requests to the provisioner over one connection (the operator's)."""

    def __init__(self, connection: Client, topics: Topics, client_id: str) -> None:
        self._connection = connection
        self._requester = Requester(connection, topics, client_id=client_id)

    async def __call__(self, action: str, data: Any) -> Any:
        try:
            return await self._requester.request(PROVISIONER_SERVICE, action, data, timeout=REQUEST_TIMEOUT)
        except RequestError as exc:
            raise RegistrationError(f"the provisioner did not {action} the simulated nodes: {exc}") from exc

    async def start(self) -> None:
        await self._requester.start()

    async def serve(self) -> None:
        async for message in self._connection.messages:
            self._requester.feed(message)


async def register_nodes(*, count: int, mqtt_url: str, topics: Topics, store: Path | None, scope: str,
                         name_prefix: str, home_id: str = HOME, keyed: bool = False) -> list[Registration]:
    """Registrations for ``count`` simulated nodes: the stored ones the provisioner still holds, new ones for the rest.

    ``mqtt_url`` must be allowed to send fleet requests (the operator's login); device names are
    ``<name_prefix>-000``, ``-001``, ... and the provisioner makes the node names from them.

    ``store`` keeps them (0600: they hold passwords) so a restart reuses the same nodes.  ``scope`` names
    the broker and whether it checks node credentials; registrations made in another scope are removed and
    made again (a node registered on an open broker has no user on a secured one, nor on another broker).
    ``keyed``: the provisioner hands out OTA keys (``nodefleet up`` always has a master key), so a stored
    registration without one (made before) is made again too.
    """
    stored = _load_registrations(store)
    client_id = f"nodefleet-sim-{uuid.uuid4().hex[:8]}"
    try:
        async with Client(BrokerAddress.parse(mqtt_url), client_id=client_id) as connection:
            provisioner = _Provisioner(connection, topics, client_id)
            await provisioner.start()
            reader = asyncio.create_task(provisioner.serve())
            try:
                rows = [DeviceRow.model_validate(row) for row in
                        await provisioner("list", ListRequest(home_id=home_id).model_dump(mode="json"))]
                active = {row.node: row.device_name for row in rows if row.status != "revoked"}
                kept = [entry for entry, made_in in stored if made_in == scope and entry.mqtt_config.node_name in active
                        and (entry.mqtt_config.ota_key is not None or not keyed)]
                kept = kept[:count]
                keep_names = {entry.mqtt_config.node_name for entry in kept}
                for entry, _ in stored:
                    name = entry.mqtt_config.node_name
                    if name not in keep_names and name in active:
                        await provisioner("remove", NodeRequest(node=name).model_dump(mode="json"))
                        del active[name]
                # A device name is unique in its home: skip those in use (also by nodes whose logins we lost).
                taken = set(active.values())
                free = (f"{name_prefix}-{i:03d}" for i in itertools.count() if f"{name_prefix}-{i:03d}" not in taken)
                wanted = list(itertools.islice(free, count - len(kept)))
                limit = asyncio.Semaphore(CONCURRENCY)

                async def register(device_name: str) -> Registration:
                    async with limit:
                        request = RegisterRequest(home_id=home_id, device_name=device_name)
                        return Registration.model_validate(await provisioner("register", request.model_dump(mode="json")))

                made = await asyncio.gather(*(register(name) for name in wanted))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, WireError):
                    await reader
    except WireError as exc:
        raise RegistrationError(f"cannot reach the broker to register the simulated nodes: {exc}") from exc
    except ValidationError as exc:
        raise RegistrationError(f"unexpected answer from the provisioner: {exc.errors()[0]['msg']}") from exc
    registrations = sorted([*kept, *made], key=lambda entry: entry.mqtt_config.node_name)
    if store is not None:
        _save_registrations(store, registrations, scope)
    return registrations


def _load_registrations(store: Path | None) -> list[tuple[Registration, str]]:
    if store is None or not store.exists():
        return []
    try:
        data = json.loads(store.read_text())
        return [(Registration.model_validate(entry), str(data["scope"])) for entry in data["registrations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("sim_registrations_unreadable", path=str(store), error=str(exc))
        return []


def _save_registrations(store: Path, registrations: Sequence[Registration], scope: str) -> None:
    body = json.dumps({"scope": scope, "registrations": [r.model_dump(mode="json") for r in registrations]})
    temporary = store.with_name(f".{store.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(body)
    temporary.replace(store)
