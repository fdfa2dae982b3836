"""compose.yaml as Compose reads it: today's ports by default, moved together by the .env variables."""

from __future__ import annotations

from pathlib import Path

from nodefleet.settings import CommonSettings

from .engine import compose_config


def _published(service: dict) -> set[tuple[str, int]]:
    return {(p["published"], p["target"]) for p in service.get("ports", [])}


def test_default_ports_are_todays(tmp_path: Path) -> None:
    services = compose_config(tmp_path)["services"]
    assert _published(services["mosquitto"]) == {("1883", 1883), ("8083", 8083), ("8883", 8883)}
    assert _published(services["provisioner"]) == {("8080", 8080)}
    assert "ports" not in services["postgres"]  # reached by the services only
    env = services["mosquitto"]["environment"]
    assert (env["NODEFLEET_MQTT_PORT"], env["NODEFLEET_MQTT_WS_PORT"], env["NODEFLEET_MQTT_LISTEN_HOST"]) == (
        "1883", "8083", "0.0.0.0")
    assert env["NODEFLEET_MQTT_TLS_PORT"] == "8883" and env["NODEFLEET_MQTT_TLS_DIR"] == "/nodefleet-tls/tls"
    # The authority is made before Mosquitto starts; nodes get plain MQTT until .env asks for TLS.
    assert services["mosquitto"]["depends_on"]["tls-init"]["condition"] == "service_completed_successfully"
    assert services["provisioner"]["environment"]["NODEFLEET_PROVISIONER_BROKER_CA"] == ""
    assert services["postgres"]["image"] == "postgres:16"
    telemetry = services["telemetry"]["environment"]
    assert telemetry["NODEFLEET_MQTT_URL"].endswith("@mosquitto:1883")
    assert telemetry["NODEFLEET_DATABASE_URL"].endswith("@postgres:5432/nodefleet")


def test_one_variable_moves_a_port_everywhere_it_is_used(tmp_path: Path) -> None:
    moved = "NODEFLEET_MQTT_PORT=2883\nNODEFLEET_POSTGRES_PORT=6432\n"
    services = compose_config(tmp_path, extra_env=moved)["services"]
    assert ("2883", 2883) in _published(services["mosquitto"])
    assert services["mosquitto"]["environment"]["NODEFLEET_MQTT_PORT"] == "2883"
    assert services["provisioner"]["environment"]["NODEFLEET_PROVISIONER_BROKER_PORT"] == "2883"
    for name in ("telemetry", "provisioner", "scheduler"):
        env = services[name]["environment"]
        assert env["NODEFLEET_MQTT_URL"].endswith("@mosquitto:2883")
        assert env["NODEFLEET_DATABASE_URL"].endswith("@postgres:6432/nodefleet")
    assert services["postgres"]["environment"]["PGPORT"] == "6432"


def test_every_service_gets_the_ota_master_key_and_none_means_ota_off(tmp_path: Path) -> None:
    config = compose_config(tmp_path)
    key = config["_env"]["NODEFLEET_OTA_MASTER_KEY"]
    assert len(bytes.fromhex(key)) == 32
    for name in ("telemetry", "provisioner", "scheduler", "ota"):
        assert config["services"][name]["environment"]["NODEFLEET_OTA_MASTER_KEY"] == key
    # A .env made before the key (or with it removed): empty, which the services read as no key.
    without = compose_config(tmp_path, extra_env="NODEFLEET_OTA_MASTER_KEY=\n")["services"]["provisioner"]
    assert without["environment"]["NODEFLEET_OTA_MASTER_KEY"] == ""
    assert CommonSettings(ota_master_key="").ota_master is None


def test_node_tls_is_two_variables(tmp_path: Path) -> None:
    env = "NODEFLEET_NODE_TLS_CA=/nodefleet-tls/tls/ca.pem\nNODEFLEET_NODE_BROKER_PORT=8883\n"
    provisioner = compose_config(tmp_path, extra_env=env)["services"]["provisioner"]
    assert provisioner["environment"]["NODEFLEET_PROVISIONER_BROKER_CA"] == "/nodefleet-tls/tls/ca.pem"
    assert provisioner["environment"]["NODEFLEET_PROVISIONER_BROKER_PORT"] == "8883"
    assert any(v["source"] == "tls" and v["target"] == "/nodefleet-tls" for v in provisioner["volumes"])
