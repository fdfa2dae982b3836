"""Every MQTT topic string of nodefleet, written once.

Everything about node ``N`` lives under ``<root>/N/``; requests between the
CLI, apps and services live under ``<fleet>/``.  A test fails if a topic
literal appears anywhere else in ``services/`` or ``nodefleet/``.

Commands (``set/...``) are never retained: a retained command would replay on
every reconnect and switch the relay at boot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ..errors import InputError

NODE_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_NODE_NAME = re.compile(NODE_NAME_PATTERN)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
RELEASE_PATTERN = r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(?:-[0-9A-Za-z.]{1,32})?"
"""A release is named by its version (``1.4.0``, ``1.5.0-rc.1``); it is also a topic segment."""
_RELEASE = re.compile(RELEASE_PATTERN)

SHARED_PREFIX = "$share/"
"""MQTT shared subscriptions: ``$share/<group>/<filter>``."""

ONLINE = "online"
OFFLINE = "offline"
SLEEPING = "sleeping"
"""A node's status while it sleeps by plan (retained, instead of its will's ``offline``); its state says until when."""


class TopicError(InputError):
    """A topic that does not belong to the nodefleet contract."""


class NodeTopic(StrEnum):
    """The kinds of topic directly under a node's prefix."""

    STATUS = "status"
    INFO = "info"
    STATE = "state"
    TELEMETRY = "telemetry"
    LOG = "log"
    ACK = "ack"
    CONFIG = "config"
    SCHEDULE = "schedule"
    CLOCK = "clock"
    """node -> scheduler: the node's clock is unset, it asks for the backend's time (``set/time``)."""


class Command(StrEnum):
    """What may follow ``<root>/N/set/``."""

    SWITCH = "switch"
    LOGIC = "logic"
    STOP = "stop"
    RESTART = "restart"
    TIME = "time"
    SLEEP = "sleep"


class OtaTopic(StrEnum):
    """What may follow ``<root>/N/ota/`` (see docs/ota.md)."""

    OFFER = "offer"
    """ota -> node, retained: the release on offer and its tag; empty clears it."""
    DATA = "data"
    """ota -> node: binary frames that repair this node's gaps."""
    WANT = "want"
    """node -> ota: what the node has (bitmap) and how much more it can take (window)."""
    PROGRESS = "progress"
    """node -> ota and everyone: state transitions and download progress."""


def validate_release(release: str) -> str:
    """Return ``release`` if it is a release version usable as a topic segment, else raise TopicError."""
    if not _RELEASE.fullmatch(release):
        raise TopicError(f"invalid release {release!r}: use a version such as 1.4.0 or 1.5.0-rc.1")
    return release


