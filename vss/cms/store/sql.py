"""
The SQL logic shared by the SQLite and PostgreSQL static stores.

``SqlStaticStore`` implements ``IStaticStore`` on top of
``twisted.enterprise.adbapi.ConnectionPool``: every call runs as one interaction in a
pool thread, never on the reactor thread. A backend module supplies the pools and a
``Dialect`` (parameter style, batch inserts, writer lock, schema introspection).

A database that fails (it cannot be reached, is locked past its busy timeout, or times
out) fails the call with ``VssError(DB_UNAVAILABLE)``: CMS answers it to nodes and the
admin API as a failure to retry (docs/consistency.md), never as a refusal.

Every mutating call is atomic: it (1) takes the writer lock, (2) changes the rows and
bumps their ``version``, (3) appends one ``change_log`` row per changed entity, and
returns the ``Change`` entries it appended, once committed. The logged writes that wait
while a transaction is in flight share the next one (group commit, ``commit.py``): each
runs as it would alone, in issue order, and one that fails leaves nothing. The writer
lock makes log sequences commit in the order they were issued, so a reader paging with
``changes_after`` never steps over a sequence that commits later.

Change-log conventions (what a node applying changes relies on):

- ``Entity.DEVICE`` / ``USER`` / ``NODE``: key is the device id / username / node id.
- ``Entity.GRANT``: key is ``grant_key(principal, device_id)``, i.e.
  ``"<principal>|<device_id>"``; principals never contain ``|``.
- ``Entity.CREDENTIAL``: key is the stream credential's id. Revoking one is an upsert
  (its ``revoked`` time set); removing its user or its device deletes it.
- Recording settings belong to a device's static data: changing them bumps the device
  version and logs a device upsert.
- Upserts carry the record (``device``/``user``/``grant``); deletes carry none. A
  delete's version is the row's last version plus one; a row created again starts
  over at version 1.
- ``changes_after`` returns each entry with the *current* record. An upsert whose row
  has since been deleted is returned as a delete (a later entry deletes it anyway).
"""

import functools
import json

from twisted.enterprise.adbapi import ConnectionLost
from twisted.internet.defer import fail, inlineCallbacks, returnValue
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vss.interfaces import IStaticStore
from vss.ops.histogram import Histogram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    CU_TARGET,
    Action,
    Change,
    ChangeOp,
    DeviceRecord,
    Entity,
    GrantRecord,
    StreamCredential,
    UserRecord,
    Verifier,
)

from . import schema
from .audit import AuditSql, IAuditStore
from .commit import GroupCommit, WriteFailed
from .events import EventSql, IEventStore
from .operators import IOperatorStore, OperatorSql
from .tokens import (
    ACTIVE,
    REVOKED,
    TOUCH_INTERVAL_MS,
    AdminToken,
    IAdminTokenStore,
    LastTokenError,
    token_state,
)

GRANT_KEY_SEP = "|"
DEFAULT_ORIGIN = "mms"
#: how many keys go into one ``IN (...)`` list
CHUNK = 500

_DEVICE_COLS = (
    "device_id, name, kind, channels, home_node, salt, iterations, stored_key, "
    "server_key, source_url, enabled, version"
)
_USER_COLS = "username, salt, iterations, stored_key, server_key, groups_json, enabled, version"
_GRANT_COLS = "principal, device_id, actions, version, expires"
_TOKEN_COLS = "id, name, created, expires, last_used, revoked"
_CRED_COLS = "cred_id, username, device_id, name, created, expires, revoked, sealed, version"
_NODE_COLS = "node_id, signalling, media, capacity, state, load_json, applied_seq, last_seen"
_DEVICE_UPSERT_TAIL = (
    " ON CONFLICT (device_id) DO UPDATE SET name = excluded.name, kind = excluded.kind,"
    " channels = excluded.channels, home_node = excluded.home_node, salt = excluded.salt,"
    " iterations = excluded.iterations, stored_key = excluded.stored_key,"
    " server_key = excluded.server_key, source_url = excluded.source_url,"
    " enabled = excluded.enabled, version = excluded.version"
)
_DEVICE_FIELDS = {"name", "home_node", "source_url", "enabled", "channels"}
#: the values a device update may carry to be read ahead and sent with others (any
#: other value goes the one-by-one way, where the database checks it)
_PLAIN_FIELDS = {"name": str, "source_url": str, "enabled": bool, "channels": int}
#: how a field's value is stored (as ``_replace_device`` makes it)
_DEVICE_FIELD_TYPES = {"name": lambda v: v, "home_node": lambda v: v,
                       "source_url": lambda v: v, "enabled": bool, "channels": int}
#: the origin of the log entries that hand a node records it starts to hold
FOLLOW_ORIGIN = "follow:"


def grant_key(principal, device_id):
    """The change-log key of a grant."""
    return f"{principal}{GRANT_KEY_SEP}{device_id}"


def split_grant_key(key):
    """(principal, device_id) from a grant's change-log key."""
    principal, _, device_id = key.partition(GRANT_KEY_SEP)
    return principal, device_id


def _check_principal(principal):
    kind, sep, name = principal.partition(":")
    if kind not in ("user", "group") or not sep or not name or GRANT_KEY_SEP in principal:
        raise VssError(
            ResultCode.INVALID_ARGUMENT,
            f"principal must be 'user:<name>' or 'group:<name>' without '|': {principal!r}",
        )


def _verifier(row, i):
    return Verifier(bytes(row[i]), int(row[i + 1]), bytes(row[i + 2]), bytes(row[i + 3]))


def _device(row):
    return DeviceRecord(
        row[0], row[1], int(row[2]), int(row[3]), row[4], _verifier(row, 5), row[9],
        bool(row[10]), int(row[11]),
    )


def _user(row):
    return UserRecord(
        row[0], _verifier(row, 1), list(json.loads(row[5])), bool(row[6]), int(row[7])
    )


def _grant(row):
    return GrantRecord(row[0], row[1], int(row[2]), int(row[3]), int(row[4]))


def _credential(row):
    return StreamCredential(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]),
                            int(row[6]), bytes(row[7]), int(row[8]))


def _opt_int(value):
    return None if value is None else int(value)


def _token(row, now):
    expires, revoked = _opt_int(row[3]), _opt_int(row[5])
    return AdminToken(int(row[0]), row[1], int(row[2]), expires, _opt_int(row[4]), revoked,
                      token_state(expires, revoked, now))


def _node(row):
    return {
        "node_id": row[0],
        "signalling": row[1],
        "media": row[2],
        "capacity": int(row[3]),
        "state": row[4],
        "load": json.loads(row[5]),
        "applied_seq": int(row[6]),
        "last_seen": int(row[7]),
    }


def _device_params(rec):
    v = rec.verifier
    return (
        rec.device_id, rec.name, int(rec.kind), int(rec.channels), rec.home_node,
        bytes(v.salt), int(v.iterations), bytes(v.stored_key), bytes(v.server_key),
        rec.source_url, bool(rec.enabled), int(rec.version),
    )


def _closed():
    return VssError(ResultCode.DB_UNAVAILABLE, "the CMS database is closed (the CMS is stopping)")


def _deferred(method):
    """Argument errors found before any database work fail the Deferred, never raise."""

    @functools.wraps(method)
    def wrapper(*args, **kw):
        try:
            return method(*args, **kw)
        except VssError:
            return fail()

    return wrapper


