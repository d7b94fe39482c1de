"""
The PostgreSQL static store: the only module of vss that imports psycopg2, and it is
imported only when a PostgreSQL DSN is chosen.

All connections of the pool may write. Every write transaction first locks the
``meta`` row ``writer`` (``SELECT ... FOR UPDATE``), so change-log sequences commit in
the order they are issued (a node paging with ``changes_after`` can never step over a
sequence whose transaction commits later) and version bumps never race. Reads take no
lock; each runs in one REPEATABLE READ snapshot.

``schema`` puts every table in a PostgreSQL schema of its own (``search_path`` is set
on each pooled connection); tests use it to give every run a fresh namespace.
"""

import psycopg2
import psycopg2.extras
from psycopg2 import sql as pgsql
from twisted.enterprise import adbapi

from .sql import Dialect, SqlStaticStore

POOL_MIN = 1
POOL_MAX = 5
PAGE = 1000


class PostgresDialect(Dialect):
    name = "postgresql"

    def __init__(self):
        self._converted = {}

    def sql(self, text):
        try:
            return self._converted[text]
        except KeyError:
            converted = self._converted[text] = text.replace("?", "%s")
            return converted

    def execute(self, cur, text, params=()):
        cur.execute(self.sql(text), tuple(params) or None)
        return cur

    def insert_many(self, cur, head, ncols, rows, tail=""):
        psycopg2.extras.execute_values(
            cur, self.sql(f"{head} VALUES %s{tail}"), rows, page_size=PAGE
        )

    def append_log(self, cur, rows):
        returned = psycopg2.extras.execute_values(
            cur,
            "INSERT INTO change_log (entity, op, key, version, origin, at) VALUES %s"
            " RETURNING seq",
            rows,
            page_size=PAGE,
            fetch=True,
        )
        return [int(r[0]) for r in returned]

    def unavailable(self):
        # the server gone or restarting (OperationalError: connection lost, admin
        # shutdown, cannot connect; InterfaceError: the connection is already closed),
        # a lock or statement timeout, a deadlock or serialisation failure
        return (*super().unavailable(), psycopg2.OperationalError, psycopg2.InterfaceError,
                psycopg2.extensions.TransactionRollbackError)

    def begin_read(self, cur):
        # one snapshot for the whole read (e.g. the log watermark and the log rows)
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def begin_write(self, cur):
        cur.execute("SELECT value FROM meta WHERE key = 'writer' FOR UPDATE")

    def lock_schema(self, cur):
        cur.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")

    def describe(self, cur):
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        tables = {}
        for table, column in cur.fetchall():
            tables.setdefault(table, []).append(column)
        cur.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname NOT LIKE %s",
            ("%_pkey",),
        )
        return {"tables": tables, "indexes": sorted(r[0] for r in cur.fetchall())}


def _admin_connection(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def create_schema(dsn, name):
    """Create a PostgreSQL schema (blocking; for tests, benches and installers)."""
    conn = _admin_connection(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(name)))
    finally:
        conn.close()


def drop_schema(dsn, name):
    """Drop a PostgreSQL schema and everything in it (blocking)."""
    conn = _admin_connection(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(name))
            )
    finally:
        conn.close()


class PostgresStaticStore(SqlStaticStore):
    """``IStaticStore`` in PostgreSQL; ``dsn`` is a libpq DSN or a postgresql:// URL."""

    dialect = PostgresDialect()
    backend = "postgresql"

    def __init__(self, dsn, reactor=None, clock=None, schema=None, pool_max=POOL_MAX):
        super().__init__(reactor=reactor, clock=clock)
        self.dsn = dsn
        self.schema = schema
        self.pool_max = pool_max

    def _open_connection(self, conn):
        if self.schema is not None:
            with conn.cursor() as cur:
                cur.execute(
                    pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema))
                )
            conn.commit()

    def _make_pools(self):
        pool = adbapi.ConnectionPool(
            "psycopg2",
            self.dsn,
            cp_min=POOL_MIN,
            cp_max=self.pool_max,
            cp_openfun=self._open_connection,
            cp_reconnect=True,
            cp_reactor=self._reactor,
            cp_noisy=False,
        )
        return pool, pool
