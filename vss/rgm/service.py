"""
The RGM (register manager) of a node: the signalling core every PU and CU talks to.

One ``RGMService`` holds the node's state (through its ``IMemoryStore``) and is the
handler of every PU and CU link (``vss.protocols.link.SignallingLink``). The life of a
link is:

1. ``HELLO``        version negotiation (``on_hello``)
2. ``AUTH_START``   SCRAM challenge (``on_auth_start``); unknown identities are asked of
                    CMS first (first registration); NOT_READY while the node holds no
                    synchronised copy or CMS, needed for a first login, cannot answer
3. ``AUTH_PROOF``   proof check, throttled per account and per address (``on_auth_proof``)
4. ``REGISTER``     the PU comes online / the CU session opens (``on_register``)
5. then keepalives, a PU's state changes (``on_state_change``, S601-S603) and a CU's
   requests (``vss.rgm.relay``, S401-S407).

A sweep every keepalive interval drops links silent for three intervals and links that
never finished logging in.
"""

import secrets
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from vss.ops.histogram import Histogram
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    CU_TARGET,
    EXT_HOME_EPOCH,
    EXT_PU_ADDRESS,
    Action,
    AuthChallenge,
    AuthOk,
    ChangeKind,
    DeviceInfo,
    Devices,
    Empty,
    HelloAck,
    HomeRedirect,
    MsgType,
    NodeAddress,
    NodeList,
    Registered,
    Role,
    Severity,
    StateChange,
    SyncChange,
    to_dict,
)
from vss.rgm import relay, settings
from vss.rgm.auth import ScramExchange, Throttle
from vss.rgm.walls import WALL_KINDS, WallRegistry

AGENT = "vss-node/0.1"
#: a HOME_QUERY for a PU whose home is down is held this long (seconds) for the PU's
#: move (answered at once when this node learns it), then answered HOME_NODE_DOWN: a
#: storm of PUs waiting for CMS to move them costs one question each, not one a second
HOME_HOLD = 5.0
#: at most this many held at once (more are answered HOME_NODE_DOWN at once)
HOME_HOLD_MAX = 50_000


@dataclass(frozen=True)
class RGMConfig:
    node_id: str
    node_secret: bytes
    keepalive_interval: int = 30
    request_timeout: float = 10.0
    max_in_flight: int = 256
    handshake_timeout: float = 30.0
    link_max_failures: int = 5
    max_body: int = codec.MAX_BODY
    #: keep the relay's latency histograms (``vss.ops.metrics``; ``--metrics off``: not)
    metrics: bool = False
    #: logins (AUTH_START) a second the node takes, a burst of as many; more are
    #: answered BUSY (not a failure: the throttle does not count them); 0: no limit
    login_rate: float = 0.0


def _versions():
    """The versions this node speaks, as a HELLO refusal names them."""
    versions = sorted(codec.SUPPORTED_VERSIONS)
    if len(versions) == 1:
        return f"version {versions[0]}"
    return f"versions {versions[0]}-{versions[-1]}"


class State:
    NEW = "new"
    HELLO = "hello"
    CHALLENGED = "challenged"
    AUTHENTICATED = "authenticated"
    REGISTERED = "registered"


class Session:
    """What the node knows about one link."""

    __slots__ = (
        "link",
        "listener_role",
        "role",
        "state",
        "identity",
        "session_id",
        "exchange",
        "failures",
        "kind",
        "channels",
        "registered_at",
        "inflight",
    )

    def __init__(self, link, listener_role):
        self.link = link
        self.listener_role = listener_role
        self.role = None
        self.state = State.NEW
        self.identity = None
        self.session_id = None
        self.exchange = None
        self.failures = 0
        self.kind = 0
        self.channels = 0
        self.registered_at = None
        self.inflight = set()  # txids of this CU's requests being relayed


