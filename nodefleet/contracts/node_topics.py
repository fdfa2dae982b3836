"""The node topic table: every kind of topic under a node's prefix, who sends it, and what it carries.

``NODE_TOPICS[what]`` (``what`` a :class:`NodeTopic`, :class:`Command` or
:class:`OtaTopic`, as ``Topics.parse(topic).what`` gives it) says the payload
model, the content type, whether it is retained and the QoS its sender
publishes at.  Services decode a node topic with the model named here, the
AsyncAPI document (``python -m nodefleet.contracts.asyncapi``) is generated
from it, and a test checks that every kind the topics module knows has a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ota
from .commands import ClockRequest, LogicCommand, RestartCommand, SleepCommand, StopCommand, SwitchCommand, TimeCommand
from .payloads import Ack, Config, Info, Log, Payload, Schedule, State, Telemetry
from .topics import OFFLINE, ONLINE, SLEEPING, Command, NodeKind, NodeTopic, OtaTopic, node_path

JSON = "application/json"
TEXT = "text/plain"
BINARY = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class NodeTopicSpec:
    """One row of the node topic table."""

    what: NodeKind
    payload: type[Payload] | None
    """The pydantic model of a JSON payload; None for plain text (``plain``) and binary frames."""
    sender: str
    receivers: str
    retained: bool
    qos: int
    """The QoS the sender publishes at."""
    summary: str
    content_type: str = JSON
    plain: tuple[str, ...] = ()
    """Plain-text payloads the topic carries (``status``; ``set/switch`` takes these besides its JSON form)."""

    @property
    def path(self) -> str:
        """Below ``<root>/N/``: ``state``, ``set/switch``, ``ota/offer``."""
        return node_path(self.what)


_ROWS = (
    NodeTopicSpec(NodeTopic.STATUS, None, "node (its last will says offline)", "everyone (openHAB availability)",
                  True, 1, "online / offline; sleeping (its state says until when) while it sleeps by plan; the "
                  "provisioner clears it (empty, retained) when a node is removed",
                  content_type=TEXT, plain=(ONLINE, OFFLINE, SLEEPING)),
    NodeTopicSpec(NodeTopic.INFO, Info, "node", "everyone", True, 1,
                  "what the node is: chip id, firmware, capabilities, boot reason and count"),
    NodeTopicSpec(NodeTopic.STATE, State, "node", "everyone", True, 1,
                  "relay, mode, the rule in force and its end, the config and schedule versions applied"),
    NodeTopicSpec(NodeTopic.TELEMETRY, Telemetry, "node", "telemetry, provisioner (Homie values)", False, 0,
                  "periodic readings with a sequence number and the device time"),
    NodeTopicSpec(NodeTopic.LOG, Log, "node", "telemetry, provisioner (config rejections)", False, 1,
                  "one device error or crash report, kept on flash until the broker has it"),
    NodeTopicSpec(NodeTopic.ACK, Ack, "node", "the command's sender, telemetry", False, 1,
                  "the answer to a command that carried an id: ok, error or expired"),
    NodeTopicSpec(NodeTopic.CONFIG, Config, "provisioner", "node, scheduler (time zone)", True, 1,
                  "the versioned device config"),
    NodeTopicSpec(NodeTopic.SCHEDULE, Schedule, "scheduler (scheduler/set), operator, openHAB",
                  "node, scheduler", True, 1, "the versioned NodeLogic rules"),
    NodeTopicSpec(Command.SWITCH, SwitchCommand, "anyone (scheduler backups, openHAB, the CLI)", "node", False, 1,
                  "switch the relay: plain ON / OFF / TOGGLE, or JSON with for, until, id, run_id, expiry",
                  plain=("ON", "OFF", "TOGGLE")),
    NodeTopicSpec(Command.LOGIC, LogicCommand, "anyone", "node", False, 1, "enable or disable NodeLogic"),
    NodeTopicSpec(Command.STOP, StopCommand, "anyone", "node", False, 1,
                  "failsafe: relay off, logic paused until resume"),
    NodeTopicSpec(Command.RESTART, RestartCommand, "anyone", "node", False, 1, "restart the node"),
    NodeTopicSpec(NodeTopic.CLOCK, ClockRequest, "node", "scheduler", False, 0,
                  "the node's clock is unset: it asks for the backend's time"),
    NodeTopicSpec(Command.TIME, TimeCommand, "scheduler (on connect, on request, hourly)", "node", False, 1,
                  "the backend's time, taken by a node without NTP time"),
    NodeTopicSpec(Command.SLEEP, SleepCommand, "anyone", "node", False, 1,
                  "deep sleep for a while (relay off only; a rule due sooner wakes it)"),
    NodeTopicSpec(OtaTopic.OFFER, ota.Offer, "ota", "node", True, 1,
                  "the release on offer and the node's tag; an empty retained message withdraws it"),
    NodeTopicSpec(OtaTopic.DATA, None, "ota", "node", False, 0,
                  "binary frames (nodefleet.contracts.ota.decode_frame) that repair this node's gaps",
                  content_type=BINARY),
    NodeTopicSpec(OtaTopic.WANT, ota.Want, "node", "ota", False, 0,
                  "what the node has (bitmap) and how much more it can take (window)"),
    NodeTopicSpec(OtaTopic.PROGRESS, ota.Progress, "node", "ota, everyone", False, 1,
                  "update state transitions and download progress"),
)

NODE_TOPICS: dict[NodeKind, NodeTopicSpec] = {row.what: row for row in _ROWS}
"""Every topic kind under ``<root>/N/`` -> its row."""

NODE_PAYLOADS: dict[str, type[Payload]] = {
    row.what.value: row.payload for row in _ROWS if isinstance(row.what, NodeTopic) and row.payload is not None
}
"""Model of each JSON node topic kind (``status`` is plain text): a view of NODE_TOPICS."""

COMMAND_PAYLOADS: dict[str, type[Payload]] = {
    row.what.value: row.payload for row in _ROWS if isinstance(row.what, Command) and row.payload is not None
}
"""Model of each ``set/<what>`` command: a view of NODE_TOPICS."""
