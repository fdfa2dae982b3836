"""The openHAB profile of compose.yaml and deploy/openhab/, without openHAB (its image cannot be had here).

Compose validates the profile; the start-up script that installs the things
and items runs here with a temporary conf folder; the topics, Homie channels
and JSON fields the files name are checked against the contracts and the
provisioner's Homie description.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from nodefleet.contracts import Topics
from nodefleet.contracts.payloads import Rule, State
from services.provisioner.discovery import CLIMATE_NODE, POWER, RELAY_NODE, SENSORS

from .engine import ROOT, compose_config

OPENHAB = ROOT / "deploy/openhab"
NODE = "ro-purifier-81019b"


def test_openhab_profile_validates_and_logs_in_as_operator(tmp_path: Path) -> None:
    assert "openhab" not in compose_config(tmp_path)["services"]  # only with the profile
    config = compose_config(tmp_path, "--profile", "openhab")
    openhab = config["services"]["openhab"]
    assert re.fullmatch(r"openhab/openhab:\d+\.\d+\.\d+", openhab["image"])  # a pinned release
    assert openhab["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    env = openhab["environment"]
    assert env["NODEFLEET_MQTT_HOST"] == "mosquitto" and env["NODEFLEET_MQTT_PORT"] == "1883"
    assert env["NODEFLEET_MQTT_OPERATOR_PASSWORD"] == config["_env"]["NODEFLEET_MQTT_OPERATOR_PASSWORD"]
    # The operator is one of the users Mosquitto's entry point creates.
    logins = config["services"]["mosquitto"]["environment"]["NODEFLEET_MQTT_SERVICE_LOGINS"].split()
    assert f"operator:{env['NODEFLEET_MQTT_OPERATOR_PASSWORD']}" in logins
    mounts = {(v["source"], v["target"]) for v in openhab["volumes"] if v["type"] == "bind"}
    assert (str(OPENHAB / "cont-init.d"), "/etc/cont-init.d") in mounts
    assert (str(OPENHAB / "conf"), "/nodefleet/openhab") in mounts
    # The test's host-network override covers the profile too.
    hosted = compose_config(tmp_path, "--profile", "openhab", override=True)
    assert all(s["network_mode"] == "host" and not s.get("ports") for s in hosted["services"].values())


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """deploy/openhab/cont-init.d/10-nodefleet.sh run as the openHAB image runs it, into a temporary conf folder."""
    conf = tmp_path / "conf"
    (conf / "services").mkdir(parents=True)
    (conf / "services/addons.cfg").write_text("# the user's own\nbinding = astro\n")
    env = {"PATH": os.environ.get("PATH", ""), "OPENHAB_CONF": str(conf),
           "NODEFLEET_OPENHAB_SOURCE": str(OPENHAB / "conf"),
           "NODEFLEET_MQTT_HOST": "mosquitto", "NODEFLEET_MQTT_PORT": "1883",
           "NODEFLEET_MQTT_OPERATOR_PASSWORD": "0123abcd", "NODEFLEET_TOPIC_ROOT": "home",
           "NODEFLEET_OPENHAB_NODE": NODE}
    result = subprocess.run(["sh", "-c", f". {OPENHAB / 'cont-init.d/10-nodefleet.sh'}"], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "installed" in result.stderr, result.stderr
    return conf


def test_start_script_installs_things_items_and_add_ons(installed: Path) -> None:
    things = (installed / "things/nodefleet.things").read_text()
    assert not re.search(r"@[A-Z_]+@", things)  # every placeholder filled in
    assert 'host="mosquitto", port=1883' in things and 'username="operator", password="0123abcd"' in things
    assert "enableDiscovery=true" in things  # Homie discovery on
    assert (installed / "things/nodefleet.things").stat().st_mode & 0o077 == 0  # it holds the password
    addons = (installed / "services/addons.cfg").read_text()
    assert "binding = astro,mqtt" in addons and "transformation = jsonpath" in addons


def test_things_and_items_follow_the_contracts(installed: Path) -> None:
    things = (installed / "things/nodefleet.things").read_text()
    items = (installed / "items/nodefleet.items").read_text()
    topics = Topics(root="home")
    # Every topic they read is the contract's.
    assert set(re.findall(r'(?:stateTopic|availabilityTopic)="([^"]+)"', things)) == {
        topics.status(NODE), topics.state(NODE), topics.schedule(NODE)}
    # Every JSON field they read exists in the payload models.
    fields = set(re.findall(r'stateTopic="[^"]+/state", transformationPattern="JSONPATH:\$\.(\w+)"', things))
    assert fields and fields <= set(State.model_fields)
    schedule = set(re.findall(r'JSONPATH:\$\.rules\[0\]\.(\w+)', things))
    assert schedule == {"at", "duration"} and schedule <= set(Rule.model_fields)
    # The Homie device is the provisioner's: its base topic and the node and property ids it declares.
    homie_base = Topics.homie(NODE, "$homie").split("/")[0]
    assert f'Thing homie300 {NODE} "RO purifier" [ deviceid="{NODE}", basetopic="{homie_base}" ]' in things
    declared = {f"{RELAY_NODE}#{POWER}"} | {f"{CLIMATE_NODE}#{reading}" for reading in SENSORS}
    homie_links = set(re.findall(rf'channel="mqtt:homie300:nodefleet:{NODE}:([\w-]+#[\w-]+)"', items))
    assert homie_links == declared
    # Each channel an item links to is one the things file defines.
    defined = set(re.findall(r"Type \w+ : (\w+) ", things))
    links = set(re.findall(rf'channel="mqtt:topic:nodefleet:{NODE}-topics:(\w+)"', items))
    assert links and links <= defined
    wanted = {"RO_Power", "RO_Mode", "RO_Schedule_At", "RO_Schedule_Duration", "RO_Online", "RO_Temperature",
              "RO_Humidity"}
    assert wanted <= set(re.findall(r"^\w+(?::\w+)? (\w+) ", items, re.MULTILINE))
