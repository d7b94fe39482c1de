"""
The Redis backend of the RGM's in-memory database (``IMemoryStore``).

This is the only module of vss that imports txredisapi.

Reads are served from process memory exactly as in ``MemoryStore`` (this class extends
it). Every write changes memory at once and is queued for Redis; the queue is sent once
per reactor turn as one pipelined batch, so 20,000 keepalives landing in one turn cost one
round trip. Several writes to one key in a turn become one command, and the commands
travel inside a few ``EVAL`` calls of one small Lua script (each applies up to
``scriptSize`` commands atomically): txredisapi spends tens of microseconds on each
command it sends and each reply it parses, far more than Redis spends on an ``HSET``. The Deferred a write returns fires when Redis acknowledged the
batch holding it. While Redis is away, memory stays authoritative: writes keep
coalescing (one entry per key) and the batch is retried with a growing delay.

Key layout (``<node>`` is the node id), all values JSON, bytes as base64::
    vss:<node>:device:<device_id>          string  DeviceRecord
    vss:<node>:user:<username>             string  UserRecord
    vss:<node>:grant:<principal>|<device>  string  GrantRecord
    vss:<node>:cred:<cred_id>              string  StreamCredential (sealed secret)
    vss:<node>:session:<session_id>        string  session info (expires: ``sessionTTL``)
    vss:<node>:state:<device_id>           hash    field -> JSON value
    vss:<node>:meta                        hash    key -> JSON value

``load()`` reads the namespace back at start-up so the node's dynamic state survives
a restart of the RGM process. Session keys are the exception: they live
``sessionTTL`` seconds and are written again while their link lives, and a node drops
at start the sessions it loaded (no link owns them any more), so a killed node's
sessions never pile up.

Needs Redis 5 or later (multi-field ``HSET``, scripts that write after ``SCAN``).

The link (``vss.store.redislink``): ``redis://host:port/db`` is plain TCP; ``rediss://host:port/db`` is TLS, the
server's certificate checked against ``ca_file`` (PEM, one or more certificates; the
system's trust roots by default) and against the host name of the URL, with a client
certificate (``cert_file``, ``key_file``) for servers that ask for one. An ACL user name
may be in the URL (``rediss://vss@host:6380/0``); the password never is (it would show
in ``ps`` and in logs): it comes from a file (``vss-node --store-password-file``), and
it is only sent in clear to a loopback address. ``load()`` first checks the link once
with a short handshake of its own (TLS, ``AUTH``, ``SELECT``, ``PING``): a certificate
that does not verify, a TLS/plain mismatch or a refused password fails the load with
``StoreUnavailable`` naming the cause, while a server that is merely not up yet is
waited for.
"""

import base64
import json
import sys

import txredisapi
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from vss.interfaces import IMemoryStore
from vss.protocols.messages import (
    DeviceRecord,
    GrantRecord,
    StreamCredential,
    UserRecord,
    Verifier,
)
from vss.store.memory import MemoryStore
from vss.store.redislink import (
    LinkProbe,
    StoreUnavailable,
    is_loopback,
    parse_url,
    tls_options,
)

_dumps = json.JSONEncoder(separators=(",", ":")).encode

# txredisapi spends tens of microseconds on every argument it sends and every element
# of a reply it parses (it pauses the transport for each bulk element), far more than
# Redis spends on an HSET. So a batch travels as one JSON argument of a Lua script and
# the load comes back as one JSON reply per SCAN step. The scripts touch keys of this
# node's namespace only, not declared in KEYS: fine for one Redis server, not meant for
# Redis Cluster.

#: ARGV[1]: a JSON list of commands ["DEL", key] / ["SET", key, text] / ["SET", key,
#: text, seconds to live] / ["HSET", key, field, text, ...]. Errors are collected, not raised: the rest of the
#: batch still applies, and retrying what Redis refused (a key of the wrong type put
#: there by someone else) cannot help.
WRITE_SCRIPT = """
local errors = {}
for _, c in ipairs(cjson.decode(ARGV[1])) do
  local r
  if c[1] == 'DEL' then
    r = redis.pcall('DEL', c[2])
  elseif c[1] == 'SET' and c[4] then
    r = redis.pcall('SET', c[2], c[3], 'EX', c[4])
  elseif c[1] == 'SET' then
    r = redis.pcall('SET', c[2], c[3])
  else
    r = redis.pcall('HSET', c[2], unpack(c, 3))
  end
  if type(r) == 'table' and r.err then
    errors[#errors + 1] = c[2] .. ': ' .. r.err
  end
end
return errors
"""

