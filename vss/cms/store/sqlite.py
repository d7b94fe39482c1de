"""
The SQLite static store: the default CMS database, one file, no server.

Writes go through a pool of ONE connection (one writer thread; ``BEGIN IMMEDIATE``
makes each interaction a write transaction from its first statement). Reads use a
small separate pool of read-only connections, which WAL mode lets run while a write is
in progress. Connections run in autocommit mode at the driver level so that the
transactions are exactly the ones we open (the sqlite3 module's implicit ``BEGIN``
would otherwise start them late and ``executescript`` would commit early).

A lock held by another process (``BEGIN EXCLUSIVE`` from a maintenance tool) is waited
for ``BUSY_TIMEOUT_MS``; past it the call fails with DB_UNAVAILABLE, to be retried.
"""

import functools
import os
import sqlite3

from twisted.enterprise import adbapi

from vss import private

from .sql import Dialect, SqlStaticStore

READ_CONNECTIONS = 2


class SQLiteDialect(Dialect):
    name = "sqlite"

    def append_log(self, cur, rows):
        self.insert_many(cur, "INSERT INTO change_log (entity, op, key, version, origin, at)",
                         6, rows)
        # one writer and an open write transaction: the new sequences are contiguous
        last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
        return list(range(last - len(rows) + 1, last + 1))

    def begin_read(self, cur):
        cur.execute("BEGIN")

    def unavailable(self):
        # "database is locked" past the busy timeout, I/O errors, a file gone
        return (*super().unavailable(), sqlite3.OperationalError)

    def begin_write(self, cur):
        cur.execute("BEGIN IMMEDIATE")

    def lock_schema(self, cur):
        cur.execute("BEGIN IMMEDIATE")

    def describe(self, cur):
        names = [r[0] for r in cur.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()]
        tables = {
            n: [c[1] for c in cur.execute(f"PRAGMA table_info({n})").fetchall()] for n in names
        }
        indexes = sorted(r[0] for r in cur.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            " AND name NOT LIKE 'sqlite_%'"
        ).fetchall())
        references = sorted(
            f"{n}.{r[3]} -> {r[2]}.{r[4]}" for n in names
            for r in cur.execute(f"PRAGMA foreign_key_list({n})").fetchall())
        return {"tables": tables, "indexes": indexes, "references": references}


#: how long a statement waits for a lock another process holds before the store fails
#: with DB_UNAVAILABLE (milliseconds)
BUSY_TIMEOUT_MS = 5000


def _open_writer(conn, busy_timeout_ms=BUSY_TIMEOUT_MS):
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")


def _open_reader(conn, busy_timeout_ms=BUSY_TIMEOUT_MS):
    _open_writer(conn, busy_timeout_ms)
    conn.execute("PRAGMA query_only = ON")


class SQLiteStaticStore(SqlStaticStore):
    """``IStaticStore`` in one SQLite file (``:memory:`` works, with one connection)."""

    dialect = SQLiteDialect()
    backend = "sqlite"

    def __init__(self, path, reactor=None, clock=None, busy_timeout_ms=BUSY_TIMEOUT_MS):
        super().__init__(reactor=reactor, clock=clock)
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms

    def _pool(self, size, openfun):
        return adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            isolation_level=None,
            cp_min=1,
            cp_max=size,
            cp_openfun=functools.partial(openfun, busy_timeout_ms=self.busy_timeout_ms),
            cp_reactor=self._reactor,
            cp_noisy=False,
        )

    def _make_pools(self):
        if self.path != ":memory:":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, mode=0o700, exist_ok=True)
            # every user's and device's verifier, the admin token hashes: 0600, and
            # SQLite gives the -wal and -shm files the database file's mode
            private.private_file(self.path)
        writer = self._pool(1, _open_writer)
        if self.path == ":memory:":
            return writer, writer
        return writer, self._pool(READ_CONNECTIONS, _open_reader)

