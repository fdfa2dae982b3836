"""Who may connect to the embedded broker, and which topics each client may use.

An :class:`AccessList` holds usernames with salted PBKDF2 password hashes and, per
user, the topic filters it may publish to and subscribe to.  It changes at run
time (the provisioner adds and removes nodes), so the broker asks it on every
CONNECT, SUBSCRIBE, PUBLISH and delivery instead of copying it at start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..contracts.topics import SHARED_PREFIX
from ..errors import InputError

# PBKDF2-HMAC-SHA512, the scheme of Mosquitto's dynamic-security plugin, at 10x its 101 iterations: about
# 0.5 ms a check here.  Node passwords are 144 random bits, so the hash need not be slow to keep a leaked state
# file useless; a slow one (scrypt took 17 ms) capped provisioning bursts at about 60 nodes/s.
PBKDF2_ITERATIONS = 1000
_SALT_BYTES = 16
# Hashes written before PBKDF2 (state files of earlier versions) are still checked with their scrypt cost.
_LEGACY_SCRYPT = {"n": 2**13, "r": 8, "p": 1}


class AccessError(InputError):
    """A username, password or topic filter the access list cannot hold."""


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/<group>/<filter>`` -> (group, filter); any other filter -> (None, filter)."""
    if not topic_filter.startswith(SHARED_PREFIX):
        return None, topic_filter
    group, sep, real = topic_filter[len(SHARED_PREFIX):].partition("/")
    if not group or not sep or not real or "+" in group or "#" in group:
        raise AccessError(f"bad shared subscription {topic_filter!r}: use $share/<group>/<filter>")
    return group, real


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching of a concrete topic against a filter with ``+`` and ``#``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    topic_levels = topic.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(topic_levels) == len(filter_levels)


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic ``requested`` can match is also matched by ``allowed``."""
    allowed_levels = allowed.split("/")
    requested_levels = requested.split("/")
    for index, level in enumerate(allowed_levels):
        if level == "#":
            return True
        if index >= len(requested_levels):
            return False
        wanted = requested_levels[index]
        if wanted == "#":
            return False
        if level == "+":
            continue
        if wanted == "+" or wanted != level:
            return False
    return len(allowed_levels) == len(requested_levels)


def _check_filters(filters: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(filters)
    for topic_filter in checked:
        levels = topic_filter.split("/")
        if not topic_filter or any(
            ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+")
            for i, level in enumerate(levels)
        ):
            raise AccessError(f"bad topic filter {topic_filter!r}: '+' and '#' must fill a whole level, '#' only last")
    return checked


@dataclass(frozen=True, slots=True)
class TopicAccess:
    """The topic filters one user may publish to and subscribe to (and so receive)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    @classmethod
    def full(cls) -> TopicAccess:
        return cls(publish=("#",), subscribe=("#",))

    def may_publish(self, topic: str) -> bool:
        return any(topic_matches(topic, allowed) for allowed in self.publish)

    def may_subscribe(self, topic_filter: str) -> bool:
        return any(filter_covers(allowed, topic_filter) for allowed in self.subscribe)

    def may_receive(self, topic: str) -> bool:
        return any(topic_matches(topic, allowed) for allowed in self.subscribe)


@dataclass(frozen=True, slots=True)
class _Credential:
    salt: bytes
    digest: bytes
    access: TopicAccess
    iterations: int = PBKDF2_ITERATIONS  # 0: a legacy scrypt hash


def _hash(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    if iterations == 0:
        return hashlib.scrypt(password.encode(), salt=salt, **_LEGACY_SCRYPT)
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


class AccessList:
    """Users, their hashed passwords and their topic access; safe to change while the broker runs."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        acl: Mapping[str, TopicAccess] | None = None,
        allow_anonymous: bool = True,
    ) -> None:
        self.allow_anonymous = allow_anonymous
        self._users: dict[str, _Credential] = {}
        unknown = set(acl or {}) - set(users or {})
        if unknown:
            raise AccessError(f"ACL entries for unknown users {sorted(unknown)}: add them to users too")
        for username, password in (users or {}).items():
            access = (acl or {}).get(username, TopicAccess.full())
            self.set_client(username, password, publish=access.publish, subscribe=access.subscribe)

    def set_client(self, username: str, password: str, *, publish: Iterable[str], subscribe: Iterable[str]) -> None:
        """Add or replace a user; ``publish``/``subscribe`` are its allowed topic filters (``["#"]`` for all)."""
        if not username or not password:
            raise AccessError("a client needs a non-empty username and password")
        access = TopicAccess(publish=_check_filters(publish), subscribe=_check_filters(subscribe))
        salt = secrets.token_bytes(_SALT_BYTES)
        self._users[username] = _Credential(salt=salt, digest=_hash(password, salt), access=access)

    def remove_client(self, username: str) -> bool:
        """Forget a user; its open connection keeps running but can no longer publish or receive."""
        return self._users.pop(username, None) is not None

    def has_users(self) -> bool:
        return bool(self._users)

    def usernames(self) -> list[str]:
        return sorted(self._users)

    def verify(self, username: str | None, password: str | None) -> bool:
        """Whether a CONNECT with these credentials is let in (hashes: run it off the event loop)."""
        if username is None:
            return self.allow_anonymous
        credential = self._users.get(username)
        if credential is None:
            # With no users configured a username is only a label, as on an open Mosquitto.
            return self.allow_anonymous and not self._users
        if password is None:
            return False
        return hmac.compare_digest(_hash(password, credential.salt, credential.iterations), credential.digest)

    def access_for(self, username: str | None) -> TopicAccess | None:
        """The topic access of a connected client, or None when it may not use any topic."""
        if username is None or (username not in self._users and not self._users):
            return TopicAccess.full() if self.allow_anonymous else None
        credential = self._users.get(username)
        return credential.access if credential else None
