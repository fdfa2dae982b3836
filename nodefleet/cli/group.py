"""The ``nodefleet`` click group; each command module registers its commands on it."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodefleet")
def main() -> None:
    """nodefleet: self-hosted backend for ESP32 home devices, over MQTT.

    Start everything on embedded defaults with `nodefleet up`; the other
    commands talk to a running system through its broker (--broker, or the
    NODEFLEET_MQTT_URL variable).
    """