#: One SCAN step (ARGV: cursor, pattern, count); returns the next cursor and a JSON
#: list of [key, value] with value a string (GET) or a flat [field, value, ...] list.
LOAD_SCRIPT = """
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {}
for _, key in ipairs(step[2]) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then
    out[#out + 1] = {key, redis.call('GET', key)}
  elseif kind == 'hash' then
    out[#out + 1] = {key, redis.call('HGETALL', key)}
  end
end
if #out == 0 then
  return {step[1], '[]'}
end
return {step[1], cjson.encode(out)}
"""

#: One SCAN step deleting what it finds; returns the next cursor.
WIPE_SCRIPT = """
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
for _, key in ipairs(step[2]) do
  redis.call('DEL', key)
end
return step[1]
"""


class StoreClosed(Exception):
    """A write reached a RedisStore after ``close()``."""


# ---------------------------------------------------------------------------
# URL, password, TLS and JSON codec


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _verifier_to_json(verifier):
    if verifier is None:
        return None
    return {
        "salt": _b64(verifier.salt),
        "iterations": verifier.iterations,
        "stored_key": _b64(verifier.stored_key),
        "server_key": _b64(verifier.server_key),
    }


def _verifier_from_json(obj):
    if obj is None:
        return None
    return Verifier(
        salt=base64.b64decode(obj["salt"]),
        iterations=obj["iterations"],
        stored_key=base64.b64decode(obj["stored_key"]),
        server_key=base64.b64decode(obj["server_key"]),
    )


def encode_record(record):
    """A ``DeviceRecord``, ``UserRecord``, ``GrantRecord`` or ``StreamCredential`` as
    JSON text."""
    fields = {name: getattr(record, name) for name in record._fields}
    if "verifier" in fields:
        fields["verifier"] = _verifier_to_json(fields["verifier"])
    if "sealed" in fields:
        fields["sealed"] = base64.b64encode(bytes(fields["sealed"])).decode("ascii")
    if "groups" in fields:
        fields["groups"] = list(fields["groups"])
    return _dumps(fields)


def decode_record(cls, text):
    fields = json.loads(text)
    if "verifier" in fields:
        fields["verifier"] = _verifier_from_json(fields["verifier"])
    if "sealed" in fields:
        fields["sealed"] = base64.b64decode(fields["sealed"])
    return cls(**{name: fields[name] for name in cls._fields})


