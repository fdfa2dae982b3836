"""The provisioner's HTTP edge (the phone app's register and status): its port, chosen and checked before anything starts."""

from __future__ import annotations

from typing import Any

from .options import RuntimeOptions
from .ports import optional_port


def edge_port(host: str, port: int) -> int | None:
    """The port the provisioner's HTTP edge gets (see ``optional_port``)."""
    return optional_port(host, port, taken=(
        f"HTTP port {port} on {host} (the provisioner's HTTP edge) is already taken (another `nodefleet up`, "
        f"or another web server?): choose another with --http-port (0 picks a free one, -1 turns the edge off)"))


def edge_settings(options: RuntimeOptions) -> dict[str, Any]:
    """The provisioner's ``http_host`` and ``http_port`` (-1: off)."""
    host = options.http_host or options.mqtt_host
    port = edge_port(host, options.http_port)
    return {"http_host": host, "http_port": -1 if port is None else port}
