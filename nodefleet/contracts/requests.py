"""The fleet request table: every action each service answers, with its request model and answer type.

A request is a :class:`~nodefleet.contracts.envelope.FleetRequest` on
``Topics.request(service, action)``; its ``data`` validates against the
request model, and the reply's ``data`` is the answer type dumped as JSON.
Each service's handlers are ``nodefleet.fleet.typed`` functions over exactly
these (tests/test_request_table.py holds them to this table), and the AsyncAPI
document is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .ota import (
    OTA_SERVICE,
    HistoryQuery,
    HistoryRow,
    LanOffer,
    Offer,
    ReleaseInfo,
    ReleasesQuery,
    ReleaseUpload,
    RolloutRef,
    RolloutStart,
    RolloutView,
    StatusQuery,
)
from .provisioning import (
    PROVISIONER_SERVICE,
    ConfigChange,
    ConfigRequest,
    DeviceRow as RegistryRow,
    Home,
    HomeLogin,
    HomeLoginRequest,
    HomeRequest,
    ListRequest,
    NodeRequest,
    ProvisioningStatus,
    RegisterRequest,
    Registration,
    Removed,
    StatusRequest,
)
from .queries import (
    TELEMETRY_SERVICE,
    DeviceRow,
    DevicesQuery,
    LogRow,
    LogsQuery,
    RunEventsQuery,
    TelemetryQuery,
    TelemetryRow,
)
from .scheduling import SCHEDULER_SERVICE, RunEventRow, ScheduleChange, ScheduleChanged, ShowAnswer, ShowQuery


@dataclass(frozen=True, slots=True)
class RequestSpec:
    request: type[BaseModel]
    answer: Any
    """The answer's type: a model, or a list of models."""
    summary: str


REQUESTS: dict[tuple[str, str], RequestSpec] = {
    # -- provisioner ---------------------------------------------------------------------------------------
    (PROVISIONER_SERVICE, "register"): RequestSpec(RegisterRequest, Registration,
                                                   "register a device: its MQTT config and one-time credentials"),
    (PROVISIONER_SERVICE, "status"): RequestSpec(StatusRequest, ProvisioningStatus,
                                                 "where a registration stands (pending, provisioned, refused, ...)"),
    (PROVISIONER_SERVICE, "home"): RequestSpec(HomeRequest, Home, "create a home or change its time zone"),
    (PROVISIONER_SERVICE, "home_login"): RequestSpec(HomeLoginRequest, HomeLogin,
                                                     "a home's operator login (new password): only its nodes"),
    (PROVISIONER_SERVICE, "config"): RequestSpec(ConfigRequest, ConfigChange,
                                                 "change a node's config; optionally wait until the node applied it"),
    (PROVISIONER_SERVICE, "remove"): RequestSpec(NodeRequest, Removed,
                                                 "revoke a node: its login, retained topics and discovery"),
    (PROVISIONER_SERVICE, "list"): RequestSpec(ListRequest, list[RegistryRow], "the registered devices"),
    # -- scheduler -----------------------------------------------------------------------------------------
    (SCHEDULER_SERVICE, "show"): RequestSpec(ShowQuery, ShowAnswer,
                                             "the schedule the scheduler holds for a node, its open and next run"),
    (SCHEDULER_SERVICE, "set"): RequestSpec(ScheduleChange, ScheduleChanged,
                                            "add or replace a rule; applied once to the current version"),
    # -- telemetry -----------------------------------------------------------------------------------------
    (TELEMETRY_SERVICE, "devices"): RequestSpec(DevicesQuery, list[DeviceRow],
                                                "every known node: availability, last seen, state, firmware"),
    (TELEMETRY_SERVICE, "telemetry"): RequestSpec(TelemetryQuery, list[TelemetryRow],
                                                  "a node's telemetry rows between two times, oldest first"),
    (TELEMETRY_SERVICE, "logs"): RequestSpec(LogsQuery, list[LogRow], "a node's device logs, newest first"),
    (TELEMETRY_SERVICE, "run_events"): RequestSpec(RunEventsQuery, list[RunEventRow],
                                                   "a node's scheduler run events, newest first"),
    # -- ota -----------------------------------------------------------------------------------------------
    (OTA_SERVICE, "release"): RequestSpec(ReleaseUpload, ReleaseInfo,
                                          "hand over a release file (base64); checked whole, kept in PostgreSQL"),
    (OTA_SERVICE, "releases"): RequestSpec(ReleasesQuery, list[ReleaseInfo], "the releases the service holds"),
    (OTA_SERVICE, "rollout_start"): RequestSpec(RolloutStart, RolloutView,
                                                "start a staged rollout of a release: canary, stages, failure limit"),
    (OTA_SERVICE, "rollout_pause"): RequestSpec(RolloutRef, RolloutView,
                                                "stop offering; offers not yet taken up are withdrawn"),
    (OTA_SERVICE, "rollout_resume"): RequestSpec(RolloutRef, RolloutView,
                                                 "offer again (a halted rollout accepts its failures so far)"),
    (OTA_SERVICE, "rollout_abort"): RequestSpec(RolloutRef, RolloutView,
                                                "withdraw every offer that can still be withdrawn"),
    (OTA_SERVICE, "status"): RequestSpec(StatusQuery, list[RolloutView],
                                         "one rollout, or every open one: per node state, bytes, rate, ETA"),
    (OTA_SERVICE, "history"): RequestSpec(HistoryQuery, list[HistoryRow], "a node's OTA transitions, newest first"),
    (OTA_SERVICE, "lan_offer"): RequestSpec(LanOffer, Offer,
                                            "a kept release's offer tagged for one node, for an upload over the LAN"),
}
"""(service, action) -> request model, answer type and what it does."""


def services() -> list[str]:
    """The services that answer fleet requests, in table order."""
    return list(dict.fromkeys(service for service, _ in REQUESTS))


def actions(service: str) -> dict[str, RequestSpec]:
    """The rows of one service: action -> its row."""
    return {action: spec for (owner, action), spec in REQUESTS.items() if owner == service}
