"""Runs the ``nodefleet up`` runtime with one service that is slow to stop (for the second Ctrl-C test).

Usage: python stubborn_up.py DATA_DIR DB_PORT BROKER_URL
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nodefleet.up.options import RuntimeOptions
from nodefleet.up.services import ServiceSpec
from nodefleet.up.system import Runtime, run
from nodefleet.settings import CommonSettings


async def stubborn(settings: CommonSettings, *, ready: asyncio.Event) -> None:
    ready.set()
    try:
        await asyncio.sleep(3600)
    finally:
        print("stubborn: stopping slowly", flush=True)
        await asyncio.sleep(60)


def main() -> int:
    data_dir, db_port, broker_url = sys.argv[1:4]
    options = RuntimeOptions(data_dir=Path(data_dir), db_port=int(db_port), broker_url=broker_url)
    spec = ServiceSpec(name="stubborn", serve=stubborn, settings_class=CommonSettings)
    return asyncio.run(run(Runtime(options, services=[spec]), on_ready=lambda info: print("READY", flush=True)))


if __name__ == "__main__":
    sys.exit(main())
