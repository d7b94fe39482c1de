"""
CMS, the heart of the central platform: the node registry and its links, first
registration, static-data pulls, routing between nodes and data synchronisation.

Flows (docs/architecture.md), each step one method:

- S402-S406 routing: ``on_route_request`` (S403: find the home node and send it the
  request; its RGM-N does S404-S405 and answers, S406 goes back to the asking node).
- S501-S506 passive sync: ``s501_data_changed`` (MMS hands the changes of one
  transaction, already read from the DB in it: S502), ``s503_nodes_for``,
  ``s504_notify``; the node applies them (S505) and answers ``SyncComplete`` (S506),
  recorded by ``s506_completed``.
- S603-S605 active sync: ``on_sync_change`` (S604 writes the DB, S605 acknowledges),
  then the resulting change goes to the nodes that hold the device through S501-S506.

Each node holds its share (``vss.cms.interest``): its own devices, the devices its
users may see, the grants on them, the users registered on it; S503 sends each change
only to the nodes whose copy it touches. Changes are published in log order; each
SYNC_NOTIFY names the sequence the previous one to that node ended at (``PREV_SEQ``),
so that a node tells from it alone whether it missed something, and fetches
(``on_sync_fetch``, filtered to its share, naming how far it ``SCANNED``).
"""

import secrets
from dataclasses import dataclass, replace

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from vss.cms.interest import EVERY_NODE, Interest
from vss.cms.store.audit import entry as audit_entry
from vss.cms.store.tokens import iso_time
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory, check_response
from vss.protocols.listing import FANOUT_TIMEOUT, encode_parts, merge_parts, parse_answer
from vss.protocols.messages import (
    CU_TARGET,
    EXT_HOME_EPOCH,
    EXT_PU_ADDRESS,
    AuditAck,
    AuditKind,
    AuthChallenge,
    AuthOk,
    ChangeKind,
    CredState,
    DeviceRecord,
    Empty,
    Entity,
    EventAcked,
    EventRecord,
    EventReportAck,
    Events,
    HeartbeatAck,
    HelloAck,
    MsgType,
    NodeAddress,
    NodeList,
    NodeRegistered,
    NodeRoute,
    RecordMode,
    RecordSettings,
    RegInfo,
    Role,
    Route,
    RouteRequest,
    ScheduleSlot,
    Severity,
    SsState,
    StateChange,
    StaticPage,
    Stream,
    SyncAck,
    SyncBatch,
    SyncNotify,
    Verifier,
)
from vss.recording.tasks import EXT_EVENT_TYPES
from vss.rgm.auth import ScramExchange, node_verifier
from vss.rgm.peers import PEER_MAX_IN_FLIGHT
from vss.ss import placement
from vss.streamcreds.secret import ID_RE, credential_key, unseal
from vss.tls import peer_identity_problem

AGENT = "vss-cms/0.1"
#: AuditKind -> the kind of its audit log entry
AUDIT_KINDS = {AuditKind.LIVE: "live", AuditKind.PLAYBACK: "playback",
               AuditKind.EXPORT: "export"}
APPLIED_WRITE_DELAY = 1.0  # seconds; see s506_completed
#: a sequence missing from the published changes is waited for this long (a write in
#: flight publishes it) before CMS goes on and the nodes fetch across the hole
HOLE_WAIT = 0.5
MAX_SS_PER_NODE = 1024  # streaming servers one SS_REPORT may name
HOLE_POLL = 0.02
#: the extension tags of SyncNotify and SyncBatch (docs/protocol.md 10)
EXT_PREV_SEQ = 0x0001
EXT_SCANNED_SEQ = 0x0001
EXT_READ_SEQ = 0x0001
#: seconds between two rounds of re-homing (each at most ``rehome_batch`` per node)
REHOME_ROUND = 0.5
#: devices moved per database transaction
REHOME_CHUNK = 500
EMPTY_VERIFIER = Verifier(salt=b"", iterations=0, stored_key=b"", server_key=b"")


@dataclass(frozen=True)
class CMSConfig:
    cms_id: str
    cluster_secret: bytes
    heartbeat_interval: int = 5
    route_timeout: float = 10.0
    notify_batch: int = 500
    #: days the events are kept (0: for ever); removed once an hour
    event_retention_days: int = 30
    #: a node silent this long (seconds) is down (its link closed)
    node_timeout: float = 15.0
    #: seconds after a node went down before its PUs move to the live nodes (0: never;
    #: a node back within it keeps them)
    rehome_after: float = 1.0
    #: at most this many PUs moved to one node per round (a round every REHOME_ROUND s)
    rehome_batch: int = 2000
    #: a node that comes back takes back the PUs moved away from it when it died
    failback: bool = False
    #: with ``failback``: seconds a node that came back must stay up before it takes
    #: its PUs back (a node that flaps takes none)
    failback_after: float = 30.0


def strip_secret(record):
    """A device record as other nodes than its home see it: no verifier. (Built
    directly: ``dataclasses.replace`` cost 5 us a record, a third of a reload page.)"""
    if record is None:
        return None
    return DeviceRecord(
        device_id=record.device_id, name=record.name, kind=record.kind,
        channels=record.channels, home_node=record.home_node, verifier=EMPTY_VERIFIER,
        source_url=record.source_url, enabled=record.enabled, version=record.version)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(hhmm):
    h, m = str(hhmm).split(":")
    return int(h) * 60 + int(m)


def event_types_ext(types):
    """The RecordSettings extension block naming ``types`` (none: no extension)."""
    return ((EXT_EVENT_TYPES, ",".join(types).encode()),) if types else ()


def record_settings_body(device_id, channel, stored):
    """The ``RecordSettings`` body of the JSON the DB holds for a channel (the MMS
    format, ``vss.cms.mms``), or None when no settings were stored (only a device's own
    ``reported`` values, or nothing)."""
    keys = ("mode", "stream", "segment_seconds", "retention_days", "quota_mb",
            "pre_event_seconds", "post_event_seconds", "schedule", "event_types")
    if not stored or not any(k in stored for k in keys):
        return None
    slots = [ScheduleSlot(day=_DAYS.index(x["day"]), start_minute=_minutes(x["start"]),
                          end_minute=_minutes(x["end"]))
             for x in stored.get("schedule") or ()]
    return RecordSettings(
        device_id=device_id, channel=channel,
        mode=int(RecordMode[str(stored.get("mode", "off")).upper()]),
        stream=int(Stream[str(stored.get("stream", "main")).upper()]),
        segment_seconds=int(stored.get("segment_seconds", 300)),
        retention_days=int(stored.get("retention_days", 7)),
        quota_mb=int(stored.get("quota_mb", 0)),
        pre_event_seconds=int(stored.get("pre_event_seconds", 5)),
        post_event_seconds=int(stored.get("post_event_seconds", 10)), schedule=slots,
        ext=event_types_ext(stored.get("event_types") or ()))


class _Closing(VssError):
    """A refusal after which the link is closed, with a BYE (docs/protocol.md 8.1)."""


def _refuse(link, frame, failure):
    link.send_failure(frame, failure)
    if isinstance(failure.value, _Closing):
        link.close(failure.value.code, failure.value.message)


