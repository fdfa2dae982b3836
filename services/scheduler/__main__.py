"""``python -m services.scheduler``: run the scheduler from ``NODEFLEET_*`` variables."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from nodefleet.logging import configure

from .app import serve
from .settings import SchedulerSettings


async def _main(settings: SchedulerSettings) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    # SIGTERM (docker stop) ends the service like Ctrl-C: cancelled, cleaned up.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings)


def main() -> None:
    settings = SchedulerSettings()
    configure(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
