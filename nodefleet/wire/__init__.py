"""Everything on the MQTT wire (MQTT 3.1.1), behind one seam.

============================  ==========================================================
``address``                   :class:`BrokerAddress`: ``mqtt://[user:password@]host[:port]``
``client``                    :class:`Client`: the general client of service sessions, the CLI
                              and the simulator (aiomqtt below it; the only module that imports it)
``packets``                   the few MQTT 3.1.1 packets our own clients encode and decode
``link``                      :class:`~nodefleet.wire.link.Link`: one connection of our own
                              clients: connect, CONNACK, keepalive
``reconnect``                 :class:`Reconnect`: the one reconnect policy (``Backoff``) every
                              connection uses, our own clients and ``Client`` sessions alike
``subscriber``                :class:`AckingSubscriber`: acknowledges QoS 1 only after commit;
                              :class:`Batches`, the shape every ingest subscriber has
``jetstream``                 :class:`~nodefleet.wire.jetstream.JetStreamSubscriber`: the same from a
                              NATS cluster, through JetStream durable consumers (nats-py)
``engine``                    :func:`ingest_subscriber`: one of the two, as ``NODEFLEET_ENGINE_URL`` says
``publisher``                 :class:`Publisher`: a burst of publishes in one write
============================  ==========================================================

Errors leave this package as :mod:`nodefleet.errors`' ``WireError`` branch
(``BrokerUnavailable``, ``ConnectionLost``, ``BrokerRefused``,
``ProtocolError``, ``NotSent``), never as aiomqtt's, nats-py's or the socket's.
"""

from ..errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConnectionLost,
    NotSent,
    ProtocolError,
    WireError,
)
from .address import BrokerAddress, BrokerUrlError
from .client import Client, Message, Will
from .engine import ingest_subscriber
from .publisher import Publisher
from .reconnect import Reconnect
from .subscriber import AckingSubscriber, Batches, Inbound

__all__ = [
    "AckingSubscriber",
    "Batches",
    "BrokerAddress",
    "BrokerRefused",
    "BrokerUnavailable",
    "BrokerUrlError",
    "Client",
    "ConnectionLost",
    "Inbound",
    "Message",
    "NotSent",
    "ProtocolError",
    "Publisher",
    "Reconnect",
    "WireError",
    "Will",
    "ingest_subscriber",
]
