"""The baselines: a bare paho subscriber (QoS 1, acknowledged on receipt) that only counts, and paho with
manual acknowledgements after each batch (what holding acks until commit costs a general client)."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt


def run_baseline(host: str, port: int, topic_filter: str, expected: int, ready, results, idle_timeout: float = 15.0) -> None:
    """Entry point of the baseline process: count ``expected`` messages, report first/last receipt times."""
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_message(client, userdata, message) -> None:
        now = time.time()
        if not state["count"]:
            state["first"] = now
        state["count"] += 1
        state["last"] = now

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(topic_filter, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        ready.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-{time.time_ns()}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=60)
    last_change = time.monotonic()
    seen = 0
    while state["count"] < expected:
        client.loop(timeout=0.1)
        if state["count"] != seen:
            seen, last_change = state["count"], time.monotonic()
        elif time.monotonic() - last_change > (idle_timeout if seen else 60):
            break
    client.disconnect()
    results.put(state)


def run_manual_ack_baseline(host: str, port: int, topic_filter: str, expected: int, ready, results,
                            idle_timeout: float = 15.0, batch_size: int = 5000, flush_interval: float = 0.05,
                            idle_gap: float = 0.01) -> None:
    """The second baseline: paho with ``manual_ack=True`` acknowledging each batch after its "commit".

    Batches close as the service's do (``batch_size`` messages, ``flush_interval`` s, or ``idle_gap`` s
    without a message); the commit is the same work as the first baseline's (counting), then one
    ``Client.ack`` per message.  ``last`` is when the last batch was acknowledged.
    """
    state = {"count": 0, "first": 0.0, "last": 0.0}
    batch: list[int] = []
    heard = [0.0]

    def on_message(client, userdata, message) -> None:
        now = time.time()
        if not state["count"]:
            state["first"] = now
        state["count"] += 1
        heard[0] = now
        batch.append(message.mid)

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(topic_filter, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        ready.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-ack-{time.time_ns()}",
                         protocol=mqtt.MQTTv311, clean_session=True, manual_ack=True)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=60)
    last_change = time.monotonic()
    seen = 0
    opened = 0.0
    while state["count"] < expected or batch:
        client.loop(timeout=idle_gap)
        now = time.time()
        if batch and not opened:
            opened = now
        if batch and (len(batch) >= batch_size or now - opened >= flush_interval or now - heard[0] >= idle_gap):
            for mid in batch:  # committed: acknowledge the batch
                client.ack(mid, 1)
            batch.clear()
            opened = 0.0
            state["last"] = time.time()
        if state["count"] != seen:
            seen, last_change = state["count"], time.monotonic()
        elif time.monotonic() - last_change > (idle_timeout if seen else 60):
            break
    client.loop(timeout=0.1)  # let the last acknowledgements out
    client.disconnect()
    results.put(state)
