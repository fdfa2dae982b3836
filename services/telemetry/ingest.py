"""The ingest pipeline: receive a batch, decode it, commit it, then acknowledge it.

Two stages overlap: while one batch is being written (PostgreSQL works on
another core), the next is decoded.  Acknowledgements go out only after the
commit of the batch that holds the message, so a crash at any point leaves
every unacknowledged message with the broker.  Rejected messages are
acknowledged with their batch: redelivering them would not make them valid.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nodefleet.fleet import ErrorReporter
from nodefleet.logging import get_logger
from nodefleet.wire import Batches, Inbound

from .decode import Decoded, Decoder, Rejected
from .writer import BatchWriter

log = get_logger(__name__)


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    batches: int = 0
    last_commit: float = 0.0
    by_code: dict[str, int] = field(default_factory=dict)


class Ingest:
    def __init__(
        self,
        subscriber: Batches,
        decoder: Decoder,
        writer: BatchWriter,
        errors: ErrorReporter,
        *,
        batch_size: int,
        flush_interval: float,
    ) -> None:
        self.subscriber = subscriber
        self.decoder = decoder
        self.writer = writer
        self.errors = errors
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stats = IngestStats()
        # One decoded batch may wait while another is written: memory stays bounded.
        self._decoded: asyncio.Queue[tuple[list[Inbound], Decoded]] = asyncio.Queue(maxsize=1)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive())
            group.create_task(self._commit())
            group.create_task(self._report_stats())

    async def _receive(self) -> None:
        while True:
            batch = await self.subscriber.batch(self.batch_size, self.flush_interval)
            decoded = self.decoder.decode(batch)
            self.stats.received += len(batch)
            self._reject(decoded.rejected)
            await self._decoded.put((batch, decoded))

    async def _commit(self) -> None:
        while True:
            batch, decoded = await self._decoded.get()
            self._reject(await self.writer.write(decoded))
            self.subscriber.ack(batch)
            self.stats.stored += len(decoded.telemetry)
            self.stats.batches += 1
            self.stats.last_commit = time.time()

    def _reject(self, rejected: list[Rejected]) -> None:
        for r in rejected:
            self.stats.rejected += 1
            self.stats.by_code[r.code] = self.stats.by_code.get(r.code, 0) + 1
            if r.reported:
                self.errors.report(r.code, r.detail, topic=r.topic, node=r.node)

    async def _report_stats(self, every: float = 30.0) -> None:
        while True:
            await asyncio.sleep(every)
            s = self.stats
            log.info("ingest_stats", received=s.received, stored=s.stored, rejected=s.rejected, batches=s.batches,
                     buffered=self.subscriber.buffered, pauses=self.subscriber.pauses, db_failures=self.writer.failures)
