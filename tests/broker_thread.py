"""Run the embedded amqtt broker on its own event loop in a thread, for tests of any kind.

Sync and async tests alike reach it over loopback TCP, as they reach
Mosquitto; the broker's loop is independent of the test's loop.
Setting ``NODEFLEET_AMQTT_UNPATCHED=1`` starts plain amqtt 0.12.1 instead of
our embedding (open access only), to show the defects docs/embedded-broker.md lists.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

from nodefleet.embedded.broker import EmbeddedBroker
from nodefleet.embedded.mosquitto import free_port

UNPATCHED = os.environ.get("NODEFLEET_AMQTT_UNPATCHED") == "1"


class _PlainAmqtt:
    """amqtt 0.12.1 as shipped, anonymous access, no fixes."""

    def __init__(self, *, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        self._broker = Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await self._broker.start()

    async def stop(self) -> None:
        await self._broker.shutdown()


class BrokerThread:
    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, **options: Any) -> None:
        self.host = host
        self.port = port or free_port(host)
        if UNPATCHED and not options:
            self.broker: Any = _PlainAmqtt(host=self.host, port=self.port)
        else:
            self.broker = EmbeddedBroker(host=self.host, port=self.port, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"amqtt-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> BrokerThread:
        self._thread.start()
        try:
            self.run(self.broker.start())
        except BaseException:
            self._end_loop()
            raise
        return self

    def run(self, coro: Any, timeout: float = 15.0) -> Any:
        """Run a coroutine on the broker's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a plain function on the broker's loop (its state is not thread-safe)."""

        async def _call() -> Any:
            return func(*args, **kwargs)

        return self.run(_call())

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.run(self.broker.stop())
            finally:
                self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
