"""Retained messages of the embedded broker kept in a file, so a restart of ``nodefleet up`` keeps them.

amqtt holds retained messages only in memory.  The broker writes them to a
JSON file (atomically: a temporary file renamed over the old one) every few
seconds when they changed, and on a clean stop; it reads them back at start.
A kill -9 loses at most the last interval's changes.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nodefleet.logging import get_logger

log = get_logger(__name__)

FORMAT_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    topic: str
    payload: bytes
    qos: int


def encode_message(m: StoredMessage) -> dict[str, Any]:
    return {"topic": m.topic, "payload": base64.b64encode(m.payload).decode(), "qos": m.qos}


def decode_message(item: dict[str, Any]) -> StoredMessage:
    return StoredMessage(str(item["topic"]), base64.b64decode(item["payload"]), int(item["qos"]))


def read_items(path: Path, key: str, decode: Callable[[Any], T], event: str) -> list[T]:
    """The decoded list under ``key`` of a versioned JSON file of the broker's; none when it is absent, and
    none (the file kept aside as ``*.bad``, logged as ``event``) when it cannot be read."""
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown format version {document.get('version')!r}")
        return [decode(item) for item in document[key]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        aside = path.with_suffix(path.suffix + ".bad")
        path.replace(aside)
        log.error(event, path=str(path), kept_as=str(aside), error=str(exc))
        return []


def write_items(path: Path, key: str, items: list[Any]) -> None:
    """Atomically: a temporary file, synced, renamed over the old one (a power cut leaves one or the other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    with open(partial, "w") as out:
        json.dump({"version": FORMAT_VERSION, key: items}, out)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


class RetainedFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[StoredMessage]:
        """The stored messages; none (and the file kept aside as ``*.bad``) when it cannot be read."""
        return read_items(self.path, "messages", decode_message, "retained_file_unreadable")

    def save(self, messages: list[StoredMessage]) -> None:
        write_items(self.path, "messages", [encode_message(m) for m in messages])
