#!/bin/sh
# Entry point of the PostgreSQL test stand-in, after the official image's contract:
# an empty PGDATA is initialised with POSTGRES_USER (superuser, default postgres),
# POSTGRES_PASSWORD (required) and POSTGRES_DB (default: the user's name), on a
# temporary server that listens on its Unix socket only (so a TCP health check
# fails until the real server runs); then postgres runs as the user postgres.
set -eu

if [ "${1:-}" != "postgres" ]; then exec "$@"; fi

: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?is required to initialise a new database (as in the official image)}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    # initdb admits only loopback over TCP; the services come from other containers.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # As the official image: every address, unless the command says otherwise (-c listen_addresses=...).
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    as_postgres pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
    if [ "$database" != postgres ]; then
        as_postgres psql -v ON_ERROR_STOP=1 --username "$user" --dbname postgres -q \
            -c "CREATE DATABASE \"$database\""
    fi
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "docker-entrypoint: initialised $PGDATA (user $user, database $database)" >&2
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
