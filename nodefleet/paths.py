"""Where nodefleet keeps its per-user data (the embedded database, the lock file)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "nodefleet"
# As root, PostgreSQL runs as its own system user, which must be able to walk to the data;
# under /var/lib that needs no change to the permissions of root's home directory.
ROOT_DATA_DIR = Path("/var/lib") / APP_NAME


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/nodefleet``, else ``~/.local/share/nodefleet`` (``/var/lib/nodefleet`` for root)."""
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    if base and Path(base).is_absolute():
        return Path(base) / APP_NAME
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    return Path.home() / ".local" / "share" / APP_NAME
