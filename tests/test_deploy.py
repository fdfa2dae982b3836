"""The container deployment stays in step with the code (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from nodefleet.embedded import mosquitto

ROOT = Path(__file__).resolve().parents[1]


def service_packages() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


def test_compose_runs_every_service_with_its_module() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    commands = {name: spec.get("command") for name, spec in compose["services"].items()}
    for name in service_packages():
        assert commands.get(name) == ["python", "-m", f"services.{name}"], f"compose.yaml lacks the {name} service"
    assert {"mosquitto", "postgres"} <= set(commands)


def test_compose_services_are_configured_only_by_environment() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in service_packages():
        env = compose["services"][name]["environment"]
        assert env["NODEFLEET_MQTT_URL"].startswith("mqtt://mosquitto:")
        assert env["NODEFLEET_DATABASE_URL"].startswith("postgresql://")


def test_production_broker_holds_the_limits_the_tests_use() -> None:
    conf = dict(
        line.split(None, 1) for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert int(conf["max_inflight_messages"]) == mosquitto.INFLIGHT
    assert int(conf["max_queued_messages"]) == mosquitto.QUEUED
    assert conf["set_tcp_nodelay"] == "true"


def test_image_holds_the_source_the_services_load() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    for folder in ("nodefleet", "services", "firmware"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert "WORKDIR /app" in dockerfile
