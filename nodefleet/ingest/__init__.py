"""Fast MQTT 3.1.1 ingest plumbing: a subscriber that acknowledges only when told.

General MQTT clients (paho, aiomqtt) send PUBACK as soon as a QoS 1 message
arrives, so a crash between receipt and commit loses a message the broker
already forgot.  :class:`AckingSubscriber` hands messages out in batches and
sends PUBACK only for the messages the caller says are safely stored; when
its bounded buffer is full it stops reading the socket, so the broker keeps
the rest queued in the persistent session.
"""

from ..mqtt_packets import ProtocolError
from .subscriber import AckingSubscriber, ConnectionRefused, Inbound

__all__ = ["AckingSubscriber", "ConnectionRefused", "Inbound", "ProtocolError"]
