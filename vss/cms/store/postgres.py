"""
The PostgreSQL static store: the only module of vss that imports psycopg2, and it is
imported only when a PostgreSQL DSN is chosen.

All connections of the pool may write. Every write transaction first locks the
``meta`` row ``writer`` (``SELECT ... FOR UPDATE``), so change-log sequences commit in
the order they are issued (a node paging with ``changes_after`` can never step over a
sequence whose transaction commits later) and version bumps never race. Reads take no
lock; each runs in one REPEATABLE READ snapshot.

A CMS standby (docs/consistency.md, "CMS standby"): ``PostgresActiveLock`` is the
session advisory lock only the active CMS holds, on a connection of its own; the
active's ``take_office`` bumps the ``cms_epoch`` of ``meta`` and from then on every
write transaction of its store checks, under the writer lock, that the epoch is still
its own (``fence``): a CMS another one took over from can no longer write, even before
it notices.

``schema`` puts every table in a PostgreSQL schema of its own (``search_path`` is set
on each pooled connection); tests use it to give every run a fresh namespace.
"""

import json

import psycopg2
import psycopg2.extras
from psycopg2 import sql as pgsql
from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from vss.cms.standby import IActiveLock
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError

from .sql import Dialect, SqlStaticStore

#: the first key of the advisory lock taken while the schema_version table is made
BOOTSTRAP_LOCK_CLASS = 0x56535302
POOL_MIN = 1
POOL_MAX = 5
PAGE = 1000


class PostgresDialect(Dialect):
    name = "postgresql"
    returning = True
    batch_updates = True

    def __init__(self):
        self._converted = {}
        self.epoch = None  # the CMS epoch writes must find (None: not fenced)

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

    def execute_batch(self, cur, text, rows):
        psycopg2.extras.execute_batch(cur, self.sql(text), rows, page_size=PAGE)

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
        if self.epoch is not None:
            # under the writer lock: a CMS that took over bumped the epoch under it too
            cur.execute("SELECT value FROM meta WHERE key = 'cms_epoch'")
            row = cur.fetchone()
            if row is None or int(row[0]) != self.epoch:
                raise VssError(ResultCode.NOT_ACTIVE,
                               "this CMS is no longer the active one: another took over")

    def lock_schema(self, cur):
        cur.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")

    def begin_bootstrap(self, cur):
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent one
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))",
                    (BOOTSTRAP_LOCK_CLASS,))

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
        indexes = sorted(r[0] for r in cur.fetchall())
        cur.execute(
            "SELECT tc.table_name, kcu.column_name, ccu.table_name, ccu.column_name"
            " FROM information_schema.table_constraints tc"
            " JOIN information_schema.key_column_usage kcu"
            " ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema"
            " JOIN information_schema.constraint_column_usage ccu"
            " ON ccu.constraint_name = tc.constraint_name AND ccu.table_schema = tc.table_schema"
            " WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema()"
        )
        references = sorted(f"{t}.{c} -> {rt}.{rc}" for t, c, rt, rc in cur.fetchall())
        return {"tables": tables, "indexes": indexes, "references": references}


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

    backend = "postgresql"

    def __init__(self, dsn, reactor=None, clock=None, schema=None, pool_max=POOL_MAX):
        super().__init__(reactor=reactor, clock=clock)
        self.dialect = PostgresDialect()  # its own: it holds this store's fence
        self.dsn = dsn
        self.schema = schema
        self.pool_max = pool_max

    # -- CMS standby

    def take_office(self, cms_id, addresses):
        """The CMS holding the active lock takes office: bump ``cms_epoch`` (so writes
        of any CMS active before fail from now on), record who is active and where
        (``addresses``: a dict), and fence this store's writes with the new epoch.
        Fires with the epoch."""
        self.dialect.epoch = None
        d = self._run(self._wpool, self._take_office, cms_id, json.dumps(addresses),
                      self._now_ms())

        def fenced(epoch):
            self.dialect.epoch = epoch
            return epoch

        return d.addCallback(fenced)

    def _take_office(self, cur, cms_id, addresses, now):
        cur.execute("SELECT value FROM meta WHERE key = 'writer' FOR UPDATE")
        cur.execute("SELECT value FROM meta WHERE key = 'cms_epoch'")
        row = cur.fetchone()
        epoch = (int(row[0]) if row else 0) + 1
        active = json.dumps({"cms_id": cms_id, "epoch": epoch, "since": now, **json.loads(addresses)})
        for key, value in (("cms_epoch", str(epoch)), ("cms_active", active)):
            cur.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key)"
                        " DO UPDATE SET value = excluded.value", (key, value))
        return epoch

    def announce(self, cms_id, addresses):
        """Record again where the active CMS is (its listeners bound after it took
        office); a fenced write."""
        return self._run(self._wpool, self._announce, cms_id, json.dumps(addresses),
                         self._now_ms())

    def _announce(self, cur, cms_id, addresses, now):
        self.dialect.begin_write(cur)
        cur.execute("SELECT value FROM meta WHERE key = 'cms_active'")
        row = cur.fetchone()
        active = {**(json.loads(row[0]) if row else {}), **json.loads(addresses)}
        active.update(cms_id=cms_id, epoch=self.dialect.epoch)
        cur.execute("UPDATE meta SET value = %s WHERE key = 'cms_active'",
                    (json.dumps(active),))

    def step_down(self):
        """No more writes from this store until it takes office again."""
        self.dialect.epoch = -1

    def active_cms(self):
        """Who took office last, a dict (``cms_id``, ``epoch``, ``since``, the addresses
        it gave), or None."""
        return self._read(self._active_cms)

    def _active_cms(self, cur):
        cur.execute("SELECT value FROM meta WHERE key = 'cms_active'")
        row = cur.fetchone()
        return json.loads(row[0]) if row else None

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


