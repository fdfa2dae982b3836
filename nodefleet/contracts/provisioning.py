"""Requests and replies of the provisioner (over MQTT fleet requests and its HTTP edge).

The same models serve both edges: ``POST /api/provision/register/`` takes a
:class:`RegisterRequest` and answers a :class:`Registration`; a fleet request
``fleet/provisioner/request/register`` carries the same body in ``data``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .ota import Hex64
from .payloads import Config, Identifier, Log, NodeName

PROVISIONER_SERVICE = "provisioner"

HomeId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
DeviceName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
ProvisioningId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
ZoneName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+/-]{1,64}$")]
DeviceStatus = Literal["pending", "provisioned", "unprovisioned", "revoked"]
"""A device in the registry: ``pending`` (registered, not yet online), ``provisioned`` (came online with its
chip), ``unprovisioned`` (the node said it was un-provisioned; its next online provisions it again),
``revoked`` (removed, or expired while pending)."""
Refusal = Literal["chip_mismatch", "chip_in_use"]
"""Why a registered device that came online was not provisioned (see ProvisioningStatus)."""

TEMPORARY_CHIP_PREFIX = "temp_"


def is_temporary_chip(chip_id: str | None) -> bool:
    """True for a placeholder chip id: absent, or starting with ``temp_`` (a phone app registers one before it
    can read the node's real chip id).  A placeholder is not stored: the first online binds the chip that came
    online with the device's credentials.  Any other chip id is real, and a different chip is refused."""
    return chip_id is None or chip_id.startswith(TEMPORARY_CHIP_PREFIX)


class Request(BaseModel):
    """Base of every request: strict, so a typo is an error instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterRequest(Request):
    """Register a device.  Registering the same device again while its registration is still pending (a failed
    attempt retried) or unprovisioned replaces that registration: same home and name with chip ids that do not
    contradict (a placeholder on either side, or the same chip), or the same real chip id.  A provisioned
    device is never replaced (409)."""

    home_id: HomeId
    device_name: DeviceName
    chip_id: Identifier | None = None
    """The node's chip id if known; absent or ``temp_...`` is a placeholder (see :func:`is_temporary_chip`)."""

    @field_validator("device_name")
    @classmethod
    def _printable(cls, name: str) -> str:
        if not name.isprintable():
            raise ValueError("device_name must be printable text")
        return name


class MqttConfig(BaseModel):
    """What the node needs to reach the broker (pushed to its ``POST /api/mqtt``)."""

    broker_host: str
    broker_port: int
    topic_prefix: str
    node_name: NodeName
    username: str
    password: str
    ota_key: Hex64 | None = None
    """The node's OTA key, ``device_key(master, node_name)`` as 64 hex digits: it checks the tag of every
    update offered to it (docs/ota.md).  None when the provisioner has no master key (OTA off)."""
    broker_ca: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=]{16,1400}$")] | None = None
    """The broker's certificate authority, base64 DER (what MicroPython's ``ssl`` reads; up to about 1 KB, an
    ECDSA authority is 0.4 KB): the node connects over TLS and checks the broker's certificate and name against
    it.  None: plain MQTT."""


class Registration(BaseModel):
    provisioning_id: ProvisioningId
    mqtt_config: MqttConfig
    expires_at: datetime


class StatusRequest(Request):
    provisioning_id: ProvisioningId


class ProvisioningStatus(BaseModel):
    provisioning_id: ProvisioningId
    is_provisioned: bool
    device_id: NodeName
    status: DeviceStatus | Refusal
    """The device's status, or (while pending) why its last online was refused: ``chip_mismatch`` (another
    chip than the registered one came online with its credentials) or ``chip_in_use`` (the chip is bound to
    another device); ``error`` says what to do."""
    chip_id: str | None = None
    """The chip id registered (None for a placeholder) or bound at the first online."""
    reported_chip_id: str | None = None
    """With a refusal: the chip that came online."""
    error: str | None = None
    connected_at: datetime | None = None
    config_version: int | None = None
    config_applied: int | None = None
    """The config version the node reports it applied (None until it reported one)."""


class HomeRequest(Request):
    """Create a home or change its time zone."""

    home_id: HomeId
    tz: ZoneName = "UTC"


class Home(BaseModel):
    """The answer to a HomeRequest: the home as it is now kept."""

    home_id: HomeId
    tz: ZoneName


class HomeLoginRequest(Request):
    """Make the operator login of a home, or give it a new password (the old one stops working)."""

    home_id: HomeId


