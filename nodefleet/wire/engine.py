"""Which engine carries the ingest stream: one MQTT broker, or a NATS cluster (``NODEFLEET_ENGINE_URL``).

A service asks for its ingest subscriber here and gets one of the same shape
(:class:`~nodefleet.wire.subscriber.Batches`: ``run``, ``batch``, ``ack``,
``disconnect``) either way, so nothing above the wire package knows which
engine it runs on.
"""

from __future__ import annotations

from nodefleet.contracts import Topics

from .address import BrokerAddress
from .subscriber import AckingSubscriber, Batches


def ingest_subscriber(
    mqtt_url: str,
    engine_url: str | None,
    *,
    client_id: str,
    group: str | None,
    filters: list[str],
    keepalive: int = 30,
    buffer_limit: int = 20_000,
    ack_wait: float = 30.0,
) -> Batches:
    """``filters`` are plain MQTT filters; instances with the same ``group`` split the stream.

    On MQTT a group becomes ``$share/<group>/`` subscriptions of a persistent session named
    ``client_id``; on NATS (``engine_url`` ``nats://...``) the group (else the client id) names
    the durable consumers (one per filter) the instances share.
    """
    if engine_url:
        from .jetstream import JetStreamSubscriber  # nats-py only where the cluster engine is used

        return JetStreamSubscriber(engine_url, consumer=group or client_id, filters=filters,
                                   buffer_limit=buffer_limit, ack_wait=ack_wait)
    if group:
        filters = [Topics.shared(group, f) for f in filters]
    return AckingSubscriber(BrokerAddress.parse(mqtt_url), client_id=client_id, filters=filters,
                            keepalive=keepalive, buffer_limit=buffer_limit)
