"""The baseline: a bare paho subscriber (QoS 1, acknowledged on receipt) that only counts."""

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
