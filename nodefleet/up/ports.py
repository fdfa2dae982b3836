"""The port of an optional listener of ``nodefleet up`` (the HTTP edge, MQTT over WebSockets), checked before start."""

from __future__ import annotations

import socket

from .errors import EXIT_USAGE, StartupError


def optional_port(host: str, port: int, *, taken: str) -> int | None:
    """``port`` if free (StartupError saying ``taken`` if not), a free one for 0, None for -1 (turned off)."""
    if port < 0:
        return None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(taken, exit_code=EXIT_USAGE) from exc
        return probe.getsockname()[1]
