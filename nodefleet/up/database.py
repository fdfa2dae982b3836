"""The database of one ``nodefleet up``: an external PostgreSQL probed once, or the embedded one started and stopped.

The embedded server keeps its data in ``<data dir>/postgres`` and logs in
with a password made on the first start and kept with the broker logins
(``paths.LocalCredentials``, mode 0600); every service uses it.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from ..embedded.postgres import EmbeddedPostgres, PostgresError, port_is_free
from ..logging import get_logger
from ..paths import CredentialsFileError, LocalCredentials
from .errors import EXIT_USAGE, StartupError
from .logins import without_password
from .options import DATABASE_NAME, RuntimeOptions

log = get_logger(__name__)

PROBE_TIMEOUT = 5.0


async def probe_database(dsn: str) -> None:
    """Connect once to an external database, so a wrong --database fails now and clearly."""
    try:
        connection = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
    except Exception as exc:
        raise StartupError(f"cannot reach the database {without_password(dsn)} ({exc}): check --database, or "
                           f"leave it out to run the embedded PostgreSQL") from exc
    await connection.close()


class Database:
    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self._server: EmbeddedPostgres | None = None

    def check_port(self) -> None:
        """Refuse to start anything if the embedded server's port is taken."""
        host, port = self.options.host, self.options.db_port
        if self.options.embedded_database and not port_is_free(host, port):
            raise StartupError(
                f"database port {port} on {host} is already taken: choose another with "
                f"--db-port, or use an existing server with --database postgresql://...",
                exit_code=EXIT_USAGE,
            )

    def _embedded(self) -> EmbeddedPostgres:
        try:
            # Made on first start and kept with the broker logins (mode 0600); every service logs in with it.
            password = LocalCredentials.for_database(self.options.data_dir)
        except (CredentialsFileError, OSError) as exc:
            raise StartupError(f"cannot keep the database password in {self.options.data_dir}: {exc}") from exc
        return EmbeddedPostgres(self.options.data_dir / "postgres", port=self.options.db_port, host=self.options.host,
                                password=password, system_user=self.options.postgres_system_user)

    async def stop_orphan(self) -> None:
        """The caller holds the data directory's lock, so a server running on it was left by an `up` that was killed."""
        server = self._embedded()
        if not await asyncio.to_thread(lambda: server.running):
            return
        log.warning("stopping_orphan_postgres", data_dir=str(server.data_dir))
        try:
            await asyncio.to_thread(server.stop, "fast")
        except PostgresError as exc:
            raise StartupError(f"a PostgreSQL left running on {server.data_dir} did not stop ({exc}); "
                               f"stop it by hand or choose another --data-dir") from exc

    async def start(self) -> str:
        """The database URL the services use; the embedded server is started (call ``stop`` even if this fails)."""
        if not self.options.embedded_database:
            assert self.options.database_url is not None
            await probe_database(self.options.database_url)
            return self.options.database_url
        server = self._server = self._embedded()
        try:
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(server.create_database, DATABASE_NAME)
        except PostgresError as exc:
            raise StartupError(f"the embedded PostgreSQL did not start: {exc} (its log: {server.log_file})") from exc
        log.info("postgres_started", dsn=without_password(server.dsn(DATABASE_NAME)), data_dir=str(server.data_dir))
        return server.dsn(DATABASE_NAME)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            await asyncio.to_thread(server.stop, "fast")  # rolls back open transactions, then a clean shutdown
        except PostgresError as exc:
            log.error("postgres_stop_failed", error=str(exc), log_file=str(server.log_file))
            return
        log.info("postgres_stopped", mode="fast")

    def stop_now(self) -> None:
        """A forced exit: the embedded server stops at once (immediate mode), whatever it was doing."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop("immediate")
