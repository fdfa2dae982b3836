"""A home's operator login: one broker login that reaches only the nodes of its home.

The registry knows which home each node belongs to; the broker knows only topics.  So the login's role holds
the topic filters of each of the home's nodes (``Topics.operator_publish`` and ``operator_subscribe``), and
every change of who is in the home changes the role too: :meth:`HomeLogins.joined` after a registration,
:meth:`HomeLogins.left` inside a removal.  Each of these, and making the login, holds the home's row
(``Store.lock_home_login``) while it talks to the broker, so two of them (on any instance) never interleave and
the role always matches the home's nodes when the row is let go.

If the provisioner dies between a node's own login and its grant, the home's login misses that node until the
login is made again (``nodefleet device home-login``), which rebuilds the role from the registry.
"""

from __future__ import annotations

import secrets

import asyncpg

from nodefleet.contracts import Topics
from nodefleet.contracts.provisioning import HomeLogin
from nodefleet.logging import get_logger

from .credentials import Credentials
from .store import Store

log = get_logger(__name__)


def login_name(home_id: str) -> str:
    """The broker username (and role) of a home's operator: a dot is in no node name, so they never clash."""
    return f"home.{home_id}"


class HomeLogins:
    def __init__(self, *, store: Store, credentials: Credentials, topics: Topics) -> None:
        self.store = store
        self.credentials = credentials
        self.topics = topics

    def _rights(self, nodes: list[str]) -> dict[str, list[str]]:
        return {"publish": [f for n in nodes for f in self.topics.operator_publish(n)],
                "subscribe": [f for n in nodes for f in self.topics.operator_subscribe(n)]}

    async def issue(self, home_id: str) -> HomeLogin:
        """Make the home's login anew (a new password; the role rebuilt from the registry's nodes)."""
        username = login_name(home_id)
        password = secrets.token_urlsafe(18)
        async with self.store.pool.acquire() as conn, conn.transaction():
            await self.store.lock_home_login(conn, home_id)
            nodes = await self.store.home_nodes(conn, home_id)
            await self.credentials.set_login(username, password, **self._rights(nodes))
            await self.store.set_home_login(conn, home_id, username)
        log.info("home_login_issued", home=home_id, username=username, nodes=len(nodes))
        return HomeLogin(home_id=home_id, username=username, password=password, nodes=nodes)

    async def joined(self, node: str, home_id: str) -> None:
        """A node registered into ``home_id``: its home's login (if there is one) reaches it from now on."""
        async with self.store.pool.acquire() as conn, conn.transaction():
            username = await self.store.lock_home_login(conn, home_id)
            if username is not None:
                await self.credentials.grant(username, **self._rights([node]))

    async def left(self, conn: asyncpg.Connection, node: str, home_id: str) -> None:
        """Inside the removal's transaction (``conn``): the home's login no longer reaches ``node``."""
        username = await self.store.lock_home_login(conn, home_id)
        if username is not None:
            await self.credentials.withdraw(username, **self._rights([node]))
