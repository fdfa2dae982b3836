"""What every ``python -m services.<name>`` does: settings from the environment, logging, run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError

from .logging import configure
from .settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)


async def _until_stopped(serve: Callable[[S], Awaitable[None]], settings: S) -> None:
    task = asyncio.current_task()
    # SIGTERM (docker stop) ends the service like Ctrl-C: cancelled, cleaned up.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings)


def run_service(settings_class: type[S], serve: Callable[[S], Awaitable[None]]) -> None:
    """Build the settings once, configure logging, and run ``serve`` until SIGTERM or Ctrl-C."""
    try:
        settings = settings_class()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        sys.exit(f"invalid NODEFLEET_* settings: {problems}")
    configure(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_stopped(serve, settings))