def _respond(link, msg_type, txid, body):
    """Answer a request: a typed body, or body bytes already encoded (a long listing
    encoded without construct, see vss.protocols.listing)."""
    if isinstance(body, bytes):
        link.send_raw_response(msg_type, txid, 0, body)
    else:
        link.send_response(msg_type, txid, body)


def seq_ext(seq):
    """The extension block of one u64 sequence under tag 1 (PREV_SEQ, SCANNED_SEQ)."""
    return b"\x00\x01\x00\x01\x00\x08" + int(seq).to_bytes(8, "big")


def _sync_complete(frame):
    """The SyncComplete body of a raw SYNC_NOTIFY response, or raise VssError."""
    check_response(frame)
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        raise VssError(msg.code, msg.message)
    return msg.body


class NodeSession:
    """A node's link as CMS sees it."""

    def __init__(self, link):
        self.link = link
        self.state = "new"
        self.node_id = None
        self.exchange = None
        self.signalling = ""
        self.media = ""
        self.capacity = 0
        self.applied_seq = 0
        self.sent_seq = 0  # the head of the last SYNC_NOTIFY sent (its next PREV_SEQ)
        self.load = {}
        self.registered = False
        self.pu_address = ""  # where its PUs connect (NodeRegister's EXT_PU_ADDRESS)


class MDP:
    """The media distribution platform: the streaming servers (SS) of every node and
    their load, from the nodes' heartbeats (NODE_HEARTBEAT: the node's own SS, ``ss0``)
    and SS_REPORT (each SS, workers included). ``pick`` applies the placement policy
    (vss.ss.placement) to a node's servers; an SS whose report is older than three
    heartbeat intervals, or which its node reports stale or down, is not chosen."""

    STALE_BEATS = 3

    def __init__(self, clock=None, heartbeat_interval=5):
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.servers = {}  # node_id -> {ss_id: view dict (media, state, load, seen)}

    def _now(self):
        return self.clock.seconds() if self.clock is not None else 0.0

    def report(self, node_id, media, load):
        """The node's heartbeat: its own SS."""
        entry = self.servers.setdefault(node_id, {}).setdefault("ss0", {})
        entry.update(load)
        entry.update(media=media, state="up", seen=self._now())

    def report_servers(self, node_id, servers):
        """SS_REPORT: every SS of the node (SsServer records)."""
        now = self._now()
        view = {}
        for s in servers:
            state = SsState(s.state).name.lower() if s.state in SsState._value2member_map_ \
                else "down"
            view[s.ss_id] = {"media": s.media, "state": state, "streams": s.streams,
                             "viewers": s.viewers, "bandwidth_kbps": s.bandwidth_kbps,
                             "cpu_permille": s.cpu_permille, "seen": now}
        self.servers[node_id] = view

    def forget(self, node_id):
        self.servers.pop(node_id, None)

    def choosable(self, node_id):
        """{ss_id: load} of the node's SS that may be chosen now: up and reported
        lately; its workers only, when it has any up (its own SS then takes each stream
        in once for them)."""
        now = self._now()
        late = self.STALE_BEATS * self.heartbeat_interval
        up = {i: v for i, v in (self.servers.get(node_id) or {}).items()
              if v.get("state") == "up" and now - v.get("seen", now) <= late}
        workers = {i: v for i, v in up.items() if i != "ss0"}
        return workers or up

    def pick(self, node_id):
        """The media URL of the SS of a node with the most room, or None."""
        candidates = self.choosable(node_id)
        chosen = placement.most_room(candidates)
        return candidates[chosen]["media"] if chosen is not None else None

    def view(self, node_id):
        """The node's SS as the admin API shows them, the chosen one marked."""
        chosen = placement.most_room(self.choosable(node_id))
        now = self._now()
        return [{"ss_id": i, **{k: v for k, v in e.items() if k != "seen"},
                 "report_age": round(now - e.get("seen", now), 1), "chosen": i == chosen}
                for i, e in sorted((self.servers.get(node_id) or {}).items())]