class _Listener:
    """The link handler of one listening endpoint: tags links with the role it serves."""

    def __init__(self, rgm, role):
        self.rgm = rgm
        self.role = role

    def linkUp(self, link):
        self.rgm.linkUp(link, self.role)

    def received(self, link, frame, msg):
        self.rgm.received(link, frame, msg)

    def received_frame(self, link, frame):
        """The node's fast paths (``relay.fast_request``: PTZ_CONTROL, KEEPALIVE), tried
        before a request is decoded; False hands the frame to ``received``."""
        return relay.fast_request(self.rgm, link, frame)

    def linkDown(self, link, reason):
        self.rgm.linkDown(link, reason)


def _role_name(role):
    return "pu" if role == Role.PU else "cu"


#: Control requests a CU may send, and the grant each needs.
#: What CMS (or the link to it) answers when it cannot answer now: a first login then
#: gets NOT_READY, never a wrong-credentials answer.
CENTRAL_DOWN = (ResultCode.CENTRAL_UNAVAILABLE, ResultCode.TIMEOUT, ResultCode.SESSION_CLOSED,
                ResultCode.DB_UNAVAILABLE, ResultCode.BUSY, ResultCode.NOT_READY)

#: State changes a PU reports that are static data and so go on to CMS (S603).
SYNCED_CHANGES = {ChangeKind.NAME, ChangeKind.CONFIG, ChangeKind.PRESET, ChangeKind.RECORDING}


