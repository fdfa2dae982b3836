"""Per-node broker credentials through the dynamic-security protocol, over MQTT.

The provisioner sends ``{"commands": [...]}`` to ``$CONTROL/dynamic-security/v1``
and reads ``{"responses": [...]}`` from its response topic.  Mosquitto's
dynamic-security plugin and the embedded broker (nodefleet.embedded.dynsec)
both answer it, so the provisioner is the same plain MQTT client on either.

Each node gets a client named after it and a role ``node-<name>``: publish
only under its own prefix, subscribe only to its inbox.  A home's operator
login is a client and role named ``home.<home_id>`` (a dot is in no node name):
one ACL per topic filter of each of the home's nodes, added and taken away as
nodes join and leave (``grant``/``withdraw``).

:class:`CredentialError` (a :class:`~nodefleet.errors.WireError`): the broker
refused a command, did not answer in time, or the connection was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any, Protocol

from nodefleet.contracts import Topics
from nodefleet.errors import ConnectionLost, WireError
from nodefleet.logging import get_logger
from nodefleet.wire import Client, Message

log = get_logger(__name__)


class CredentialError(WireError):
    """The broker did not take a credential change; nothing was registered."""


class Credentials(Protocol):
    async def add(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None: ...

    async def remove(self, username: str) -> None: ...

    async def set_login(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        """Make ``username`` (client and role) anew with these rights, replacing what it had."""

    async def grant(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        """Add rights to the role of ``username`` (those it has already are fine)."""

    async def withdraw(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        """Take rights from the role of ``username`` (those it does not have are fine)."""


class NoCredentials:
    """An open broker: credentials are handed out but the broker does not check them."""

    async def add(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        return None

    async def remove(self, username: str) -> None:
        return None

    async def set_login(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        raise CredentialError(
            "this provisioner hands out no broker logins (NODEFLEET_PROVISIONER_CREDENTIALS=none): the broker lets "
            "any client in, so a home login would restrict nothing; run the broker with dynamic security and "
            "set NODEFLEET_PROVISIONER_CREDENTIALS=dynsec")

    async def grant(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        return None

    async def withdraw(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        return None


def role_of(username: str) -> str:
    return f"node-{username}"


def topic_acls(publish: list[str], subscribe: list[str]) -> list[dict[str, Any]]:
    acls = [{"acltype": "publishClientSend", "topic": f, "priority": 0, "allow": True} for f in publish]
    acls += [{"acltype": "subscribePattern", "topic": f, "priority": 0, "allow": True} for f in subscribe]
    return acls


def _missing(response: dict[str, Any]) -> bool:
    # Deleting what is not there is fine: removal and re-creation are idempotent.
    return "not found" in str(response.get("error", "")).lower()


def _present(response: dict[str, Any]) -> bool:
    # Adding a right the role has already is fine: a grant repeated after a retry or a crash.
    return "already exists" in str(response.get("error", "")).lower()


class DynamicSecurity:
    """Sends dynamic-security commands on a connected client; ``feed`` routes the responses back."""

    def __init__(self, client: Client | None = None, *, timeout: float = 5.0) -> None:
        self.client = client
        self._timeout = timeout
        self._waiting: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self.response_topic = Topics.dynsec_response()

    async def start(self, client: Client) -> None:
        """Use ``client`` (a new one after each reconnect) and subscribe to the responses."""
        self.client = client
        await client.subscribe(self.response_topic, qos=1)

    def feed(self, message: Message) -> bool:
        """Route a received message to the command waiting for it; True if it was a response."""
        if message.topic != self.response_topic:
            return False
        try:
            responses = json.loads(message.payload)["responses"]
            transaction = str(responses[0].get("correlationData", "")).split(":")[0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
            log.warning("dynsec_bad_response", payload=message.payload[:200])
            return True
        future = self._waiting.pop(transaction, None)
        if future is not None and not future.done():
            future.set_result(responses)
        return True

    async def run(self, commands: list[dict[str, Any]], *, tolerate_missing: int = 0,
                  tolerate_present: bool = False) -> list[dict[str, Any]]:
        """Send commands in one message; raise CredentialError if any failed, except the first
        ``tolerate_missing`` for a missing object and, with ``tolerate_present``, any for an existing one."""
        transaction = uuid.uuid4().hex
        body = {"commands": [{**c, "correlationData": f"{transaction}:{i}"} for i, c in enumerate(commands)]}
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        try:
            if self.client is None:
                raise ConnectionLost("not connected")
            await self.client.publish(Topics.dynsec_control(), json.dumps(body), qos=1)
            responses = await asyncio.wait_for(future, self._timeout)
        except TimeoutError as exc:
            raise CredentialError(
                f"the broker did not answer dynamic-security commands within {self._timeout:g} s: is its dynamic-security "
                f"plugin loaded and may this service's user publish to {Topics.dynsec_control()}?"
            ) from exc
        except WireError as exc:
            raise CredentialError(f"lost the broker while changing credentials: {exc}") from exc
        finally:
            self._waiting.pop(transaction, None)
        for index, response in enumerate(responses):
            if response.get("error") and not ((index < tolerate_missing and _missing(response))
                                              or (tolerate_present and _present(response))):
                raise CredentialError(f"the broker refused {response.get('command')}: {response['error']}")
        return responses

    async def add(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        role = role_of(username)
        # Names carry a random suffix, so there is nothing to replace: two commands, two saves on Mosquitto.
        try:
            await self.run([
                {"command": "createRole", "rolename": role, "acls": topic_acls(publish, subscribe)},
                {"command": "createClient", "username": username, "password": password, "roles": [{"rolename": role}]},
            ])
        except CredentialError:
            with contextlib.suppress(CredentialError):
                await self.remove(username)  # a role created without its client is not left behind
            raise

    async def remove(self, username: str) -> None:
        await self.run([
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": role_of(username)},
        ], tolerate_missing=2)

    async def set_login(self, username: str, password: str, *, publish: list[str], subscribe: list[str]) -> None:
        # The client and role are named alike; deleting first makes a new password and drops rights left over.
        await self.run([
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": username},
            {"command": "createRole", "rolename": username, "acls": topic_acls(publish, subscribe)},
            {"command": "createClient", "username": username, "password": password,
             "roles": [{"rolename": username}]},
        ], tolerate_missing=2)

    async def grant(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        await self.run([{"command": "addRoleACL", "rolename": username, **acl} for acl in topic_acls(publish, subscribe)],
                       tolerate_present=True)

    async def withdraw(self, username: str, *, publish: list[str], subscribe: list[str]) -> None:
        acls = topic_acls(publish, subscribe)
        await self.run([{"command": "removeRoleACL", "rolename": username, "acltype": acl["acltype"],
                         "topic": acl["topic"]} for acl in acls], tolerate_missing=len(acls))
