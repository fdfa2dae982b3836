"""The subset of Mosquitto's dynamic-security protocol the provisioner uses, served by the embedded broker.

A client allowed to publish to ``$CONTROL/dynamic-security/v1`` sends
``{"commands": [...]}``; each command is applied to the clients and roles
held here and mapped onto :meth:`EmbeddedBroker.set_client` /
:meth:`EmbeddedBroker.remove_client`; ``{"responses": [...]}`` (with each
command's ``correlationData``) goes to ``$CONTROL/dynamic-security/v1/response``.

Commands: createClient, deleteClient, setClientPassword, addClientRole,
removeClientRole, createRole, deleteRole, addRoleACL, removeRoleACL.  ACL
types: ``publishClientSend`` (what the client may publish) and
``subscribeLiteral``/``subscribePattern`` (what it may subscribe to and so
receive); only ``allow: true`` entries grant anything, as the default denies.

Passwords are hashed by the broker's access list as soon as a client is set,
and the plain text is dropped.  With a ``state_file`` the clients (their
hashes) and roles are written there (at most once a second after a change,
and at stop) and loaded at start, so node credentials survive a restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from amqtt.mqtt.constants import QOS_1

from nodefleet.contracts import Topics
from nodefleet.embedded.amqtt_access import (
    AccessError,
    AccessList,
    TopicAccess,
    _check_filters,
    _Credential,
)
from nodefleet.embedded.amqtt_broker import NodefleetBroker, handled
from nodefleet.errors import InputError
from nodefleet.logging import get_logger

log = get_logger(__name__)

MAX_COMMANDS = 100
MOSQUITTO_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
_SUBSCRIBE_TYPES = ("subscribeLiteral", "subscribePattern")
_ACL_TYPES = ("publishClientSend", "publishClientReceive", *_SUBSCRIBE_TYPES, "unsubscribeLiteral", "unsubscribePattern")

SetClient = Callable[..., Awaitable[None]]


class CommandError(InputError):
    """A command the dynamic-security layer refuses; its text goes back in the response."""


@dataclass
class _Client:
    password: str | None  # None once the access list holds its hash
    roles: list[str] = field(default_factory=list)


@dataclass
class _Role:
    acls: list[dict[str, Any]] = field(default_factory=list)


def _text(command: dict[str, Any], key: str) -> str:
    value = command.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise CommandError(f"Invalid/missing {key}")
    return value


class DynamicSecurity:
    """Clients and roles, applied to the broker's access list through two callbacks."""

    def __init__(self, *, set_client: Callable[..., None], remove_client: Callable[[str], bool],
                 access: AccessList | None = None, state_file: Path | None = None) -> None:
        self._set_client = set_client
        self._remove_client = remove_client
        self._access = access
        self.state_file = state_file
        self.changes = 0
        self.clients: dict[str, _Client] = {}
        self.roles: dict[str, _Role] = {}
        # Messages are handled concurrently (hashing runs on threads); changes to one client still apply in order.
        self._user_locks: dict[str, asyncio.Lock] = {}

    async def handle(self, payload: bytes) -> bytes:
        """Apply one ``{"commands": [...]}`` message; the ``{"responses": [...]}`` to publish."""
        try:
            commands = json.loads(payload)["commands"]
            if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return json.dumps({"responses": [{"command": "Unknown command", "error": "Invalid/missing commands"}]}).encode()
        responses = []
        for command in commands[:MAX_COMMANDS]:
            name = command.get("command")
            response: dict[str, Any] = {"command": name}
            if "correlationData" in command:
                response["correlationData"] = command["correlationData"]
            try:
                await self._apply(name, command)
                self.changes += 1
            except (CommandError, AccessError) as exc:
                response["error"] = str(exc)
            responses.append(response)
        return json.dumps({"responses": responses}).encode()

    async def _apply(self, name: Any, command: dict[str, Any]) -> None:
        if name == "createClient":
            username = _text(command, "username")
            if username in self.clients:
                raise CommandError("Client already exists")
            roles = [r.get("rolename") for r in command.get("roles") or [] if isinstance(r, dict)]
            if any(r not in self.roles for r in roles):
                raise CommandError("Role not found")
            self.clients[username] = _Client(_text(command, "password"), roles)
            await self._sync([username])
        elif name == "deleteClient":
            username = _text(command, "username")
            if self.clients.pop(username, None) is None:
                raise CommandError("Client not found")
            async with self._user_lock(username):
                self._remove_client(username)
            self._user_locks.pop(username, None)
        elif name == "setClientPassword":
            self._client(command).password = _text(command, "password")
            await self._sync([_text(command, "username")])
        elif name in ("addClientRole", "removeClientRole"):
            client = self._client(command)
            self._role(command)  # must exist
            rolename = _text(command, "rolename")
            if name == "addClientRole" and rolename not in client.roles:
                client.roles.append(rolename)
            elif name == "removeClientRole" and rolename in client.roles:
                client.roles.remove(rolename)
            await self._sync([_text(command, "username")])
        elif name == "createRole":
            rolename = _text(command, "rolename")
            if rolename in self.roles:
                raise CommandError("Role already exists")
            acls = command.get("acls") or []
            for acl in acls:
                self._check_acl(acl)
            self.roles[rolename] = _Role(list(acls))
        elif name == "deleteRole":
            rolename = _text(command, "rolename")
            if self.roles.pop(rolename, None) is None:
                raise CommandError("Role not found")
            await self._sync(self._users_of(rolename))
        elif name == "addRoleACL":
            role = self._role(command)
            acl = self._check_acl(command)
            if any((a["acltype"], a["topic"]) == (acl["acltype"], acl["topic"]) for a in role.acls):
                raise CommandError("ACL with this topic already exists")  # as Mosquitto answers
            role.acls.append(acl)
            await self._sync(self._users_of(_text(command, "rolename")))
        elif name == "removeRoleACL":
            role = self._role(command)
            acltype, topic = _text(command, "acltype"), _text(command, "topic")
            kept = [a for a in role.acls if (a.get("acltype"), a.get("topic")) != (acltype, topic)]
            if len(kept) == len(role.acls):
                raise CommandError("ACL not found")
            role.acls = kept
            await self._sync(self._users_of(_text(command, "rolename")))
        else:
            raise CommandError("Unknown command")

    def _client(self, command: dict[str, Any]) -> _Client:
        client = self.clients.get(_text(command, "username"))
        if client is None:
            raise CommandError("Client not found")
        return client

    def _role(self, command: dict[str, Any]) -> _Role:
        role = self.roles.get(_text(command, "rolename"))
        if role is None:
            raise CommandError("Role not found")
        return role

    @staticmethod
    def _check_acl(acl: Any) -> dict[str, Any]:
        if not isinstance(acl, dict) or acl.get("acltype") not in _ACL_TYPES:
            raise CommandError(f"Invalid acltype; use one of {', '.join(_ACL_TYPES)}")
        _text(acl, "topic")
        return {"acltype": acl["acltype"], "topic": acl["topic"], "allow": acl.get("allow") is True}

    def _users_of(self, rolename: str) -> list[str]:
        return [name for name, client in self.clients.items() if rolename in client.roles]

    def _user_lock(self, username: str) -> asyncio.Lock:
        return self._user_locks.setdefault(username, asyncio.Lock())

    async def _sync(self, usernames: Iterable[str]) -> None:
        for username in list(usernames):
            async with self._user_lock(username):
                client = self.clients.get(username)
                if client is None:
                    continue  # deleted meanwhile
                acls = [a for r in client.roles if r in self.roles for a in self.roles[r].acls if a["allow"]]
                publish = [a["topic"] for a in acls if a["acltype"] == "publishClientSend"]
                subscribe = [a["topic"] for a in acls if a["acltype"] in _SUBSCRIBE_TYPES]
                if client.password is None and self._access is not None:
                    _set_access(self._access, username, publish=publish, subscribe=subscribe)
                    continue
                if client.password is None:
                    raise CommandError("Client has no password to apply its roles with")
                # Password hashing runs on a thread: the broker's event loop keeps serving meanwhile.
                await asyncio.to_thread(self._set_client, username, client.password, publish=publish,
                                        subscribe=subscribe)
                if self._access is not None:
                    client.password = None

    # -- persistence ----------------------------------------------------------
    def snapshot(self) -> str | None:
        """Clients (with their password hashes) and roles as JSON; taken on the event loop, written by ``write``."""
        if self.state_file is None or self._access is None:
            return None
        users = self._access._users  # package-internal: the access list keeps only salted hashes
        clients = {
            name: {"roles": list(c.roles), "salt": users[name].salt.hex(), "digest": users[name].digest.hex(),
                   "iterations": users[name].iterations}
            for name, c in self.clients.items() if name in users
        }
        return json.dumps({"clients": clients, "roles": {name: r.acls for name, r in self.roles.items()}})

    def write(self, body: str) -> None:
        assert self.state_file is not None
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(body)
        temporary.chmod(0o600)
        temporary.replace(self.state_file)

    def load(self) -> int:
        """Restore clients and roles from the state file; how many clients."""
        if self.state_file is None or self._access is None or not self.state_file.exists():
            return 0
        data = json.loads(self.state_file.read_text())
        self.roles = {name: _Role(list(acls)) for name, acls in data["roles"].items()}
        for name, saved in data["clients"].items():
            self.clients[name] = _Client(None, list(saved["roles"]))
            self._access._users[name] = _Credential(salt=bytes.fromhex(saved["salt"]),
                                                    digest=bytes.fromhex(saved["digest"]),
                                                    access=TopicAccess(publish=(), subscribe=()),
                                                    iterations=int(saved.get("iterations", 0)))  # 0: scrypt
            acls = [a for r in saved["roles"] if r in self.roles for a in self.roles[r].acls if a["allow"]]
            _set_access(self._access, name, publish=[a["topic"] for a in acls if a["acltype"] == "publishClientSend"],
                        subscribe=[a["topic"] for a in acls if a["acltype"] in _SUBSCRIBE_TYPES])
        return len(self.clients)