#: the first key of the advisory lock of the active CMS ('VSS' 0x01); the second is the
#: hash of the schema's name, so that CMS sites in schemas of one database never meet
LOCK_CLASS = 0x56535301
#: server-side limits of the lock connection: a holder that stops asking (a partition,
#: a frozen process) loses its session, hence the lock, after this long
LOCK_IDLE_TIMEOUT = "5s"
LOCK_CONNECT_TIMEOUT = 3  # seconds


@implementer(IActiveLock)
class PostgresActiveLock:
    """The session advisory lock of the active CMS, on one connection of its own (a
    thread of its own: every call is a blocking psycopg2 call). Connect directly, or
    through a pooler in session mode: a transaction-mode pooler cannot hold a session
    lock. The connection is made with TCP keepalives and ``idle_session_timeout``, so
    that the server frees the lock soon when the holder can no longer ask (the active
    checks every second, and stands by after ``standby.CHECK_TIMEOUT`` s without an
    answer, before the server gives the lock to another)."""

    def __init__(self, dsn, reactor, schema=None):
        self.dsn = dsn
        self.reactor = reactor
        self.schema = schema
        self.description = "PostgreSQL advisory lock of the active CMS"
        self._conn = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="vss-cms-active-lock")
        self._started = False

    def _in_thread(self, fn):
        if not self._started:
            self._started = True
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return threads.deferToThreadPool(self.reactor, self._pool, fn)

    def _connect(self):
        conn = psycopg2.connect(self.dsn, connect_timeout=LOCK_CONNECT_TIMEOUT, keepalives=1,
                                keepalives_idle=2, keepalives_interval=1, keepalives_count=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            if self.schema is not None:
                cur.execute(pgsql.SQL("SET search_path TO {}").format(
                    pgsql.Identifier(self.schema)))
            cur.execute("SET statement_timeout = '2s'")
            cur.execute("SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1;"
                        " SET tcp_keepalives_count = 3")
            try:
                cur.execute("SET idle_session_timeout = %s", (LOCK_IDLE_TIMEOUT,))
            except psycopg2.ProgrammingError:
                pass  # before PostgreSQL 14: keepalives only
        self._conn = conn
        return conn

    def _query(self, text):
        conn = self._conn if self._conn is not None else self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(text, (LOCK_CLASS,))
                return bool(cur.fetchone()[0])
        except Exception:
            self._close()
            raise

    def acquire(self):
        return self._in_thread(lambda: self._query(
            "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"))

    def check(self):
        return self._in_thread(lambda: self._query(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND classid = %s::bigint::oid"
            " AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid"))

    def _close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001,S110 - closing a connection that failed
                pass

    def release(self):
        if not self._started:
            return None
        return self._in_thread(self._close).addErrback(lambda _: None)
