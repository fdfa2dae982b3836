"""Settings of the scheduler: ``NODEFLEET_*`` common ones plus ``NODEFLEET_SCHEDULER_*``."""

from __future__ import annotations

from nodefleet.settings import CommonSettings, service_fields

_own = service_fields("scheduler")


class SchedulerSettings(CommonSettings):
    grace: float = _own(
        10.0, "Seconds after a run's start the node has to report it before the scheduler sends the backup", "grace",
        ge=0, le=3600,
    )
    lease: float = _own(
        5.0, "Seconds after which another instance takes over a claimed backup that was never sent", "lease",
        gt=0, le=600,
    )
    claim_ahead: float = _own(
        2.0, "Seconds before a backup's due time its claim is made, so that at the second only the publish is left "
        "(0: claim at the second)", "claim_ahead", ge=0, le=60,
    )
    wake_grace: float = _own(
        60.0, "Seconds after its planned wake a sleeping node has to come back before it is flagged as overslept",
        "wake_grace", ge=0, le=3600,
    )
    time_every: float = _own(
        3600.0, "Seconds between the backend time offers (the time command) to every online node", "time_every",
        gt=0, le=86400,
    )
    history_days: int = _own(90, "Days of run events kept in the claim table (`scheduler_events`)", "history_days", ge=1)
    keepalive: int = _own(30, "MQTT keepalive in seconds", "keepalive", ge=5, le=600)
    db_retry_max: float = _own(10.0, "Longest pause (s) between database reconnection attempts", "db_retry_max", gt=0)
