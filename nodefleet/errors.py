"""Every exception nodefleet raises, under one root.

Foreign exceptions (aiomqtt's, OS errors, asyncpg's) are translated into
these where they enter: the broker's in :mod:`nodefleet.wire`, the
database's in each service's storage module.  A branch says what kind of
failure it is, so a boundary catches a branch, not a list of leaves.
Services subclass the branches for their own cases; the leaves below name
where they live.  ``tests/test_errors.py`` fails when a class is missing here
or does not derive from :class:`NodefleetError`::

    NodefleetError
    ├── WireError                    the broker link (nodefleet.wire)
    │   ├── BrokerUnavailable        the broker cannot be reached, or stopped answering
    │   │   └── ConnectionLost       an open connection closed
    │   ├── BrokerRefused            the broker refused the login or a subscription (.code)
    │   ├── ProtocolError            bytes that are not MQTT 3.1.1 as we speak it
    │   ├── NotSent                  publishes not handed to the broker, or not acknowledged
    │   └── CredentialError          (provisioner) the broker did not take a credential change
    ├── StorageError                 PostgreSQL and files on disk
    │   ├── StorageUnavailable       the database cannot be reached now; retry later
    │   ├── MigrationError           (nodefleet.migrations) a migration is malformed or failed
    │   ├── CredentialsFileError     (nodefleet.paths) the stored logins cannot be read
    │   └── OtaStoreError            (ota.store) a kept release that no longer matches its manifest
    ├── InputError (ValueError)      input that breaks the contract; the message says what is wrong
    │   ├── TopicError               (contracts.topics) a topic or node name that does not parse
    │   ├── FrameError               (contracts.ota) a malformed OTA block frame
    │   ├── BrokerUrlError           (nodefleet.wire) a broker URL nodefleet cannot use
    │   ├── ReleaseError             (nodefleet.ota_release) a release file that is not valid
    │   ├── AccessError              (embedded.amqtt_access) a bad access-list entry
    │   ├── CommandError             (embedded.dynsec) a dynamic-security command refused
    │   ├── BadSchedule              (contracts.scheduling) a schedule the node's engine refuses
    │   ├── RegistryError            (provisioner) input the registry refuses
    │   │   ├── Conflict             a taken name, a bound chip id, a revoked device
    │   │   └── UnknownZone          not an IANA time zone
    │   ├── NotFound (LookupError)   (provisioner) no such home, device or provisioning id
    │   ├── ReleaseConflict          (ota.store) another release is kept under this version or image
    │   ├── UnknownRelease (LookupError)  (ota.store) no release with this version is kept
    │   ├── RolloutError             (ota.rollout) a rollout that cannot be planned, or a change it cannot take
    │   │   └── NotATarget           progress from a node the rollout does not update
    │   ├── StreamError              (ota.stream) a want that does not fit the stream
    │   ├── NoMasterKey              (ota.engine) no OTA master key is set: nothing can be offered
    │   ├── UnknownRollout (LookupError)  (ota.engine) no rollout with this id
    │   └── TargetError              (ota.directory) a rollout's targets cannot be found
    ├── RequestError                 a request answered with an error, or not answered in time
    │   ├── HttpError                (provisioner) an HTTP request answered with an error status
    │   └── RegistrationError        (nodefleet.sim_registration) simulated nodes not registered
    ├── StartupError                 a part could not start (.exit_code: 2 usage, 1 otherwise)
    │   ├── StartupInterrupted       (nodefleet.up.errors) a stop was requested while starting (exit 0)
    │   ├── ServiceLoadError         (nodefleet.up.services) a service package breaks the service seam
    │   ├── ServiceStartError        (nodefleet.up.services) a service failed or was not ready in time
    │   ├── EmbeddedBrokerError      (embedded.broker) the embedded broker did not start
    │   │   └── BrokerPortInUse      its port is taken
    │   ├── PostgresError            (embedded.postgres) the embedded PostgreSQL did not start
    │   ├── MosquittoError           (embedded.mosquitto) Mosquitto is missing or did not start
    │   ├── NatsError                (embedded.nats) nats-server is missing or did not start
    │   ├── HttpEdgeError            (provisioner) the HTTP edge cannot listen
    │   ├── TlsError                 (nodefleet.tls) the TLS authority and certificates cannot be made or used
    │   └── SimError                 (nodefleet.sim) a simulated node cannot run
    └── CliError                     (cli.errors; a click exception) shown as "Error: ...", exit 1
        └── StepError                (cli.provision) a provisioning step failed

The near-duplicates of earlier versions are one class each now:
``ConnectionRefused`` (ingest) and ``ConnectRefused`` (scheduler) are
:class:`BrokerRefused`; ``StorageUnavailable`` (telemetry) and
``StoreUnavailable`` (scheduler, ota store) are :class:`StorageUnavailable`.
"""

from __future__ import annotations

EXIT_FAILED = 1

# CONNACK return codes of MQTT 3.1.1 (paho 2 reports the MQTT 5 numbers 128-135 for some).
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
_MQTT5_CONNACK = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


class NodefleetError(Exception):
    """The root: anything nodefleet raises on purpose."""


# -- the broker link -------------------------------------------------------------


class WireError(NodefleetError):
    """Something on the MQTT link failed; a reconnect loop logs it and tries again."""


class BrokerUnavailable(WireError):
    """The broker cannot be reached, or did not answer in time."""


class ConnectionLost(BrokerUnavailable):
    """A connection that was open closed (or the broker fell silent on it)."""


class BrokerRefused(WireError):
    """The broker answered CONNECT with a refusal (``code``, 3.1.1 numbering), or refused a subscription."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def connack(cls, code: int) -> BrokerRefused:
        code = _MQTT5_CONNACK.get(code, code)
        return cls(f"broker refused the connection: {CONNACK_REASONS.get(code, f'code {code}')}", code=code)

    @property
    def bad_login(self) -> bool:
        """The user name or password was refused (CONNACK 4 or 5)."""
        return self.code in (4, 5)


class ProtocolError(WireError):
    """The broker sent something that is not MQTT 3.1.1 as we expect it."""


class NotSent(WireError):
    """The messages were not handed to the broker (not connected, too many unacknowledged), or the
    connection closed before the broker acknowledged them."""


# -- storage ---------------------------------------------------------------------


class StorageError(NodefleetError):
    """The database or a file on disk failed us."""


class StorageUnavailable(StorageError):
    """PostgreSQL cannot be reached or refused the work for a passing reason; the work can be retried."""


# -- input -----------------------------------------------------------------------


class InputError(NodefleetError, ValueError):
    """Input that breaks the contract (a ValueError too, so request handlers answer it as bad input)."""


# -- requests --------------------------------------------------------------------


class RequestError(NodefleetError):
    """A request was answered with an error, or not answered in time."""


# -- start-up --------------------------------------------------------------------


class StartupError(NodefleetError):
    """The system could not come up; the message says what to do next, ``exit_code`` what the CLI exits with."""

    exit_code = EXIT_FAILED

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code
