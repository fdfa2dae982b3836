"""``python -m services.provisioner``: run the provisioner from ``NODEFLEET_*`` variables."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from nodefleet.logging import configure

from .app import serve
from .settings import ProvisionerSettings


async def _main(settings: ProvisionerSettings) -> None:
    task = asyncio.current_task()
    # SIGTERM (docker stop) ends the service like Ctrl-C: cancelled, cleaned up.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings)


def main() -> None:
    settings = ProvisionerSettings()
    configure(settings.log_format, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
