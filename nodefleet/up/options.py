"""What ``nodefleet up`` is asked to run (:class:`RuntimeOptions`) and where it all is once up (:class:`RuntimeInfo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..embedded.postgres import SYSTEM_USER
from ..settings import LogFormat

DEFAULT_MQTT_PORT = 1883
DEFAULT_DB_PORT = 15432
DEFAULT_HTTP_PORT = 8080
DATABASE_NAME = "nodefleet"


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    # The embedded broker may listen wider than loopback so devices on the network reach it.
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = DEFAULT_MQTT_PORT
    db_port: int = DEFAULT_DB_PORT
    # As root, the embedded PostgreSQL runs as this system user, made on first start.
    postgres_system_user: str = SYSTEM_USER
    # The provisioner's HTTP edge (the phone app): 0 picks a free port, -1 turns it off; host None: mqtt_host.
    http_port: int = DEFAULT_HTTP_PORT
    http_host: str | None = None
    # MQTT over WebSockets on the embedded broker (apps, browsers): -1 off, 0 a free port (the CLI's default: 8083).
    ws_port: int = -1
    # MQTT over TLS on the embedded broker, with the authority made in <data dir>/tls: -1 off, 0 a free port
    # (the CLI's default: 8883). node_tls: registrations hand nodes this port and the authority.
    tls_port: int = -1
    node_tls: bool = False
    broker_url: str | None = None
    database_url: str | None = None
    log_format: LogFormat = "auto"
    log_level: str = "info"
    service_timeout: float = 30.0
    # Extra settings every service gets (e.g. topic roots in tests).
    service_overrides: dict[str, Any] = field(default_factory=dict)
    # The embedded broker refuses anonymous clients and checks node credentials; False for local experiments only.
    secure: bool = True

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None


@dataclass(frozen=True, kw_only=True)
class RuntimeInfo:
    """Where things are once the system is up (for the banner and for tests)."""

    broker_url: str
    database_url: str
    data_dir: Path
    embedded_broker: bool
    embedded_database: bool
    services: list[str]
    extras: list[str]
    startup_seconds: float
    # Set when the embedded broker is secured: where its passwords are and the operator's login.
    credentials_file: Path | None = None
    operator_url: str | None = None
    # Where the provisioner's HTTP edge listens (None: off, or no provisioner).
    http_url: str | None = None
    # The embedded broker's MQTT over WebSockets (None: off, or an external broker).
    ws_url: str | None = None
    # The embedded broker's MQTT over TLS, ``mqtts://host:port?ca=<data dir>/tls/ca.pem`` (None: off).
    tls_url: str | None = None
    node_tls: bool = False

    @property
    def secured(self) -> bool:
        return self.credentials_file is not None
