"""The contract between services, nodes and clients: topics and payload models.

The node topic table (``node_topics.NODE_TOPICS``) and the fleet request table
(``requests.REQUESTS``) say which model each topic and request carries; the
AsyncAPI document (docs/asyncapi.json, ``python -m nodefleet.contracts.asyncapi``) is generated from them.
"""

from .commands import *  # noqa: F403
from .commands import __all__ as _commands
from .envelope import *  # noqa: F403
from .envelope import __all__ as _envelope
from .node_topics import COMMAND_PAYLOADS, NODE_PAYLOADS, NODE_TOPICS, NodeTopicSpec
from .payloads import *  # noqa: F403
from .payloads import __all__ as _payloads
from .topics import OFFLINE, ONLINE, SLEEPING, Command, NodeKind, NodeTopic, OtaTopic, ParsedTopic, Topics, TopicError, validate_node_name

__all__ = [*_payloads, *_commands, *_envelope, "COMMAND_PAYLOADS", "NODE_PAYLOADS", "NODE_TOPICS", "NodeTopicSpec", "OFFLINE", "ONLINE", "SLEEPING",
           "Command", "NodeKind", "NodeTopic", "OtaTopic", "ParsedTopic", "Topics", "TopicError", "validate_node_name"]
