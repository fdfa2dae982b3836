"""The ``nodefleet`` command: one click group, one module per command group."""

from __future__ import annotations

import importlib

import click

from .. import __version__

# Each module registers its commands on ``main`` when imported.
COMMAND_MODULES = ("up", "devices", "telemetry", "logs", "sim", "provision", "device", "schedule", "ota")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodefleet")
def main() -> None:
    """nodefleet: self-hosted backend for ESP32 home devices, over MQTT.

    Start everything on embedded defaults with `nodefleet up`; the other
    commands talk to a running system through its broker (--broker, or the
    NODEFLEET_MQTT_URL variable).
    """


for _name in COMMAND_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_name}":
            raise
