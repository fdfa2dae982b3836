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



# Fixtures of other test packages used here: `nodefleet up` as a subprocess (the end-to-end garbage and restart
# tests), the simulated node on the real interpreter at 110K (the node's garbage and HTTP tests), an in-process
# scheduler (its own garbage cases).
from cli.conftest import data_dir, launch_up  # noqa: E402,F401
from node.conftest import make_node, node, watch  # noqa: E402,F401
from scheduler.conftest import scheduler  # noqa: E402,F401
