"""PostgreSQL failures that pass: the work is retried on a new connection instead of given up.

Every service that writes to PostgreSQL retries these (with backoff) and
treats any other database error as the input's fault.
"""

from __future__ import annotations

import asyncpg

UNREACHABLE: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,  # the server is not listening (a pool opening a connection)
    asyncpg.InterfaceError,  # includes a connection closed under us
    # A connection left mid-operation when the server went away under load ("another operation is in
    # progress"): seen with a fast shutdown during a batch; a new connection clears it.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: shutdown, cannot connect now
)
"""The server is away: with StorageUnavailable, what a fleet request is answered "database unavailable, try
again" for (nodefleet.fleet.answer). Not OSError or TimeoutError at large: a broker's timeout is not the database's."""

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    *UNREACHABLE,
    asyncpg.InsufficientResourcesError,  # class 53: disk full, too many connections
    asyncpg.TransactionRollbackError,  # class 40: deadlock, serialization failure
)