def _set_access(access: AccessList, username: str, *, publish: list[str], subscribe: list[str]) -> None:
    """Change a known user's topics without its password (package-internal, like the access list's own)."""
    credential = access._users.get(username)
    if credential is not None:
        access._users[username] = replace(
            credential, access=TopicAccess(publish=_check_filters(publish), subscribe=_check_filters(subscribe)))


class DynsecBroker(NodefleetBroker):
    """The embedded broker with the dynamic-security topic served in-process."""

    dynsec: DynamicSecurity

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        if message is None or message.topic != Topics.dynsec_control():
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        handled(handler, message)
        access = self.access.access_for(client_session.username)
        if access is None or not access.may_publish(message.topic):
            self.counters["publish_denied"] += 1
            log.info("dynsec_denied", client_id=client_session.client_id, username=client_session.username)
            return True
        # Answered in its own task: the admin's next messages need not wait for this one's password hashing.
        self._track(self._answer_control(bytes(message.data)))
        return True

    async def _answer_control(self, payload: bytes) -> None:
        response = await self.dynsec.handle(payload)
        await self._broadcast_message(None, Topics.dynsec_response(), response, QOS_1)


def admin_access() -> dict[str, list[str]]:
    """What the dynamic-security admin may use: every topic plus the control topics."""
    control = f"{Topics.dynsec_control()}/#"
    return {"publish": ["#", Topics.dynsec_control(), control], "subscribe": ["#", control]}


