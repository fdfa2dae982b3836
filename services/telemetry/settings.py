"""Settings of the telemetry service: ``NODEFLEET_*`` common ones plus ``NODEFLEET_TELEMETRY_*``."""

from __future__ import annotations

from typing import Literal

from nodefleet.settings import CommonSettings, service_fields

_own = service_fields("telemetry")


class TelemetrySettings(CommonSettings):
    client_id: str = _own(
        "nodefleet-telemetry", "MQTT client id of the ingest session; a restart with the same id resumes it", "client_id",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    shared_group: str | None = _own(
        None, "Split the load between instances: $share/<group>/ subscriptions on one MQTT broker, the durable consumers "
        "<group>-<filter hash> on a NATS cluster",
        "shared_group",
    )
    ack_wait: float = _own(
        30.0, "On a NATS cluster (NODEFLEET_ENGINE_URL): seconds a fetched message may stay unacknowledged before "
        "the consumer hands it to another instance (a dead instance's messages come again after this)", "ack_wait",
        gt=0, le=3600,
    )
    retention_days: int = _own(30, "Days of telemetry kept; older daily partitions are dropped", "retention_days", ge=1)
    log_retention_days: int = _own(90, "Days of device logs, availability history, acks and run events kept", "log_retention_days", ge=1)
    partitions_ahead: int = _own(2, "Daily partitions created ahead of today", "partitions_ahead", ge=1, le=30)
    max_clock_ahead: float = _own(
        86_400.0, "Telemetry whose device time is further in the future (seconds) is rejected", "max_clock_ahead", gt=0
    )
    dedup_window: float = _own(
        3600.0, "Seconds within which a redelivered row without device time is still recognised", "dedup_window", gt=0
    )
    node_limit: int = _own(
        0, "Messages one node may send in node_limit_window seconds (token bucket; its status is not counted); "
        "the excess is counted and dropped. 0 (the default for now): no limit; seed 003 asks 100", "node_limit", ge=0,
    )
    node_limit_window: float = _own(60.0, "Seconds of node_limit", "node_limit_window", gt=0)
    batch_size: int = _own(5000, "Most messages written in one transaction", "batch_size", ge=1, le=100_000)
    flush_interval: float = _own(0.05, "Longest wait (s) to fill a batch before writing it", "flush_interval", ge=0)
    buffer_limit: int = _own(
        20_000, "Messages held in memory before the broker socket is no longer read (back-pressure)", "buffer_limit",
        ge=1,
    )
    maintenance_interval: float = _own(600.0, "Seconds between partition and retention runs", "maintenance_interval", gt=0)
    request_plane: Literal["wire", "faststream"] = _own(
        "wire", "What carries the control plane's fleet requests: nodefleet.wire, or FastStream (an experiment; needs "
        "the faststream[mqtt] package)", "request_plane",
    )
    keepalive: int = _own(30, "MQTT keepalive in seconds", "keepalive", ge=5, le=600)
    db_retry_max: float = _own(10.0, "Longest pause (s) between database reconnection attempts", "db_retry_max", gt=0)
