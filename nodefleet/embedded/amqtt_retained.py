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
from dataclasses import dataclass
from pathlib import Path

from nodefleet.logging import get_logger

log = get_logger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class StoredMessage:
    topic: str
    payload: bytes
    qos: int


class RetainedFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[StoredMessage]:
        """The stored messages; none (and the file kept aside as ``*.bad``) when it cannot be read."""
        if not self.path.exists():
            return []
        try:
            document = json.loads(self.path.read_text())
            if document.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {document.get('version')!r}")
            return [
                StoredMessage(str(item["topic"]), base64.b64decode(item["payload"]), int(item["qos"]))
                for item in document["messages"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(self.path.suffix + ".bad")
            self.path.replace(aside)
            log.error("retained_file_unreadable", path=str(self.path), kept_as=str(aside), error=str(exc))
            return []

    def save(self, messages: list[StoredMessage]) -> None:
        document = {
            "version": FORMAT_VERSION,
            "messages": [
                {"topic": m.topic, "payload": base64.b64encode(m.payload).decode(), "qos": m.qos} for m in messages
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(partial, "w") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)
