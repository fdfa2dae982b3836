"""Fixtures of the CLI tests: launch ``nodefleet up`` and always clean up after it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodefleet.embedded.postgres import EmbeddedPostgres

from .helpers import UpProcess, cli_env, postmaster_pid, process_alive


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An empty data directory for `nodefleet up`.

    Not under pytest's tmp_path: pytest resets its base directory to mode 0700
    whenever a run starts, which would lock PostgreSQL's own user out mid-test.
    """
    base = Path(tempfile.mkdtemp(prefix="nodefleet-cli-"))
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def launch_up(tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    """Start ``nodefleet up`` with arguments; at teardown kill it and any PostgreSQL it left."""
    started: list[tuple[UpProcess, Path]] = []

    def launch(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> UpProcess:
        up = UpProcess([*args, "--data-dir", str(data_dir)], env=env or cli_env(), workdir=tmp_path / "logs")
        started.append((up, data_dir))
        return up

    yield launch
    for up, data_dir in started:
        up.kill()
        pid = postmaster_pid(data_dir)
        if pid is not None and process_alive(pid):
            EmbeddedPostgres(data_dir / "postgres", port=0).stop("immediate")