class HomeLogin(BaseModel):
    """The answer to ``provisioner/home_login``: a broker login that reaches only this home's nodes.

    It reads every topic of those nodes (and their Homie and Home Assistant discovery topics), sends them
    commands and schedules, and nothing else: no fleet request, no other home.  Nodes that join or leave the
    home later are added or taken away by the provisioner.  The password is shown only here.
    """

    home_id: HomeId
    username: str
    password: str
    nodes: list[NodeName]
    """The home's nodes (not revoked) the login reaches now."""


class NodeRequest(Request):
    node: NodeName


class Removed(BaseModel):
    """The answer to ``provisioner/remove``: the node's registration is revoked (its login and topics cleared)."""

    node: NodeName
    status: Literal["revoked"] = "revoked"


class ConfigRequest(Request):
    """Change a node's config: dotted keys (``pins.outputs.relay``) to JSON values."""

    node: NodeName
    set: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.]{0,63}$")], Any] = Field(
        min_length=1, max_length=32
    )
    wait: Annotated[float, Field(ge=0, le=300)] = 0
    """Seconds to wait for the node to report the new version before answering (0: answer at once)."""


class ConfigChange(BaseModel):
    """The answer to a ConfigRequest: the version published and whether the node applied it within ``wait``."""

    node: NodeName
    version: int
    applied: bool
    config: Config
    rejected: str | None = None
    """Why the node refused this version (its ``bad_config`` log entry), if it did within ``wait``."""


CONFIG_REJECTED = "bad_config"
"""Code of the log entry a node writes when it refuses a config (firmware/normal.py): its ``msg`` is
``config version <N> rejected: <why>``."""
_REJECTION = re.compile(r"config version (\d+) rejected: (.+)", re.DOTALL)


def config_rejection(entry: Log) -> tuple[int, str] | None:
    """(version, why) when a node's log entry says it refused a config version, else None."""
    if entry.code != CONFIG_REJECTED:
        return None
    match = _REJECTION.fullmatch(entry.msg)
    return (int(match[1]), match[2]) if match else None


UNPROVISIONED = "unprovisioned"
"""Code of the log entry a node writes when it is un-provisioned (``DELETE /api/restart`` on its web API,
firmware/web.py) just before it restarts into provisioning mode: its ``msg`` is
``unprovisioned at boot <N>: ...`` with the node's boot count, so a copy delivered after the node came back
(a later boot) is recognised as stale."""
_UNPROVISIONED = re.compile(r"unprovisioned at boot (\d+)\b.*", re.DOTALL)


def unprovisioned_at(entry: Log) -> int | None:
    """The boot count at which a node's log entry says it was un-provisioned, else None."""
    if entry.code != UNPROVISIONED:
        return None
    match = _UNPROVISIONED.fullmatch(entry.msg)
    return int(match[1]) if match else None


class ListRequest(Request):
    home_id: HomeId | None = None
    status: DeviceStatus | None = None


class DeviceRow(BaseModel):
    node: NodeName
    home_id: HomeId
    device_name: str
    status: DeviceStatus
    chip_id: str | None = None
    config_version: int
    config_applied: int | None = None
    created: datetime
    first_connected: datetime | None = None
    last_seen: datetime | None = None


# -- the HTTP edge (phone app, `nodefleet provision --http`) ---------------------
HTTP_REGISTER_PATH = "/api/provision/register/"
HTTP_STATUS_PATH = "/api/provision/status/"
"""Followed by the provisioning id."""


# -- discovery (retained, published by the provisioner) --------------------------


class HaDevice(BaseModel):
    """The device block shared by a node's Home Assistant discovery configs."""

    identifiers: list[str]
    name: str
    sw_version: str
    manufacturer: str = "nodefleet"


class HaEntity(BaseModel):
    """Fields of every Home Assistant discovery config we publish; availability is the node's status topic."""

    name: str
    unique_id: str
    state_topic: str
    value_template: str
    availability_topic: str
    payload_available: str
    payload_not_available: str
    device: HaDevice


class HaSwitch(HaEntity):
    """``homeassistant/switch/<node>/relay/config``: the relay, commanded through ``set/switch``."""

    command_topic: str
    payload_on: Literal["ON"] = "ON"
    payload_off: Literal["OFF"] = "OFF"


class HaSensor(HaEntity):
    """``homeassistant/sensor/<node>/<reading>/config``: one reading of the node's telemetry."""

    unit_of_measurement: str
    device_class: str
    state_class: Literal["measurement"] = "measurement"