def _pairs(flat):
    """HGETALL's flat [field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _glob_escape(text):
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Batch:
    """Writes taken from the queue and sent to Redis together."""

    __slots__ = ("records", "state", "meta", "waiters", "started", "watchdog", "warned")

    def __init__(self, records, state, meta, waiters, started):
        self.records = records
        self.state = state
        self.meta = meta
        self.waiters = waiters
        self.started = started
        self.watchdog = None
        self.warned = False

    def size(self):
        return len(self.records) + len(self.state) + len(self.meta)


@implementer(IMemoryStore)
class RedisStore(MemoryStore):
    """Process memory mirrored to Redis, one namespace per node.

    ``reactor`` drives the store's own timers (the per-turn send, retries, warnings);
    txredisapi itself runs on the global reactor. ``connection`` replaces the
    txredisapi handler (tests); by default one lazy connection is opened on first use,
    never in the constructor. The store owns its connection: ``close()`` disconnects it.

    ``password`` is sent with ``AUTH`` (with the URL's user name if it has one); ``tls``
    replaces the client TLS options of a ``rediss://`` URL (by default: the system's
    trust roots and the URL's host name, see ``tls_options``).
    """

    name = "redis"
    log = Logger()

    #: commands per EVAL of WRITE_SCRIPT (Redis runs each without interruption)
    scriptSize = 5000
    #: SCAN COUNT of one step of ``load`` and ``wipe``
    scanCount = 1000
    #: seconds a batch (or ``load``) may wait for Redis before a warning is logged
    slowAfter = 5.0
    #: first and largest delay between retries of a failed batch
    retryInitial = 0.5
    retryMax = 30.0
    #: how long ``close()`` waits for pending writes
    closeTimeout = 5.0
    connectTimeout = 5.0
    #: seconds the start-up handshake (see ``check``) waits for Redis to answer
    replyTimeout = 10.0
    #: queued write Deferreds before the unobservable ones are dropped (see _observable)
    compactAfter = 10000
    #: seconds a session key lives in Redis; the store writes the sessions it holds
    #: again every third of it, so only the keys of a node that died expire
    sessionTTL = 6 * 3600

    def __init__(self, url, node_id, reactor=None, connection=None, password=None, tls=None):
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(clock=reactor)
        self._reactor = reactor
        self.url = url
        self._params = p = parse_url(url)
        if tls is not None and not p["tls"]:
            raise ValueError(f"TLS options given for a plain Redis URL {url!r}: use rediss://")
        if password is not None and not p["tls"] and not is_loopback(p["host"]):
            raise ValueError(
                f"a redis:// URL would send the password to {p['host']} in clear: use rediss://"
            )
        if p["tls"] and tls is None:
            tls = tls_options(p["host"])
        self._tls = tls
        self._password = password
        self.where = f"{'rediss' if p['tls'] else 'redis'}://{p['host']}:{p['port']}"
        if not node_id or ":" in node_id:
            # "vss:a:*" would also match the keys of a node "a:b"
            raise ValueError(f"node id {node_id!r} cannot name a Redis namespace (empty or ':')")
        self.node_id = node_id
        self.prefix = f"vss:{node_id}:"
        #: the txredisapi connection handler (None until first used)
        self.redis = connection
        self._own_connection = connection is None  # diagnosed with a handshake of our own
        self._records = {}  # redis key -> JSON text to SET, or None to DEL
        self._state_q = {}  # device_id -> [replace, {field: JSON text}]
        self._meta_q = {}  # meta key -> JSON text
        self._waiters = []  # Deferreds of the queued writes
        self._compact_at = self.compactAfter
        self._call = None  # delayed call sending the next batch
        self._inflight = None  # the _Batch Redis has not acknowledged yet
        self._load_watchdog = None  # delayed warning about a slow load()
        self._retry_delay = self.retryInitial
        self._closed = False
        self._checking = None  # the handshake of check() or its wait before a retry
        self._session_keeper = None  # LoopingCall writing the sessions again (their TTL)

    # -- keys ------------------------------------------------------------------------

    def key(self, kind, ident=None):
        """The Redis key of one object, e.g. ``key('device', 'cam-1')``."""
        if ident is None:
            return self.prefix + kind
        return f"{self.prefix}{kind}:{ident}"

    def _grant_key(self, principal, device_id):
        return self.key("grant", f"{principal}|{device_id}")

    # -- connection ------------------------------------------------------------------

    def _connection(self):
        if self.redis is None:
            p = self._params
            self.redis = txredisapi.lazyConnection(
                host=p["host"],
                port=p["port"],
                dbid=p["dbid"],
                password=self._password,
                username=p["username"],
                ssl_context_factory=self._tls or False,
                reconnect=True,
                connectTimeout=self.connectTimeout,
                convertNumbers=False,
            )
        return self.redis

    def _pipelined(self, commands):
        """Send commands in one pipeline; a Deferred list of replies."""

        def run(pipe):
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute_pipeline()

        return defer.maybeDeferred(lambda: self._connection().pipeline()).addCallback(run)

    # -- the write queue -------------------------------------------------------------

    def _queued(self):
        """The Deferred of one queued write; makes sure a batch will be sent."""
        if self._closed:
            return defer.fail(StoreClosed(f"store of node {self.node_id} is closed"))
        d = defer.Deferred()
        self._waiters.append(d)
        if len(self._waiters) >= self._compact_at:
            self._waiters = _observable(self._waiters)
            self._compact_at = max(self.compactAfter, 2 * len(self._waiters))
        if self._call is None and self._inflight is None:
            self._call = self._reactor.callLater(0, self._send)
        return d

    def _queue_empty(self):
        return not (self._records or self._state_q or self._meta_q)

    def _commands(self, batch):
        """The batch as Redis commands: (DEL, key), (SET, key, text), (HSET, key, ...)."""
        commands = []
        sessions = self.key("session", "")
        for key, text in batch.records.items():
            if text is None:
                commands.append(("DEL", key))
            elif key.startswith(sessions):
                commands.append(("SET", key, text, self.sessionTTL))
            else:
                commands.append(("SET", key, text))
        for device_id, (replace, fields) in batch.state.items():
            key = self.key("state", device_id)
            if replace:
                commands.append(("DEL", key))
            if fields:
                commands.append(("HSET", key, *_flatten(fields)))
        if batch.meta:
            commands.append(("HSET", self.key("meta"), *_flatten(batch.meta)))
        return commands

    def _scripted(self, commands):
        """The commands as EVAL calls of WRITE_SCRIPT."""
        return [
            ("EVAL", WRITE_SCRIPT, 0, _dumps(commands[start : start + self.scriptSize]))
            for start in range(0, len(commands), self.scriptSize)
        ]

    def _send(self):
        self._call = None
        if self._inflight is not None or self._closed:
            return
        if self._queue_empty():
            waiters, self._waiters = self._waiters, []
            _fire(waiters)
            return
        batch = _Batch(
            self._records, self._state_q, self._meta_q, self._waiters, self._reactor.seconds()
        )
        self._records, self._state_q, self._meta_q, self._waiters = {}, {}, {}, []
        self._inflight = batch
        batch.watchdog = self._reactor.callLater(self.slowAfter, self._slow, batch)
        d = self._pipelined(self._scripted(self._commands(batch)))
        d.addCallbacks(
            self._acknowledged, self._failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _end(self, batch):
        self._inflight = None
        if batch.watchdog is not None and batch.watchdog.active():
            batch.watchdog.cancel()
        batch.watchdog = None

    def _slow(self, batch):
        batch.watchdog = None
        batch.warned = True
        self.log.warn(
            "Redis has not acknowledged {keys} writes of node {node_id} for {seconds:.0f}s;"
            " memory stays authoritative and writes keep queueing",
            keys=batch.size(),
            node_id=self.node_id,
            seconds=self._reactor.seconds() - batch.started,
        )
        if self._own_connection and self._checking is None and not self._closed:
            self._diagnose()

    def _diagnose(self):
        """Log why Redis does not take writes, found with one handshake (txredisapi
        itself only waits, or logs a bare "Lost connection")."""
        self._checking = d = self._handshake()

        def judged(verdict):
            self._checking = None
            final, why = verdict
            if why is None:
                self.log.warn(
                    "{where} answers a new connection of node {node_id}; the store's own"
                    " connection is still waiting",
                    where=self.where,
                    node_id=self.node_id,
                )
            else:
                log = self.log.error if final else self.log.warn
                log("Redis store of node {node_id} unavailable: {why}",
                    node_id=self.node_id, why=why)

        def cancelled(failure):
            self._checking = None
            failure.trap(defer.CancelledError)

        d.addCallbacks(judged, cancelled)

    def _acknowledged(self, replies, batch):
        self._end(batch)
        self._retry_delay = self.retryInitial
        errors = [error for reply in replies if isinstance(reply, list) for error in reply]
        if errors:
            # Redis refused some commands (e.g. a key of the wrong type put there by
            # someone else); retrying would fail the same way.
            self.log.error(
                "Redis refused {count} writes of node {node_id}: {first}",
                count=len(errors),
                node_id=self.node_id,
                first=str(errors[0]),
            )
        if batch.warned:
            self.log.info(
                "Redis acknowledged the writes of node {node_id} after {seconds:.1f}s",
                node_id=self.node_id,
                seconds=self._reactor.seconds() - batch.started,
            )
        if not self._closed and self._call is None and (self._waiters or not self._queue_empty()):
            self._call = self._reactor.callLater(0, self._send)
        _fire(batch.waiters)

    def _failed(self, failure, batch):
        self._end(batch)
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        # Put the batch back under what was queued since: newer values win.
        for key, text in batch.records.items():
            self._records.setdefault(key, text)
        for device_id, (replace, fields) in batch.state.items():
            newer = self._state_q.get(device_id)
            if newer is None:
                self._state_q[device_id] = [replace, fields]
            elif not newer[0]:
                merged = dict(fields)
                merged.update(newer[1])
                self._state_q[device_id] = [replace, merged]
        for key, text in batch.meta.items():
            self._meta_q.setdefault(key, text)
        self._waiters[:0] = batch.waiters
        if self._closed:
            self.log.warn(
                "Redis store of node {node_id} closed with {keys} writes not saved: {error}",
                node_id=self.node_id,
                keys=batch.size(),
                error=failure.getErrorMessage(),
            )
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, self.retryMax)
        self.log.warn(
            "Redis write of {keys} keys of node {node_id} failed ({error}); retrying in"
            " {delay:.1f}s, memory stays authoritative",
            keys=batch.size(),
            node_id=self.node_id,
            error=failure.getErrorMessage(),
            delay=delay,
        )
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._reactor.callLater(delay, self._send)

    # -- lifecycle -------------------------------------------------------------------

    def flush(self):
        """Fires once every write made so far is acknowledged by Redis."""
        if self._waiters or not self._queue_empty():
            return self._queued()
        if self._inflight is not None:
            d = defer.Deferred()
            self._inflight.waiters.append(d)
            return d
        return defer.succeed(None)

    def _steps(self, script, each):
        """Run a SCAN-step script over the namespace; ``each(reply)`` gets every reply
        and returns the next cursor."""
        pattern = _glob_escape(self.prefix) + "*"

        def step(cursor):
            return self._connection().execute_command(
                "EVAL", script, 0, cursor, pattern, self.scanCount
            )

        def next_step(reply):
            cursor = each(reply)
            if int(cursor) == 0:
                return None
            return step(cursor).addCallback(next_step)

        return defer.maybeDeferred(step, 0).addCallback(next_step)

    def namespace_keys(self):
        """Deferred list of the keys of this node's namespace held by Redis."""
        found = []

        def each(reply):
            cursor, entries = reply
            found.extend(key for key, _ in json.loads(entries))
            return cursor

        return self._steps(LOAD_SCRIPT, each).addCallback(lambda _: found)

    @defer.inlineCallbacks
    def check(self):
        """Make sure Redis takes this store's connection, before the store opens it.

        Connects once the way the store will (TLS, ``AUTH``, ``SELECT``) and sends
        ``PING``. Fires with None when Redis answered; fails with ``StoreUnavailable``
        naming the cause when it never will as configured (the certificate does not
        verify, TLS on one side only, the password or the database refused). While the
        server cannot be reached (not started yet, still loading) it retries with a
        growing delay, logging why.
        """
        delay = self.retryInitial
        while True:
            if self._closed:
                raise StoreClosed(f"store of node {self.node_id} is closed")
            self._checking = self._handshake()
            try:
                final, why = yield self._checking
            except defer.CancelledError:
                if self._closed:
                    raise StoreClosed(f"store of node {self.node_id} is closed") from None
                raise
            finally:
                self._checking = None
            if self._closed:
                raise StoreClosed(f"store of node {self.node_id} is closed")
            if why is None:
                return
            if final:
                self.log.error(
                    "Redis store of node {node_id} unavailable: {why}",
                    node_id=self.node_id,
                    why=why,
                )
                raise StoreUnavailable(why)
            self.log.warn(
                "Cannot use {where} yet for node {node_id} ({why}); retrying in {delay:.1f}s",
                where=self.where,
                node_id=self.node_id,
                why=why,
                delay=delay,
            )
            self._checking = task.deferLater(self._reactor, delay, lambda: None)
            try:
                yield self._checking
            except defer.CancelledError:
                if self._closed:
                    raise StoreClosed(f"store of node {self.node_id} is closed") from None
                raise
            finally:
                self._checking = None
            delay = min(delay * 2, self.retryMax)

    def ping(self):
        """Check that Redis answers the way the store reaches it, on a short connection
        of its own (TLS, ``AUTH``, ``SELECT``, ``PING``, then closed): the node's
        readiness. Fails with ``StoreUnavailable`` naming why."""
        if self._closed:
            return defer.fail(StoreClosed(f"store of node {self.node_id} is closed"))

        def judged(verdict):
            _final, why = verdict
            if why is not None:
                raise StoreUnavailable(why)

        return self._handshake().addCallback(judged)

    def _handshake(self):
        """One try of ``check``: a Deferred (final, why), why None when Redis answered."""
        return self._probe().handshake()

    def _probe(self):
        return LinkProbe(self._params, self._password, self._tls, self.where,
                         self._reactor, self.connectTimeout, self.replyTimeout)

    @defer.inlineCallbacks
    def load(self):
        """Replace memory with what Redis holds for this node (meant for start-up).

        The first load of a store checks the link first (see ``check``)."""
        self._load_watchdog = self._reactor.callLater(self.slowAfter, self._slow_load)
        entries = []

        def each(reply):
            cursor, text = reply
            entries.extend(json.loads(text))
            return cursor

        try:
            if self.redis is None:
                yield self.check()
            yield self.flush()
            yield self._steps(LOAD_SCRIPT, each)
        finally:
            self._cancel_load_watchdog()
        self._clear_tables()
        bad = 0
        for key, value in entries:
            if isinstance(value, list):
                ok = self._load_hash(key, _pairs(value))
            else:
                ok = self._load_string(key, value)
            bad += not ok
        self.log.info(
            "Loaded node {node_id} from Redis: {devices} devices, {users} users, {grants}"
            " grants, {states} device states, {sessions} sessions ({bad} unreadable keys)",
            node_id=self.node_id,
            devices=len(self._devices),
            users=len(self._users),
            grants=len(self._grants),
            states=len(self._state),
            sessions=len(self._sessions),
            bad=bad,
        )

    def _cancel_load_watchdog(self):
        if self._load_watchdog is not None and self._load_watchdog.active():
            self._load_watchdog.cancel()
        self._load_watchdog = None

    def _slow_load(self):
        self._load_watchdog = None
        self.log.warn(
            "Waiting for Redis at {host}:{port} to load node {node_id}",
            host=self._params["host"],
            port=self._params["port"],
            node_id=self.node_id,
        )

    def _load_string(self, key, text):
        kind, _, ident = key[len(self.prefix) :].partition(":")
        try:
            if kind == "device":
                record = decode_record(DeviceRecord, text)
                self._devices[record.device_id] = record
            elif kind == "user":
                record = decode_record(UserRecord, text)
                self._users[record.username] = record
            elif kind == "grant":
                self._apply_put_grant(decode_record(GrantRecord, text))
            elif kind == "cred":
                record = decode_record(StreamCredential, text)
                self._credentials[record.cred_id] = record
            elif kind == "session":
                self._sessions[ident] = json.loads(text)
            else:
                self.log.warn("Ignoring unknown Redis key {key}", key=key)
            return True
        except (ValueError, KeyError, TypeError) as e:
            self.log.error("Skipping unreadable Redis key {key}: {error!r}", key=key, error=e)
            return False

    def _load_hash(self, key, fields):
        try:
            values = {name: json.loads(text) for name, text in fields.items()}
        except ValueError as e:
            self.log.error("Skipping unreadable Redis key {key}: {error!r}", key=key, error=e)
            return False
        kind, _, ident = key[len(self.prefix) :].partition(":")
        if kind == "meta" and not ident:
            self._meta.update(values)
        elif kind == "state":
            self._state[ident] = values
        else:
            self.log.warn("Ignoring unknown Redis key {key}", key=key)
        return True

    @defer.inlineCallbacks
    def wipe(self):
        """Forget everything, in memory and in this node's Redis namespace."""
        yield self.flush()
        self._clear_tables()
        yield self._steps(WIPE_SCRIPT, lambda cursor: cursor)

    @defer.inlineCallbacks
    def close(self):
        """Wait (up to ``closeTimeout``) for pending writes, then disconnect."""
        if self._closed:
            return
        if self._waiters or self._inflight is not None or not self._queue_empty():
            pending = self.flush()
            pending.addTimeout(self.closeTimeout, self._reactor)
            try:
                yield pending
            except defer.TimeoutError:
                self.log.warn(
                    "Closing the Redis store of node {node_id} with writes not saved",
                    node_id=self.node_id,
                )
        self._closed = True
        if self._session_keeper is not None and self._session_keeper.running:
            self._session_keeper.stop()
        if self._checking is not None:
            self._checking.cancel()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._inflight is not None:
            self._end(self._inflight)
        self._cancel_load_watchdog()
        if self.redis is not None:
            yield self.redis.disconnect()

    # -- writes: memory at once, Redis queued ----------------------------------------

    def put_device(self, record):
        text = encode_record(record)
        self._devices[record.device_id] = record
        self._records[self.key("device", record.device_id)] = text
        return self._queued()

    def remove_device(self, device_id):
        dropped = self._apply_remove_device(device_id)
        self._records[self.key("device", device_id)] = None
        for principal, _ in dropped:
            self._records[self._grant_key(principal, device_id)] = None
        self._state_q[device_id] = [True, {}]
        return self._queued()

    def put_user(self, record):
        text = encode_record(record)
        self._users[record.username] = record
        self._records[self.key("user", record.username)] = text
        return self._queued()

    def remove_user(self, username):
        dropped = self._apply_remove_user(username)
        self._records[self.key("user", username)] = None
        for principal, device_id in dropped:
            self._records[self._grant_key(principal, device_id)] = None
        return self._queued()

    def put_grant(self, record):
        text = encode_record(record)
        self._apply_put_grant(record)
        self._records[self._grant_key(record.principal, record.device_id)] = text
        return self._queued()

    def remove_grant(self, principal, device_id):
        self._apply_remove_grant(principal, device_id)
        self._records[self._grant_key(principal, device_id)] = None
        return self._queued()

    def put_credential(self, record):
        text = encode_record(record)
        self._credentials[record.cred_id] = record
        self._records[self.key("cred", record.cred_id)] = text
        return self._queued()

    def remove_credential(self, cred_id):
        self._credentials.pop(cred_id, None)
        self._records[self.key("cred", cred_id)] = None
        return self._queued()

    def set_state(self, device_id, **fields):
        # Encoding first: a value that is not JSON-able raises before anything changes.
        encoded = {name: _dumps(value) for name, value in fields.items()}
        self._apply_set_state(device_id, fields)
        queued = self._state_q.get(device_id)
        if queued is None:
            self._state_q[device_id] = [False, encoded]
        else:
            queued[1].update(encoded)
        return self._queued()

    def put_session(self, session_id, info):
        text = _dumps(dict(info))
        super().put_session(session_id, info)
        self._records[self.key("session", session_id)] = text
        if self._session_keeper is None and not self._closed:
            self._session_keeper = task.LoopingCall(self._keep_sessions)
            self._session_keeper.clock = self._reactor
            self._session_keeper.start(self.sessionTTL / 3, now=False)
        return self._queued()

    def _keep_sessions(self):
        """Write the sessions held again, so their keys outlive the next third of
        ``sessionTTL``: a key stops being written, and expires, only when its node is
        gone without removing it."""
        if not self._sessions:
            return
        for session_id, info in self._sessions.items():
            self._records.setdefault(self.key("session", session_id), _dumps(info))
        self._queued()

    def remove_session(self, session_id):
        self._sessions.pop(session_id, None)
        self._records[self.key("session", session_id)] = None
        return self._queued()

    def set_meta(self, key, value):
        text = _dumps(value)
        super().set_meta(key, value)
        self._meta_q[key] = text
        return self._queued()


# While Redis is away, the Deferreds of queued writes pile up (the keepalive path makes
# hundreds a second, about 150 bytes each) though most callers drop them at once. A
# Deferred with no callbacks that nobody but the queue references can never be
# observed: firing it or forgetting it is the same, so the queue forgets those.
_getrefcount = getattr(sys, "getrefcount", None)


def _observable(waiters):
    """The waiters someone could still observe (all of them where refcounts are not
    available)."""
    if _getrefcount is None:
        return waiters
    return [d for d in waiters if getattr(d, "_callbacks", True) or _getrefcount(d) > _ALONE]


def _refs_when_alone():
    probe = [defer.Deferred()]
    return [_getrefcount(d) for d in probe][0] if _getrefcount else 0


#: the reference count of a Deferred held by the queue only, seen from _observable
_ALONE = _refs_when_alone()


def _flatten(mapping):
    for name, text in mapping.items():
        yield name
        yield text


def _fire(waiters):
    for d in waiters:
        if not d.called:
            d.callback(None)
