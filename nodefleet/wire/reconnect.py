"""The one reconnect policy of every MQTT connection nodefleet holds.

A session (connect, subscribe, serve until the connection ends) runs again
and again: when it ends, with a :class:`~nodefleet.errors.WireError` or by
returning, the failure is logged with the pause to come, and
:class:`~nodefleet.backoff.Backoff` decides the pause (doubling up to its
cap, with jitter, starting small again after a connection that lasted).
Anything else a session raises is a bug and ends the loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from ..backoff import Backoff
from ..errors import ConnectionLost, WireError
from ..logging import get_logger
from .address import BrokerAddress

log = get_logger(__name__)


class Reconnect:
    """Runs a session until cancelled; ``event`` is the log event of a lost connection, ``failed_event`` of
    an attempt that never came up (a session says it came up with :meth:`up`)."""

    def __init__(self, address: BrokerAddress, *, event: str = "mqtt_connection_lost", failed_event: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self.address = address
        self.event = event
        self.failed_event = failed_event or event
        self.backoff = backoff or Backoff()
        self.connections = 0
        """Sessions that came up."""
        self.failures = 0
        """Sessions that ended, each followed by a pause."""
        self.last_error: WireError | None = None
        self._up = False

    def up(self) -> None:
        """Called by the session once the broker accepted it."""
        self._up = True
        self.connections += 1

    async def run(self, session: Callable[[], Awaitable[object]], *, down: Callable[[], None] | None = None) -> NoReturn:
        """Run ``session`` again after each end; ``down`` is called after each one (and on cancellation)."""
        while True:
            self.backoff.attempt()
            self._up = False
            try:
                await session()
                error: WireError = ConnectionLost("the connection closed")
            except WireError as exc:
                error = exc
            finally:
                if down is not None:
                    down()
            self.failures += 1
            self.last_error = error
            log.warning(self.event if self._up else self.failed_event, broker=self.address.url,
                        error=str(error) or type(error).__name__, retry_in=round(self.backoff.next_pause, 2))
            await self.backoff.wait()

