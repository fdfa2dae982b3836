"""One ``nodefleet up`` per data directory: a lock file that dies with the process that holds it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from .errors import EXIT_USAGE, StartupError

LOCK_FILE = "nodefleet-up.lock"


class DataDirLock:
    """One `nodefleet up` per data directory; the lock dies with the process that holds it."""

    def __init__(self, file: IO[str]) -> None:
        self._file: IO[str] | None = file

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            file = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise StartupError(f"cannot use data directory {data_dir}: {exc}; choose another with --data-dir",
                               exit_code=EXIT_USAGE) from exc
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            file.seek(0)
            holder = file.read().strip() or "?"
            file.close()
            raise StartupError(
                f"another `nodefleet up` (pid {holder}) is using the data directory {data_dir}: "
                f"stop it, or choose another directory with --data-dir",
                exit_code=EXIT_USAGE,
            ) from exc
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        return cls(file)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
