"""The users and topic ACL of the secured brokers the contract tests start (Mosquitto and amqtt alike).

A service user may use every topic; each node user may publish only its own
status, info, state, telemetry, log, acks and OTA want and progress
(``Topics.node_outbox``) and subscribe only to what is addressed to it
(``Topics.node_inbox``: its commands, config, schedule and OTA), the shape the
provisioner gives real nodes.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from nodefleet.contracts import Topics
from nodefleet.embedded.broker import TopicAccess

PREFIX = "secure"
SERVICE = ("service", "service-pw")
NODES = {"node-a": "node-a-pw", "node-b": "node-b-pw"}
RECEIVER_NODES = {"node-r": "node-r-pw"}
"""A node that subscribes as the firmware does (the OTA receiver's filters)."""


def node_access(node: str) -> TopicAccess:
    topics = Topics(root=PREFIX)
    return TopicAccess(publish=tuple(topics.node_outbox(node)), subscribe=tuple(topics.node_inbox(node)))


def users() -> dict[str, str]:
    return {SERVICE[0]: SERVICE[1], **NODES, **RECEIVER_NODES}


def acl() -> dict[str, TopicAccess]:
    return {node: node_access(node) for node in {**NODES, **RECEIVER_NODES}}


def mosquitto_config() -> str:
    """Extra Mosquitto config lines: a password file made by mosquitto_passwd and the same ACL."""
    folder = Path(tempfile.mkdtemp(prefix="nodefleet-mosquitto-auth-"))
    # Mosquitto started as root reads these after dropping to its own user.
    folder.chmod(0o755)
    password_file = folder / "passwords"
    for index, (username, password) in enumerate(users().items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(password_file), username, password], check=True)
    lines = [f"user {SERVICE[0]}", "topic readwrite #", ""]
    for node, access in acl().items():
        lines.append(f"user {node}")
        lines += [f"topic write {f}" for f in access.publish]
        lines += [f"topic read {f}" for f in access.subscribe]
        lines.append("")
    acl_file = folder / "acl"
    acl_file.write_text("\n".join(lines))
    for path in (password_file, acl_file):
        path.chmod(0o644)
    return f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n"