class RGMService(service.Service):
    log = Logger()

    def __init__(self, config, store, central, clock, cdn=None, pu_address=None):
        self.config = config
        #: f() -> the client endpoint PUs reach this node at ('' if unknown)
        self.pu_address = pu_address or (lambda: "")
        self.node_id = config.node_id
        self.store = store
        self.central = central
        self.clock = clock
        self.cdn = cdn
        self.recordings = None  # vss.recording.tasks.RecordingManager, if the node records
        self.archive = None  # vss.recording.archive.NodeArchive: RECORD_QUERY across nodes
        self.credentials = None  # vss.streamcreds.node.StreamCredentials, with a CMS
        self.events = None  # vss.events.hub.EventHub: events and alarms
        #: TV walls and decoders logged in here (vss.rgm.walls); CMS is told where each is
        self.walls = WallRegistry(config.node_id, store, clock,
                                  presence=lambda key, online: central.presence(key, online))
        self.throttle = Throttle(clock)
        self.links = set()
        self.pu_links = {}  # device_id -> link of the registered PU
        self.cu_links = {}  # session_id -> link
        self.counters = {"relayed": 0, "routed": 0, "auth_failures": 0, "dropped_silent": 0,
                         "timeouts": 0, "not_ready": 0}
        #: logins by (role, result): "pu"/"cu", "ok"/"failed"/"throttled"/"not_ready"
        self.logins = {(role, result): 0 for role in ("pu", "cu")
                       for result in ("ok", "failed", "throttled", "not_ready", "busy")}
        self._login_tokens = config.login_rate  # the login rate's bucket
        self._login_at = None
        #: the relay's latency, S401 to the answer's arrival, by (message type, "local" or
        #: "remote"): ``vss.ops.metrics.Histogram``; None with metrics off. The PTZ fast
        #: paths bump the cells of their two histograms straight (``vss.rgm.relay``).
        self.latency = None
        self.ptz_local = self.ptz_remote = None
        if config.metrics:
            self.latency = {(int(MsgType.PTZ_CONTROL), "local"): Histogram(),
                            (int(MsgType.PTZ_CONTROL), "remote"): Histogram()}
            self.ptz_local = self.latency[int(MsgType.PTZ_CONTROL), "local"].cells
            self.ptz_remote = self.latency[int(MsgType.PTZ_CONTROL), "remote"].cells
        self._sweeper = None
        self._held_homes = {}  # device_id -> [(link, frame, DelayedCall)] (HOME_HOLD)
        self._held_count = 0

    # -- service

    def startService(self):
        super().startService()
        self.drop_orphan_sessions()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        interval = min(self.config.keepalive_interval, self.config.handshake_timeout)
        self._sweeper.start(max(1.0, interval / 2.0), now=False)

    def stopService(self):
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self.walls.stop()
        for held in self._held_homes.values():
            for _link, _frame, call in held:
                if call.active():
                    call.cancel()
        self._held_homes.clear()
        self._held_count = 0
        for link in list(self.links):
            link.close(ResultCode.SESSION_CLOSED, "node shutting down")
        return super().stopService()

    def drop_orphan_sessions(self):
        """Forget the sessions the store holds that no live link of this node owns (at
        start, every one: the process that opened them is gone, e.g. killed). Returns
        how many were dropped."""
        owned = {link.session.session_id for link in self.links
                 if link.session is not None and link.session.session_id}
        orphans = [sid for sid in self.store.sessions() if sid not in owned]
        for sid in orphans:
            self.store.remove_session(sid)
        if orphans:
            self.log.info("dropped {count} sessions no link owns (left by an earlier run)",
                          count=len(orphans))
        return len(orphans)

    def factory(self, role):
        """The protocol factory for the PU (``Role.PU``) or CU (``Role.CU``) listener."""
        return LinkFactory(
            _Listener(self, role),
            self.clock,
            max_body=self.config.max_body,
            max_in_flight=self.config.max_in_flight,
            request_timeout=self.config.request_timeout,
        )

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- link handler

    def linkUp(self, link, role):
        link.session = Session(link, role)
        self.links.add(link)

    def linkDown(self, link, reason):
        self.links.discard(link)
        s = link.session
        if s is None or s.state != State.REGISTERED:
            return
        self.store.remove_session(s.session_id)
        if s.role == Role.PU:
            if self.pu_links.get(s.identity) is link:
                del self.pu_links[s.identity]
                self.store.set_state(s.identity, online=False, last_seen=self.now_ms())
                self.log.info("PU {device} offline", device=s.identity)
                self.publish_state(s.identity, ChangeKind.OFFLINE, [])
                self.central.presence(s.identity, False)
                if self.events is not None and self.running:
                    self.events.raise_event(s.identity, 0, "offline", severity=Severity.WARNING)
        else:
            self.cu_links.pop(s.session_id, None)
            if s.kind in WALL_KINDS:
                self.walls.logged_out(link)
            if self.events is not None:
                self.events.cu_gone(link)

    def received(self, link, frame, msg):
        s = link.session
        t = frame.type
        notify = frame.flags & codec.FLAG_NOTIFY
        # KEEPALIVE and BYE are accepted in every state; a refused request is answered
        # and the link stays up (docs/protocol.md 8: the handshake timeout bounds a link
        # that never logs in).
        if t == MsgType.KEEPALIVE:
            if not notify:
                link.send_response(t, frame.txid, Empty())
            if s.state == State.REGISTERED and s.role == Role.PU:
                self.store.set_state(s.identity, last_seen=self.now_ms())
            return
        if t == MsgType.BYE:
            link.close()
            return
        if s.state == State.NEW and t != MsgType.HELLO:
            # Nothing but HELLO opens a link (docs/protocol.md 8.1).
            self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE, "HELLO first")
            return
        if s.state == State.REGISTERED:
            if s.role == Role.CU:
                relay.on_cu_request(self, link, frame, msg)
            else:
                self.on_pu_message(link, frame, msg)
            return
        handler = {
            MsgType.HELLO: self.on_hello,
            MsgType.AUTH_START: self.on_auth_start,
            MsgType.AUTH_PROOF: self.on_auth_proof,
            MsgType.REGISTER: self.on_register,
            MsgType.HOME_QUERY: self.on_home_query,
        }.get(t)
        if handler is None:
            # Before READY the session is not open yet (docs/protocol.md 8).
            self.refuse(link, frame, ResultCode.NOT_AUTHENTICATED,
                        "REGISTER first" if s.state == State.AUTHENTICATED else "log in first")
            return
        handler(link, frame, msg)

    def refuse(self, link, frame, code, message=""):
        if not frame.flags & codec.FLAG_NOTIFY:
            link.send_error(frame.type, frame.txid, code, message)

    # -- 1. HELLO

    def on_hello(self, link, frame, msg):
        s = link.session
        if s.state != State.NEW:
            return self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE, "HELLO already done")
        h = msg.body
        # A range with min_version above max_version is empty: no version in common.
        common = [v for v in codec.SUPPORTED_VERSIONS if h.min_version <= v <= h.max_version]
        if not common:
            why = (f"this node speaks {_versions()}, the client "
                   f"{h.min_version}-{h.max_version}")
            link.send_error(frame.type, frame.txid, ResultCode.NO_COMMON_VERSION, why)
            link.close(ResultCode.NO_COMMON_VERSION, why)
            return
        if h.role != link.session.listener_role:
            why = f"this endpoint serves role {Role(s.listener_role).name}"
            link.send_error(frame.type, frame.txid, ResultCode.UNEXPECTED_MESSAGE, why)
            link.close(ResultCode.UNEXPECTED_MESSAGE, why)
            return
        s.role = Role(h.role)
        s.state = State.HELLO
        link.send_response(
            frame.type,
            frame.txid,
            HelloAck(version=max(common), node_id=self.node_id, agent=AGENT, features=[]),
        )
        link.version = max(common)

    # -- 2. AUTH_START

    def on_auth_start(self, link, frame, msg):
        s = link.session
        if s.state not in (State.HELLO, State.CHALLENGED):
            return self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE, "already logged in")
        body = msg.body
        if not self.central.synchronised():
            # No copy of the static data yet (a first start, a reload in progress): a
            # login cannot be checked, and must not look like a wrong secret.
            self.counters["not_ready"] += 1
            self.logins[_role_name(s.role), "not_ready"] += 1
            return self.refuse(link, frame, ResultCode.NOT_READY,
                               f"node {self.node_id} is loading its data; try again later")
        if not self._take_login():
            # a storm (PUs whose node died come here at once): later, not refused
            self.logins[_role_name(s.role), "busy"] += 1
            return self.refuse(link, frame, ResultCode.BUSY,
                               f"node {self.node_id} takes {self.config.login_rate:g} logins "
                               "a second; try again in a second")
        wait = self.throttle.wait(body.identity, link.peer_host)
        if wait > 0:
            self.logins[_role_name(s.role), "throttled"] += 1
            return self.refuse(
                link, frame, ResultCode.AUTH_THROTTLED, f"retry in {max(1, round(wait))} s"
            )
        if body.mechanism != "SCRAM-SHA-256" or not 16 <= len(body.client_nonce) <= 64:
            return self.refuse(link, frame, ResultCode.INVALID_ARGUMENT, "mechanism or nonce")
        d = defer.maybeDeferred(self.verifier_for, s.role, body.identity)

        def challenge(verifier):
            if link.closed:
                return
            s.exchange = ScramExchange(
                body.identity, body.client_nonce, verifier, self.config.node_secret
            )
            s.state = State.CHALLENGED
            link.send_response(
                frame.type,
                frame.txid,
                AuthChallenge(
                    salt=s.exchange.salt,
                    iterations=s.exchange.iterations,
                    server_nonce=s.exchange.server_nonce,
                ),
            )

        def failed(f):
            if f.check(VssError) and f.value.code == ResultCode.NOT_READY:
                self.counters["not_ready"] += 1
                self.logins[_role_name(s.role), "not_ready"] += 1
            link.send_failure(frame, f)

        d.addCallback(challenge)
        d.addErrback(failed)

    def _take_login(self):
        """A token of the login rate's bucket (refilled at ``login_rate`` a second, at
        most as many held), or False."""
        rate = self.config.login_rate
        if not rate:
            return True
        now = self.clock.seconds()
        if self._login_at is not None:
            self._login_tokens = min(rate, self._login_tokens + (now - self._login_at) * rate)
        self._login_at = now
        if self._login_tokens < 1:
            return False
        self._login_tokens -= 1
        return True

    def verifier_for(self, role, identity):
        """The stored verifier of a PU or CU, asking CMS on a first registration.
        None for an identity nobody knows (the exchange then fails at the proof);
        NOT_READY when CMS, needed to know, cannot answer now."""
        record = self._record(role, identity)
        if record is not None and (role != Role.PU or record.home_node in ("", self.node_id)):
            return record.verifier if record.enabled else None
        # a PU this node holds as homed elsewhere may have been moved here (a node died)
        # before the change stream brought its record: CMS gives it, as to a first login
        d = defer.maybeDeferred(self.central.registration_info, identity, int(role))

        def got(info):
            self.apply_registration_info(info)
            record = self._record(role, identity)
            return record.verifier if record is not None and record.enabled else None

        def unknown(f):
            f.trap(VssError)
            if f.value.code in CENTRAL_DOWN:
                self.log.warn("CMS unavailable for first registration of {identity}: {error}",
                              identity=identity, error=f.value.message)
                raise VssError(ResultCode.NOT_READY, "the central platform is needed for a "
                               "first login here and cannot be reached; try again later")
            return None

        return d.addCallbacks(got, unknown)

    # -- a PU asks where it is homed (docs/protocol.md 9.10)

    def on_home_query(self, link, frame, msg):
        """HOME_QUERY, after HELLO: the PU's current home. A device this node holds is
        answered from its copy and the up nodes CMS named last (NODE_LIST): here, the
        home's address, or HOME_NODE_DOWN when its home is not up (its PUs move to live
        nodes soon), with no question to CMS (a storm of PUs asking again every second
        costs CMS nothing); another is asked of CMS. A device nobody knows is answered as
        if homed here (the login then fails as for any wrong identity: no oracle of
        device ids)."""
        s = link.session
        if s.state == State.NEW or s.role != Role.PU:
            return self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE,
                               "HOME_QUERY is a PU's question, after HELLO")
        self.counters["home_queries"] = self.counters.get("home_queries", 0) + 1
        return self._answer_home(link, frame, msg.body.device_id, hold=True)

    def _answer_home(self, link, frame, device_id, hold=False):
        record = self.store.get_device(device_id)

        def here(epoch=0):
            return HomeRedirect(device_id=device_id, home_node=self.node_id,
                                address=self.pu_address(),
                                epoch=max(epoch, record.version if record else 0))

        if record is not None and record.home_node in ("", self.node_id):
            return self._answer(link, frame, here())
        up = {n.node_id: n.address for n in self.central.node_addresses()}
        if record is not None and up:
            if record.home_node in up:
                return self._answer(link, frame, HomeRedirect(
                    device_id=device_id, home_node=record.home_node,
                    address=up[record.home_node], epoch=record.version))
            if hold and self._held_count < HOME_HOLD_MAX and self.running:
                call = self.clock.callLater(HOME_HOLD, self._home_held_out, device_id, link,
                                            frame)
                self._held_homes.setdefault(device_id, []).append((link, frame, call))
                self._held_count += 1
                return None
            return self.refuse(link, frame, ResultCode.HOME_NODE_DOWN,
                               f"node {record.home_node} is down; its PUs move to live nodes")
        d = defer.maybeDeferred(self.central.home_of, device_id)

        def got(route):
            ext = dict(route.ext)
            epoch = int.from_bytes(ext.get(EXT_HOME_EPOCH, b""), "big")
            if route.home_node in ("", self.node_id):
                return here(epoch)
            if not route.node_up:
                raise VssError(ResultCode.HOME_NODE_DOWN,
                               f"node {route.home_node} is down; its PUs move to live nodes")
            address = ext.get(EXT_PU_ADDRESS, b"").decode("utf-8", "replace")
            if not address:
                raise VssError(ResultCode.HOME_NODE_DOWN,
                               f"node {route.home_node} names no PU address")
            self.counters["redirects"] = self.counters.get("redirects", 0) + 1
            return HomeRedirect(device_id=device_id, home_node=route.home_node,
                                address=address, epoch=epoch)

        def failed(f):
            f.trap(VssError)
            if f.value.code == ResultCode.UNKNOWN_DEVICE:
                return here()
            if record is not None:  # CMS cannot say: this node's copy does
                for n in self.central.node_addresses():
                    if n.node_id == record.home_node:
                        return HomeRedirect(device_id=device_id, home_node=n.node_id,
                                            address=n.address, epoch=record.version)
            if f.value.code in CENTRAL_DOWN:  # nobody can tell: the login here answers
                return here()  # as it would (NOT_READY while the node has no copy...)
            return f

        d.addCallback(got).addErrback(failed)
        d.addCallbacks(lambda body: self._answer(link, frame, body),
                       lambda f: link.send_failure(frame, f))
        return d

    def _home_held_out(self, device_id, link, frame):
        """A held HOME_QUERY whose PU was not moved within HOME_HOLD: HOME_NODE_DOWN."""
        held = self._held_homes.get(device_id, [])
        for i, (lk, fr, _call) in enumerate(held):
            if lk is link and fr is frame:
                del held[i]
                self._held_count -= 1
                break
        if not held:
            self._held_homes.pop(device_id, None)
        if not link.closed:
            self._answer_home(link, frame, device_id)

    def home_changed(self, device_id, old=None, new=None):
        """A device record changed (a move): the HOME_QUERYs held for it are answered."""
        held = self._held_homes.pop(device_id, None)
        for link, frame, call in held or ():
            self._held_count -= 1
            if call.active():
                call.cancel()
            if not link.closed:
                self._answer_home(link, frame, device_id)

    def _answer(self, link, frame, body):
        if not link.closed and not frame.flags & codec.FLAG_NOTIFY:
            link.send_response(frame.type, frame.txid, body)

    def node_list(self):
        """NodeList for this node's PUs: this node first, then the others as CMS
        ordered them (least loaded first)."""
        nodes = self.central.node_addresses()
        mine = [n for n in nodes if n.node_id == self.node_id]
        if not mine and self.pu_address():
            mine = [NodeAddress(node_id=self.node_id, address=self.pu_address())]
        return NodeList(nodes=mine + [n for n in nodes if n.node_id != self.node_id])

    def send_node_list(self, _body=None):
        """Tell every PU of this node the nodes it may try when it loses this one."""
        body = self.node_list()
        if len(body.nodes) < 2:
            return
        frame = codec.encode_notify(MsgType.NODE_LIST, body)
        for link in list(self.pu_links.values()):
            link.send_raw(frame)

    def _record(self, role, identity):
        if role == Role.PU:
            return self.store.get_device(identity)
        return self.store.get_user(identity)

    def apply_registration_info(self, info):
        """What CMS answered to a first registration: the node holds these records from
        now on, and CMS's change stream brings their changes (and may have brought them
        already: a record held is never replaced by an older one)."""
        store = self.store
        if info.device is not None:
            held = store.get_device(info.device.device_id)
            if held is None or held.version < info.device.version:
                store.put_device(info.device)
        if info.user is not None:
            held = store.get_user(info.user.username)
            if held is None or held.version < info.user.version:
                store.put_user(info.user)
        held = {(g.principal, g.device_id) for g in store.grants()} if info.grants else ()
        for g in info.grants:
            if (g.principal, g.device_id) not in held:
                store.put_grant(g)

    # -- 3. AUTH_PROOF

    def on_auth_proof(self, link, frame, msg):
        s = link.session
        if s.state != State.CHALLENGED:
            return self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE,
                               "already logged in" if s.state == State.AUTHENTICATED
                               else "AUTH_START first")
        exchange, s.exchange = s.exchange, None
        signature = exchange.verify(msg.body.client_proof)
        if signature is None:
            s.failures += 1
            s.state = State.HELLO
            self.counters["auth_failures"] += 1
            self.logins[_role_name(s.role), "failed"] += 1
            self.throttle.failed(exchange.identity, link.peer_host)
            # The identity is logged, never the proof or anything derived from a secret.
            self.log.info(
                "authentication failed for {role} {identity} from {peer}",
                role=s.role.name,
                identity=exchange.identity,
                peer=link.peer,
            )
            link.send_error(frame.type, frame.txid, ResultCode.AUTH_FAILED)
            if s.failures >= self.config.link_max_failures:
                link.close(ResultCode.AUTH_FAILED, "too many failures")
            return
        self.throttle.succeeded(exchange.identity, link.peer_host)
        self.logins[_role_name(s.role), "ok"] += 1
        s.identity = exchange.identity
        s.session_id = secrets.token_hex(16)
        s.state = State.AUTHENTICATED
        link.send_response(
            frame.type, frame.txid, AuthOk(server_signature=signature, session_id=s.session_id)
        )

    # -- 4. REGISTER

    def on_register(self, link, frame, msg):
        s = link.session
        if s.state != State.AUTHENTICATED:
            return self.refuse(link, frame, ResultCode.NOT_AUTHENTICATED, "log in first")
        body = msg.body
        now = self.now_ms()
        if s.role == Role.PU:
            device = self.store.get_device(s.identity)
            if device is None:
                return self.refuse(link, frame, ResultCode.UNKNOWN_DEVICE,
                                   f"no device {s.identity}")
            if device.home_node and device.home_node != self.node_id:
                return self.refuse(
                    link, frame, ResultCode.FORBIDDEN, f"home node is {device.home_node}"
                )
            old = self.pu_links.get(s.identity)
            if old is not None and old is not link:
                old.close(ResultCode.SESSION_REPLACED, "the device logged in on another link")
            self.pu_links[s.identity] = link
            self.store.set_state(
                s.identity,
                online=True,
                node_id=self.node_id,
                last_seen=now,
                since=now,
                model=body.model,
                firmware=body.firmware,
                peer=link.peer,
            )
            self.log.info("PU {device} online from {peer}", device=s.identity, peer=link.peer)
        else:
            self.cu_links[s.session_id] = link
        s.kind = body.kind
        s.channels = body.channels
        s.registered_at = now
        s.state = State.REGISTERED
        self.store.put_session(
            s.session_id,
            {"role": s.role.name, "identity": s.identity, "peer": link.peer, "since": now},
        )
        link.send_response(
            frame.type,
            frame.txid,
            Registered(
                node_id=self.node_id,
                keepalive_interval=self.config.keepalive_interval,
                server_time=now,
            ),
        )
        if s.role == Role.PU:
            self.publish_state(s.identity, ChangeKind.ONLINE, [])
            self.central.presence(s.identity, True)
            nodes = self.node_list()
            if len(nodes.nodes) > 1:
                link.send_notify(MsgType.NODE_LIST, nodes)
            if self.events is not None:
                self.events.raise_event(s.identity, 0, "online")
        elif s.kind in WALL_KINDS:
            self.walls.logged_in(link, s.identity, s.kind)

    # -- 5. what a registered PU sends

    def on_pu_message(self, link, frame, msg):
        if frame.type == MsgType.STATE_CHANGE:
            self.on_state_change(link.session.identity, msg.body)
        elif frame.type == MsgType.EVENT_RAISE:
            self.on_event_raise(link, frame, msg.body)
        else:
            self.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE,
                        f"{codec.message_name(frame.type)} is not a PU request")

    def on_event_raise(self, link, frame, body):
        """EVENT_RAISE: the node numbers the PU's event, delivers it to the CUs that
        subscribed (here and on other nodes) and reports it to CMS (``vss.events``)."""
        notify = frame.flags & codec.FLAG_NOTIFY
        if self.events is None:
            return self.refuse(link, frame, ResultCode.NOT_SUPPORTED, "this node keeps no events")
        try:
            answer = self.events.on_raise(link.session.identity, body)
        except VssError as e:
            self.log.info("event of PU {device} refused: {error}", device=link.session.identity,
                          error=e.message)
            return self.refuse(link, frame, e.code, e.message)
        if not notify:
            link.send_response(frame.type, frame.txid, answer)

    def on_state_change(self, device_id, change):
        """S601/S602: a PU changed its data; apply it to the memory database, pass it
        to the CUs watching, and send what is static data on to CMS (S603)."""
        if change.device_id != device_id:
            self.log.warn("PU {device} reported a change for {other}", device=device_id,
                          other=change.device_id)
            return
        items = {kv.key: kv.value for kv in change.items}
        try:
            kind = ChangeKind(change.change)
        except ValueError:
            self.log.warn("PU {device} reported an unknown change kind {kind}",
                          device=device_id, kind=change.change)
            return
        if kind == ChangeKind.PTZ:
            self.store.set_state(device_id, **{k: float(v) for k, v in items.items()
                                               if k in ("pan", "tilt", "zoom")})
        elif kind in settings.KINDS:
            settings.apply(self.store, device_id, change.channel, kind, items)
        elif kind == ChangeKind.NAME and "name" in items:
            self.store.set_state(device_id, name=items["name"])
        elif kind in (ChangeKind.ALARM, ChangeKind.RECORDING):
            self.store.set_state(device_id, **{kind.name.lower(): items})
        self.publish_state(device_id, kind, change.items, change.channel)
        if kind in SYNCED_CHANGES:
            self.report_to_central(device_id, change)

    def report_to_central(self, device_id, change):
        """S603: hand the change to the central link (which keeps it in its outbox
        until CMS acknowledges it)."""
        record = self.store.get_device(device_id)
        sync = SyncChange(
            node_id=self.node_id,
            change_id=0,
            device_id=device_id,
            channel=change.channel,
            change=change.change,
            timestamp=change.timestamp,
            items=list(change.items),
            base_version=record.version if record is not None else 0,
        )
        d = defer.maybeDeferred(self.central.report_change, sync)
        d.addErrback(
            lambda f: self.log.warn(
                "change of {device} not yet acknowledged by CMS: {error}",
                device=device_id,
                error=f.getErrorMessage(),
            )
        )
        return d

    def publish_state(self, device_id, kind, items, channel=0):
        """Tell the node's logged-in CUs that may view the device."""
        note = None
        for link in list(self.cu_links.values()):
            if self.store.actions_for(link.session.identity, device_id) & Action.VIEW:
                if note is None:
                    note = codec.encode_notify(
                        MsgType.STATE_CHANGE,
                        StateChange(
                            device_id=device_id,
                            channel=channel,
                            change=int(kind),
                            timestamp=self.now_ms(),
                            items=list(items),
                        ),
                    )
                link.send_raw(note)

    # -- what a registered CU asks that is not relayed

    def device_list(self, username, cursor, limit):
        granted = self.store.granted_devices(username)
        # a grant on a wall or decoder (cu:ACCOUNT) names no device
        ids = sorted(d for d in granted if d > cursor and not d.startswith(CU_TARGET))
        limit = max(1, min(limit or 100, 1000))
        page = ids[:limit]
        out = []
        for device_id in page:
            record = self.store.get_device(device_id)
            state = self.store.get_state(device_id)
            out.append(
                DeviceInfo(
                    device_id=device_id,
                    name=state.get("name") or (record.name if record else ""),
                    kind=record.kind if record else 0,
                    channels=record.channels if record else 0,
                    online=bool(state.get("online")),
                    node_id=(record.home_node if record else "") or "",
                    actions=granted[device_id],
                )
            )
        next_cursor = page[-1] if len(ids) > limit else ""
        return Devices(devices=out, next_cursor=next_cursor)

    def end_sessions_of(self, username, why):
        for link in [lk for lk in self.cu_links.values() if lk.session.identity == username]:
            self.log.info("ending session of {user}: {why}", user=username, why=why)
            link.close(ResultCode.SESSION_CLOSED, why)

    # -- keepalive and handshake sweep

    def sweep(self):
        now = self.clock.seconds()
        silent = 3 * self.config.keepalive_interval
        for link in list(self.links):
            s = link.session
            if s.state == State.REGISTERED:
                if now - link.last_rx > silent:
                    self.counters["dropped_silent"] += 1
                    self.log.info(
                        "{role} {identity} silent for {seconds:.0f} s: dropped",
                        role=s.role.name,
                        identity=s.identity,
                        seconds=now - link.last_rx,
                    )
                    link.close(ResultCode.KEEPALIVE_TIMEOUT)
            elif now - link.connected_at > self.config.handshake_timeout:
                link.close(ResultCode.NOT_AUTHENTICATED, "log in took too long")

    # -- status for operators

    def status(self):
        return {
            "node_id": self.node_id,
            "links": len(self.links),
            "pus_online": len(self.pu_links),
            "cu_sessions": len(self.cu_links),
            **self.walls.status(),
            **self.counters,
        }

    def pu_state(self, device_id):
        record = self.store.get_device(device_id)
        return {"record": to_dict(record) if record else None, "state": self.store.get_state(device_id)}
