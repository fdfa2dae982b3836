"""Run the system's Mosquitto as a child process on a loopback port.

Used by tests and benchmarks (the reference broker beside the embedded
amqtt).  The config raises two limits that matter for services holding QoS 1
acknowledgements until their work is committed: ``max_inflight_messages``
(default 20 per client) and ``max_queued_messages`` (default 1000 per
persistent session, beyond which Mosquitto drops messages for an offline
client).  ``deploy/mosquitto/mosquitto.conf`` sets the same.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from nodefleet.errors import StartupError
from nodefleet.processes import stop_process
from nodefleet.tls import TlsFiles

INFLIGHT = 10_000
QUEUED = 1_000_000


class MosquittoError(StartupError):
    """Mosquitto is missing or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Mosquitto:
    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1", extra_config: str = "",
                 tls: TlsFiles | None = None, tls_port: int | None = None) -> None:
        """``tls``: also a TLS listener (on ``tls_port``, a free one by default) with these files."""
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise MosquittoError("mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.extra_config = extra_config
        self.tls = tls
        self.tls_port = (tls_port or free_port(host)) if tls is not None else None
        self._dir = Path(tempfile.mkdtemp(prefix="nodefleet-mosquitto-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:port?ca=...`` of the TLS listener, None without one."""
        return None if self.tls is None else f"mqtts://{self.host}:{self.tls_port}?ca={self.tls.ca}"

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        # Started as root, Mosquitto reads its files as the mosquitto user: copies in its own directory, readable.
        self._dir.chmod(0o755)
        names = []
        for path in (self.tls.ca, self.tls.cert, self.tls.key):
            copy = self._dir / f"tls-{path.name}"
            shutil.copyfile(path, copy)
            copy.chmod(0o644)
            names.append(copy)
        return f"listener {self.tls_port} {self.host}\ncafile {names[0]}\ncertfile {names[1]}\nkeyfile {names[2]}\n"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    @property
    def log_file(self) -> Path:
        return self._dir / "mosquitto.log"

    def config(self) -> str:
        return (
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            f"max_inflight_messages {INFLIGHT}\n"
            f"max_queued_messages {QUEUED}\n"
            "max_queued_bytes 0\n"
            "persistence false\n"
            # Without it every small reply waits for Nagle's delayed ACK (about 40 ms).
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            + self.extra_config
            + self._tls_config()
        )

    def start(self, timeout: float = 10.0) -> None:
        conf = self._dir / "mosquitto.conf"
        conf.write_text(self.config())
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MosquittoError(f"mosquitto exited at start: {self.log_file.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise MosquittoError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout:g} s")

    def stop(self) -> None:
        stop_process(self._process, 5)
        self._process = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
