"""The embedded MQTT broker of ``nodefleet up``: amqtt in-process, with our fixes and access control.

    broker = EmbeddedBroker(port=1883, ws_port=8083, users={"telemetry": "s3cret"}, allow_anonymous=False)
    await broker.start()          # BrokerPortInUse if the port is taken
    broker.set_client("ro-1", "pw", publish=[topics.prefix("ro-1") + "/#"], subscribe=topics.node_inbox("ro-1"))
    ...
    await broker.stop()

What differs from amqtt 0.12.1 and why is in docs/embedded-broker.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from amqtt.errors import BrokerError

from nodefleet.embedded import persist
from nodefleet.embedded.amqtt_access import AccessList, TopicAccess
from nodefleet.embedded.amqtt_broker import NodefleetBroker
from nodefleet.embedded.amqtt_retained import RetainedFile
from nodefleet.embedded.dynsec import DynamicSecurity, DynsecBroker, admin_access
from nodefleet.embedded.persist import SessionFile
from nodefleet.errors import StartupError
from nodefleet.logging import get_logger
from nodefleet.tls import TlsFiles

__all__ = ["BrokerPortInUse", "EmbeddedBroker", "EmbeddedBrokerError", "TopicAccess"]

log = get_logger(__name__)


class EmbeddedBrokerError(StartupError):
    """The embedded broker could not start."""


class BrokerPortInUse(EmbeddedBrokerError):
    """Something already listens on the broker's address."""

    def __init__(self, host: str, port: int, option: str = "--mqtt-port") -> None:
        super().__init__(
            f"cannot start the MQTT broker: {host}:{port} is already in use; "
            f"stop whatever listens there or choose another port with {option}"
        )
        self.host = host
        self.port = port


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as the real listener, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise EmbeddedBrokerError(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another address or port (--mqtt-port)"
            ) from exc
    return True


