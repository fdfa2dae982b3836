"""Who may log in to the embedded broker of ``nodefleet up``, and how each service and extra unit reaches it.

Secured (the default): no anonymous clients; the provisioner is the
dynamic-security admin (``credentials=dynsec``: a user and role per node it
registers); every other service and the operator (the CLI, extras such as
the demo nodes' registration, openHAB) log in as themselves, with passwords
made once and kept in the data directory (``paths.LocalCredentials``).
Open (``--insecure``, or an external broker): every client uses the broker URL
as it is.  :func:`without_password` masks a URL's password for logs and banners.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..mqtt import BrokerAddress
from ..paths import DYNSEC_ADMIN, OPERATOR, LocalCredentials

DYNSEC_FILE = "dynamic-security.json"
PROVISIONER = "provisioner"


class BrokerAccess:
    """The logins of one run; ``credentials`` is None when the broker is open or not ours."""

    def __init__(self, credentials: LocalCredentials | None = None, *, embedded: bool) -> None:
        self.credentials = credentials
        self.embedded = embedded

    @classmethod
    def secured(cls, data_dir: Path, services: Sequence[str], *, host: str, port: int) -> BrokerAccess:
        """A password for the admin, the operator and each service (new ones saved); OSError, CredentialsFileError."""
        usernames = [DYNSEC_ADMIN, OPERATOR, *(name for name in services if name != PROVISIONER)]
        credentials = LocalCredentials.ensure(data_dir, usernames)
        credentials.listening_on(host, port)
        credentials.save()
        return cls(credentials, embedded=True)

    @classmethod
    def open(cls, data_dir: Path) -> BrokerAccess:
        """An open embedded broker; logins kept from a secured run stay, but no longer name a listener."""
        kept = LocalCredentials.read(data_dir)
        if kept is not None and kept.listener is not None:
            kept.listening_on("", None)
            kept.save()
        return cls(embedded=True)

    def stopped(self) -> None:
        """The broker stopped: the commands stop logging in to whatever listens on its port next."""
        if self.credentials is not None:
            self.credentials.listening_on("", None)
            self.credentials.save()

    def broker_options(self, data_dir: Path) -> dict[str, Any]:
        """Keyword arguments of ``EmbeddedBroker`` for its access control."""
        if self.credentials is None:
            return {"allow_anonymous": True}
        passwords = self.credentials.passwords
        return {
            "allow_anonymous": False,
            "users": {name: secret for name, secret in passwords.items() if name != DYNSEC_ADMIN},
            "dynsec_admin": (DYNSEC_ADMIN, passwords[DYNSEC_ADMIN]),
            # Node users and roles (password hashes only) survive a restart.
            "dynsec_file": data_dir / DYNSEC_FILE,
        }

    def service_settings(self, service: str, broker_url: str) -> dict[str, Any]:
        """How one service reaches the broker: its own user, and for the provisioner the dynamic-security admin."""
        if self.credentials is None:
            # The provisioner's NODEFLEET_PROVISIONER_CREDENTIALS decides for an external broker; an open
            # embedded one has no dynamic security to talk to.
            insecure = {"credentials": "none"} if self.embedded and service == PROVISIONER else {}
            return {"mqtt_url": broker_url, **insecure}
        if service == PROVISIONER:
            return {"mqtt_url": self.login(DYNSEC_ADMIN, broker_url), "credentials": "dynsec"}
        return {"mqtt_url": self.login(service, broker_url)}

    def login(self, username: str, broker_url: str) -> str:
        """``broker_url`` with ``username``'s password; unchanged when the broker is open or not ours."""
        if self.credentials is None:
            return broker_url
        address = BrokerAddress.parse(broker_url)
        return self.credentials.url(username, address.host, address.port)


def without_password(dsn: str) -> str:
    """The DSN (or broker URL) with its password masked, for messages and banners."""
    scheme, sep, rest = dsn.partition("://")
    if "@" not in rest or ":" not in rest.split("@", 1)[0]:
        return dsn
    credentials, host = rest.split("@", 1)
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
