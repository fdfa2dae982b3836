"""The ``nodefleet`` command: one click group (``group.py``), one module per command group."""

from __future__ import annotations

# Each module registers its commands on ``main`` when imported.
from . import device, devices, logs, ota, ota_upload, provision, schedule, sim, telemetry, up  # noqa: F401
from .group import main

__all__ = ["main"]
