"""Upgrading the NATS engine from one durable consumer per group to one per filter leaks nothing.

Earlier releases read ``$MQTT_msgs`` through one durable named like the group.
The stream keeps a message until every consumer it matches acknowledged it,
so that old consumer, read by no one after the upgrade, would hold all node
traffic on the cluster's disks for ever.  The subscriber deletes it when it
binds its own consumers.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from nodefleet.contracts import NodeTopic, Topics
from nodefleet.embedded.nats import NatsCluster
from nodefleet.wire import BrokerAddress, Client
from nodefleet.wire.jetstream import MQTT_PREFIX, MQTT_STREAM, JetStreamSubscriber, durable_name, servers_of

pytestmark = pytest.mark.timeout(60)


async def test_the_old_single_consumer_is_deleted_and_the_stream_drains(topics: Topics):
    group = f"ingest-{uuid.uuid4().hex[:6]}"
    telemetry = topics.all_nodes(NodeTopic.TELEMETRY)
    with NatsCluster(3) as cluster:
        # An MQTT client makes the MQTT layer create its stream; then the consumer an earlier release made.
        async with Client(BrokerAddress.parse(cluster.mqtt_url(0)), client_id=f"old-{group}") as client:
            await client.publish(topics.telemetry("warmup"), b"{}", qos=1)
            nc = await nats.connect(servers_of(cluster.url))
            js = nc.jetstream()
            await js.add_consumer(MQTT_STREAM, ConsumerConfig(
                durable_name=group, filter_subject=MQTT_PREFIX + ">", ack_policy=AckPolicy.EXPLICIT))

            subscriber = JetStreamSubscriber(cluster.url, consumer=group, filters=[telemetry],
                                             ack_wait=5, connect_timeout=3)
            task = asyncio.create_task(subscriber.run())
            try:
                await asyncio.wait_for(subscriber.subscribed.wait(), 20)
                names = {info.name for info in await js.consumers_info(MQTT_STREAM)}
                assert group not in names, "the old consumer is still there"
                assert durable_name(group, telemetry) in names

                for seq in range(20):
                    await client.publish(topics.telemetry("n1"), f'{{"seq": {seq}}}'.encode(), qos=1)
                got = []
                while len(got) < 20:
                    batch = await asyncio.wait_for(subscriber.batch(100, 0.05), 10)
                    got.extend(m for m in batch if m.topic.endswith("/n1/telemetry"))
                    subscriber.ack(batch)
                # Acknowledged by the only consumer that matches them: the stream lets them go.
                for _ in range(100):
                    state = (await js.stream_info(MQTT_STREAM)).state
                    if state.messages == 0:
                        break
                    await asyncio.sleep(0.05)
                assert state.messages == 0, f"{state.messages} messages still held by the stream"
            finally:
                task.cancel()
                await asyncio.wait([task], timeout=5)
                await nc.close()