def validate_node_name(node: str) -> str:
    """Return ``node`` if it is a valid node slug, else raise TopicError."""
    if not _NODE_NAME.fullmatch(node):
        raise TopicError(
            f"invalid node name {node!r}: use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return node


def _validate_segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise TopicError(f"invalid {what} {value!r}: use 1-64 of A-Z, a-z, 0-9, '-' and '_'")
    return value


NodeKind = NodeTopic | Command | OtaTopic
"""What a topic under a node's prefix is: the key of the node topic table (``node_topics.NODE_TOPICS``)."""


def node_path(what: NodeKind) -> str:
    """The part of a node topic after ``<root>/N/``: ``state``, ``set/switch``, ``ota/offer``."""
    if isinstance(what, Command):
        return f"set/{what.value}"
    if isinstance(what, OtaTopic):
        return f"ota/{what.value}"
    return what.value


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    node: str
    kind: NodeTopic | None
    command: Command | None = None
    ota: OtaTopic | None = None

    @property
    def what(self) -> NodeKind:
        """The kind, command or OTA topic: one key of the node topic table."""
        return self.kind or self.command or self.ota  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Topics:
    """Builders and filters for one deployment's topic roots.

    Tests give each test its own ``root`` and ``fleet`` so they never see each
    other's messages.
    """

    root: str = "home"
    fleet: str = "fleet"

    def __post_init__(self) -> None:
        for value in (self.root, self.fleet):
            if not value or any(c in value for c in "+#") or value.startswith("/") or value.endswith("/"):
                raise TopicError(f"invalid topic root {value!r}")

    # -- one node ----------------------------------------------------------
    def node(self, node: str, kind: NodeTopic) -> str:
        return f"{self.root}/{validate_node_name(node)}/{kind.value}"

    def status(self, node: str) -> str:
        return self.node(node, NodeTopic.STATUS)

    def info(self, node: str) -> str:
        return self.node(node, NodeTopic.INFO)

    def state(self, node: str) -> str:
        return self.node(node, NodeTopic.STATE)

    def telemetry(self, node: str) -> str:
        return self.node(node, NodeTopic.TELEMETRY)

    def log(self, node: str) -> str:
        return self.node(node, NodeTopic.LOG)

    def ack(self, node: str) -> str:
        return self.node(node, NodeTopic.ACK)

    def config(self, node: str) -> str:
        return self.node(node, NodeTopic.CONFIG)

    def schedule(self, node: str) -> str:
        return self.node(node, NodeTopic.SCHEDULE)

    def set(self, node: str, command: Command) -> str:
        return f"{self.root}/{validate_node_name(node)}/set/{command.value}"

    def ota(self, node: str, kind: OtaTopic) -> str:
        """``<root>/N/ota/<kind>``: offer and repair frames to the node, want and progress from it."""
        return f"{self.root}/{validate_node_name(node)}/ota/{kind.value}"

    def ota_stream(self, release: str) -> str:
        """The one data stream of ``release`` that every node downloading it shares (not retained)."""
        return f"{self.fleet}/ota/data/{validate_release(release)}"

    def ota_streams(self) -> str:
        """Filter of every release's shared stream: what a node's ACL lets it subscribe to."""
        return f"{self.fleet}/ota/data/+"

    def all_ota(self, kind: OtaTopic) -> str:
        """Filter matching ``ota/<kind>`` of every node, e.g. ``home/+/ota/progress``."""
        return f"{self.root}/+/ota/{kind.value}"

    def node_ota_inbox(self, node: str) -> list[str]:
        """The OTA topics a downloading node subscribes to, besides the stream its offer names."""
        return [self.ota(node, OtaTopic.OFFER), self.ota(node, OtaTopic.DATA)]

    def prefix(self, node: str) -> str:
        """The prefix a node owns (``home/N``), as handed out at provisioning."""
        return f"{self.root}/{validate_node_name(node)}"

    # -- filters -----------------------------------------------------------
    def all_nodes(self, kind: NodeTopic) -> str:
        """Filter matching ``kind`` for every node, e.g. ``home/+/telemetry``."""
        return f"{self.root}/+/{kind.value}"

    def every_node(self, what: NodeKind) -> str:
        """Filter matching ``what`` (any node topic kind) under every node: ``home/+/set/switch``."""
        return f"{self.root}/+/{node_path(what)}"

    def node_or_all(self, kind: NodeTopic, node: str | None) -> str:
        return self.node(node, kind) if node else self.all_nodes(kind)

    @staticmethod
    def shared(group: str, topic_filter: str) -> str:
        """``topic_filter`` as a shared subscription: instances in ``group`` split the messages."""
        return f"{SHARED_PREFIX}{_validate_segment(group, 'shared group')}/{topic_filter}"

    def node_inbox(self, node: str) -> list[str]:
        """What a node may subscribe to: only what is addressed to it, and the shared OTA streams.

        Of its own ``ota/`` topics the node reads only :meth:`node_ota_inbox` (offer and data), never its own
        want and progress, and nothing of another node's.
        """
        prefix = self.prefix(node)
        return [f"{prefix}/set/#", f"{prefix}/config", f"{prefix}/schedule", *self.node_ota_inbox(node),
                self.ota_streams()]

    def node_outbox(self, node: str) -> list[str]:
        """What a node may publish: its status, info, state, telemetry, log, acks and clock requests, its OTA want
        and progress.

        Never its own config, schedule or commands, nor an OTA offer or data frame (those are the services').
        """
        own = [self.node(node, kind) for kind in (NodeTopic.STATUS, NodeTopic.INFO, NodeTopic.STATE,
                                                   NodeTopic.TELEMETRY, NodeTopic.LOG, NodeTopic.ACK,
                                                   NodeTopic.CLOCK)]
        return [*own, self.ota(node, OtaTopic.WANT), self.ota(node, OtaTopic.PROGRESS)]

    def operator_publish(self, node: str) -> list[str]:
        """What a home's operator login may publish for one of its nodes: commands and the schedule (retained,
        as every client sets it), and Homie's settable property.  Never its config or OTA (the services')."""
        prefix = self.prefix(node)
        return [f"{prefix}/set/#", f"{prefix}/schedule", f"{HOMIE_BASE}/{validate_node_name(node)}/+/+/set"]

    def operator_subscribe(self, node: str) -> list[str]:
        """What a home's operator login may subscribe to for one of its nodes: all of its topics, its Homie
        device and its Home Assistant discovery entries (``homeassistant/<component>/<node>/...``)."""
        return [f"{self.prefix(node)}/#", Topics.homie_device(node), f"{HA_DISCOVERY_BASE}/+/{validate_node_name(node)}/#"]

    def parse(self, topic: str) -> ParsedTopic:
        """Split a node topic into node and kind; raise TopicError if it does not parse."""
        parts = topic.split("/")
        root_parts = self.root.split("/")
        n = len(root_parts)
        if parts[:n] != root_parts or len(parts) < n + 2:
            raise TopicError(f"topic {topic!r} is not under {self.root}/<node>/")
        node = validate_node_name(parts[n])
        rest = parts[n + 1 :]
        try:
            if len(rest) == 1:
                return ParsedTopic(node, NodeTopic(rest[0]))
            if len(rest) == 2 and rest[0] == "set":
                return ParsedTopic(node, None, Command(rest[1]))
            if len(rest) == 2 and rest[0] == "ota":
                return ParsedTopic(node, None, ota=OtaTopic(rest[1]))
        except ValueError:
            pass
        raise TopicError(f"topic {topic!r} has an unknown kind {'/'.join(rest)!r}")

    # -- fleet: requests, replies, events ----------------------------------
    def request(self, service: str, action: str) -> str:
        """Where ``service`` takes requests named ``action`` ({transaction, reply_to})."""
        return f"{self.fleet}/{_validate_segment(service, 'service')}/request/{_validate_segment(action, 'action')}"

    def requests(self, service: str) -> str:
        return f"{self.fleet}/{_validate_segment(service, 'service')}/request/+"

    def request_action(self, topic: str) -> str:
        """The action named by a request topic."""
        return topic.rsplit("/", 1)[-1]

    def reply(self, client_id: str) -> str:
        """A requester's private reply topic; its id goes in ``reply_to``."""
        return f"{self.fleet}/reply/{_validate_segment(client_id, 'client id')}"

    def errors(self) -> str:
        """Error events (bad input, failures), rate-limited by each service."""
        return f"{self.fleet}/errors"

    def service_status(self, service: str, instance: str) -> str:
        """Retained ``online``/``offline`` (last will) of one running service instance."""
        return f"{self.fleet}/services/{_validate_segment(service, 'service')}/{_validate_segment(instance, 'instance')}"

    # -- provisioner: discovery and broker security ------------------------
    # Discovery roots are fixed by openHAB (Homie 4) and Home Assistant, not by our roots.

    @staticmethod
    def homie(node: str, *path: str, base: str | None = None) -> str:
        """A Homie 4 device topic: ``homie/<node>/<path...>`` (e.g. ``$homie``, ``relay/$name``)."""
        parts = [base or HOMIE_BASE, validate_node_name(node), *path]
        if any(not part or "+" in part or "#" in part for part in parts[2:]):
            raise TopicError(f"invalid Homie topic path {'/'.join(path)!r}")
        return "/".join(parts)

    @staticmethod
    def homie_device(node: str, *, base: str | None = None) -> str:
        """Filter for everything a Homie device has published (``homie/<node>/#``)."""
        return f"{base or HOMIE_BASE}/{validate_node_name(node)}/#"

    @staticmethod
    def homie_every_device(*path: str, base: str | None = None) -> str:
        """Filter for one Homie topic of every device, e.g. ``homie/+/relay/power/set``."""
        if any(not part or "+" in part or "#" in part for part in path):
            raise TopicError(f"invalid Homie topic path {'/'.join(path)!r}")
        return "/".join([base or HOMIE_BASE, "+", *path])

    @staticmethod
    def homie_device_of(topic: str, *, base: str | None = None) -> str:
        """The device (node) a Homie topic belongs to; TopicError if it is not a Homie device topic."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != (base or HOMIE_BASE):
            raise TopicError(f"topic {topic!r} is not under {base or HOMIE_BASE}/<device>/")
        return validate_node_name(parts[1])

    @staticmethod
    def ha_discovery(component: str, node: str, object_id: str, *, base: str | None = None) -> str:
        """Home Assistant MQTT discovery: ``homeassistant/<component>/<node>/<object>/config``."""
        return (f"{base or HA_DISCOVERY_BASE}/{_validate_segment(component, 'component')}/{validate_node_name(node)}/"
                f"{_validate_segment(object_id, 'object id')}/config")

    @staticmethod
    def dynsec_control() -> str:
        """Mosquitto's dynamic-security command topic (also served by the embedded broker)."""
        return DYNSEC_CONTROL

    @staticmethod
    def dynsec_response() -> str:
        return f"{DYNSEC_CONTROL}/response"

    # -- scheduler ---------------------------------------------------------
    def scheduler_events(self) -> str:
        """Run events of the scheduler (run, backup, miss, skipped), not retained."""
        return f"{self.fleet}/scheduler/events"


# -- provisioner: roots fixed by the other side's specification -------------
HOMIE_BASE = "homie"
HA_DISCOVERY_BASE = "homeassistant"
DYNSEC_CONTROL = "$CONTROL/dynamic-security/v1"