def mosquitto_password(password: str, *, iterations: int = 101) -> dict[str, Any]:
    """A client's password fields as Mosquitto's dynamic-security file stores them (PBKDF2-SHA512)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": iterations}


def mosquitto_dynsec_config(folder: Path, *, admin: str, password: str, services: Mapping[str, str] | None = None,
                            plugin: str = MOSQUITTO_PLUGIN) -> str:
    """Mosquitto config lines loading its dynamic-security plugin, with ``admin`` a service that may use every topic.

    The JSON file is made by ``mosquitto_ctrl dynsec init``, then the admin role is allowed to publish anywhere
    (the provisioner publishes configs and discovery as well).  ``services`` (username -> password) get a role
    ``service`` with every ordinary topic, for the other services and the CLI.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # Mosquitto started as root runs as its own user and rewrites the file on every change
    path = folder / "dynamic-security.json"
    path.unlink(missing_ok=True)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(path), admin, password], check=True, capture_output=True)
    data = json.loads(path.read_text())
    for role in data["roles"]:
        if role["rolename"] == "admin":
            role["acls"].append({"acltype": "publishClientSend", "topic": "#", "allow": True})
    if services:
        data["roles"].append({"rolename": "service", "acls": [
            {"acltype": kind, "topic": "#", "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
        ]})
        data["clients"] += [{"username": name, "roles": [{"rolename": "service"}], **mosquitto_password(secret)}
                            for name, secret in services.items()]
    path.write_text(json.dumps(data))
    path.chmod(0o666)
    return f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {path}\n"
