"""Brokers for the reliability tests: dynamic security on both, Mosquitto logging every refusal.

Mosquitto logs a denied PUBLISH only at its debug level, so this Mosquitto logs everything to its
log file (a few lines a message; these tests send few).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_thread import BrokerThread
from provisioner.conftest import ADMIN, SERVICE

from nodefleet.embedded.dynsec import mosquitto_dynsec_config
from nodefleet.embedded.mosquitto import Mosquitto


@pytest.fixture(scope="module")
def logged_mosquitto() -> Iterator[Mosquitto]:
    folder = Path(tempfile.mkdtemp(prefix="nodefleet-rel-dynsec-"))
    config = mosquitto_dynsec_config(folder, admin=ADMIN[0], password=ADMIN[1], services=dict([SERVICE]))
    with Mosquitto(extra_config=config + "log_type all\n") as broker:
        yield broker


@pytest.fixture(scope="module")
def guarded_amqtt() -> Iterator[BrokerThread]:
    with BrokerThread(dynsec_admin=ADMIN, allow_anonymous=False) as broker:
        yield broker


@pytest.fixture(params=["mosquitto", "amqtt"])
def guarded_broker(request: pytest.FixtureRequest):
    """Each broker with dynamic security in turn (the provisioner hands out the node logins)."""
    return request.getfixturevalue("logged_mosquitto" if request.param == "mosquitto" else "guarded_amqtt")


# The simulated node's fixtures (the real MicroPython interpreter at 110K), for the node's garbage test.
# `nodefleet up` as a real subprocess, for the end-to-end garbage and restart tests.
from cli.conftest import data_dir, launch_up  # noqa: E402,F401
from node.conftest import make_node, node, watch  # noqa: E402,F401

# An in-process scheduler, for its own garbage cases.
from scheduler.conftest import scheduler  # noqa: E402,F401