class CMSService(service.Service):
    log = Logger()

    def __init__(self, config, store, clock):
        self.config = config
        self.store = store
        self.clock = clock
        self.sessions = {}  # node_id -> NodeSession of a registered node link
        self.links = set()
        self.interest = Interest()  # S503: what each node holds
        self.homes = self.interest.homes  # device_id -> home node id
        self.published_seq = 0  # every change up to it was published (S503-S504)
        self._pending = {}  # first seq -> changes of a transaction waiting its turn
        self._hole_end = 0  # a hole was skipped up to here: nodes behind it fetch
        self._hole_since = None
        self._hole_call = None
        self.online = set()  # devices whose home node reports them online
        #: CU targets (``cu:<wall>``) -> the node the wall is logged in to (dynamic data,
        #: from the nodes' presence reports; never in the DB, never passed on)
        self.cu_nodes = {}
        self.mdp = MDP(clock, config.heartbeat_interval)
        self._verifiers = {}
        self._sweeper = None
        self._purger = None
        self._event_seq = 0  # CMS's own events (a node down or up): see node_event
        self._inflight = set()  # Deferreds of the requests being handled
        self._applied_writes = {}  # node_id -> (DelayedCall writing its applied_seq, session)
        self.counters = {"routed": 0, "notified": 0, "sync_changes": 0, "stale_changes": 0,
                         "changes": 0, "notified_changes": 0, "notified_bytes": 0,
                         "skips": 0, "holes": 0, "follows": 0}
        # Only the active CMS serves (vss.cms.standby); a standby answers NOT_ACTIVE
        # with ``standby_note`` (why, and who is active if known) and closes the link.
        self.active = True
        self.standby_note = ""
        # Node death (docs/consistency.md, "Node death and re-homing"): the PUs of a node
        # down for ``rehome_after`` s move to the live nodes.
        self.epochs = {}  # device_id -> its record's version as last published (home epoch)
        self._rehome_calls = {}  # node_id -> DelayedCall of its PUs' move
        self._failback_calls = {}  # node_id -> DelayedCall of giving its PUs back
        self.rehoming = set()  # nodes whose PUs are being moved

    # -- life cycle

    @defer.inlineCallbacks
    def load(self):
        """Read what S503 needs once (device homes, users' groups, what each node
        follows and who is registered where); the changes keep it current afterwards.
        A standby that takes over loads again, from scratch."""
        self.interest = Interest()
        self.homes = self.interest.homes
        self.online.clear()
        self.published_seq = yield self.store.head_seq()
        cursor = ""
        while True:
            homes, cursor = yield self.store.device_homes(cursor=cursor)
            self.homes.update(homes)
            if not cursor:
                break
        cursor = ""
        while True:
            users, cursor = yield self.store.list_users(cursor=cursor, limit=5000)
            for u in users:
                self.interest.set_user(u.username, u.groups)
            if not cursor:
                break
        self.interest.load_rows(*(yield self.store.interest()))
        for node in (yield self.store.list_nodes()):
            if node["state"] == "up":
                yield self.store.set_node_state(node["node_id"], "down")

    def startService(self):
        super().startService()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(max(0.5, min(self.config.heartbeat_interval,
                                         self.config.node_timeout / 3)), now=False)
        if self.config.event_retention_days:
            self._purger = task.LoopingCall(self.purge_events)
            self._purger.clock = self.clock
            self._purger.start(3600, now=False)

    def stopService(self):
        super().stopService()  # first: the links closed below move no PU
        self._cancel_moves()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._purger is not None and self._purger.running:
            self._purger.stop()
        for link in list(self.links):
            link.close(ResultCode.SESSION_CLOSED, "CMS shutting down")
        if self._hole_call is not None and self._hole_call.active():
            self._hole_call.cancel()
        for call, s in list(self._applied_writes.values()):
            call.cancel()
            self._write_applied(s)  # what the nodes applied, now, before the DB closes
        return defer.DeferredList(list(self._inflight), consumeErrors=False) \
            .addCallback(lambda _: None)

    def _cancel_moves(self):
        for calls in (self._rehome_calls, self._failback_calls):
            for call in calls.values():
                if call.active():
                    call.cancel()
            calls.clear()

    def stand_by(self, note):
        """Stop acting as the active CMS at once (the lock is lost, or another CMS took
        over): every node link is closed with NOT_ACTIVE and nothing more is written."""
        self.active = False
        self.standby_note = note
        self._cancel_moves()
        for call, _s in list(self._applied_writes.values()):
            call.cancel()
        self._applied_writes.clear()
        for link in list(self.links):
            link.close(ResultCode.NOT_ACTIVE, note)
        self.sessions.clear()
        self.online.clear()
        self.mdp.servers.clear()

    def activate(self):
        """Serve as the active CMS (after ``load``)."""
        self.active = True
        self.standby_note = ""

    def factory(self):
        # A node link carries the routed requests of every CU of that node.
        return LinkFactory(self, self.clock, request_timeout=self.config.route_timeout,
                           max_in_flight=PEER_MAX_IN_FLIGHT)

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- link handler

    def linkUp(self, link):
        link.session = NodeSession(link)
        self.links.add(link)

    def linkDown(self, link, reason):
        self.links.discard(link)
        s = link.session
        if s.registered and self.sessions.get(s.node_id) is link.session:
            del self.sessions[s.node_id]
            self.mdp.forget(s.node_id)
            self.log.info("node {node} down (link lost)", node=s.node_id)
            for key in [k for k, n in self.cu_nodes.items() if n == s.node_id]:
                del self.cu_nodes[key]
            for device_id in [d for d in self.online if self.homes.get(d) == s.node_id]:
                self.on_presence(s, StateChange(device_id=device_id, channel=0,
                                                change=int(ChangeKind.OFFLINE),
                                                timestamp=self.now_ms(), items=[]), force=True)
            if self.running and self.active:
                self.store.set_node_state(s.node_id, "down").addErrback(self._logged)
                self.node_event(s.node_id, "node-down", Severity.CRITICAL)
                self._schedule_rehome(s.node_id)
            self._announce_nodes()

    def received(self, link, frame, msg):
        s = link.session
        t = frame.type
        if not self.active:  # a standby: the node tries its next CMS address
            if not frame.flags & codec.FLAG_NOTIFY:
                link.send_error(t, frame.txid, ResultCode.NOT_ACTIVE, self.standby_note)
            link.close(ResultCode.NOT_ACTIVE, self.standby_note)
            return
        if t == MsgType.KEEPALIVE:
            if not frame.flags & codec.FLAG_NOTIFY:
                link.send_response(t, frame.txid, Empty())
            return
        if t == MsgType.BYE:
            link.close()
            return
        if t == MsgType.AUTH_START and not s.registered and not frame.flags & codec.FLAG_NOTIFY:
            # over mutual TLS, the node's certificate must name the node that logs in
            problem = peer_identity_problem(link.transport, msg.body.identity)
            if problem is not None:
                self.log.warn("refused node {node} from {peer}: {problem}",
                              node=msg.body.identity, peer=link.peer, problem=problem)
                link.send_error(t, frame.txid, ResultCode.AUTH_FAILED, problem)
                link.close()
                return
        handlers = self.REGISTERED if s.registered else self.HANDSHAKE
        fresh = s.state == "new" and not s.registered
        handler = handlers.get(t) if not fresh or t == MsgType.HELLO else None
        if handler is None:  # docs/protocol.md 8: answered, the link stays up
            if not frame.flags & codec.FLAG_NOTIFY:
                if fresh:
                    code, why = ResultCode.UNEXPECTED_MESSAGE, "HELLO first"
                elif s.registered:
                    code = ResultCode.UNEXPECTED_MESSAGE
                    why = f"{codec.message_name(t)} is not a request to CMS"
                else:
                    code = ResultCode.NOT_AUTHENTICATED
                    why = ("NODE_REGISTER first" if s.state == "authenticated"
                           else "log in first")
                link.send_error(t, frame.txid, code, why)
            return
        d = defer.maybeDeferred(handler, self, s, msg.body)
        if not d.called:
            self._track(d)
        if frame.flags & codec.FLAG_NOTIFY:
            d.addErrback(self._logged)
            return
        d.addCallbacks(lambda body: _respond(link, t, frame.txid, body),
                       lambda f: _refuse(link, frame, f))

    def _track(self, d):
        """Keep a handler in progress until it ends: stopping waits for it, so that a
        change being written (S604) finishes before the database closes."""
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            return result

        d.addBoth(done)

    def _logged(self, failure):
        self.log.failure("CMS background task failed", failure)

    # -- handshake: HELLO, SCRAM with the cluster secret, NODE_REGISTER

    def on_hello(self, s, body):
        if s.state != "new":
            raise VssError(ResultCode.UNEXPECTED_MESSAGE, "HELLO already done")
        if body.role != Role.NODE:
            raise _Closing(ResultCode.UNEXPECTED_MESSAGE, "CMS serves node links only")
        if not body.min_version <= codec.VERSION <= body.max_version:
            raise _Closing(ResultCode.NO_COMMON_VERSION,
                           f"CMS speaks version {codec.VERSION}, the node "
                           f"{body.min_version}-{body.max_version}")
        s.state = "hello"
        return HelloAck(version=codec.VERSION, node_id=self.config.cms_id, agent=AGENT,
                        features=[])

    def on_auth_start(self, s, body):
        if s.state not in ("hello", "challenged"):
            raise VssError(ResultCode.UNEXPECTED_MESSAGE)
        verifier = self._verifiers.get(body.identity)
        if verifier is None:
            verifier = self._verifiers[body.identity] = node_verifier(
                self.config.cluster_secret, body.identity)
        s.exchange = ScramExchange(body.identity, body.client_nonce, verifier,
                                   self.config.cluster_secret)
        s.state = "challenged"
        return AuthChallenge(salt=s.exchange.salt, iterations=s.exchange.iterations,
                             server_nonce=s.exchange.server_nonce)

    def on_auth_proof(self, s, body):
        if s.state != "challenged":
            raise VssError(ResultCode.UNEXPECTED_MESSAGE)
        exchange, s.exchange = s.exchange, None
        signature = exchange.verify(body.client_proof)
        if signature is None:
            s.state = "hello"
            self.log.warn("node {node} failed to authenticate from {peer}",
                          node=exchange.identity, peer=s.link.peer)
            raise VssError(ResultCode.AUTH_FAILED)
        s.node_id = exchange.identity
        s.state = "authenticated"
        return AuthOk(server_signature=signature, session_id=secrets.token_hex(8))

    @defer.inlineCallbacks
    def on_node_register(self, s, body):
        if s.state != "authenticated":
            raise VssError(ResultCode.NOT_AUTHENTICATED, "log in first")
        if body.node_id != s.node_id:
            raise VssError(ResultCode.UNEXPECTED_MESSAGE, "register as the node you logged in as")
        old = self.sessions.get(s.node_id)
        if old is not None and old is not s:
            old.link.close(ResultCode.SESSION_REPLACED, "the node connected again")
        s.signalling, s.media, s.capacity = body.signalling, body.media, body.capacity
        s.pu_address = dict(body.ext).get(EXT_PU_ADDRESS, b"").decode("utf-8", "replace")
        call = self._rehome_calls.pop(s.node_id, None)
        if call is not None and call.active():
            call.cancel()
        s.applied_seq = body.applied_seq
        # everything published so far was not sent to this session: its first notify
        # names at least this, and the node fetches what it lacks first
        s.sent_seq = self.published_seq
        s.registered = True
        s.state = "registered"
        self.sessions[s.node_id] = s
        changes = yield self.store.upsert_node(s.node_id, body.signalling, body.media,
                                               body.capacity, origin=s.node_id)
        self.s501_data_changed(changes)  # no node holds the registry: it moves the seqs
        yield self.store.set_node_state(s.node_id, "up", {})
        self.node_event(s.node_id, "node-up", Severity.INFO)
        head = yield self.store.head_seq()
        # The node fetches up to the head (at least) in its catch-up: its next notify
        # follows on from there.
        s.sent_seq = max(s.sent_seq, head)
        self.clock.callLater(0, self._send_presences, s)
        self.clock.callLater(0, self._announce_nodes)
        if self.config.failback:
            self._schedule_failback(s.node_id)
        self.log.info("node {node} up from {peer} (applied {applied}, head {head})",
                      node=s.node_id, peer=s.link.peer, applied=body.applied_seq, head=head)
        return NodeRegistered(cms_id=self.config.cms_id,
                              heartbeat_interval=self.config.heartbeat_interval, head_seq=head)

    # -- what a registered node asks

    @defer.inlineCallbacks
    def on_heartbeat(self, s, body):
        s.load = {"pus": body.pus, "cus": body.cus, "streams": body.streams,
                  "cpu_permille": body.cpu_permille, "bandwidth_kbps": body.bandwidth_kbps}
        s.applied_seq = max(s.applied_seq, body.applied_seq)
        self.mdp.report(s.node_id, s.media, s.load)
        yield self.store.set_node_state(s.node_id, "up", s.load)
        head = yield self.store.head_seq()
        self._skip(s)
        return HeartbeatAck(head_seq=head)

    def _skip(self, s):
        """A node nothing was sent to for a while learns that nothing up to the
        published sequence was for it (an empty SYNC_NOTIFY), before the heartbeat's
        answer names the head: it then has no reason to fetch."""
        if self.sessions.get(s.node_id) is s and s.sent_seq < self.published_seq \
                and s.applied_seq >= s.sent_seq:
            self.counters["skips"] += 1
            self._send(s, [], self.published_seq)

    @defer.inlineCallbacks
    def on_static_pull(self, s, body):
        """An RGM that (re)starts pulls its share of the static data, paged. Devices
        homed elsewhere come without their verifier."""
        limit = max(1, min(body.limit or 1000, 5000))
        seq = yield self.store.head_seq()
        devices, users, grants, credentials = [], [], [], []
        node = s.node_id
        if body.entity == Entity.DEVICE:
            devices, cursor = yield self.store.list_devices(cursor=body.cursor, limit=limit,
                                                            held_by=node)
            devices = [d if d.home_node == s.node_id else strip_secret(d) for d in devices]
        elif body.entity == Entity.USER:
            users, cursor = yield self.store.list_users(cursor=body.cursor, limit=limit,
                                                        held_by=node)
        elif body.entity == Entity.GRANT:
            grants, cursor = yield self.store.list_grants(cursor=body.cursor, limit=limit,
                                                          held_by=node)
        elif body.entity == Entity.CREDENTIAL:
            credentials, cursor = yield self.store.list_credentials(
                cursor=body.cursor, limit=limit, held_by=node)
        else:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown entity {body.entity}")
        return StaticPage(entity=body.entity, devices=devices, users=users, grants=grants,
                          next_cursor=cursor, seq=seq, credentials=credentials)

    # -- stream credentials: a node's user makes or revokes one (vss.streamcreds)

    @defer.inlineCallbacks
    def on_cred_store(self, s, body):
        """CRED_STORE: a stream credential a user of the node made (the node sealed its
        secret; the secret never comes here). The database checks the user's VIEW grant
        again; every node gets it by passive sync."""

        record = body.credential
        if not ID_RE.match(record.cred_id) or not record.username or \
                unseal(credential_key(self.config.cluster_secret), record) is None:
            raise VssError(ResultCode.INVALID_ARGUMENT, "malformed stream credential")
        changes = yield self.store.add_credential(record, origin=s.node_id)
        self.s501_data_changed(changes)
        self.log.info("stream credential {id} of {user} for {device} made on {node}",
                      id=record.cred_id, user=record.username, device=record.device_id,
                      node=s.node_id)
        return CredState(credential=changes[-1].credential)

    @defer.inlineCallbacks
    def on_cred_revoke(self, s, body):
        """CRED_REVOKE: a node's user revokes one of their stream credentials."""
        if not body.username:
            raise VssError(ResultCode.INVALID_ARGUMENT, "whose stream credential?")
        changes = yield self.store.revoke_credential(body.cred_id, username=body.username,
                                                     origin=s.node_id)
        self.s501_data_changed(changes)
        self.log.info("stream credential {id} of {user} revoked on {node}", id=body.cred_id,
                      user=body.username, node=s.node_id)
        return CredState(credential=changes[-1].credential)

    @defer.inlineCallbacks
    def on_reg_info(self, s, body):
        """First registration of a PU or CU the node does not hold yet. The node holds
        it from then on: the records come in the change stream, and the answer names
        how far the node must have applied to hold them (READ_SEQ)."""
        written = []
        if body.role == Role.PU:
            device = yield self.store.get_device(body.identity)
            if device is None:
                raise VssError(ResultCode.UNKNOWN_DEVICE)
            if not device.home_node:
                home = s.node_id
                changes = yield self.store.update_device_fields(body.identity, home_node=home,
                                                                origin="cms")
                self.s501_data_changed(changes)  # its new home gets it
                written += changes
                device = yield self.store.get_device(body.identity)
            if device.home_node != s.node_id:
                # the node keeps the record it is given: it follows the device from now on
                changes = yield self.store.follow_devices(s.node_id, [device.device_id])
                self.s501_data_changed(changes)
                written += changes
                device = strip_secret(device)
            return RegInfo(home_node=device.home_node, device=device, user=None, grants=[],
                           ext=self._read_seq(s, written))
        # A CU's first login on this node: the node holds the user from now on, and the
        # devices the user may see (they come in the change stream, in order).
        changes = yield self.store.register_user(s.node_id, body.identity)
        self.s501_data_changed(changes)
        user = yield self.store.get_user(body.identity)
        if user is None:
            raise VssError(ResultCode.AUTH_FAILED)
        grants = []
        for principal in [f"user:{user.username}"] + [f"group:{g}" for g in user.groups]:
            page, _ = yield self.store.list_grants(principal=principal, limit=5000)
            grants.extend(page)
        return RegInfo(home_node="", device=None, user=user, grants=grants,
                       ext=self._read_seq(s, changes))

    def _read_seq(self, s, written):
        """REG_INFO's READ_SEQ extension: the last sequence sent to the node, or the
        last the registration wrote if it was not published yet (a node that applied
        that far holds what the registration gave it)."""
        seq = max([s.sent_seq] + [c.seq for c in written])
        return ((EXT_READ_SEQ, seq.to_bytes(8, "big")),)

    def _home(self, key):
        """The node of a device (its home) or of a CU target (where the wall is logged
        in); a CU target nowhere is WALL_OFFLINE."""
        if key.startswith(CU_TARGET):
            node = self.cu_nodes.get(key)
            if node is None:
                raise VssError(ResultCode.WALL_OFFLINE,
                               f"wall {key[len(CU_TARGET):]} is not logged in to any node")
            return node
        return self.homes.get(key)

    def on_route_lookup(self, s, body):
        home = self._home(body.device_id)
        if home is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE)
        target = self.sessions.get(home)
        ext = ((EXT_HOME_EPOCH, self.epochs.get(body.device_id, 0).to_bytes(8, "big")),)
        if target is not None and target.pu_address:
            ext = ((EXT_PU_ADDRESS, target.pu_address.encode()),) + ext
        return Route(device_id=body.device_id, home_node=home,
                     signalling=target.signalling if target else "",
                     media=target.media if target else "", node_up=target is not None,
                     ext=ext)

    @defer.inlineCallbacks
    def on_node_lookup(self, s, body):
        """NODE_LOOKUP: a node's addresses by its id, for a node that reaches it over a
        node link when no device homed there gives its route (the node holding footage).
        A registered node that is down: ``node_up`` false, no addresses."""
        target = self.sessions.get(body.node_id)
        if target is None:
            known = {n["node_id"] for n in (yield self.store.list_nodes())}
            if body.node_id not in known:
                raise VssError(ResultCode.UNKNOWN_NODE, f"no node {body.node_id!r}")
        return NodeRoute(node_id=body.node_id,
                         signalling=target.signalling if target else "",
                         media=target.media if target else "", node_up=target is not None)

    def on_route_request(self, s, body):
        """S403: find the node where the PU is registered and send it the request."""
        self.counters["routed"] += 1
        if body.hops > 2:
            raise VssError(ResultCode.ROUTE_LOOP)
        home = self._home(body.device_id)
        if home is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
        target = self.sessions.get(home)
        if target is None:
            raise VssError(ResultCode.HOME_NODE_DOWN, f"node {home} is down")
        forwarded = RouteRequest(origin_node=body.origin_node, device_id=body.device_id,
                                 hops=body.hops + 1, inner_type=body.inner_type,
                                 inner_body=body.inner_body)
        # S406 is the home node's answer, passed back as it came.
        d = target.link.request(MsgType.ROUTE_REQUEST, forwarded, self.config.route_timeout)
        return d.addCallback(lambda msg: msg.body)

    # -- recording settings and the recording catalogue across nodes

    @defer.inlineCallbacks
    def on_record_settings_get(self, s, body):
        """A node asks for the recording settings of a channel (its home node does so
        when the device changed): read from the DB; NOT_FOUND when none were stored."""
        if body.device_id not in self.homes:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
        stored = yield self.store.get_record_settings(body.device_id, body.channel)
        settings = record_settings_body(body.device_id, body.channel, stored)
        if settings is None:
            raise VssError(ResultCode.NOT_FOUND, f"no recording settings for "
                           f"{body.device_id} channel {body.channel}")
        return settings

    @defer.inlineCallbacks
    def on_record_query(self, s, body):
        """RECORD_QUERY: ask every up node at once (at most ``FANOUT_TIMEOUT`` s each)
        and merge; a node of the registry that is down or does not answer in time is
        listed as missing."""

        if body.to_time <= body.from_time:
            raise VssError(ResultCode.INVALID_ARGUMENT, "to must be after from")
        known = {n["node_id"] for n in (yield self.store.list_nodes())}
        asked = dict(self.sessions)
        request = codec.encode_body(body)
        results = yield defer.DeferredList(
            [sess.link.request_raw(MsgType.RECORD_QUERY, request, FANOUT_TIMEOUT)
             .addCallback(parse_answer) for sess in asked.values()], consumeErrors=True)
        answers, missing = [], sorted(known - set(asked))
        for node_id, (ok, result) in zip(asked, results, strict=True):
            if ok:
                answers.append(result)
            else:
                missing.append(node_id)
                self.log.info("node {node} did not list recordings: {error}", node=node_id,
                              error=result.getErrorMessage())
        self.counters["record_queries"] = self.counters.get("record_queries", 0) + 1
        return encode_parts(merge_parts(body.from_time, body.to_time, answers, missing))

    # -- the audit of media: what users started on the nodes (vss.rgm.audit)

    @defer.inlineCallbacks
    def on_audit_report(self, s, body):
        """AUDIT_REPORT: a node's batch of live views, playbacks and exports goes to the
        audit log in one transaction (and a ``lost`` entry when the node had to drop
        some). An event of a kind this CMS does not know is skipped and logged."""
        entries = []
        for e in body.events:
            kind = AUDIT_KINDS.get(e.kind)
            if kind is None:
                self.log.warn("node {node} reported an audit event of unknown kind {kind}",
                              node=s.node_id, kind=e.kind)
                continue
            detail = {"channel": e.channel, "stream": "sub" if e.stream else "main",
                      "via": e.via}
            if e.from_time:
                detail["from"] = iso_time(e.from_time)
            if e.to_time:
                detail["to"] = iso_time(e.to_time)
            entries.append(audit_entry(e.at, kind, f"user:{e.username}", e.peer, s.node_id,
                                       kind, f"device:{e.device_id}", 0, detail))
        if body.dropped:
            entries.append(audit_entry(self.now_ms(), "lost", f"node:{s.node_id}", "",
                                       s.node_id, "lost", f"node:{s.node_id}", 0,
                                       {"dropped": body.dropped}))
        yield self.store.append_audit(entries)
        self.counters["audit_events"] = self.counters.get("audit_events", 0) + len(entries)
        return AuditAck(batch=body.batch, stored=len(entries))

    def on_ss_report(self, s, body):
        """The load of each streaming server of the node, sent with its heartbeat."""
        if len(body.servers) > MAX_SS_PER_NODE:
            raise VssError(ResultCode.LIMIT_REACHED,
                           f"at most {MAX_SS_PER_NODE} streaming servers per node")
        self.mdp.report_servers(s.node_id, body.servers)
        return Empty()

    # -- events and alarms (vss.events): stored, acknowledged, listed

    @defer.inlineCallbacks
    def on_event_report(self, s, body):
        """EVENT_REPORT: a node's batch of the events it numbered, stored in one
        transaction (an event stored already is skipped: a report sent again)."""
        events = [e for e in body.events if e.node_id == s.node_id]
        if len(events) != len(body.events):
            self.log.warn("node {node} reported events numbered by another node",
                          node=s.node_id)
        stored = yield self.store.store_events(events)
        if body.dropped:
            self.log.warn("node {node} dropped {count} events it could not report",
                          node=s.node_id, count=body.dropped)
        self.counters["events"] = self.counters.get("events", 0) + stored
        return EventReportAck(batch=body.batch, stored=stored)

    @defer.inlineCallbacks
    def on_event_ack(self, s, body):
        """EVENT_ACK: an operator's acknowledgement (the node checked VIEW and set the
        user), stored with who and when."""
        if not body.username:
            raise VssError(ResultCode.INVALID_ARGUMENT, "an acknowledgement names its user")
        entry = yield self.store.ack_event(body.node_id, body.seq, body.device_id,
                                           body.username, self.now_ms(), body.comment[:512])
        return EventAcked(node_id=body.node_id, seq=body.seq, acked_by=entry.acked_by,
                          acked_at=entry.acked_at)

    @defer.inlineCallbacks
    def on_event_query(self, s, body):
        """EVENT_QUERY: the stored events of the devices the user may view, newest
        first."""
        if not body.username:
            raise VssError(ResultCode.INVALID_ARGUMENT, "a query names its user")
        entries, truncated = yield self.store.list_events(
            username=body.username, device_id=body.device_id, type=body.type,
            since=body.from_time, until=body.to_time, limit=max(1, min(body.limit, 1000)))
        return Events(events=entries, truncated=truncated)

    def node_event(self, node_id, type, severity):
        """A node going down or coming up: an event CMS numbers and stores itself (its
        ``node_id`` is CMS's id, its device ``node:<id>``), listed by the admin API."""
        self._event_seq = max(self._event_seq + 1, self.now_ms() * 1000)
        now = self.now_ms()
        event = EventRecord(node_id=self.config.cms_id, seq=self._event_seq,
                            device_id=f"node:{node_id}", channel=0, type=type, phase=0,
                            severity=int(severity), pu_time=now, node_time=now, items=[])
        d = self.store.store_events([event])
        d.addErrback(lambda f: self.log.warn("{type} of {node} not stored: {error}", type=type,
                                             node=node_id, error=f.getErrorMessage()))
        return d

    def purge_events(self):
        """The retention: events older than ``event_retention_days`` go."""
        before = self.now_ms() - self.config.event_retention_days * 86_400_000
        d = self.store.purge_events(before)
        d.addCallback(lambda n: n and self.log.info("removed {count} events past the "
                                                      "retention", count=n))
        d.addErrback(lambda f: self.log.warn("events not purged: {error}",
                                             error=f.getErrorMessage()))
        return d

    # -- presence: which PUs are online (dynamic data, passed on, never logged)

    def on_presence(self, s, change, force=False):
        """A node's PU came online or went offline: tell the other nodes."""
        if change.change not in (ChangeKind.ONLINE, ChangeKind.OFFLINE):
            return
        if change.device_id.startswith(CU_TARGET):  # a wall: where it is logged in
            if change.change == ChangeKind.ONLINE:
                self.cu_nodes[change.device_id] = s.node_id
            elif self.cu_nodes.get(change.device_id) == s.node_id:
                del self.cu_nodes[change.device_id]
            return
        if not force and self.homes.get(change.device_id) != s.node_id:
            return
        if change.change == ChangeKind.ONLINE:
            self.online.add(change.device_id)
        else:
            self.online.discard(change.device_id)
        frame = codec.encode_notify(MsgType.STATE_CHANGE, change)
        for other in self.sessions.values():
            if other is not s:
                other.link.send_raw(frame)

    def _send_presences(self, s):
        """A node that (re)registers learns which PUs of other nodes are online."""
        if self.sessions.get(s.node_id) is not s:
            return
        now = self.now_ms()
        for device_id in self.online:
            if self.homes.get(device_id) != s.node_id:
                s.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                    device_id=device_id, channel=0, change=int(ChangeKind.ONLINE),
                    timestamp=now, items=[]))

    # -- S501-S506 passive sync

    def s501_data_changed(self, changes):
        """MMS changed data: the changes of one transaction (S502: their records were
        read from the DB in it). They are published in log order: a transaction whose
        first sequence does not follow the last published one waits for the one before
        it (a write still in flight), at most ``HOLE_WAIT`` s."""
        changes = list(changes)
        if not changes:
            return
        if changes[-1].seq <= self.published_seq:
            self._publish(changes)  # older than what was published: late, still sent
            return
        self._pending[changes[0].seq] = changes
        self._release()

    publish = s501_data_changed

    def _release(self):
        while self._pending:
            first = min(self._pending)
            if first > self.published_seq + 1:
                waited = 0.0 if self._hole_since is None else \
                    self.clock.seconds() - self._hole_since
                if self.store.writes_in_flight > 0 and waited < HOLE_WAIT:
                    if self._hole_since is None:
                        self._hole_since = self.clock.seconds()
                    if self._hole_call is None or not self._hole_call.active():
                        self._hole_call = self.clock.callLater(HOLE_POLL, self._release)
                    return
                # nothing will fill it (a rolled back sequence, a write not published):
                # go on, and make every node behind it fetch
                self.counters["holes"] += 1
                self._hole_end = first - 1
            self._hole_since = None
            changes = self._pending.pop(first)
            self._publish(changes)
            self.published_seq = max(self.published_seq, changes[-1].seq)

    def _publish(self, changes):
        self.counters["changes"] += len(changes)
        gains, cache = [], {}
        for c in changes:
            gains += self.interest.apply(c, cache)
            if c.entity == Entity.DEVICE:
                if c.device is not None:
                    self.epochs[c.key] = c.device.version
                else:
                    self.epochs.pop(c.key, None)
        for node_id, part in self.s503_nodes_for(changes).items():
            self.s504_notify(node_id, part, changes[-1].seq)
        if gains and self.running:
            self._follow(gains)

    def s503_nodes_for(self, changes):
        """S503, node routing: {node_id: the changes its copy holds} for the up nodes
        (``vss.cms.interest``)."""
        out = {}
        for c in changes:
            nodes = self.interest.nodes_for(c)
            for node_id in (self.sessions if nodes is EVERY_NODE else nodes):
                if node_id in self.sessions:
                    out.setdefault(node_id, []).append(c)
        return out

    def _follow(self, gains):
        """Users registered on a node may now see devices it does not hold (a grant, a
        user's new group): the node follows them; the records come in the stream."""
        devices = {}
        for kind, node_id, key in gains:
            if kind == "device":
                devices.setdefault(node_id, set()).add(key)
            else:
                d = self.store.register_user(node_id, key)
                self._track(d.addCallback(self.s501_data_changed).addErrback(self._logged))
        for node_id, ids in sorted(devices.items()):
            self.counters["follows"] += len(ids)
            d = self.store.follow_devices(node_id, sorted(ids))
            self._track(d.addCallback(self.s501_data_changed).addErrback(self._logged))

    def s504_notify(self, node_id, changes, head=None):
        """S504: send one node the changes its copy holds (its own devices with their
        verifiers), in notifies of at most ``notify_batch`` changes, each naming the
        head of the one before (PREV_SEQ); the last names ``head`` (the transaction's
        last sequence, which may be for other nodes)."""
        s = self.sessions.get(node_id)
        if s is None:
            return defer.succeed(None)
        batch = [c if c.device is None or c.device.home_node == node_id
                 else replace(c, device=strip_secret(c.device)) for c in changes]
        head = max(head or 0, batch[-1].seq)
        size = self.config.notify_batch
        ds = []
        for i in range(0, len(batch), size):
            part = batch[i:i + size]
            ds.append(self._send(s, part, head if i + size >= len(batch) else part[-1].seq))
        return defer.gatherResults(ds)

    def _send(self, s, changes, head):
        body = codec.encode_body(SyncNotify(head_seq=head, changes=changes))
        body = body[:-2] + seq_ext(max(s.sent_seq, self._hole_end))
        s.sent_seq = max(s.sent_seq, head)
        self.counters["notified"] += 1
        self.counters["notified_changes"] += len(changes)
        self.counters["notified_bytes"] += len(body) + codec.HEADER_SIZE
        d = s.link.request_raw(MsgType.SYNC_NOTIFY, body)
        d.addCallback(_sync_complete)
        d.addCallback(lambda complete: self.s506_completed(s, complete))
        d.addErrback(lambda f: self.log.info(
            "sync to {node} not confirmed ({error}); it catches up on its next fetch",
            node=s.node_id, error=f.getErrorMessage()))
        return d

    def s506_completed(self, s, complete):
        """S506: what the node applied, at once in memory; in the DB (for operators) at
        most once a second per node, so that a busy stream of changes does not cost a
        DB write per change and per node."""
        if complete.applied_seq > s.applied_seq:
            s.applied_seq = complete.applied_seq
        if not self.running:
            return  # stopping: stopService wrote what the nodes had applied
        if s.node_id not in self._applied_writes:
            self._applied_writes[s.node_id] = (self.clock.callLater(
                APPLIED_WRITE_DELAY, self._write_applied, s), s)

    def _write_applied(self, s):
        del self._applied_writes[s.node_id]
        self._track(self.store.set_node_applied(s.node_id, s.applied_seq)
                    .addErrback(self._logged))

    def on_sync_fetch(self, s, body):
        """A node that reconnects (or saw a gap) asks for what it missed: the log
        entries after its sequence that its share holds, and how far that went
        (SCANNED_SEQ; the node's sequence moves there)."""
        node_id = s.node_id
        interest = self.interest

        def keep(entity, op, key, origin):
            return interest.keeps(node_id, entity, op, key, origin)

        d = self.store.changes_for(body.after_seq, max(1, min(body.limit or 1000, 5000)), keep)

        def batch(result):
            changes, scanned, reload_required = result
            changes = [c if c.device is None or c.device.home_node == node_id
                       else replace(c, device=strip_secret(c.device)) for c in changes
                       if interest.keeps_record(node_id, c)]
            return self.store.head_seq().addCallback(
                lambda head: SyncBatch(changes=changes, head_seq=head,
                                       reload_required=reload_required,
                                       ext=((EXT_SCANNED_SEQ, scanned.to_bytes(8, "big")),)))

        return d.addCallback(batch)

    # -- S601-S605 active sync

    @defer.inlineCallbacks
    def on_sync_change(self, s, body):
        """S604: a PU's change, sent by its home node, is written to the DB; S605 is the
        answer. Central changes win: a change based on an older version of the device
        than the DB holds is refused (applied False) and the node gets the current data
        through passive sync."""
        self.counters["sync_changes"] += 1
        device = yield self.store.get_device(body.device_id)
        if device is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE)
        if device.home_node != s.node_id:
            raise VssError(ResultCode.FORBIDDEN, f"{body.device_id} is homed on {device.home_node}")
        if body.base_version and body.base_version < device.version:
            self.counters["stale_changes"] += 1
            return SyncAck(change_id=body.change_id, seq=0, applied=False)
        items = {kv.key: kv.value for kv in body.items}
        changes = []
        if body.change == ChangeKind.NAME and items.get("name"):
            changes = yield self.store.update_device_fields(body.device_id, name=items["name"],
                                                            origin=s.node_id)
        elif body.change in (ChangeKind.CONFIG, ChangeKind.PRESET, ChangeKind.RECORDING):
            key = {ChangeKind.CONFIG: "config", ChangeKind.PRESET: "presets",
                   ChangeKind.RECORDING: "recording"}[ChangeKind(body.change)]
            current = (yield self.store.get_record_settings(body.device_id, body.channel)) or {}
            reported = dict(current.get("reported", {}))
            merged = dict(reported.get(key, {}))
            if body.change == ChangeKind.CONFIG:
                merged.update(items)
            else:
                merged = items
            reported[key] = merged
            current["reported"] = reported
            changes = yield self.store.set_record_settings(body.device_id, body.channel, current,
                                                           origin=s.node_id)
        seq = changes[-1].seq if changes else 0
        if changes:
            self.s501_data_changed(changes)
        return SyncAck(change_id=body.change_id, seq=seq, applied=bool(changes))

    # -- node liveness

    def sweep(self):
        now = self.clock.seconds()
        silent = self.config.node_timeout
        for s in list(self.sessions.values()):
            if now - s.link.last_rx > silent:
                self.log.info("node {node} silent for {seconds:.0f} s: down", node=s.node_id,
                              seconds=now - s.link.last_rx)
                s.link.close(ResultCode.KEEPALIVE_TIMEOUT)

    # -- node death: its PUs move to the live nodes (docs/consistency.md)

    def node_list(self):
        """NodeList of the up nodes that name a PU address, least loaded first: what a
        PU tries, in order, when it loses its node."""
        up = sorted((s for s in self.sessions.values() if s.pu_address),
                    key=lambda s: (s.load.get("pus", 0), s.node_id))
        return NodeList(nodes=[NodeAddress(node_id=s.node_id, address=s.pu_address)
                               for s in up])

    def _announce_nodes(self):
        """Every node learns the up nodes' PU addresses (it passes them on to its PUs)."""
        if not self.active:
            return
        frame = codec.encode_notify(MsgType.NODE_LIST, self.node_list())
        for s in self.sessions.values():
            s.link.send_raw(frame)

    def _schedule_rehome(self, node_id):
        if not self.config.rehome_after or node_id in self._rehome_calls:
            return
        self._rehome_calls[node_id] = self.clock.callLater(
            self.config.rehome_after, self._rehome_due, node_id)

    def _rehome_due(self, node_id):
        self._rehome_calls.pop(node_id, None)
        if node_id in self.sessions or not self.running or not self.active:
            return None

        def failed(f):  # the database failed: what is left moves at the next try
            self.log.warn("moving the PUs of {node} failed ({error}); trying again",
                          node=node_id, error=f.getErrorMessage())
            if self.running and self.active and node_id not in self.sessions:
                self._schedule_rehome(node_id)

        return self.rehome(node_id).addErrback(failed)

    def pick_targets(self, count, exclude=()):
        """Up to ``count`` target node ids, one per PU to move, by load (MDP's view:
        the PUs each node reports, plus what this round already gave it), at most
        ``rehome_batch`` per node and never beyond a node's capacity."""
        load = {}
        room = {}
        for node_id, s in self.sessions.items():
            if node_id in exclude:
                continue
            load[node_id] = s.load.get("pus", 0)
            room[node_id] = self.config.rehome_batch
            if s.capacity:
                room[node_id] = min(room[node_id], max(0, s.capacity - load[node_id]))
        out = []
        for _ in range(count):
            free = [n for n in load if room[n] > 0]
            if not free:
                break
            best = min(free, key=lambda n: (load[n], n))
            out.append(best)
            load[best] += 1
            room[best] -= 1
        return out

    @defer.inlineCallbacks
    def rehome(self, node_id):
        """Move the PUs homed on ``node_id`` (down) to the live nodes, in rounds of at
        most ``rehome_batch`` per target; each move is a change of the device record (its
        version, the home epoch, goes up), so the new home gets the record with its
        verifier and grants by passive sync, every node holding it forgets its route,
        and the old home gives the PU up when it hears of it. Fires with the number
        moved."""
        if node_id in self.rehoming:
            return 0
        self.rehoming.add(node_id)
        moved = 0
        done = set()  # moved in this call (their change may still wait to be published)
        started = self.clock.seconds()
        try:
            while self.running and self.active and node_id not in self.sessions:
                devices = sorted(d for d, h in self.homes.items()
                                 if h == node_id and d not in done)
                if not devices:
                    break
                targets = self.pick_targets(len(devices), exclude={node_id})
                if not targets:
                    self.log.warn("node {node} is down and no node can take its {count} "
                                  "PUs; trying again", node=node_id, count=len(devices))
                    yield task.deferLater(self.clock, max(1.0, self.config.rehome_after),
                                          lambda: None)
                    continue
                moves = list(zip(devices, targets, strict=False))
                for i in range(0, len(moves), REHOME_CHUNK):
                    part = moves[i:i + REHOME_CHUNK]
                    changes = yield self.store.move_devices(part, origin="cms",
                                                            failed_node=node_id)
                    self.s501_data_changed(changes)
                    done.update(device_id for device_id, _target in part)
                    moved += len(part)
                if len(moves) < len(devices):
                    yield task.deferLater(self.clock, REHOME_ROUND, lambda: None)
        finally:
            self.rehoming.discard(node_id)
        if moved:
            self.counters["rehomed"] = self.counters.get("rehomed", 0) + moved
            self.log.info("node {node} down: moved its {count} PUs to live nodes in "
                          "{seconds:.2f} s", node=node_id, count=moved,
                          seconds=self.clock.seconds() - started)
        return moved

    def _schedule_failback(self, node_id):
        call = self._failback_calls.pop(node_id, None)
        if call is not None and call.active():
            call.cancel()
        self._failback_calls[node_id] = self.clock.callLater(
            max(0.0, self.config.failback_after), self._failback_due, node_id)

    def _failback_due(self, node_id):
        self._failback_calls.pop(node_id, None)
        # a node that went down meanwhile takes nothing; one that came back again was
        # given a new delay by _schedule_failback
        if node_id in self.sessions and self.running and self.active:
            return self._failback_now(node_id)
        return None

    def _failback_now(self, node_id):
        def failed(f):  # the database failed: they stay where they are, said in the log
            self.log.warn("giving node {node} back its PUs failed ({error}); they stay "
                          "on their present homes (vss-admin can move them)",
                          node=node_id, error=f.getErrorMessage())

        return self.failback(node_id).addErrback(failed)

    @defer.inlineCallbacks
    def failback(self, node_id):
        """With ``failback``: a node that comes back takes back the PUs moved away
        from it when it was down (their other homes give them up, the PUs are
        redirected). What was moved is in the database (``failover_moves``), so a CMS
        restarted or taken over meanwhile gives them back too. Fires with the number
        moved back."""
        moved = yield self.store.failover_moves(node_id)
        back = sorted(d for d in moved if self.homes.get(d, node_id) != node_id)
        done = 0
        for i in range(0, len(back), REHOME_CHUNK):
            if node_id not in self.sessions or not self.active:
                break
            part = [(d, node_id) for d in back[i:i + REHOME_CHUNK]]
            changes = yield self.store.move_devices(part, origin="cms")
            self.s501_data_changed(changes)
            done += len(part)
        if done:
            self.counters["failed_back"] = self.counters.get("failed_back", 0) + done
            self.log.info("node {node} is back: gave it back {count} PUs (failback)",
                          node=node_id, count=done)
        return done

    # -- for MMS and operators

    def assign_home_node(self, device_id=None):
        """The least loaded up node (fewest PUs, then fewest devices homed), or ''."""
        if not self.sessions:
            return defer.succeed("")
        counts = {}
        for home in self.homes.values():
            counts[home] = counts.get(home, 0) + 1
        best = min(self.sessions.values(),
                   key=lambda s: (s.load.get("pus", 0), counts.get(s.node_id, 0), s.node_id))
        return defer.succeed(best.node_id)

    def online_per_node(self):
        counts = {}
        for device_id in self.online:
            home = self.homes.get(device_id, "")
            counts[home] = counts.get(home, 0) + 1
        return counts

    def status(self):
        return {
            "cms_id": self.config.cms_id,
            "nodes": {n: {"peer": s.link.peer, "applied_seq": s.applied_seq, "load": s.load,
                          "media": s.media, "signalling": s.signalling,
                          "servers": self.mdp.view(n)}
                      for n, s in sorted(self.sessions.items())},
            "devices": len(self.homes),
            "online_per_node": self.online_per_node(),
            **self.counters,
        }

    HANDSHAKE = {
        MsgType.HELLO: on_hello,
        MsgType.AUTH_START: on_auth_start,
        MsgType.AUTH_PROOF: on_auth_proof,
        MsgType.NODE_REGISTER: on_node_register,
    }
    REGISTERED = {
        MsgType.NODE_HEARTBEAT: on_heartbeat,
        MsgType.STATIC_PULL: on_static_pull,
        MsgType.REG_INFO: on_reg_info,
        MsgType.ROUTE_LOOKUP: on_route_lookup,
        MsgType.NODE_LOOKUP: on_node_lookup,
        MsgType.ROUTE_REQUEST: on_route_request,
        MsgType.SYNC_FETCH: on_sync_fetch,
        MsgType.SYNC_CHANGE: on_sync_change,
        MsgType.STATE_CHANGE: on_presence,
        MsgType.RECORD_SETTINGS_GET: on_record_settings_get,
        MsgType.RECORD_QUERY: on_record_query,
        MsgType.CRED_STORE: on_cred_store,
        MsgType.CRED_REVOKE: on_cred_revoke,
        MsgType.AUDIT_REPORT: on_audit_report,
        MsgType.EVENT_REPORT: on_event_report,
        MsgType.EVENT_ACK: on_event_ack,
        MsgType.EVENT_QUERY: on_event_query,
        MsgType.SS_REPORT: on_ss_report,
    }