class EmbeddedBroker:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        ws_port: int | None = None,
        users: Mapping[str, str] | None = None,
        acl: Mapping[str, TopicAccess] | None = None,
        allow_anonymous: bool = True,
        retained_file: Path | None = None,
        save_interval: float = 5.0,
        dynsec_admin: tuple[str, str] | None = None,
        dynsec_file: Path | None = None,
        sessions_file: Path | None = None,
        tls_port: int | None = None,
        tls_files: TlsFiles | None = None,
    ) -> None:
        """``users`` maps username to password; ``acl`` limits some of them (the rest get every topic).

        With ``retained_file`` the retained messages survive a restart (written every
        ``save_interval`` seconds when they changed, and on stop). With ``sessions_file`` the persistent
        sessions and their unacknowledged QoS 1 messages survive a restart (nodefleet.embedded.persist): all of
        them a clean one, and a kill -9 what the last ``save_interval``'s write held.
        With ``ws_port`` it also
        speaks MQTT over WebSockets there (for apps and browsers), with the same logins and ACL.
        With ``tls_port`` and ``tls_files`` (nodefleet.tls) it also speaks MQTT over TLS there, with the same
        logins and ACL.
        """
        self.host = host
        self.port = port
        self.ws_port = ws_port
        if (tls_port is None) != (tls_files is None):
            raise EmbeddedBrokerError("a TLS listener needs both its port and its certificate files")
        self.tls_port = tls_port
        self.tls_files = tls_files
        self.access = AccessList(users=users, acl=acl, allow_anonymous=allow_anonymous)
        self._retained_file = RetainedFile(retained_file) if retained_file is not None else None
        self._sessions_file = SessionFile(sessions_file) if sessions_file is not None else None
        self._save_interval = save_interval
        self._saved_changes = 0
        self._saver: asyncio.Task[None] | None = None
        self._sessions_saved = (0, 0)  # sessions, pending messages: the last save's
        self._broker: NodefleetBroker | None = None
        # Dynamic security (the provisioner's $CONTROL/dynamic-security/v1): (admin username, password).
        self._dynsec_admin = dynsec_admin
        self.dynsec: DynamicSecurity | None = None
        if dynsec_admin is not None:
            self.access.set_client(dynsec_admin[0], dynsec_admin[1], **admin_access())
            self.dynsec = DynamicSecurity(set_client=self.set_client, remove_client=self.remove_client,
                                          access=self.access, state_file=dynsec_file)
            self._dynsec_saved = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str | None:
        return None if self.ws_port is None else f"ws://{_bind_address(self.host, self.ws_port)}/"

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:port?ca=...`` of the TLS listener, None without one."""
        if self.tls_port is None or self.tls_files is None:
            return None
        return f"mqtts://{_bind_address(self.host, self.tls_port)}?ca={self.tls_files.ca}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        if self._broker is not None:
            return
        if not _port_is_free(self.host, self.port):
            raise BrokerPortInUse(self.host, self.port)
        if self.ws_port is not None and not _port_is_free(self.host, self.ws_port):
            raise BrokerPortInUse(self.host, self.ws_port, "--ws-port")
        if self.tls_port is not None and not _port_is_free(self.host, self.tls_port):
            raise BrokerPortInUse(self.host, self.tls_port, "--tls-port")
        # amqtt logs every connection at INFO and benign races (a late PUBACK) as warnings; our events say what matters.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        listeners = {"default": {"type": "tcp", "bind": _bind_address(self.host, self.port)}}
        if self.ws_port is not None:
            # amqtt hands WebSocket connections to the same session code: our authentication and ACL apply.
            listeners["ws"] = {"type": "ws", "bind": _bind_address(self.host, self.ws_port)}
        if self.tls_port is not None and self.tls_files is not None:
            # The same session code behind a TLS handshake: our authentication and ACL apply here too.
            listeners["tls"] = {"type": "tcp", "bind": _bind_address(self.host, self.tls_port), "ssl": True,
                                "certfile": str(self.tls_files.cert), "keyfile": str(self.tls_files.key)}
        config = {
            "listeners": listeners,
            "plugins": {},  # access control is ours; no $SYS or entry-point plugins
        }
        retained = self._retained_file.load() if self._retained_file is not None else []
        if self.dynsec is not None and self.dynsec.state_file is not None:
            log.info("dynsec_loaded", clients=self.dynsec.load(), path=str(self.dynsec.state_file))
            self._dynsec_saver = asyncio.create_task(self._save_dynsec_every_second())
        broker_class = DynsecBroker if self.dynsec is not None else NodefleetBroker
        sessions = self._sessions_file.take() if self._sessions_file is not None else []
        broker = broker_class(config, access=self.access, retained=retained, sessions=sessions)
        if self.dynsec is not None:
            broker.dynsec = self.dynsec
        try:
            await broker.start()
        except BrokerError as exc:
            await self._discard(broker)
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                raise BrokerPortInUse(self.host, self.port) from exc
            raise EmbeddedBrokerError(f"the embedded MQTT broker did not start on {self.host}:{self.port}: {exc}") from exc
        self._broker = broker
        if self._retained_file is not None or self._sessions_file is not None:
            self._saver = asyncio.create_task(self._save_every_interval())
        log.info("embedded_broker_started", url=self.url, ws_url=self.ws_url, tls_url=self.tls_url, users=len(self.access.usernames()),
                 allow_anonymous=self.access.allow_anonymous, retained=len(retained), sessions=len(sessions))

    @staticmethod
    async def _discard(broker: NodefleetBroker) -> None:
        for server in broker._servers.values():
            await server.close_instance()
        await broker.plugins_manager.close()

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        if self._saver is not None:  # no interval's save may come after the last one
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if self._sessions_file is not None:
            await persist.quiesce(broker)
            if await self._save_sessions(broker):
                log.info("sessions_saved", sessions=self._sessions_saved[0], pending=self._sessions_saved[1])
        if self._retained_file is not None:
            await self._save(broker)  # before shutdown, which forgets the retained messages
        if self.dynsec is not None and self.dynsec.state_file is not None:
            self._dynsec_saver.cancel()
            await asyncio.gather(self._dynsec_saver, return_exceptions=True)
            await self._save_dynsec()
        await broker.shutdown()
        log.info("embedded_broker_stopped", url=self.url)

    async def _save_dynsec_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._save_dynsec()

    async def _save_dynsec(self) -> None:
        assert self.dynsec is not None
        changes = self.dynsec.changes
        if changes == self._dynsec_saved:
            return
        body = self.dynsec.snapshot()
        try:
            if body is not None:
                await asyncio.to_thread(self.dynsec.write, body)
        except OSError as exc:
            log.error("dynsec_save_failed", path=str(self.dynsec.state_file), error=str(exc))
            return
        self._dynsec_saved = changes

    async def _save_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._save_interval)
            if self._broker is None:
                continue
            if self._retained_file is not None and self._broker.retained_changes != self._saved_changes:
                await self._save(self._broker)
            if self._sessions_file is not None:
                # Also while running, as Mosquitto's autosave: a kill -9 loses at most this interval's messages
                # (and may deliver again what was acknowledged since: at least once).
                await self._save_sessions(self._broker)

    async def _save_sessions(self, broker: NodefleetBroker) -> bool:
        assert self._sessions_file is not None
        sessions = persist.snapshot(broker)
        try:
            await asyncio.to_thread(self._sessions_file.save, sessions)
        except OSError as exc:
            log.error("sessions_save_failed", path=str(self._sessions_file.path), error=str(exc))
            return False
        self._sessions_saved = (len(sessions), sum(len(s.pending) for s in sessions))
        return True

    async def _save(self, broker: NodefleetBroker) -> None:
        assert self._retained_file is not None
        changes, snapshot = broker.retained_changes, broker.retained_snapshot()
        try:
            await asyncio.to_thread(self._retained_file.save, snapshot)
        except OSError as exc:
            log.error("retained_save_failed", path=str(self._retained_file.path), error=str(exc))
            return
        self._saved_changes = changes

    def stats(self) -> dict[str, int]:
        """Counts of refused connections, denied publishes and deliveries, and sessions."""
        if self._broker is None:
            return {}
        sessions = [session for session, _ in self._broker.sessions.values()]
        return {
            **self._broker.counters,
            "sessions": len(sessions),
            "connected": sum(1 for session in sessions if session.transitions.is_connected()),
            "inflight": sum(len(session.inflight_out) for session in sessions),
            "queued": sum(session.retained_messages.qsize() for session in sessions),
            "retained": len(self._broker.retained_messages),
        }

    # -- run-time access control (the provisioner's seam) -------------------

    def set_client(self, username: str, password: str, *, publish: Iterable[str], subscribe: Iterable[str]) -> None:
        """Add or replace a client's credentials and the topic filters it may publish to and subscribe to."""
        self.access.set_client(username, password, publish=publish, subscribe=subscribe)

    def remove_client(self, username: str) -> bool:
        """Forget a client and close its open connections; False if it was unknown."""
        known = self.access.remove_client(username)
        if self._broker is not None:
            self._broker.disconnect_user(username)
        return known

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
