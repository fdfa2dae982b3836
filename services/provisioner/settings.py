"""Settings of the provisioner: ``NODEFLEET_*`` common ones plus ``NODEFLEET_PROVISIONER_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from nodefleet.settings import CommonSettings, service_fields

_own = service_fields("provisioner")


class ProvisionerSettings(CommonSettings):
    client_id: str = _own("nodefleet-provisioner", "MQTT client id prefix", "client_id",
                          pattern=r"^[A-Za-z0-9_-]{1,48}$")
    shared_group: str | None = _own(
        None, "Several instances: take fleet requests through $share/<group>/ so each is answered once", "shared_group",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    credentials: Literal["dynsec", "none"] = _own(
        "none", "How node credentials reach the broker: 'dynsec' ($CONTROL/dynamic-security/v1, Mosquitto or the "
        "embedded broker with dynamic security on) or 'none' (an open broker; passwords are handed out but not enforced)",
        "credentials",
    )
    broker_host: str | None = _own(None, "Broker host handed to nodes (default: the host of mqtt_url)", "broker_host")
    broker_port: int | None = _own(None, "Broker port handed to nodes (default: the port of mqtt_url)", "broker_port",
                                   ge=1, le=65535)
    broker_ca: Path | None = _own(
        None, "The broker's certificate authority (PEM; nodefleet up makes <data dir>/tls/ca.pem): handed to nodes, "
        "which then connect over TLS to broker_host:broker_port and check the broker's certificate against it; set "
        "broker_port to the broker's TLS port (8883)", "broker_ca")
    http_host: str = _own("127.0.0.1", "Address of the HTTP edge (register, status)", "http_host")
    http_port: int = _own(8080, "Port of the HTTP edge; 0 picks a free one, -1 turns the edge off", "http_port",
                          ge=-1, le=65535)
    default_home: str | None = _own("home", "Home created at start if missing (empty: none)", "default_home")
    default_tz: str = _own("UTC", "IANA time zone of the default home", "default_tz")
    register_limit: int = _own(
        120, "Registrations one client address may ask for in register_window seconds at the HTTP edge; the "
        "excess gets 429 with Retry-After (0: no limit)", "register_limit", ge=0)
    register_window: float = _own(60.0, "The window (s) of register_limit", "register_window", gt=0)
    pending_ttl: float = _own(3600.0, "Seconds a registration may stay pending before it expires", "pending_ttl", gt=0)
    expiry_interval: float = _own(30.0, "Seconds between expiry runs", "expiry_interval", gt=0)
    max_devices_per_home: int = _own(10_000, "Most active devices in one home", "max_devices_per_home", ge=1)
    dynsec_timeout: float = _own(5.0, "Seconds to wait for the broker's dynamic-security answer", "dynsec_timeout", gt=0)
    db_retry_max: float = _own(10.0, "Longest pause (s) between database reconnection attempts", "db_retry_max", gt=0)

    @field_validator("broker_ca", mode="before")
    @classmethod
    def _empty_ca_is_plain(cls, value: Any) -> Any:
        # compose.yaml passes ${NODEFLEET_NODE_TLS_CA:-}: empty means nodes get plain MQTT.
        return None if isinstance(value, str) and not value.strip() else value
