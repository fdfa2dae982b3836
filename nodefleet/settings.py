"""Settings shared by every service, read once from ``NODEFLEET_*`` variables.

Each service subclasses :class:`CommonSettings` with its own fields; the object
is built in ``__main__`` and passed down, never fetched from a global.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .contracts import Topics

LogFormat = Literal["auto", "console", "json"]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NODEFLEET_", extra="ignore", frozen=True)

    mqtt_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker as mqtt://[user:password@]host[:port]",
    )
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/nodefleet",
        description="PostgreSQL DSN (asyncpg)",
    )
    engine_url: str | None = Field(
        default=None,
        description="A NATS cluster as nats://host:port[,host:port...]: services that ingest node traffic "
        "(telemetry) read it through JetStream durable consumers there, while every MQTT client still "
        "uses mqtt_url (the MQTT port of one of its servers). Unset: everything goes through the MQTT broker",
        pattern=r"^nats://[^/]+$",
    )
    topic_root: str = Field(default="home", description="Root of node topics")
    fleet_root: str = Field(default="fleet", description="Root of fleet request and event topics")
    instance: str = Field(
        # Stable across restarts, so a restart reuses its retained status topic; set it
        # when several instances of one service run on the same host.
        default_factory=lambda: "".join(c if c.isalnum() or c in "-_" else "-" for c in os.uname().nodename)[:40] or "local",
        description="Name of this running instance (status topic, control client id)",
    )
    ota_master_key: SecretStr | None = Field(
        default=None,
        description="The fleet's OTA master key, 64 hex digits (32 bytes). The provisioner derives each node's key "
        "from it (handed out in MqttConfig.ota_key); the ota service tags offers with the same keys. "
        "Unset: nodes get no key and the ota service refuses to offer",
    )
    log_format: LogFormat = "auto"
    log_level: str = "info"

    @property
    def topics(self) -> Topics:
        return Topics(root=self.topic_root, fleet=self.fleet_root)

    @field_validator("ota_master_key", mode="before")
    @classmethod
    def _empty_master_key_is_unset(cls, value: Any) -> Any:
        # compose.yaml passes ${NODEFLEET_OTA_MASTER_KEY:-}, so an empty variable must mean "no key".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ota_master_key")
    @classmethod
    def _master_key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.get_secret_value()):
            raise ValueError("the OTA master key is 64 hex digits (32 bytes): make one with `openssl rand -hex 32`")
        return value

    @property
    def ota_master(self) -> bytes | None:
        """The master key as bytes (see ``nodefleet.contracts.ota.device_key``), or None when unset."""
        return bytes.fromhex(self.ota_master_key.get_secret_value()) if self.ota_master_key else None


def service_fields(service: str) -> Callable[..., Any]:
    """A field maker for one service's own settings, read from ``NODEFLEET_<SERVICE>_<NAME>``.

    The prefix keeps services that share an environment (``nodefleet up``,
    one compose file) from reading each other's settings.
    """

    def field(default: Any, description: str, name: str, **constraints: Any) -> Any:
        return Field(
            default=default,
            description=description,
            validation_alias=AliasChoices(name, f"NODEFLEET_{service.upper()}_{name.upper()}"),
            **constraints,
        )

    return field
