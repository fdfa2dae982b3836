"""The provisioner's registry, one part per responsibility, sharing what this instance knows of each node:

- ``registration.py``: register a device, its provisioning status, homes, the device list
- ``first_online.py``: a node's first online (provisioned or refused), reconnects, un-provisioning
- ``configs.py``: config changes, and the versions nodes applied or refused (and waiting for them)
- ``removal.py``: removal and the expiry of unclaimed registrations
- ``home_logins.py``: a home's operator login, kept reaching exactly the home's nodes
- ``announcer.py``: the discovery queue, published behind the configs of nodes coming online
- ``memory.py``: availability, info and applied versions seen, and one lock per node
- ``requests.py``: the fleet requests, handed to these parts

A failure on either side leaves nothing written half-way (see each part).
"""

from __future__ import annotations

from pydantic import ValidationError

from nodefleet.contracts import Log, Topics
from nodefleet.contracts.provisioning import config_rejection, unprovisioned_at
from nodefleet.fleet import ErrorReporter

from .announcer import Announcer
from .configs import Configs
from .credentials import Credentials
from .first_online import FirstOnline
from .home_logins import HomeLogins
from .memory import NodeMemory
from .publish import Publish
from .registration import NodeBroker, Registrations
from .removal import Removal
from .store import Store


class Registry:
    def __init__(self, *, store: Store, credentials: Credentials, topics: Topics, publish: Publish,
                 errors: ErrorReporter, broker: NodeBroker, pending_ttl: float,
                 max_devices_per_home: int, ota_master: bytes | None = None) -> None:
        self.store = store
        self.credentials = credentials
        self.memory = NodeMemory()
        self.announcer = Announcer(publish)
        self.home_logins = HomeLogins(store=store, credentials=credentials, topics=topics)
        self.removal = Removal(store=store, credentials=credentials, topics=topics, publish=publish,
                               memory=self.memory, announcer=self.announcer, home_logins=self.home_logins)
        self.registrations = Registrations(store=store, credentials=credentials, topics=topics, removal=self.removal,
                                           broker=broker, pending_ttl=pending_ttl,
                                           max_devices_per_home=max_devices_per_home, home_logins=self.home_logins,
                                           ota_master=ota_master)
        self.first_online = FirstOnline(store=store, topics=topics, publish=publish, errors=errors,
                                        memory=self.memory, announcer=self.announcer, removal=self.removal)
        self.configs = Configs(store=store, topics=topics, publish=publish, errors=errors, memory=self.memory)

    async def on_log(self, node: str, payload: bytes) -> None:
        """A node's log entry: a refused config version, or the node saying it was un-provisioned; the telemetry
        service stores and reports the rest."""
        if not payload or (b"rejected" not in payload and b"unprovisioned" not in payload):
            return
        try:
            entry = Log.model_validate_json(payload)
        except ValidationError:
            return
        boot = unprovisioned_at(entry)
        if boot is not None:
            await self.first_online.unprovision(node, boot)
            return
        rejection = config_rejection(entry)
        if rejection is not None:
            self.configs.refused(node, rejection)
