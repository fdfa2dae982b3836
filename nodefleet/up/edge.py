"""The provisioner's HTTP edge (the phone app's register and status): its port, chosen and checked before anything starts."""

from __future__ import annotations

import socket
from typing import Any

from .errors import EXIT_USAGE, StartupError
from .options import RuntimeOptions


def edge_port(host: str, port: int) -> int | None:
    """The port the provisioner's HTTP edge gets: ``port`` if free (StartupError naming --http-port if taken),
    a free one for 0, None for -1 (off)."""
    if port < 0:
        return None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"HTTP port {port} on {host} (the provisioner's HTTP edge) is already taken (another `nodefleet up`, "
                f"or another web server?): choose another with --http-port (0 picks a free one, -1 turns the edge "
                f"off)", exit_code=EXIT_USAGE) from exc
        return probe.getsockname()[1]


def edge_settings(options: RuntimeOptions) -> dict[str, Any]:
    """The provisioner's ``http_host`` and ``http_port`` (-1: off)."""
    host = options.http_host or options.mqtt_host
    port = edge_port(host, options.http_port)
    return {"http_host": host, "http_port": -1 if port is None else port}
