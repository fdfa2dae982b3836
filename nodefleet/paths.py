"""Where nodefleet keeps its per-user data (the embedded database, lock file)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "nodefleet"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/nodefleet``, else ``~/.local/share/nodefleet``."""
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / APP_NAME
