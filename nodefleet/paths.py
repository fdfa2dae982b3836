"""Where nodefleet keeps its per-user data (the embedded database, the lock file, the local passwords).

:class:`LocalCredentials` holds the passwords ``nodefleet up`` generates once
per data directory: one for each user of its embedded broker (the provisioner
as dynamic-security admin, each service, and ``operator`` for the CLI and
openHAB), where that broker last listened, so the ``nodefleet`` commands can
log in to it without being told, the embedded PostgreSQL's password, and the
fleet's OTA master key (the provisioner derives each node's key from it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .errors import StorageError

APP_NAME = "nodefleet"
# As root, PostgreSQL runs as its own system user, which must be able to walk to the data;
# under /var/lib that needs no change to the permissions of root's home directory.
ROOT_DATA_DIR = Path("/var/lib") / APP_NAME
DATA_DIR_VARIABLE = "NODEFLEET_DATA_DIR"

CREDENTIALS_FILE = "broker-credentials.json"
DYNSEC_ADMIN = "provisioner"
"""The embedded broker's dynamic-security admin: the provisioner, which creates a user per node."""
OPERATOR = "operator"
"""The user of the ``nodefleet`` commands, mosquitto_pub and openHAB."""
LOOPBACK_HOSTS = ("localhost", "::1", "0.0.0.0")


def default_data_dir() -> Path:
    """``$NODEFLEET_DATA_DIR``, else ``$XDG_DATA_HOME/nodefleet``, else ``~/.local/share/nodefleet``
    (``/var/lib/nodefleet`` for root)."""
    chosen = os.environ.get(DATA_DIR_VARIABLE, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    if base and Path(base).is_absolute():
        return Path(base) / APP_NAME
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    return Path.home() / ".local" / "share" / APP_NAME


def mqtt_url(username: str, password: str, host: str, port: int) -> str:
    """``mqtt://user:password@host:port`` with both quoted, as :meth:`nodefleet.wire.BrokerAddress.parse` reads it."""
    return f"mqtt://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}"


class CredentialsFileError(StorageError):
    """The credentials file exists but cannot be read or is not ours."""


@dataclass(kw_only=True)
class LocalCredentials:
    """The embedded broker's users and passwords, kept in ``<data dir>/broker-credentials.json`` (mode 0600)."""

    path: Path
    passwords: dict[str, str]
    listener: tuple[str, int] | None = None
    database_password: str | None = None
    ota_master: str | None = field(default=None, repr=False)
    """The fleet's OTA master key, 64 hex digits (``NODEFLEET_OTA_MASTER_KEY``)."""
    changed: bool = field(default=False, repr=False)

    @classmethod
    def read(cls, data_dir: Path) -> LocalCredentials | None:
        """The stored credentials, None if there are none; CredentialsFileError if they cannot be read."""
        path = data_dir / CREDENTIALS_FILE
        try:
            data = json.loads(path.read_text())
            passwords = {str(name): str(secret) for name, secret in data["passwords"].items()}
            listener = data.get("listener")
            where = (str(listener["host"]), int(listener["port"])) if listener else None
            database = data.get("database")  # absent in files written before the database had a password
            database_password = str(database["password"]) if database else None
            ota_master = data.get("ota_master")  # absent in files written before OTA keys
            if ota_master is not None and not re.fullmatch(r"[0-9a-f]{64}", ota_master):
                raise ValueError("ota_master is not 64 hex digits")
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise CredentialsFileError(f"cannot read the broker credentials in {path} (permission denied): run as the "
                                       f"user who ran `nodefleet up`") from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CredentialsFileError(f"the broker credentials in {path} are unreadable ({exc}): delete the file and "
                                       f"restart `nodefleet up` to make new ones") from exc
        return cls(path=path, passwords=passwords, listener=where, database_password=database_password,
                   ota_master=ota_master)

    @classmethod
    def ensure(cls, data_dir: Path, usernames: Iterable[str]) -> LocalCredentials:
        """The stored credentials with a password for each of ``usernames`` (new ones generated; ``save`` keeps them)."""
        found = cls.read(data_dir) or cls(path=data_dir / CREDENTIALS_FILE, passwords={}, changed=True)
        for username in usernames:
            if username not in found.passwords:
                found.passwords[username] = secrets.token_urlsafe(18)  # 144 random bits
                found.changed = True
        return found

    @classmethod
    def for_database(cls, data_dir: Path) -> str:
        """The embedded PostgreSQL's password, made and saved on first use; OSError, CredentialsFileError."""
        found = cls.ensure(data_dir, [])
        if found.database_password is None:
            found.database_password = secrets.token_urlsafe(24)
            found.changed = True
        found.save()
        return found.database_password

    @classmethod
    def for_ota(cls, data_dir: Path) -> str:
        """The fleet's OTA master key (hex), made and saved on first use; OSError, CredentialsFileError.

        Made once: every node's OTA key is derived from it, so a new one would lock out every node registered
        before.
        """
        found = cls.ensure(data_dir, [])
        if found.ota_master is None:
            found.ota_master = secrets.token_bytes(32).hex()
            found.changed = True
        found.save()
        return found.ota_master

    def listening_on(self, host: str, port: int | None) -> None:
        """Where the secured broker listens now; ``port=None``: nowhere (it runs open, the commands need no login)."""
        listener = (host, port) if port is not None else None
        if self.listener != listener:
            self.listener = listener
            self.changed = True

    def save(self) -> None:
        """Write the file if anything changed: created 0600, replaced atomically, never readable by others."""
        if not self.changed and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"passwords": self.passwords,
                "listener": {"host": self.listener[0], "port": self.listener[1]} if self.listener else None,
                "database": {"user": "postgres", "password": self.database_password} if self.database_password else None,
                "ota_master": self.ota_master}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(body, out, indent=2)
        os.chmod(temporary, 0o600)  # O_CREAT's mode is only used for a new file
        temporary.replace(self.path)
        self.changed = False

    def url(self, username: str, host: str, port: int) -> str:
        return mqtt_url(username, self.passwords[username], host, port)

    def serves(self, host: str, port: int) -> bool:
        """Whether ``host:port`` reaches the broker these credentials were made for (its port on this machine)."""
        if self.listener is None or port != self.listener[1]:
            return False
        return host == self.listener[0] or host.startswith("127.") or host in LOOPBACK_HOSTS
