"""The broker of one ``nodefleet up``: an external one probed once, or the embedded amqtt started with its logins.

Retained config, schedules and states are kept in ``<data dir>/retained.json``
and the services' persistent sessions with their unacknowledged QoS 1 messages in
``<data dir>/sessions.json``, so they survive a restart; who may log in is :mod:`.logins`.
"""

from __future__ import annotations

import asyncio
import os

from .. import wire
from ..embedded.broker import BrokerPortInUse, EmbeddedBroker
from ..embedded.postgres import port_is_free
from ..logging import get_logger
from ..paths import CredentialsFileError
from ..tls import TlsFiles, broker_hosts, ensure_authority
from .errors import EXIT_USAGE, StartupError
from .logins import BrokerAccess
from .options import RuntimeOptions
from .ports import optional_port

log = get_logger(__name__)

PROBE_TIMEOUT = 5.0
NODE_BROKER_HOST_VARIABLE = "NODEFLEET_PROVISIONER_BROKER_HOST"


async def probe_broker(url: str) -> None:
    """Connect once to an external broker, so a wrong --broker fails now and clearly."""
    try:
        address = wire.BrokerAddress.parse(url)
    except wire.BrokerUrlError as exc:
        raise StartupError(str(exc), exit_code=EXIT_USAGE) from exc
    probe = wire.Client(address, client_id=f"nodefleet-up-probe-{os.getpid()}")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            async with probe:
                pass
    except (wire.WireError, TimeoutError) as exc:
        raise StartupError(f"cannot reach the broker at {address.url} ({exc}): check --broker, or leave it out "
                           f"to run the embedded one") from exc


def tls_port(host: str, port: int) -> int | None:
    """The embedded broker's MQTT-over-TLS port (see ``optional_port``)."""
    return optional_port(host, port, taken=(
        f"TLS port {port} on {host} (MQTT over TLS) is already taken (another `nodefleet up`, or another "
        f"broker?): choose another with --tls-port (0 picks a free one, -1 turns it off)"))


def ws_port(host: str, port: int) -> int | None:
    """The embedded broker's MQTT-over-WebSockets port (see ``optional_port``)."""
    return optional_port(host, port, taken=(
        f"WebSocket port {port} on {host} (MQTT over WebSockets) is already taken (another `nodefleet up`, "
        f"or another broker?): choose another with --ws-port (0 picks a free one, -1 turns it off)"))


class Broker:
    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.access = BrokerAccess(embedded=options.embedded_broker)
        self._broker: EmbeddedBroker | None = None
        self._ws_port: int | None = None
        self._tls_port: int | None = None
        self.ws_url: str | None = None
        self.tls_url: str | None = None
        self.tls_files: TlsFiles | None = None

    def check_port(self) -> None:
        """Refuse to start anything if the embedded broker's port (or its WebSocket port) is taken."""
        host, port = self.options.mqtt_host, self.options.mqtt_port
        if self.options.embedded_broker and not port_is_free(host, port):
            raise StartupError(
                f"MQTT port {port} on {host} is already taken (another broker, or another "
                f"`nodefleet up`?): choose another with --mqtt-port, or use that broker with "
                f"--broker mqtt://{host}:{port}",
                exit_code=EXIT_USAGE,
            )
        if self.options.embedded_broker:
            self._ws_port = ws_port(host, self.options.ws_port)
            self._tls_port = tls_port(host, self.options.tls_port)
        if self.options.node_tls and (not self.options.embedded_broker or self.options.tls_port < 0):
            raise StartupError("--node-tls hands nodes the embedded broker's TLS port: it needs that port "
                               "(--tls-port, not -1) and no --broker (for your own broker set "
                               "NODEFLEET_PROVISIONER_BROKER_CA and NODEFLEET_PROVISIONER_BROKER_PORT)",
                               exit_code=EXIT_USAGE)

    async def start(self, services: list[str]) -> str:
        """The broker URL (without a login); the embedded broker is started with a login for each of ``services``."""
        options = self.options
        if not options.embedded_broker:
            assert options.broker_url is not None
            await probe_broker(options.broker_url)
            return options.broker_url
        try:
            if options.secure:
                self.access = BrokerAccess.secured(options.data_dir, services, host=options.mqtt_host,
                                                   port=options.mqtt_port)
            else:
                self.access = BrokerAccess.open(options.data_dir)
        except (CredentialsFileError, OSError) as exc:
            raise StartupError(f"cannot keep the broker credentials in {options.data_dir}: {exc}") from exc
        if self._tls_port is not None:
            # The names nodes are given (the provisioner's broker host, when set) go into the certificate.
            given = os.environ.get(NODE_BROKER_HOST_VARIABLE, "").strip()
            self.tls_files = await asyncio.to_thread(ensure_authority, options.data_dir,
                                                     broker_hosts(options.mqtt_host, [given] if given else []))
        try:
            # Hashing the users' passwords is slow on purpose: off the event loop.
            broker = await asyncio.to_thread(
                EmbeddedBroker, host=options.mqtt_host, port=options.mqtt_port, ws_port=self._ws_port,
                tls_port=self._tls_port, tls_files=self.tls_files,
                retained_file=options.data_dir / "retained.json",
                sessions_file=options.data_dir / "sessions.json",
                **self.access.broker_options(options.data_dir),
            )
            await broker.start()
        except BrokerPortInUse as exc:
            raise StartupError(str(exc), exit_code=EXIT_USAGE) from exc
        except Exception as exc:
            raise StartupError(f"the embedded MQTT broker did not start: {exc}; or use --broker mqtt://host:port") from exc
        self._broker = broker
        self.ws_url = broker.ws_url
        self.tls_url = broker.tls_url
        log.info("broker_started", url=broker.url, ws_url=broker.ws_url, tls_url=broker.tls_url,
                 secured=options.secure)
        return broker.url

    def node_settings(self) -> dict[str, object]:
        """The provisioner's settings that hand nodes the TLS port and the authority (with ``node_tls``)."""
        if not self.options.node_tls or self._tls_port is None or self.tls_files is None:
            return {}
        return {"broker_port": self._tls_port, "broker_ca": self.tls_files.ca}

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.wait_for(broker.stop(), 10)
        except Exception as exc:  # stopping must go on to the database
            log.error("broker_stop_failed", error=repr(exc))
            return
        try:
            self.access.stopped()
        except OSError as exc:
            log.warning("credentials_update_failed", error=str(exc))
        log.info("broker_stopped")
