"""Settings of the ota service: ``NODEFLEET_*`` common ones plus ``NODEFLEET_OTA_*``.

The master key the offers are tagged with is a common one (``NODEFLEET_OTA_MASTER_KEY``): the provisioner
derives the nodes' keys from the same key.
"""

from __future__ import annotations

from nodefleet.settings import CommonSettings, service_fields

_own = service_fields("ota")


class OtaSettings(CommonSettings):
    client_id: str = _own(
        "nodefleet-ota", "MQTT client id of the session (requests, wants, progress); the frame publisher adds -pub",
        "client_id", pattern=r"^[A-Za-z0-9_-]{1,60}$",
    )
    max_downloads: int = _own(
        50, "Most nodes downloading one release at a time; the others wait (queued) for a place", "max_downloads",
        ge=1, le=10_000,
    )
    member_silence: float = _own(
        5.0, "Seconds without a want after which a downloading node no longer holds the shared stream back",
        "member_silence", gt=0, le=600,
    )
    gather: float = _own(
        1.0, "Seconds an idle release stream waits after the first node asks, so a stage's nodes start together on "
        "the shared stream", "gather", ge=0, le=30,
    )
    tick_interval: float = _own(
        1.0, "Seconds between checks of the rollouts' stages and deadlines", "tick_interval", gt=0, le=60,
    )
    return_deadline: float = _own(
        600.0, "Seconds a node may take to come back after installing before it counts as failed",
        "return_deadline", gt=0,
    )
    batch_frames: int = _own(
        64, "Most frames written to the broker in one go (one socket write)", "batch_frames", ge=1, le=4096,
    )
    directory_timeout: float = _own(
        5.0, "Seconds to wait for the provisioner's node list when a rollout starts", "directory_timeout",
        gt=0, le=120,
    )
    keepalive: int = _own(30, "MQTT keepalive in seconds", "keepalive", ge=5, le=600)
    db_retry_max: float = _own(10.0, "Longest pause (s) between database connection attempts", "db_retry_max", gt=0)
    leader_poll: float = _own(
        1.0, "Seconds between a standby instance's tries to become the active one, and the active one's checks "
        "that it still is (see leader.py)", "leader_poll", gt=0, le=60,
    )