def _chunks(seq, n=CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Dialect:
    """What differs between SQL backends. Statements are written with ``?`` markers."""

    name = "?"

    def sql(self, text):
        return text

    def execute(self, cur, text, params=()):
        cur.execute(self.sql(text), params)
        return cur

    def insert_many(self, cur, head, ncols, rows, tail=""):
        """``head VALUES (...) tail`` for every row in ``rows``."""
        marks = "(" + ", ".join("?" * ncols) + ")"
        cur.executemany(self.sql(f"{head} VALUES {marks}{tail}"), rows)

    def append_log(self, cur, rows):
        """Insert change-log rows (entity, op, key, version, origin, at) and return their
        sequences, in order."""
        raise NotImplementedError

    #: ``UPDATE ... RETURNING`` is there (SQLite has it only from 3.35)
    returning = False
    #: a batch's plain device updates are read and sent together (worth it when the
    #: database is a round trip away)
    batch_updates = False

    def execute_batch(self, cur, text, rows):
        """One statement for every row of ``rows``, in order (few round trips)."""
        cur.executemany(self.sql(text), rows)

    def begin_read(self, cur):
        pass

    def unavailable(self):
        """The exception classes that mean the database failed (it cannot be reached,
        is locked, or timed out), as opposed to a statement it refused."""

        return (ConnectionLost,)

    def begin_write(self, cur):
        """Start the write transaction and take the writer lock."""
        raise NotImplementedError

    def lock_schema(self, cur):
        raise NotImplementedError

    def begin_bootstrap(self, cur):
        """Before the schema_version table is made: processes opening one new database
        at once (CMS and its standby) take turns."""

    def describe(self, cur):
        """{'tables': {name: [columns in order]}, 'indexes': sorted secondary index names}"""
        raise NotImplementedError


class _ReadAhead:
    """The device rows a batch's plain updates change, as this transaction has them,
    and their updates not sent yet."""

    def __init__(self, devices):
        self.devices = devices
        self.updates = []


class _Log:
    """The change-log entries a transaction appends."""

    def __init__(self, origin, at):
        self.origin = origin
        self.at = at
        self.entries = []  # (entity, op, key, version, record, origin)

    def add(self, entity, op, key, version, record=None, origin=None):
        self.entries.append((entity, op, key, version, record, origin or self.origin))


@implementer(IStaticStore, IAdminTokenStore, IOperatorStore, IAuditStore, IEventStore)
class SqlStaticStore(OperatorSql, AuditSql, EventSql):
    """``IStaticStore`` over adbapi pools. Subclasses define ``_make_pools`` and
    ``dialect``."""

    log = Logger()
    dialect = Dialect()
    backend = "sql"

    def __init__(self, reactor=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._wpool = None
        self._rpool = None
        #: how long the calls take, issued to answered (queueing for a pool thread
        #: included), by kind: for ``/metrics`` (``vss.ops.collectors``)
        self.call_latency = {"read": Histogram(), "write": Histogram()}
        #: logged writes issued and not answered yet (CMS publishes in log order and
        #: waits for them when a sequence is missing, see ``vss.cms.service``)
        self.writes_in_flight = 0
        #: the logged writes, grouped into transactions
        self._commits = GroupCommit(self._run_batch, self._clock,
                                    latency=self.call_latency["write"])

    # -- plumbing -----------------------------------------------------------

    def _make_pools(self):
        """Return (write pool, read pool); they may be the same pool."""
        raise NotImplementedError

    def _now_ms(self):
        return int(self._clock.seconds() * 1000)

    def _run(self, pool, fn, *args, kind="write"):
        """One interaction, timed into ``call_latency[kind]`` (issued to answered,
        waiting for a pool thread included); a database that fails (lost, locked, timed
        out) fails the Deferred with ``VssError(DB_UNAVAILABLE)``: a failure to retry,
        never a refusal."""
        if pool is None:
            return fail(_closed())
        hist = self.call_latency[kind]
        t0 = self._clock.seconds()

        def timed(result):
            hist.observe(self._clock.seconds() - t0)
            return result

        return pool.runInteraction(fn, *args).addBoth(timed).addErrback(self._unavailable)

    def _unavailable(self, failure):
        if failure.check(*self.dialect.unavailable()):
            self.log.warn("CMS database {backend} failed: {error}", backend=self.backend,
                          error=failure.getErrorMessage().strip())
            raise VssError(ResultCode.DB_UNAVAILABLE,
                           f"the CMS database failed ({failure.getErrorMessage().strip()[:200]});"
                           " try again later")
        return failure

    def _read(self, fn, *args):
        return self._run(self._rpool, self._in_read, fn, *args, kind="read")

    def _in_read(self, cur, fn, *args):
        self.dialect.begin_read(cur)
        return fn(cur, *args)

    def _write(self, fn, *args, origin=DEFAULT_ORIGIN):
        """One logged write, committed with the others that wait for the writer
        (``vss.cms.store.commit``); fires with its changes once durable."""
        if self._wpool is None:
            return fail(_closed())
        self.writes_in_flight += 1

        def answered(result):
            self.writes_in_flight -= 1
            return result

        return self._commits.submit(fn, args, origin, self._now_ms()).addBoth(answered)

    def _write_unlogged(self, fn, *args):
        """A write that logs nothing (a node's liveness, what it applied): it shares
        the logged writes' transactions (one writer lock and one commit for them all,
        not one each); fires with None once committed."""
        if self._wpool is None:
            return fail(_closed())
        return self._commits.submit(fn, args, DEFAULT_ORIGIN, 0).addCallback(lambda _: None)

    def _run_batch(self, batch):
        """One transaction for a batch of ``Write``: one list of changes per write."""
        if self._wpool is None:
            return fail(_closed())
        return self._wpool.runInteraction(self._in_batch, batch) \
            .addErrback(self._batch_failed)

    def _batch_failed(self, failure):
        if failure.check(WriteFailed):
            return failure
        return self._unavailable(failure)

    def _in_batch(self, cur, batch):
        self.dialect.begin_write(cur)
        unavailable = self.dialect.unavailable()
        shared = self._read_ahead(cur, batch)
        logs = []
        for i, w in enumerate(batch):
            log = _Log(w.origin, w.at)
            try:
                if shared is not None and self._is_plain_update(w):
                    self._update_read_ahead(shared, log, *w.args)
                elif shared is not None and w.fn in (self._set_node_state,
                                                     self._set_node_applied):
                    w.fn(cur, log, *w.args)  # the nodes table only: no device read
                else:
                    if shared is not None:  # this write reads the database: bring it up to date
                        self._send_updates(cur, shared)
                        shared = None
                    w.fn(cur, log, *w.args)
            except unavailable:
                raise
            except Exception:
                raise WriteFailed(i, Failure()) from None
            logs.append(log)
        if shared is not None:
            self._send_updates(cur, shared)
        return self._append(cur, logs)

    # The usual heavy load is many devices changing a name, a URL or being enabled (a
    # PU's own report, an operator's bulk edit). In a batch, on a server a round trip
    # away, their rows are read at once and their updates sent together: a handful of
    # round trips for the batch instead of one or two per change. A write of any other
    # kind in the batch first sends the updates queued so far (it may read those rows),
    # and the writes after it go one by one; a node's liveness and applied sequence
    # (the nodes table only) do not stop them.

    def _is_plain_update(self, w):
        if w.fn != self._update_device:
            return False
        fields = w.args[1]
        return bool(fields) and all(isinstance(v, _PLAIN_FIELDS.get(k, ()))
                                    for k, v in fields.items()) \
            and 0 <= fields.get("channels", 0) < 1 << 31

    def _read_ahead(self, cur, batch):
        """For a batch with several plain device updates (PostgreSQL): their devices
        as the database has them, or None."""
        if not self.dialect.batch_updates:
            return None
        ids = {w.args[0] for w in batch if self._is_plain_update(w)}
        if len(ids) < 2:
            return None
        found = self._fetch_many(cur, "devices", _DEVICE_COLS, "device_id", ids, _device,
                                 lambda r: r.device_id)
        return _ReadAhead(found)

    def _update_read_ahead(self, shared, log, device_id, fields):
        current = shared.devices.get(device_id)
        if current is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
        record = _replace_device(current, version=current.version + 1, **fields)
        shared.devices[device_id] = record
        shared.updates.append((record.name, int(record.channels), record.source_url,
                               bool(record.enabled), record.version, device_id))
        log.add(Entity.DEVICE, ChangeOp.UPSERT, device_id, record.version, record)

    def _send_updates(self, cur, shared):
        if shared.updates:
            self.dialect.execute_batch(
                cur, "UPDATE devices SET name = ?, channels = ?, source_url = ?, enabled = ?,"
                " version = ? WHERE device_id = ?", shared.updates)
            shared.updates = []

    def _append(self, cur, logs):
        """Append the entries of ``logs`` (one per write, in order) in one insert:
        the writes' lists of changes."""
        rows = [(int(e), int(o), k, v, origin, log.at)
                for log in logs for e, o, k, v, _, origin in log.entries]
        seqs = iter(self.dialect.append_log(cur, rows) if rows else ())
        out = []
        for log in logs:
            out.append([_change(next(seqs), entity, op, key, version, origin, record)
                        for entity, op, key, version, record, origin in log.entries])
        return out

    def _x(self, cur, text, params=()):
        return self.dialect.execute(cur, text, params)

    # -- lifecycle and migrations --------------------------------------------

    @inlineCallbacks
    def open(self, target_version=None):
        """Connect and apply the missing migrations in order (each in its own
        transaction). ``target_version`` stops early (for tests of old schemas)."""
        if self._wpool is None:
            self._wpool, self._rpool = self._make_pools()
        target = schema.CURRENT_VERSION if target_version is None else target_version
        current = yield self._wpool.runInteraction(self._bootstrap)
        for migration in schema.MIGRATIONS:
            if current < migration.version <= target:
                applied = yield self._wpool.runInteraction(
                    self._apply, migration, self._now_ms()
                )
                if applied:
                    self.log.info(
                        "CMS database {backend}: applied migration {version} ({name})",
                        backend=self.backend,
                        version=migration.version,
                        name=migration.name,
                    )
                current = migration.version
        returnValue(current)

    def _bootstrap(self, cur):
        self.dialect.begin_bootstrap(cur)
        self._x(cur, schema.SCHEMA_VERSION_TABLE.format(**schema.DIALECT_TYPES[self.dialect.name]))
        return self._version(cur)

    def _version(self, cur):
        row = self._x(cur, "SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _apply(self, cur, migration, at):
        self.dialect.lock_schema(cur)
        if self._version(cur) >= migration.version:
            return False  # another process got there first
        for statement in migration.sql(self.dialect.name):
            self._x(cur, statement)
        self._x(
            cur,
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, at),
        )
        return True

    def close(self):
        """Refuse new calls; the writes already issued still commit, then the pools
        close. A Deferred."""
        return self._commits.close(Failure(_closed())).addCallback(self._close_pools)

    def _close_pools(self, _):
        pools = {id(p): p for p in (self._wpool, self._rpool) if p is not None}
        self._wpool = self._rpool = None
        for pool in pools.values():
            pool.close()

    def schema_version(self):
        return self._read(self._version)

    def describe_schema(self):
        """Deferred {"tables": {...}, "indexes": [...], "references": [...]} (the foreign
        keys), for tests and operators."""
        return self._read(self.dialect.describe)

    # -- users ----------------------------------------------------------------

    def upsert_user(self, username, verifier, groups, enabled=True, origin=DEFAULT_ORIGIN):
        return self._write(
            self._upsert_user, username, verifier, list(groups), bool(enabled), origin=origin
        )

    def _upsert_user(self, cur, log, username, verifier, groups, enabled):
        row = self._x(cur, "SELECT version FROM users WHERE username = ?", (username,)).fetchone()
        version = (int(row[0]) if row else 0) + 1
        self._x(
            cur,
            f"INSERT INTO users ({_USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (username) DO UPDATE SET salt = excluded.salt,"
            " iterations = excluded.iterations, stored_key = excluded.stored_key,"
            " server_key = excluded.server_key, groups_json = excluded.groups_json,"
            " enabled = excluded.enabled, version = excluded.version",
            (
                username, bytes(verifier.salt), int(verifier.iterations),
                bytes(verifier.stored_key), bytes(verifier.server_key), json.dumps(groups),
                enabled, version,
            ),
        )
        record = UserRecord(username, verifier, groups, enabled, version)
        log.add(Entity.USER, ChangeOp.UPSERT, username, version, record)

    def remove_user(self, username, origin=DEFAULT_ORIGIN):
        return self._write(self._remove_user, username, origin=origin)

    def _remove_user(self, cur, log, username):
        row = self._x(cur, "SELECT version FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            return
        self._delete_grants(cur, log, "principal = ?", ("user:" + username,))
        # who may drive the account as a wall or decoder
        self._delete_grants(cur, log, "device_id = ?", (CU_TARGET + username,))
        self._delete_credentials(cur, log, "username = ?", (username,))
        self._x(cur, "DELETE FROM users WHERE username = ?", (username,))
        log.add(Entity.USER, ChangeOp.DELETE, username, int(row[0]) + 1)

    def get_user(self, username):
        return self._read(self._get_user, username)

    def _get_user(self, cur, username):
        row = self._x(
            cur, f"SELECT {_USER_COLS} FROM users WHERE username = ?", (username,)
        ).fetchone()
        return _user(row) if row else None

    @_deferred
    def list_users(self, cursor="", limit=1000, held_by=None):
        """``held_by``: only the users registered on that node."""
        return self._read(self._list_users, cursor, _limit(limit), held_by)

    def _list_users(self, cur, cursor, limit, held_by=None):
        if held_by is not None:
            cols = ", ".join("u." + c.strip() for c in _USER_COLS.split(","))
            rows = self._x(
                cur,
                f"SELECT {cols} FROM node_users n JOIN users u ON u.username = n.username"
                " WHERE n.node_id = ? AND n.username > ? ORDER BY n.username LIMIT ?",
                (held_by, cursor, limit + 1),
            ).fetchall()
            return _page([_user(r) for r in rows], limit, lambda r: r.username)
        where, params = "username > ?", (cursor, limit + 1)
        rows = self._x(
            cur,
            f"SELECT {_USER_COLS} FROM users WHERE {where} ORDER BY username LIMIT ?",
            params,
        ).fetchall()
        return _page([_user(r) for r in rows], limit, lambda r: r.username)

    # -- devices --------------------------------------------------------------

    def upsert_device(self, device_id, name, kind, channels, home_node, verifier,
                      source_url="", enabled=True, origin=DEFAULT_ORIGIN):
        record = DeviceRecord(
            device_id, name, int(kind), int(channels), home_node, verifier, source_url,
            bool(enabled), 0,
        )
        return self._write(self._upsert_devices, [record], origin=origin)

    def bulk_upsert_devices(self, records, origin=DEFAULT_ORIGIN):
        """Create or change many devices in one transaction (imports, tests, benches).
        ``records`` are ``DeviceRecord`` (their ``version`` is ignored); a device listed
        twice keeps its last record. Deferred [Change]."""
        unique = {}
        for rec in records:
            unique.pop(rec.device_id, None)
            unique[rec.device_id] = rec
        return self._write(self._upsert_devices, list(unique.values()), origin=origin)

    def _upsert_devices(self, cur, log, records):
        held = self._versions_homes(cur, [r.device_id for r in records])
        fresh = [_replace_device(r, version=held.get(r.device_id, (0, ""))[0] + 1)
                 for r in records]
        moved = []
        for r in fresh:
            home = held.get(r.device_id, (0, ""))[1]
            if home and home != r.home_node:
                self._follow(cur, home, r.device_id)
            if r.device_id in held and r.home_node and home != r.home_node:
                moved.append(r)
        self.dialect.insert_many(
            cur, f"INSERT INTO devices ({_DEVICE_COLS})", 12,
            [_device_params(r) for r in fresh], _DEVICE_UPSERT_TAIL,
        )
        for r in fresh:
            log.add(Entity.DEVICE, ChangeOp.UPSERT, r.device_id, r.version, r)
        for r in moved:
            self._announce_grants(cur, log, r.home_node, r.device_id)

    def _versions_homes(self, cur, keys):
        found = {}
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            rows = self._x(
                cur, f"SELECT device_id, version, home_node FROM devices"
                f" WHERE device_id IN ({marks})", tuple(chunk),
            ).fetchall()
            found.update((k, (int(v), h)) for k, v, h in rows)
        return found

    def _follow(self, cur, node_id, device_id):
        """``node_id`` follows ``device_id`` from now on (its former home, or a node
        whose users may see it). True if it did not already."""
        if self._x(cur, "SELECT 1 FROM node_devices WHERE node_id = ? AND device_id = ?",
                   (node_id, device_id)).fetchone() is not None:
            return False
        self._x(cur, "INSERT INTO node_devices (node_id, device_id) VALUES (?, ?)",
                (node_id, device_id))
        return True

    def _versions(self, cur, table, column, keys):
        found = {}
        for chunk in _chunks(keys):
            marks = ", ".join("?" * len(chunk))
            rows = self._x(
                cur, f"SELECT {column}, version FROM {table} WHERE {column} IN ({marks})",
                tuple(chunk),
            ).fetchall()
            found.update((k, int(v)) for k, v in rows)
        return found

    @_deferred
    def update_device_fields(self, device_id, origin=DEFAULT_ORIGIN, **fields):
        unknown = set(fields) - _DEVICE_FIELDS
        if unknown:
            raise VssError(
                ResultCode.INVALID_ARGUMENT, f"unknown device fields: {sorted(unknown)}"
            )
        return self._write(self._update_device, device_id, fields, origin=origin)

    def _update_device(self, cur, log, device_id, fields):
        if fields and "home_node" not in fields and self.dialect.returning:
            # the usual change (a name, a URL, enabled): one statement, one round trip
            names = sorted(fields)
            row = self._x(
                cur,
                f"UPDATE devices SET {', '.join(f'{n} = ?' for n in names)},"
                f" version = version + 1 WHERE device_id = ? RETURNING {_DEVICE_COLS}",
                (*(_DEVICE_FIELD_TYPES[n](fields[n]) for n in names), device_id),
            ).fetchone()
            if row is None:
                raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
            record = _device(row)
            log.add(Entity.DEVICE, ChangeOp.UPSERT, device_id, record.version, record)
            return
        current = self._get_device(cur, device_id)
        if current is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
        if not fields:
            return
        record = _replace_device(current, version=current.version + 1, **fields)
        if current.home_node and current.home_node != record.home_node:
            self._follow(cur, current.home_node, device_id)  # it still gets the move
            # its home is settled anew: no failback (``_move_devices`` writes it again)
            self._x(cur, "DELETE FROM failover_moves WHERE device_id = ?", (device_id,))
        self._x(
            cur,
            "UPDATE devices SET name = ?, channels = ?, home_node = ?, source_url = ?,"
            " enabled = ?, version = ? WHERE device_id = ?",
            (record.name, int(record.channels), record.home_node, record.source_url,
             bool(record.enabled), record.version, device_id),
        )
        log.add(Entity.DEVICE, ChangeOp.UPSERT, device_id, record.version, record)
        if record.home_node and record.home_node != current.home_node:
            self._announce_grants(cur, log, record.home_node, device_id)

    def move_devices(self, moves, origin=DEFAULT_ORIGIN, failed_node=""):
        """Re-home devices in one transaction: ``moves`` is [(device_id, node_id)]; a
        device removed meanwhile is skipped. ``failed_node``: the home they leave
        because it is down; each device remembers the first such home (``failover_moves``,
        what failback gives back) until its home changes otherwise. Deferred [Change]
        (each device's entry, the grants announced to its new home), as
        ``update_device_fields`` gives one by one."""
        return self._write(self._move_devices, list(moves), failed_node, origin=origin)

    def _move_devices(self, cur, log, moves, failed_node):
        for device_id, node_id in moves:
            if self._get_device(cur, device_id) is None:
                continue
            first = None
            if failed_node:
                first = self._x(cur, "SELECT from_node FROM failover_moves WHERE device_id = ?",
                                (device_id,)).fetchone()
            self._update_device(cur, log, device_id, {"home_node": node_id})
            back_to = first[0] if first else failed_node
            if back_to and back_to != node_id:
                self._x(cur, "INSERT INTO failover_moves (device_id, from_node, moved_at)"
                        " VALUES (?, ?, ?)", (device_id, back_to, log.at))

    def failover_moves(self, node_id=None):
        """Deferred {device_id: node_id}: the devices moved away from a node that was
        down, and that node (only those of ``node_id`` when given)."""
        return self._read(self._failover_moves, node_id)

    def _failover_moves(self, cur, node_id):
        if node_id is None:
            rows = self._x(cur, "SELECT device_id, from_node FROM failover_moves").fetchall()
        else:
            rows = self._x(cur, "SELECT device_id, from_node FROM failover_moves"
                           " WHERE from_node = ?", (node_id,)).fetchall()
        return {d: n for d, n in rows}

    def _announce_grants(self, cur, log, node_id, device_id):
        """A device newly homed on ``node_id``: log the grants on it as they are, for
        that node only (origin ``follow:<node>``), after the device's own entry."""
        for g in self._list_grants(cur, "", 100_000, device_id, None)[0]:
            log.add(Entity.GRANT, ChangeOp.UPSERT, grant_key(g.principal, g.device_id),
                    g.version, g, origin=FOLLOW_ORIGIN + node_id)

    def remove_device(self, device_id, origin=DEFAULT_ORIGIN):
        return self._write(self._remove_device, device_id, origin=origin)

    def _remove_device(self, cur, log, device_id):
        row = self._x(
            cur, "SELECT version, home_node FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            return
        if row[1]:
            self._follow(cur, row[1], device_id)  # its home gets the delete, in a fetch too
        self._delete_grants(cur, log, "device_id = ?", (device_id,))
        self._delete_credentials(cur, log, "device_id = ?", (device_id,))
        self._x(cur, "DELETE FROM record_settings WHERE device_id = ?", (device_id,))
        self._x(cur, "DELETE FROM failover_moves WHERE device_id = ?", (device_id,))
        self._x(cur, "DELETE FROM devices WHERE device_id = ?", (device_id,))
        log.add(Entity.DEVICE, ChangeOp.DELETE, device_id, int(row[0]) + 1)

    def get_device(self, device_id):
        return self._read(self._get_device, device_id)

    def _get_device(self, cur, device_id):
        row = self._x(
            cur, f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        return _device(row) if row else None

    @_deferred
    def list_devices(self, cursor="", limit=1000, home_node=None, held_by=None):
        """``held_by``: only the devices that node holds (homed there or followed)."""
        return self._read(self._list_devices, cursor, _limit(limit), home_node, held_by)

    def _list_devices(self, cur, cursor, limit, home_node, held_by=None):
        if held_by is not None:
            # two index range scans in device order (homed there; followed), merged
            cols = ", ".join("d." + c.strip() for c in _DEVICE_COLS.split(","))
            rows = self._x(
                cur,
                f"SELECT * FROM (SELECT {_DEVICE_COLS} FROM devices"
                " WHERE home_node = ? AND device_id > ?"
                f" UNION ALL SELECT {cols} FROM node_devices n JOIN devices d"
                " ON d.device_id = n.device_id"
                " WHERE n.node_id = ? AND n.device_id > ? AND d.home_node <> ?) AS held"
                " ORDER BY device_id LIMIT ?",
                (held_by, cursor, held_by, cursor, held_by, limit + 1),
            ).fetchall()
            return _page([_device(r) for r in rows], limit, lambda r: r.device_id)
        if home_node is None:
            where, params = "device_id > ?", (cursor, limit + 1)
        else:
            where, params = "home_node = ? AND device_id > ?", (home_node, cursor, limit + 1)
        rows = self._x(
            cur,
            f"SELECT {_DEVICE_COLS} FROM devices WHERE {where} ORDER BY device_id LIMIT ?",
            params,
        ).fetchall()
        return _page([_device(r) for r in rows], limit, lambda r: r.device_id)

    # -- grants ---------------------------------------------------------------

    @_deferred
    def set_grant(self, principal, device_id, actions, expires=0, origin=DEFAULT_ORIGIN):
        """``expires``: when the grant stops applying, in ms since the epoch (0: never);
        every node enforces it at that time."""
        _check_principal(principal)
        actions = int(actions)
        if not 0 <= actions <= 0xFF:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"actions out of range: {actions}")
        expires = int(expires or 0)
        if not 0 <= expires < 2**63:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"expires out of range: {expires}")
        return self._write(self._set_grant, principal, device_id, actions, expires,
                           origin=origin)

    def _set_grant(self, cur, log, principal, device_id, actions, expires):
        if device_id.startswith(CU_TARGET):  # a wall or decoder: its account, WALL only
            if actions & ~Action.WALL:
                raise VssError(ResultCode.INVALID_ARGUMENT,
                               "a grant on a wall (cu:ACCOUNT) carries the WALL action only")
            if self._x(cur, "SELECT 1 FROM users WHERE username = ?",
                       (device_id[len(CU_TARGET):],)).fetchone() is None:
                raise VssError(ResultCode.NOT_FOUND, f"no account {device_id[3:]!r}")
        elif self._x(
            cur, "SELECT 1 FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone() is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
        row = self._x(
            cur, "SELECT version FROM grants WHERE principal = ? AND device_id = ?",
            (principal, device_id),
        ).fetchone()
        version = (int(row[0]) if row else 0) + 1
        self._x(
            cur,
            f"INSERT INTO grants ({_GRANT_COLS}) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (principal, device_id) DO UPDATE SET actions = excluded.actions,"
            " version = excluded.version, expires = excluded.expires",
            (principal, device_id, actions, version, expires),
        )
        record = GrantRecord(principal, device_id, actions, version, expires)
        log.add(Entity.GRANT, ChangeOp.UPSERT, grant_key(principal, device_id), version, record)

    def remove_grant(self, principal, device_id, origin=DEFAULT_ORIGIN):
        return self._write(
            self._delete_grants_where, "principal = ? AND device_id = ?",
            (principal, device_id), origin=origin,
        )

    def _delete_grants_where(self, cur, log, where, params):
        self._delete_grants(cur, log, where, params)

    def _delete_grants(self, cur, log, where, params):
        rows = self._x(
            cur,
            f"SELECT principal, device_id, version FROM grants WHERE {where}"
            " ORDER BY principal, device_id",
            params,
        ).fetchall()
        if rows:
            self._x(cur, f"DELETE FROM grants WHERE {where}", params)
        for principal, device_id, version in rows:
            log.add(
                Entity.GRANT, ChangeOp.DELETE, grant_key(principal, device_id), int(version) + 1
            )

    @_deferred
    def list_grants(self, cursor="", limit=1000, device_id=None, principal=None, held_by=None):
        """``held_by``: only the grants on the devices that node holds."""
        return self._read(self._list_grants, cursor, _limit(limit), device_id, principal,
                          held_by)

    def _list_grants(self, cur, cursor, limit, device_id, principal, held_by=None):
        if held_by is not None:
            return self._held_grants(cur, cursor, limit, held_by)
        where, params = [], []
        if cursor:
            where.append("(principal, device_id) > (?, ?)")
            params.extend(split_grant_key(cursor))
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if principal is not None:
            where.append("principal = ?")
            params.append(principal)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._x(
            cur,
            f"SELECT {_GRANT_COLS} FROM grants {clause}"
            " ORDER BY principal, device_id LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        return _page(
            [_grant(r) for r in rows], limit, lambda r: grant_key(r.principal, r.device_id)
        )

    def _held_grants(self, cur, cursor, limit, node_id):
        """The grants on the devices ``node_id`` holds and on every CU target (a wall or
        decoder, ``cu:<account>``), in (device, principal) order: the grants of the next
        ``limit + 1`` held devices (index range scans in device order), each device's
        grants by the ``grants_device`` index, so a page costs about its own size,
        whatever the share's and the database's.

        The cursor is a grant key; ``grant_key("", device)`` (an empty principal, which
        no grant has) means "after every grant of that device": the next page of a
        page cut at its last device rather than at ``limit`` grants."""
        after_principal, after_device = split_grant_key(cursor) if cursor else ("", "")
        # a cursor at a grant: that device again, its grants after that principal
        op, principal_filter = (">=", " WHERE (g.device_id, g.principal) > (?, ?)") \
            if after_principal else (">", "")
        cols = ", ".join("g." + c.strip() for c in _GRANT_COLS.split(","))
        rows = self._x(
            cur,
            "WITH ids AS (SELECT device_id FROM ("
            f"SELECT device_id FROM devices WHERE home_node = ? AND device_id {op} ?"
            " UNION ALL SELECT n.device_id FROM node_devices n JOIN devices d"
            f" ON d.device_id = n.device_id WHERE n.node_id = ? AND n.device_id {op} ?"
            " AND d.home_node <> ?"
            # who may drive a wall or decoder (``cu:<account>``): every node holds these
            " UNION ALL SELECT DISTINCT device_id FROM grants WHERE device_id >= ?"
            f" AND device_id < ? AND device_id {op} ?"
            ") AS held ORDER BY device_id LIMIT ?),"
            f" page AS (SELECT {cols} FROM ids JOIN grants g ON g.device_id = ids.device_id"
            f"{principal_filter} ORDER BY g.device_id, g.principal LIMIT ?)"
            # and one more row: the last device of ids and how many there are
            " SELECT * FROM page UNION ALL SELECT NULL, MAX(device_id), COUNT(*), 0, 0"
            " FROM ids",
            (node_id, after_device, node_id, after_device, node_id,
             CU_TARGET, CU_TARGET[:-1] + chr(ord(CU_TARGET[-1]) + 1), after_device, limit + 1,
             *((after_device, after_principal) if after_principal else ()), limit + 1),
        ).fetchall()
        last_device, devices = None, 0
        grants = []
        for r in rows:
            if r[0] is None:
                last_device, devices = r[1], int(r[2])
            else:
                grants.append(_grant(r))
        grants.sort(key=lambda g: (g.device_id, g.principal))
        if len(grants) > limit:
            grants = grants[:limit]
            return grants, grant_key(grants[-1].principal, grants[-1].device_id)
        if devices > limit:  # every grant of ids, and more devices after the last
            return grants, grant_key("", last_device)
        return grants, ""

    # -- stream credentials ---------------------------------------------------

    def add_credential(self, record, origin=DEFAULT_ORIGIN):
        """Store a new stream credential; its user must exist, be enabled and hold the
        VIEW grant on its device (else FORBIDDEN). ``created`` and ``version`` are set
        here. Deferred [Change]."""
        return self._write(self._add_credential, record, origin=origin)

    def _add_credential(self, cur, log, record):
        if self._get_device(cur, record.device_id) is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {record.device_id!r}")
        user = self._get_user(cur, record.username)
        if user is None or not user.enabled:
            raise VssError(ResultCode.FORBIDDEN, f"no enabled user {record.username!r}")
        if not self._actions(cur, user, record.device_id, log.at) & Action.VIEW:
            raise VssError(ResultCode.FORBIDDEN,
                           f"{record.username} may not view {record.device_id}")
        if self._get_credential(cur, record.cred_id) is not None:
            raise VssError(ResultCode.CONFLICT, f"stream credential {record.cred_id} exists")
        stored = StreamCredential(record.cred_id, record.username, record.device_id,
                                  record.name, log.at, int(record.expires), 0,
                                  bytes(record.sealed), 1)
        self._x(cur, f"INSERT INTO stream_credentials ({_CRED_COLS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (stored.cred_id, stored.username, stored.device_id, stored.name,
                 stored.created, stored.expires, 0, stored.sealed, 1))
        log.add(Entity.CREDENTIAL, ChangeOp.UPSERT, stored.cred_id, 1, stored)

    def _actions(self, cur, user, device_id, now):
        """The Action bits ``user`` (a UserRecord) holds on a device at ``now`` (ms),
        groups included; grants expired by then do not count."""
        principals = ["user:" + user.username] + ["group:" + g for g in user.groups]
        marks = ", ".join("?" * len(principals))
        rows = self._x(cur, f"SELECT actions FROM grants WHERE device_id = ? AND principal"
                       f" IN ({marks}) AND (expires = 0 OR expires > ?)",
                       (device_id, *principals, now)).fetchall()
        actions = 0
        for (bits,) in rows:
            actions |= int(bits)
        return actions

    def revoke_credential(self, cred_id, username=None, origin=DEFAULT_ORIGIN):
        """Revoke a stream credential now (``username``: only if it is theirs). Deferred
        [Change]; NOT_FOUND for an unknown id (or another user's), CONFLICT when it is
        revoked already."""
        return self._write(self._revoke_credential, cred_id, username, origin=origin)

    def _revoke_credential(self, cur, log, cred_id, username):
        current = self._get_credential(cur, cred_id)
        if current is None or (username is not None and current.username != username):
            raise VssError(ResultCode.NOT_FOUND, f"no stream credential {cred_id}")
        if current.revoked:
            raise VssError(ResultCode.CONFLICT, f"stream credential {cred_id} is revoked "
                           "already")
        version = current.version + 1
        self._x(cur, "UPDATE stream_credentials SET revoked = ?, version = ? WHERE cred_id = ?",
                (log.at, version, cred_id))
        record = StreamCredential(*(getattr(current, n) for n in current._fields[:6]), log.at,
                                  current.sealed, version)
        log.add(Entity.CREDENTIAL, ChangeOp.UPSERT, cred_id, version, record)

    def _delete_credentials(self, cur, log, where, params):
        rows = self._x(cur, f"SELECT cred_id, version FROM stream_credentials WHERE {where}"
                       " ORDER BY cred_id", params).fetchall()
        if rows:
            self._x(cur, f"DELETE FROM stream_credentials WHERE {where}", params)
        for cred_id, version in rows:
            log.add(Entity.CREDENTIAL, ChangeOp.DELETE, cred_id, int(version) + 1)

    def get_credential(self, cred_id):
        return self._read(self._get_credential, cred_id)

    def _get_credential(self, cur, cred_id):
        row = self._x(cur, f"SELECT {_CRED_COLS} FROM stream_credentials WHERE cred_id = ?",
                      (cred_id,)).fetchone()
        return _credential(row) if row else None

    @_deferred
    def list_credentials(self, cursor="", limit=1000, username=None, device_id=None,
                         held_by=None):
        """``held_by``: only the credentials of the users registered on that node."""
        return self._read(self._list_credentials, cursor, _limit(limit), username, device_id,
                          held_by)

    def _list_credentials(self, cur, cursor, limit, username, device_id, held_by=None):
        where, params = ["cred_id > ?"], [cursor]
        if held_by is not None:
            where.append("username IN (SELECT username FROM node_users WHERE node_id = ?)")
            params.append(held_by)  # a node's users' credentials: few, by the user index
        if username is not None:
            where.append("username = ?")
            params.append(username)
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        rows = self._x(cur, f"SELECT {_CRED_COLS} FROM stream_credentials WHERE "
                       f"{' AND '.join(where)} ORDER BY cred_id LIMIT ?",
                       (*params, limit + 1)).fetchall()
        return _page([_credential(r) for r in rows], limit, lambda r: r.cred_id)

    # -- node registry ----------------------------------------------------------

    def upsert_node(self, node_id, signalling, media, capacity, origin=DEFAULT_ORIGIN):
        return self._write(self._upsert_node, node_id, signalling, media, int(capacity),
                           origin=origin)

    def _upsert_node(self, cur, log, node_id, signalling, media, capacity):
        row = self._x(cur, "SELECT version FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        if row is None:
            version = 1
            self._x(
                cur,
                f"INSERT INTO nodes ({_NODE_COLS}, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (node_id, signalling, media, capacity, "down", "{}", 0, 0, version),
            )
        else:
            version = int(row[0]) + 1
            self._x(
                cur,
                "UPDATE nodes SET signalling = ?, media = ?, capacity = ?, version = ?"
                " WHERE node_id = ?",
                (signalling, media, capacity, version, node_id),
            )
        log.add(Entity.NODE, ChangeOp.UPSERT, node_id, version)

    def remove_node(self, node_id, origin=DEFAULT_ORIGIN):
        return self._write(self._remove_node, node_id, origin=origin)

    def _remove_node(self, cur, log, node_id):
        row = self._x(cur, "SELECT version FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        if row is None:
            return
        self._x(cur, "DELETE FROM nodes WHERE node_id = ?", (node_id,))
        log.add(Entity.NODE, ChangeOp.DELETE, node_id, int(row[0]) + 1)

    @_deferred
    def set_node_state(self, node_id, state, load=None):
        if state not in ("up", "down"):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"node state must be up or down: {state!r}")
        load_json = None if load is None else json.dumps(load, sort_keys=True)
        return self._write_unlogged(self._set_node_state, node_id, state, load_json,
                                    self._now_ms())

    def _set_node_state(self, cur, log, node_id, state, load_json, now):
        if load_json is None:
            self._x(
                cur, "UPDATE nodes SET state = ?, last_seen = ? WHERE node_id = ?",
                (state, now, node_id),
            )
        else:
            self._x(
                cur,
                "UPDATE nodes SET state = ?, load_json = ?, last_seen = ? WHERE node_id = ?",
                (state, load_json, now, node_id),
            )
        if cur.rowcount == 0:
            raise VssError(ResultCode.UNKNOWN_NODE, f"no node {node_id!r}")

    def set_node_applied(self, node_id, seq):
        return self._write_unlogged(self._set_node_applied, node_id, int(seq))

    def _set_node_applied(self, cur, log, node_id, seq):
        self._x(cur, "UPDATE nodes SET applied_seq = ? WHERE node_id = ?", (seq, node_id))
        if cur.rowcount == 0:
            raise VssError(ResultCode.UNKNOWN_NODE, f"no node {node_id!r}")

    def list_nodes(self):
        return self._read(self._list_nodes)

    def _list_nodes(self, cur):
        rows = self._x(cur, f"SELECT {_NODE_COLS} FROM nodes ORDER BY node_id").fetchall()
        return [_node(r) for r in rows]

    # -- recording settings -------------------------------------------------------

    def set_record_settings(self, device_id, channel, settings, origin=DEFAULT_ORIGIN):
        text = json.dumps(settings, sort_keys=True)
        return self._write(self._set_record_settings, device_id, int(channel), text,
                           origin=origin)

    def _set_record_settings(self, cur, log, device_id, channel, text):
        current = self._get_device(cur, device_id)
        if current is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
        self._x(
            cur,
            "INSERT INTO record_settings (device_id, channel, settings_json) VALUES (?, ?, ?)"
            " ON CONFLICT (device_id, channel) DO UPDATE SET settings_json = excluded.settings_json",
            (device_id, channel, text),
        )
        record = _replace_device(current, version=current.version + 1)
        self._x(
            cur, "UPDATE devices SET version = ? WHERE device_id = ?", (record.version, device_id)
        )
        log.add(Entity.DEVICE, ChangeOp.UPSERT, device_id, record.version, record)

    def get_record_settings(self, device_id, channel):
        return self._read(self._get_record_settings, device_id, int(channel))

    def _get_record_settings(self, cur, device_id, channel):
        row = self._x(
            cur,
            "SELECT settings_json FROM record_settings WHERE device_id = ? AND channel = ?",
            (device_id, channel),
        ).fetchone()
        return json.loads(row[0]) if row else None

    # -- what each node holds (docs/consistency.md) ----------------------------------

    def follow_devices(self, node_id, device_ids):
        """``node_id`` holds these devices from now on (those homed elsewhere that it did
        not follow yet): one transaction that records it and logs, for each, the device
        and every grant on it as they are now (origin ``follow:<node>``), so that the
        node gets them in the change stream, in order. Deferred [Change]."""
        return self._write(self._follow_devices, node_id, list(device_ids),
                           origin=FOLLOW_ORIGIN + node_id)

    def _follow_devices(self, cur, log, node_id, device_ids):
        for device_id in sorted(set(device_ids)):
            record = self._get_device(cur, device_id)
            if record is None or record.home_node == node_id:
                continue
            if not self._follow(cur, node_id, device_id):
                continue
            log.add(Entity.DEVICE, ChangeOp.UPSERT, device_id, record.version, record)
            self._announce_grants(cur, log, node_id, device_id)

    def register_user(self, node_id, username):
        """A CU user logs in on ``node_id`` for the first time: the node holds the user
        from now on, and the devices the user may see. Deferred [Change] (empty when it
        was registered there already and follows them all)."""
        return self._write(self._register_user, node_id, username,
                           origin=FOLLOW_ORIGIN + node_id)

    def _register_user(self, cur, log, node_id, username):
        user = self._get_user(cur, username)
        if user is None:
            return
        if self._x(cur, "SELECT 1 FROM node_users WHERE node_id = ? AND username = ?",
                   (node_id, username)).fetchone() is None:
            self._x(cur, "INSERT INTO node_users (node_id, username) VALUES (?, ?)",
                    (node_id, username))
            log.add(Entity.USER, ChangeOp.UPSERT, username, user.version, user)
            for c in self._list_credentials(cur, "", 100_000, username, None)[0]:
                log.add(Entity.CREDENTIAL, ChangeOp.UPSERT, c.cred_id, c.version, c)
        principals = ["user:" + username] + ["group:" + g for g in user.groups]
        marks = ", ".join("?" * len(principals))
        seen = [r[0] for r in self._x(
            cur, f"SELECT DISTINCT device_id FROM grants WHERE principal IN ({marks})",
            tuple(principals)).fetchall()]
        self._follow_devices(cur, log, node_id, seen)

    def device_homes(self, cursor="", limit=50_000):
        """Deferred ([(device_id, home_node)], next_cursor): every device's home, paged,
        without the records (what CMS's routing index needs at start)."""
        return self._read(self._device_homes, cursor, _limit(limit))

    def _device_homes(self, cur, cursor, limit):
        rows = self._x(cur, "SELECT device_id, home_node FROM devices WHERE device_id > ?"
                       " ORDER BY device_id LIMIT ?", (cursor, limit + 1)).fetchall()
        rows = [(d, h) for d, h in rows]
        return _page(rows, limit, lambda r: r[0])

    def interest(self):
        """Deferred (node_devices rows, node_users rows): (node_id, key) pairs, for CMS's
        index of what each node holds."""
        return self._read(self._interest)

    def _interest(self, cur):
        devices = [(n, d) for n, d in self._x(
            cur, "SELECT node_id, device_id FROM node_devices").fetchall()]
        users = [(n, u) for n, u in self._x(
            cur, "SELECT node_id, username FROM node_users").fetchall()]
        return devices, users

    # -- change log -----------------------------------------------------------------

    def head_seq(self):
        return self._read(self._head_seq)

    def _head_seq(self, cur):
        top = self._x(cur, "SELECT MAX(seq) FROM change_log").fetchone()[0]
        # a fully compacted log still remembers how far it went
        return max(int(top or 0), self._watermark(cur) - 1)

    def _watermark(self, cur):
        row = self._x(cur, "SELECT value FROM meta WHERE key = 'log_watermark'").fetchone()
        return int(row[0])

    @_deferred
    def changes_after(self, seq, limit=1000):
        return self._read(self._changes_after, int(seq), _limit(limit))

    @_deferred
    def changes_for(self, seq, limit, keep):
        """Deferred (changes, scanned, reload_required): the entries after ``seq`` (at
        most ``limit`` scanned) that ``keep(entity, op, key, origin)`` keeps, with their current
        records; ``scanned``: every entry up to it was looked at (the head when the log
        ended before ``limit``). ``keep`` runs in the database thread: it only reads."""
        return self._read(self._changes_for, int(seq), _limit(limit), keep)

    def _changes_for(self, cur, seq, limit, keep):
        head = self._head_seq(cur)
        if seq + 1 < self._watermark(cur):
            return [], seq, True
        rows = self._x(
            cur,
            "SELECT seq, entity, op, key, version, origin FROM change_log"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        scanned = int(rows[-1][0]) if len(rows) == limit else max(
            head, int(rows[-1][0]) if rows else seq)
        rows = [r for r in rows if keep(r[1], r[2], r[3], r[5])]
        changes, _ = self._changes_of(cur, rows)
        return changes, scanned, False

    def _changes_after(self, cur, seq, limit):
        if seq + 1 < self._watermark(cur):
            return [], True
        rows = self._x(
            cur,
            "SELECT seq, entity, op, key, version, origin FROM change_log"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return self._changes_of(cur, rows)

    def _changes_of(self, cur, rows):
        keys = {Entity.DEVICE: set(), Entity.USER: set(), Entity.GRANT: set(),
                Entity.CREDENTIAL: set()}
        for row in rows:
            if row[2] == ChangeOp.UPSERT and row[1] in keys:
                keys[Entity(row[1])].add(row[3])
        devices = self._fetch_many(cur, "devices", _DEVICE_COLS, "device_id",
                                   keys[Entity.DEVICE], _device, lambda r: r.device_id)
        users = self._fetch_many(cur, "users", _USER_COLS, "username",
                                 keys[Entity.USER], _user, lambda r: r.username)
        grants = self._fetch_grants(cur, keys[Entity.GRANT])
        credentials = self._fetch_many(cur, "stream_credentials", _CRED_COLS, "cred_id",
                                       keys[Entity.CREDENTIAL], _credential,
                                       lambda r: r.cred_id)
        current = {Entity.DEVICE: devices, Entity.USER: users, Entity.GRANT: grants,
                   Entity.CREDENTIAL: credentials}
        changes = []
        for s, entity, op, key, version, origin in rows:
            entity, op, record = Entity(entity), ChangeOp(op), None
            if op == ChangeOp.UPSERT and entity in current:
                record = current[entity].get(key)
                if record is None:
                    op = ChangeOp.DELETE  # deleted since; a later entry says so too
            changes.append(_change(int(s), entity, op, key, int(version), origin, record))
        return changes, False

    def _fetch_many(self, cur, table, cols, column, keys, make, key_of):
        found = {}
        for chunk in _chunks(sorted(keys)):
            marks = ", ".join("?" * len(chunk))
            rows = self._x(
                cur, f"SELECT {cols} FROM {table} WHERE {column} IN ({marks})", tuple(chunk)
            ).fetchall()
            for row in rows:
                rec = make(row)
                found[key_of(rec)] = rec
        return found

    def _fetch_grants(self, cur, keys):
        found = {}
        for chunk in _chunks(sorted(keys)):
            marks = ", ".join(["(?, ?)"] * len(chunk))
            params = [p for key in chunk for p in split_grant_key(key)]
            rows = self._x(
                cur,
                f"SELECT {_GRANT_COLS} FROM grants WHERE (principal, device_id)"
                f" IN (VALUES {marks})",
                tuple(params),
            ).fetchall()
            for row in rows:
                rec = _grant(row)
                found[grant_key(rec.principal, rec.device_id)] = rec
        return found

    def compact(self, before_seq):
        return self._run(self._wpool, self._compact, int(before_seq))

    def _compact(self, cur, before_seq):
        self.dialect.begin_write(cur)
        top = int(self._x(cur, "SELECT MAX(seq) FROM change_log").fetchone()[0] or 0)
        current = self._watermark(cur)
        # never claim to have dropped sequences that were not issued yet
        watermark = min(before_seq, max(top, current - 1) + 1)
        if watermark <= current:
            return current
        self._x(cur, "DELETE FROM change_log WHERE seq < ?", (watermark,))
        self._x(
            cur, "UPDATE meta SET value = ? WHERE key = 'log_watermark'", (str(watermark),)
        )
        return watermark

    # -- the static file of a standalone node -------------------------------------------

    def export_static(self, home_node=None):
        """Deferred (devices, users, grants): every record, read in one transaction so
        that they agree with each other (for ``vss-admin export-static``). With
        ``home_node``, only the devices homed on it or on none, and the grants on them;
        users are all kept (a node holds every user)."""
        return self._read(self._export_static, home_node)

    def _export_static(self, cur, home_node):
        if home_node is None:
            where, params = "", ()
        else:
            where, params = "WHERE home_node IN (?, '')", (home_node,)
        devices = [_device(r) for r in self._x(
            cur, f"SELECT {_DEVICE_COLS} FROM devices {where} ORDER BY device_id", params
        ).fetchall()]
        users = [_user(r) for r in self._x(
            cur, f"SELECT {_USER_COLS} FROM users ORDER BY username"
        ).fetchall()]
        kept = {d.device_id for d in devices}
        grants = [g for g in (_grant(r) for r in self._x(
            cur, f"SELECT {_GRANT_COLS} FROM grants ORDER BY principal, device_id"
        ).fetchall()) if g.device_id in kept]
        return devices, users, grants

    # -- admin tokens (``tokens.IAdminTokenStore``) ------------------------------------

    def add_admin_token(self, name, token_hash, expires_in=None):
        now = self._now_ms()
        expires = None if expires_in is None else now + int(round(float(expires_in) * 1000))
        return self._run(
            self._wpool, self._add_admin_token, name, _hash_text(token_hash), now, expires
        )

    def _add_admin_token(self, cur, name, token_hash, now, expires):
        self.dialect.begin_write(cur)
        self._x(
            cur,
            "INSERT INTO admin_tokens (token_hash, name, created, expires) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name",
            (token_hash, name, now, expires),
        )
        row = self._x(
            cur, "SELECT id FROM admin_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return int(row[0])

    def admin_for_token_hash(self, token_hash):
        d = self._read(self._token_by_hash, _hash_text(token_hash), self._now_ms())
        return d.addCallback(lambda t: t.name if t is not None and t.state == ACTIVE else None)

    @inlineCallbacks
    def authenticate_admin_token(self, token_hash):
        token = yield self._read(self._token_by_hash, _hash_text(token_hash), self._now_ms())
        if token is None or token.state != ACTIVE:
            return token
        now = self._now_ms()
        if token.last_used is None or now - token.last_used >= TOUCH_INTERVAL_MS:
            yield self._run(self._wpool, self._touch_admin_token, token.id, now)
            token = token._replace(last_used=now)
        return token

    def _touch_admin_token(self, cur, token_id, now):
        self.dialect.begin_write(cur)
        self._x(cur, "UPDATE admin_tokens SET last_used = ? WHERE id = ?", (now, token_id))

    def _token_by_hash(self, cur, token_hash, now):
        row = self._x(
            cur, f"SELECT {_TOKEN_COLS} FROM admin_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return _token(row, now) if row else None

    def get_admin_token(self, token_id):
        return self._read(self._get_admin_token, int(token_id), self._now_ms())

    def _get_admin_token(self, cur, token_id, now):
        row = self._x(
            cur, f"SELECT {_TOKEN_COLS} FROM admin_tokens WHERE id = ?", (token_id,)
        ).fetchone()
        return _token(row, now) if row else None

    def list_admin_tokens(self):
        return self._read(self._list_admin_tokens, self._now_ms())

    def _list_admin_tokens(self, cur, now):
        rows = self._x(cur, f"SELECT {_TOKEN_COLS} FROM admin_tokens ORDER BY id").fetchall()
        return [_token(r, now) for r in rows]

    def count_admin_tokens(self, valid_only=True):
        return self._read(self._count_admin_tokens, bool(valid_only), self._now_ms())

    def _count_admin_tokens(self, cur, valid_only, now, but=None):
        where, params = [], []
        if valid_only:
            where.append("revoked IS NULL AND (expires IS NULL OR expires > ?)")
            params.append(now)
        if but is not None:
            where.append("id <> ?")
            params.append(but)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        row = self._x(cur, f"SELECT COUNT(*) FROM admin_tokens {clause}", params).fetchone()
        return int(row[0])

    def revoke_admin_token(self, token_id, force=False):
        return self._run(
            self._wpool, self._revoke_admin_token, int(token_id), bool(force), self._now_ms()
        )

    def _revoke_admin_token(self, cur, token_id, force, now):
        self.dialect.begin_write(cur)
        token = self._get_admin_token(cur, token_id, now)
        if token is None:
            raise VssError(ResultCode.NOT_FOUND, f"no admin token {token_id}")
        if token.state == REVOKED:
            raise VssError(ResultCode.CONFLICT, f"admin token {token_id} is revoked already")
        if token.state == ACTIVE and not force and not self._count_admin_tokens(
            cur, True, now, but=token_id
        ):
            raise LastTokenError(token_id)
        self._x(cur, "UPDATE admin_tokens SET revoked = ? WHERE id = ?", (now, token_id))
        return token._replace(revoked=now, state=REVOKED)


def _hash_text(token_hash):
    """Hashes are kept as lowercase hex text; raw digests are accepted too."""
    if isinstance(token_hash, bytes | bytearray):
        return bytes(token_hash).hex()
    return token_hash.lower()


def _limit(limit):
    limit = int(limit)
    if limit < 1:
        raise VssError(ResultCode.INVALID_ARGUMENT, f"limit must be positive: {limit}")
    return limit


def _page(records, limit, key_of):
    """(records, next_cursor) from ``limit + 1`` fetched rows."""
    if len(records) > limit:
        records = records[:limit]
        return records, key_of(records[-1])
    return records, ""


def _replace_device(rec, **changes):
    values = {n: getattr(rec, n) for n in rec._fields}
    values.update(changes)
    values["enabled"] = bool(values["enabled"])
    values["channels"] = int(values["channels"])
    return DeviceRecord(**values)


def _change(seq, entity, op, key, version, origin, record):
    return Change(
        seq,
        entity,
        op,
        key,
        version,
        origin,
        record if entity == Entity.DEVICE else None,
        record if entity == Entity.USER else None,
        record if entity == Entity.GRANT else None,
        record if entity == Entity.CREDENTIAL else None,
    )
