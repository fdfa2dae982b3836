"""The contract between services, nodes and clients: topics and payload models."""

from .payloads import *  # noqa: F403
from .payloads import __all__ as _payloads
from .topics import OFFLINE, ONLINE, Command, NodeTopic, OtaTopic, ParsedTopic, Topics, TopicError, validate_node_name

__all__ = [*_payloads, "OFFLINE", "ONLINE", "Command", "NodeTopic", "OtaTopic", "ParsedTopic", "Topics", "TopicError", "validate_node_name"]
