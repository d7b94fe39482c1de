"""
The checks of the conformance suite, one function each, registered in ``CHECKS`` in the
order they run. Every check takes the shared ``Context`` and fires (a Deferred) when it
passes; it fails with ``CheckFailed`` (or any exception) whose message says what the node
did and what docs/protocol.md asks for. Section numbers below are those of that page.

The suite logs in as the PU ``ctx.device`` (replacing any session that device has on the
node) so it can answer relayed requests itself, and as the CU ``ctx.user``, who must be
granted that device with every action.
"""

import random
from dataclasses import dataclass

from twisted.internet import defer, task

from vss.client import SignallingClient, connect
from vss.conformance.probe import (
    AGENT,
    CheckFailed,
    ProbeTimeout,
    auth_start,
    authenticate,
    code_name,
    connect_probe,
    describe,
    expect_error,
    expect_response,
    hello,
    login,
)
from vss.protocols import codec, scram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    AuthProof,
    Bye,
    Config,
    ConfigGet,
    CredList,
    CredRevoke,
    CuKind,
    DeviceList,
    Empty,
    EventPhase,
    EventRaise,
    EventSubscribe,
    EventUnsubscribe,
    Hello,
    HomeQuery,
    MsgType,
    PtzControl,
    PtzStatus,
    PuKind,
    Register,
    Role,
    Severity,
    Stream,
    Tile,
    TileReport,
    WallAssign,
    WallDescribe,
    WallLayout,
    WallQuery,
    WallReport,
)

ALL_ACTIONS = Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD


class Skip(Exception):
    """The check cannot run here (the message says why)."""


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    function: object
    slow: bool = False


CHECKS = []


def check(name, description, slow=False):
    def register(function):
        CHECKS.append(Check(name, description, function, slow))
        return function

    return register


class Context:
    """What the checks share: the node's addresses, the identities, the suite's PU."""

    def __init__(self, reactor, pu_endpoint, cu_endpoint, device, user, pu_secret, password,
                 slow=False, timeout=5.0, clock=None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.pu_endpoint = pu_endpoint
        self.cu_endpoint = cu_endpoint
        self.device = device
        self.user = user
        self.pu_secret = pu_secret
        self.password = password
        self.slow = slow
        self.timeout = timeout
        self.keepalive_interval = None
        self.pu_client = None
        self.pu_handler = None  # a check's own answerer for relayed requests
        self.held = []  # (Deferred, frame, msg) of relayed requests held unanswered
        self._held_waiters = []
        self._probes = []
        self._count = 0

    # -- probes

    @defer.inlineCallbacks
    def open(self, which="cu"):
        """A fresh raw link to the CU (``"cu"``) or PU (``"pu"``) endpoint."""
        self._count += 1
        endpoint = self.cu_endpoint if which == "cu" else self.pu_endpoint
        link = yield connect_probe(self.reactor, endpoint, f"{which.upper()} link {self._count}",
                                   self.clock, self.timeout)
        self._probes.append(link)
        return link

    @defer.inlineCallbacks
    def cu(self, keepalive=True):
        """A fresh CU link logged in as ``user`` (READY), keeping itself alive."""
        link = yield self.open("cu")
        result = yield login(link, Role.CU, self.user, self.password, kind=CuKind.MOC,
                             timeout=self.timeout)
        self.keepalive_interval = result.registered.keepalive_interval
        if keepalive:
            link.start_keepalive(self.keepalive_interval)
        return link

    def cleanup(self):
        """Drop every probe a check opened and forget its PU answerer."""
        probes, self._probes = self._probes, []
        for link in probes:
            link.abort()
        for _count, _d, timer in self._held_waiters:
            if timer.active():
                timer.cancel()
        self._held_waiters = []
        self.release()

    def close(self):
        self.cleanup()
        if self.pu_client is not None and self.pu_client.link is not None:
            self.pu_client.link.abort()

    # -- the suite's own PU

    @property
    def pu_online(self):
        return self.pu_client is not None and self.pu_client.link is not None

    @defer.inlineCallbacks
    def pu(self):
        """The suite's PU, logged in as ``device`` (logging in again if it was dropped)."""
        if self.pu_online:
            return self.pu_client
        client = SignallingClient(Role.PU, self.device, self.pu_secret, kind=PuKind.IPC,
                                  channels=1, model="conformance", firmware=AGENT,
                                  on_request=self._pu_request)
        try:
            yield connect(self.reactor, self.pu_endpoint, client, clock=self.clock,
                          request_timeout=self.timeout)
        except Exception as e:
            raise CheckFailed(f"the suite's PU {self.device} cannot log in: {e}") from None
        self.pu_client = client
        return client

    def _pu_request(self, frame, msg):
        if self.pu_handler is not None:
            return self.pu_handler(frame, msg)
        return default_answer(frame, msg)

    # -- holding relayed requests at the suite's PU

    def hold(self):
        """From now on the suite's PU holds every relayed request unanswered until
        ``release`` (or the end of the check)."""
        self.pu_handler = self._held_request

    def _held_request(self, frame, msg):
        d = defer.Deferred()
        self.held.append((d, frame, msg))
        for waiter in list(self._held_waiters):
            if len(self.held) >= waiter[0]:
                self._held_waiters.remove(waiter)
                if waiter[2].active():
                    waiter[2].cancel()
                waiter[1].callback(len(self.held))
        return d

    def wait_held(self, count, timeout=None):
        """Fires with the number of requests held once it reaches ``count``, or with
        fewer after ``timeout``."""
        if len(self.held) >= count:
            return defer.succeed(len(self.held))
        d = defer.Deferred()
        waiter = [count, d, None]

        def expired():
            if waiter in self._held_waiters:
                self._held_waiters.remove(waiter)
                d.callback(len(self.held))

        waiter[2] = self.clock.callLater(self.timeout if timeout is None else timeout, expired)
        self._held_waiters.append(waiter)
        return d

    def release(self, rng=None):
        """Stop holding; answer every held request (in ``rng``-shuffled order if given)
        with the default answer, and later arrivals at once."""
        self.pu_handler = None
        held, self.held = self.held, []
        if rng is not None:
            rng.shuffle(held)
        for d, frame, msg in held:
            if not d.called:
                defer.maybeDeferred(default_answer, frame, msg).chainDeferred(d)
        return len(held)

    # -- helpers used by several checks

    def config_get(self, link, key, txid=None):
        """A CU's CONFIG_GET of one key on ``device`` (relayed to the suite's PU)."""
        return link.request(
            MsgType.CONFIG_GET, ConfigGet(device_id=self.device, channel=0, keys=[key]), txid
        )

    @defer.inlineCallbacks
    def relayed_round_trip(self, link, what):
        """One CONFIG_GET from ``link`` answered by the suite's PU, value checked."""
        key = f"probe.{random.getrandbits(32):08x}"
        txid = self.config_get(link, key)
        frame = yield link.response(txid, self.timeout, f"answer to the relayed CONFIG_GET ({what})")
        body = expect_response(frame, MsgType.CONFIG_GET, txid, "Config").body
        want = [KV(key=key, value=answer_value(key))]
        if list(body.items) != want:
            raise CheckFailed(f"{what}: relayed CONFIG_GET answered {body.items!r}, want {want!r}")

    @defer.inlineCallbacks
    def node_still_serves(self, what):
        """After a bad peer: the suite's PU is still online and a fresh CU link logs in
        and gets a relayed request answered."""
        if not self.pu_online:
            raise CheckFailed(f"after {what} the node dropped the suite's PU link")
        link = yield self.cu()
        yield self.relayed_round_trip(link, f"after {what}")
        link.abort()


def answer_value(key):
    return f"answer:{key}"


def default_answer(frame, msg):
    """How the suite's PU answers relayed requests by default."""
    if frame.type == MsgType.CONFIG_GET:
        return Config(items=[KV(key=k, value=answer_value(k)) for k in msg.body.keys], version=1)
    if frame.type == MsgType.PTZ_CONTROL:
        return PtzStatus(pan=msg.body.pan, tilt=msg.body.tilt, zoom=msg.body.zoom, moving=False)
    raise VssError(ResultCode.NOT_SUPPORTED, "the conformance PU only answers CONFIG_GET and PTZ")


def sleep(ctx, seconds):
    return task.deferLater(ctx.clock, seconds, lambda: None)


class NodeNotReady(Exception):
    """The node answers NOT_READY (8.2): it cannot check logins yet; no check can run."""


@defer.inlineCallbacks
def wait_ready(ctx, patience=60.0, report=None):
    """Before the checks: a node that answers AUTH_START with NOT_READY (still loading
    its data) is asked again after a growing, randomised delay, for ``patience``
    seconds; then ``NodeNotReady``. ``report(text)`` is told of each wait."""
    count = ctx._count
    try:
        yield _wait_ready(ctx, patience, report)
    finally:
        ctx._count = count  # the checks' links are numbered from 1 all the same


@defer.inlineCallbacks
def _wait_ready(ctx, patience, report):
    deadline = ctx.clock.seconds() + patience
    step = 0.5
    while True:
        try:
            link = yield ctx.open("cu")
        except CheckFailed:
            return  # nothing to wait for: the checks report it
        try:
            yield hello(link, Role.CU, ctx.timeout)
            txid, frame, _nonce = yield auth_start(link, ctx.user, ctx.timeout)
        except CheckFailed:
            return
        finally:
            link.abort()
            ctx.cleanup()
        if not frame.flags & codec.FLAG_ERROR or frame.status != ResultCode.NOT_READY:
            return
        message = describe(frame)
        delay = step * random.uniform(0.5, 1.5)
        if ctx.clock.seconds() + delay > deadline:
            raise NodeNotReady(f"the node is not ready after {patience:g} s: {message}")
        if report is not None:
            report(f"the node is not ready ({message}); trying again in {delay:.1f} s")
        yield sleep(ctx, delay)
        step = min(step * 2, 8.0)


@defer.inlineCallbacks
def expect_closed(ctx, link, what, timeout=None):
    closed = yield link.wait_closed(ctx.timeout if timeout is None else timeout)
    if not closed:
        raise CheckFailed(f"the node kept the link open after {what}")


@defer.inlineCallbacks
def reset_throttle(ctx):
    """A successful login resets the failure count of its (account, address) pair, and
    makes the pair known: failures of the account elsewhere no longer hold it (8.2)."""
    link = yield ctx.open("cu")
    yield login(link, Role.CU, ctx.user, ctx.password, register=False, timeout=ctx.timeout)
    link.abort()


# ---------------------------------------------------------------------------
# 8.1 Version negotiation


@check("hello_version", "HELLO with versions 1-5 is answered HelloAck version 1, header version 1")
@defer.inlineCallbacks
def hello_version(ctx):
    link = yield ctx.open("cu")
    txid = link.request(MsgType.HELLO, Hello(min_version=1, max_version=5, role=Role.CU,
                                             agent=AGENT, features=["conformance.none"]))
    frame = yield link.response(txid, ctx.timeout, "HelloAck")
    ack = expect_response(frame, MsgType.HELLO, txid, "HelloAck").body
    if ack.version != 1:
        raise CheckFailed(f"HelloAck version {ack.version}, want 1 (the highest in both ranges)")
    if frame.version != 1:
        raise CheckFailed(f"HelloAck sent with header version {frame.version}, want 1")
    if "conformance.none" in ack.features:
        raise CheckFailed("HelloAck echoes a feature the node cannot know")


@defer.inlineCallbacks
def _hello_closes(ctx, lo, hi, role, code, what):
    """A HELLO the node must refuse with ``code``, then BYE ``code`` and the close (8.1,
    6 rule 5)."""
    link = yield ctx.open("cu")
    txid = link.request(MsgType.HELLO, Hello(min_version=lo, max_version=hi, role=role,
                                             agent=AGENT, features=[]))
    frame = yield link.response(txid, ctx.timeout, f"answer to {what}")
    expect_error(frame, code, MsgType.HELLO, txid, what)
    yield expect_bye(ctx, link, code, what)


@defer.inlineCallbacks
def expect_bye(ctx, link, code, what):
    """The node sends BYE ``code`` and closes the link (6, rule 5: a BYE before any
    close that is not for a fatal error)."""
    closed = yield link.wait_closed(ctx.timeout)
    byes = [f for f in link.unread() if f.type == MsgType.BYE and f.flags & codec.FLAG_NOTIFY]
    if not byes:
        got = ", ".join(describe(f) for f in link.unread()) or "nothing"
        state = "closed the link" if closed else "kept the link open"
        raise CheckFailed(f"after {what} the node {state} without a BYE {code_name(code)} "
                          f"(6, rule 5; got {got})")
    bye = codec.decode_body(byes[0])
    if not isinstance(bye, codec.Message) or bye.body.reason != code:
        raise CheckFailed(f"after {what} the node sent {describe(byes[0])}, want BYE "
                          f"{code_name(code)}")
    if not closed:
        raise CheckFailed(f"after {what} and its BYE the node kept the link open")


@check("hello_no_common_version",
       "HELLO with only versions 2-9 gets NO_COMMON_VERSION, then BYE NO_COMMON_VERSION and "
       "the close")
def hello_no_common_version(ctx):
    return _hello_closes(ctx, 2, 9, Role.CU, ResultCode.NO_COMMON_VERSION, "HELLO 2-9")


@check("hello_min_above_max",
       "HELLO with min_version 3 above max_version 1 (an empty range) gets NO_COMMON_VERSION, "
       "then BYE and the close")
def hello_min_above_max(ctx):
    return _hello_closes(ctx, 3, 1, Role.CU, ResultCode.NO_COMMON_VERSION, "HELLO 3-1")


@check("hello_wrong_role",
       "HELLO with role PU on the CU endpoint gets UNEXPECTED_MESSAGE, then BYE "
       "UNEXPECTED_MESSAGE and the close")
def hello_wrong_role(ctx):
    return _hello_closes(ctx, 1, 1, Role.PU, ResultCode.UNEXPECTED_MESSAGE,
                         "HELLO with role PU on the CU endpoint")


@check("hello_first",
       "before HELLO a KEEPALIVE is answered and any other request gets UNEXPECTED_MESSAGE "
       "(with a message); the link stays up and HELLO then succeeds")
@defer.inlineCallbacks
def hello_first(ctx):
    link = yield ctx.open("cu")
    txid = link.request(MsgType.KEEPALIVE, Empty())
    frame = yield link.response(txid, ctx.timeout, "answer to KEEPALIVE before HELLO")
    expect_response(frame, MsgType.KEEPALIVE, txid,
                    "KEEPALIVE response before HELLO (8: accepted in every state)")
    for type, body in ((MsgType.DEVICE_LIST, DeviceList(cursor="", limit=0)),
                       (MsgType.REGISTER, Register(kind=1, model="", firmware="", channels=0,
                                                   attributes=[]))):
        name = codec.message_name(type)
        txid = link.request(type, body)
        frame = yield link.response(txid, ctx.timeout, f"answer to {name} before HELLO")
        msg = expect_error(frame, ResultCode.UNEXPECTED_MESSAGE, type, txid,
                           f"{name} before HELLO")
        expect_message(msg, f"UNEXPECTED_MESSAGE to {name} before HELLO")
    if (yield link.wait_closed(0.3)):
        raise CheckFailed("the node closed the link after refusing a request before HELLO "
                          "(8: a refused request leaves the link up)")
    try:
        yield hello(link, Role.CU, ctx.timeout)
    except CheckFailed as e:
        raise CheckFailed(f"HELLO after refused requests: {e}") from None


def expect_message(msg, what):
    """An error response must say what is wrong (a non-empty message)."""
    if not msg.body.message:
        raise CheckFailed(f"{what} carries an empty message")


# ---------------------------------------------------------------------------
# 8.2 Authentication


@check("auth_success",
       "the CU and the PU log in with SCRAM-SHA-256 and the node's server signature verifies")
@defer.inlineCallbacks
def auth_success(ctx):
    link = yield ctx.open("cu")
    result = yield login(link, Role.CU, ctx.user, ctx.password, register=False,
                         timeout=ctx.timeout)
    if len(result.challenge.server_nonce) < 16:
        raise CheckFailed(f"server nonce of {len(result.challenge.server_nonce)} bytes")
    if not result.ok.session_id:
        raise CheckFailed("AuthOk carries an empty session id")
    link = yield ctx.open("pu")
    yield login(link, Role.PU, ctx.device, ctx.pu_secret, register=False, timeout=ctx.timeout)


@defer.inlineCallbacks
def _failed_login(ctx, identity, secret):
    """A login that must fail at the proof: (challenge, error frame, proof txid)."""
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    challenge, txid, frame, _message, _salted = yield authenticate(link, identity, secret,
                                                                   ctx.timeout)
    expect_error(frame, ResultCode.AUTH_FAILED, MsgType.AUTH_PROOF, txid,
                 f"login of {identity!r} with a wrong secret")
    link.abort()
    return challenge, frame


@check("auth_wrong_secret", "a wrong password gets AUTH_FAILED (type AUTH_PROOF, its txid)")
@defer.inlineCallbacks
def auth_wrong_secret(ctx):
    try:
        yield _failed_login(ctx, ctx.user, ctx.password + "-wrong")
    finally:
        yield reset_throttle(ctx)


@check("auth_unknown_identity",
       "an unknown identity is challenged like a known one and fails exactly like a wrong secret")
@defer.inlineCallbacks
def auth_unknown_identity(ctx):
    unknown = f"conformance-nobody-{random.getrandbits(32):08x}"
    try:
        _, wrong = yield _failed_login(ctx, ctx.user, ctx.password + "-wrong")
        first, nobody = yield _failed_login(ctx, unknown, "whatever")
    finally:
        yield reset_throttle(ctx)
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    txid, frame, _nonce = yield auth_start(link, unknown, ctx.timeout)
    second = expect_response(frame, MsgType.AUTH_START, txid, "AuthChallenge").body
    link.abort()
    if len(first.salt) != 16 or first.iterations != scram.DEFAULT_ITERATIONS:
        raise CheckFailed(f"unknown identity challenged with a {len(first.salt)}-byte salt and "
                          f"{first.iterations} iterations, want 16 bytes and "
                          f"{scram.DEFAULT_ITERATIONS}")
    if first.salt != second.salt:
        raise CheckFailed("the fake salt of an unknown identity changes between attempts")
    if (nobody.status, nobody.body) != (wrong.status, wrong.body):
        raise CheckFailed(f"unknown identity answered {describe(nobody)}, "
                          f"wrong secret answered {describe(wrong)}")


@check("auth_proof_without_start",
       "AUTH_PROOF without AUTH_START gets UNEXPECTED_MESSAGE and the link stays up")
@defer.inlineCallbacks
def auth_proof_without_start(ctx):
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    txid = link.request(MsgType.AUTH_PROOF, AuthProof(client_proof=bytes(32)))
    frame = yield link.response(txid, ctx.timeout, "answer to AUTH_PROOF")
    expect_error(frame, ResultCode.UNEXPECTED_MESSAGE, MsgType.AUTH_PROOF, txid)
    txid = link.request(MsgType.KEEPALIVE, Empty())
    frame = yield link.response(txid, ctx.timeout, "KEEPALIVE answer after the refused proof")
    expect_response(frame, MsgType.KEEPALIVE, txid)


@check("not_authenticated",
       "REGISTER, DEVICE_LIST and CONFIG_GET after HELLO but before login get NOT_AUTHENTICATED "
       "(with a message)")
@defer.inlineCallbacks
def not_authenticated(ctx):
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    requests = [
        (MsgType.REGISTER, Register(kind=1, model="", firmware="", channels=0, attributes=[])),
        (MsgType.DEVICE_LIST, DeviceList(cursor="", limit=0)),
        (MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0, keys=[])),
    ]
    for type, body in requests:
        txid = link.request(type, body)
        frame = yield link.response(txid, ctx.timeout, f"answer to {codec.message_name(type)}")
        msg = expect_error(frame, ResultCode.NOT_AUTHENTICATED, type, txid,
                           f"{codec.message_name(type)} before login")
        expect_message(msg, f"NOT_AUTHENTICATED to {codec.message_name(type)}")


@check("register_first",
       "a request after AuthOk but before REGISTER gets NOT_AUTHENTICATED (with a message); "
       "REGISTER then succeeds")
@defer.inlineCallbacks
def register_first(ctx):
    link = yield ctx.open("cu")
    yield login(link, Role.CU, ctx.user, ctx.password, register=False, timeout=ctx.timeout)
    for type, body in ((MsgType.DEVICE_LIST, DeviceList(cursor="", limit=0)),
                       (MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0, keys=[]))):
        txid = link.request(type, body)
        frame = yield link.response(txid, ctx.timeout, f"answer to {codec.message_name(type)}")
        msg = expect_error(frame, ResultCode.NOT_AUTHENTICATED, type, txid,
                           f"{codec.message_name(type)} after AuthOk, before REGISTER (8)")
        expect_message(msg, f"NOT_AUTHENTICATED to {codec.message_name(type)}")
    txid = link.request(MsgType.REGISTER, Register(kind=CuKind.MOC, model="conformance",
                                                   firmware=AGENT, channels=0, attributes=[]))
    frame = yield link.response(txid, ctx.timeout, "Registered")
    expect_response(frame, MsgType.REGISTER, txid, "Registered after the refused requests")


@check("home_query",
       "a PU's HOME_QUERY after HELLO is answered HomeRedirect naming the device and its "
       "home with an address (here: the node's own id), and the PU then logs in on that "
       "link; a CU's HOME_QUERY gets UNEXPECTED_MESSAGE")
@defer.inlineCallbacks
def home_query(ctx):
    link = yield ctx.open("pu")
    node_id = (yield hello(link, Role.PU, ctx.timeout)).body.node_id
    txid = link.request(MsgType.HOME_QUERY, HomeQuery(device_id=ctx.device))
    frame = yield link.response(txid, ctx.timeout, "HomeRedirect")
    home = expect_response(frame, MsgType.HOME_QUERY, txid, "HomeRedirect (9.10)").body
    if home.device_id != ctx.device:
        raise CheckFailed(f"HomeRedirect names device {home.device_id!r}, not {ctx.device!r}")
    if home.home_node != node_id:
        raise CheckFailed(f"HomeRedirect names home {home.home_node!r} for the suite's PU, "
                          f"which logs in on this node ({node_id!r})")
    if not home.address:
        raise CheckFailed("HomeRedirect names no address (9.10: the home's PU address)")
    challenge, txid, frame, _, _ = yield authenticate(link, ctx.device, ctx.pu_secret,
                                                      ctx.timeout)
    expect_response(frame, MsgType.AUTH_PROOF, txid, "AuthOk after HOME_QUERY")
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    txid = link.request(MsgType.HOME_QUERY, HomeQuery(device_id=ctx.device))
    frame = yield link.response(txid, ctx.timeout, "answer to HOME_QUERY on a CU link")
    expect_error(frame, ResultCode.UNEXPECTED_MESSAGE, MsgType.HOME_QUERY, txid,
                 "HOME_QUERY on a CU link (9.10)")


@check("auth_throttled",
       "after 3 failed logins from one address the next AUTH_START gets AUTH_THROTTLED "
       "(waits for the delay)", slow=True)
@defer.inlineCallbacks
def auth_throttled(ctx):
    link = yield ctx.open("cu")
    yield hello(link, Role.CU, ctx.timeout)
    for attempt in range(3):
        _c, txid, frame, _m, _s = yield authenticate(link, ctx.user, ctx.password + "-wrong",
                                                     ctx.timeout)
        expect_error(frame, ResultCode.AUTH_FAILED, MsgType.AUTH_PROOF, txid,
                     f"failed login {attempt + 1}")
    # 8.2: "1 s after the 3rd failure" an attempt must wait.
    txid, frame, _nonce = yield auth_start(link, ctx.user, ctx.timeout)
    try:
        expect_error(frame, ResultCode.AUTH_THROTTLED, MsgType.AUTH_START, txid,
                     "AUTH_START right after the 3rd failure from this address")
    finally:
        # Wait out the delay (60 s at most) and reset the address with a success.
        for _ in range(130):
            link = yield ctx.open("cu")
            yield hello(link, Role.CU, ctx.timeout)
            txid, frame, _nonce = yield auth_start(link, ctx.user, ctx.timeout)
            link.abort()
            if frame.status != ResultCode.AUTH_THROTTLED:
                break
            yield sleep(ctx, 0.5)
        yield reset_throttle(ctx)


# ---------------------------------------------------------------------------
# 8.3, 8.4 Registration and keepalive


@check("register_keepalive",
       "REGISTER is answered Registered with the node id and a keepalive interval; "
       "KEEPALIVE is answered")
@defer.inlineCallbacks
def register_keepalive(ctx):
    link = yield ctx.open("cu")
    result = yield login(link, Role.CU, ctx.user, ctx.password, timeout=ctx.timeout)
    reg = result.registered
    if not reg.keepalive_interval:
        raise CheckFailed("Registered carries keepalive interval 0")
    if reg.node_id != result.hello.node_id:
        raise CheckFailed(f"Registered node id {reg.node_id!r} differs from HelloAck's "
                          f"{result.hello.node_id!r}")
    if not reg.server_time:
        raise CheckFailed("Registered carries server time 0")
    ctx.keepalive_interval = reg.keepalive_interval
    for _ in range(2):
        txid = link.request(MsgType.KEEPALIVE, Empty())
        frame = yield link.response(txid, ctx.timeout, "KEEPALIVE answer")
        expect_response(frame, MsgType.KEEPALIVE, txid)
    pu = yield ctx.open("pu")
    result = yield login(pu, Role.PU, ctx.device, ctx.pu_secret, kind=PuKind.IPC, channels=1,
                         timeout=ctx.timeout)
    if not result.registered.keepalive_interval:
        raise CheckFailed("Registered (PU) carries keepalive interval 0")
    pu.abort()


@check("second_login",
       "the user logged in on two links keeps both sessions, each served; a second login of "
       "the PU replaces the first (BYE SESSION_REPLACED, then the close)")
@defer.inlineCallbacks
def second_login(ctx):
    yield ctx.pu()
    first = yield ctx.cu()
    second = yield ctx.cu()
    for link, what in ((first, "the user's first session"), (second, "its second session")):
        if link.closed:
            raise CheckFailed(f"{what} was closed by the user's other login (8.3: a user may "
                              "hold several sessions)")
        yield ctx.relayed_round_trip(link, what)
    old = yield ctx.open("pu")
    yield login(old, Role.PU, ctx.device, ctx.pu_secret, kind=PuKind.IPC, channels=1,
                timeout=ctx.timeout)
    new = yield ctx.open("pu")
    yield login(new, Role.PU, ctx.device, ctx.pu_secret, kind=PuKind.IPC, channels=1,
                timeout=ctx.timeout)
    yield expect_bye(ctx, old, ResultCode.SESSION_REPLACED, "a second login of the PU")
    if new.closed:
        raise CheckFailed("the PU's second login was closed, not its first")
    new.abort()
    yield ctx.pu()
    yield ctx.relayed_round_trip(first, "after the PU logged in again")


@check("keepalive_timeout",
       "a silent CU is sent BYE KEEPALIVE_TIMEOUT and dropped after about three intervals",
       slow=True)
@defer.inlineCallbacks
def keepalive_timeout(ctx):
    link = yield ctx.cu(keepalive=False)
    interval = ctx.keepalive_interval
    started = ctx.clock.seconds()
    limit = 3 * interval + max(2.0, interval) + ctx.timeout
    closed = yield link.wait_closed(limit)
    elapsed = ctx.clock.seconds() - started
    if not closed:
        raise CheckFailed(f"a CU silent for {elapsed:.1f} s (interval {interval} s) is still "
                          "connected")
    if elapsed < 3 * interval - 0.5:
        raise CheckFailed(f"dropped after {elapsed:.1f} s of silence, before three intervals "
                          f"({3 * interval} s)")
    byes = [f for f in link.frames if f.type == MsgType.BYE and f.flags & codec.FLAG_NOTIFY]
    if not byes:
        got = ", ".join(describe(f) for f in link.frames) or "nothing"
        raise CheckFailed(f"dropped after {elapsed:.1f} s without a BYE (got {got})")
    bye = codec.decode_body(byes[-1])
    if not isinstance(bye.body, Bye) or bye.body.reason != ResultCode.KEEPALIVE_TIMEOUT:
        raise CheckFailed(f"dropped with {describe(byes[-1])}, want BYE KEEPALIVE_TIMEOUT")


@check("device_granted", "the CU's DEVICE_LIST shows the device with VIEW, PTZ, CONFIG, RECORD")
@defer.inlineCallbacks
def device_granted(ctx):
    link = yield ctx.cu()
    cursor, found = "", None
    for _ in range(1000):
        txid = link.request(MsgType.DEVICE_LIST, DeviceList(cursor=cursor, limit=0))
        frame = yield link.response(txid, ctx.timeout, "Devices")
        page = expect_response(frame, MsgType.DEVICE_LIST, txid, "Devices").body
        found = next((d for d in page.devices if d.device_id == ctx.device), None)
        if found is not None or not page.next_cursor:
            break
        cursor = page.next_cursor
    if found is None:
        raise CheckFailed(f"{ctx.user} is not granted {ctx.device} (not in DEVICE_LIST): "
                          "the relay checks need that grant")
    if found.actions & ALL_ACTIONS != ALL_ACTIONS:
        raise CheckFailed(f"{ctx.user} holds actions 0x{found.actions:02x} on {ctx.device}, "
                          f"the suite needs 0x{int(ALL_ACTIONS):02x}")


@check("unknown_device_forbidden",
       "a device id the user holds no grant for, which does not exist, gets FORBIDDEN (never "
       "UNKNOWN_DEVICE), with a message that says no more than for any other id")
@defer.inlineCallbacks
def unknown_device_forbidden(ctx):
    link = yield ctx.cu()
    texts = {}
    for _ in range(2):
        device_id = f"conformance-none-{random.getrandbits(32):08x}"
        for type, body in ((MsgType.CONFIG_GET, ConfigGet(device_id=device_id, channel=0,
                                                           keys=[])),
                           (MsgType.PTZ_CONTROL, PtzControl(device_id=device_id, channel=0,
                                                            op=4, pan=0.0, tilt=0.0, zoom=0.0,
                                                            speed=0.0, timeout_ms=0))):
            name = codec.message_name(type)
            txid = link.request(type, body)
            frame = yield link.response(txid, ctx.timeout, f"answer to {name} for {device_id}")
            msg = expect_error(frame, ResultCode.FORBIDDEN, type, txid,
                               f"{name} for a device that does not exist and is not granted "
                               "(9.3: no existence oracle)")
            expect_message(msg, f"FORBIDDEN to {name}")
            texts.setdefault(type, []).append(msg.body.message.replace(device_id, "<id>"))
    for type, seen in texts.items():
        if len(set(seen)) != 1:
            raise CheckFailed(f"{codec.message_name(type)}: the FORBIDDEN messages for two "
                              f"missing ids differ beyond the id: {seen!r}")


@check("stream_credentials",
       "CRED_LIST gives the CU's own stream credentials without their sealed secret; "
       "CRED_REVOKE of an id that is not the CU's is NOT_FOUND; a node without a central "
       "platform answers both NOT_SUPPORTED (9.6)")
@defer.inlineCallbacks
def stream_credentials(ctx):
    link = yield ctx.cu()
    txid = link.request(MsgType.CRED_LIST, CredList(device_id=""))
    frame = yield link.response(txid, ctx.timeout, "Creds")
    central = frame.status != ResultCode.NOT_SUPPORTED
    creds = expect_response(frame, MsgType.CRED_LIST, txid, "Creds").body.credentials \
        if central else []
    for c in creds:
        if c.username != ctx.user or c.sealed:
            raise CheckFailed(f"CRED_LIST answered {c.cred_id} of {c.username!r} with "
                              f"{len(c.sealed)} sealed bytes; want the CU's own, none")
    txid = link.request(MsgType.CRED_REVOKE, CredRevoke(cred_id="sc-000000000000",
                                                        username=""))
    frame = yield link.response(txid, ctx.timeout, "CredState")
    expect_error(frame, ResultCode.NOT_FOUND if central else ResultCode.NOT_SUPPORTED,
                 MsgType.CRED_REVOKE, txid, "revoking a credential that is not the CU's")


# ---------------------------------------------------------------------------
# 9.7 Events and alarms


def _event_notify(link, seq, timeout, what):
    return link.expect(lambda f: f.type == MsgType.EVENT_NOTIFY
                       and f.flags & codec.FLAG_NOTIFY
                       and codec.decode_body(f).body.event.seq == seq, timeout, what)


@defer.inlineCallbacks
def _subscribe(ctx, link, resume_after=0, devices=None):
    txid = link.request(MsgType.EVENT_SUBSCRIBE, EventSubscribe(
        devices=[ctx.device] if devices is None else devices, groups=[], types=[],
        resume_after=resume_after))
    frame = yield link.response(txid, ctx.timeout, "EventSubscribed")
    if frame.status == ResultCode.NOT_SUPPORTED:
        raise Skip("the node keeps no events (NOT_SUPPORTED)")
    return expect_response(frame, MsgType.EVENT_SUBSCRIBE, txid, "EventSubscribed").body


@check("events_raise_notify",
       "a CU subscribed to the device gets the PU's EVENT_RAISE as an EVENT_NOTIFY with the "
       "same fields and the number EventRaised gave it; a PU raising for another device is "
       "FORBIDDEN, a bad type or phase INVALID_ARGUMENT (9.7)")
@defer.inlineCallbacks
def events_raise_notify(ctx):
    link = yield ctx.cu()
    yield _subscribe(ctx, link)
    pu = yield ctx.pu()
    items = [KV(key="zone", value=str(random.getrandbits(16)))]
    raised = (yield pu.request(MsgType.EVENT_RAISE, EventRaise(
        device_id=ctx.device, channel=0, type="conformance.test", phase=EventPhase.START,
        severity=Severity.WARNING, pu_time=1_700_000_000_000, items=items))).body
    if not raised.node_id or not raised.seq:
        raise CheckFailed(f"EventRaised names no event: {raised!r}")
    frame = yield _event_notify(link, raised.seq, ctx.timeout,
                                f"EVENT_NOTIFY of event {raised.node_id}/{raised.seq}")
    e = codec.decode_body(frame).body.event
    got = (e.node_id, e.device_id, e.channel, e.type, e.phase, e.severity, e.pu_time, e.items)
    want = (raised.node_id, ctx.device, 0, "conformance.test", EventPhase.START,
            Severity.WARNING, 1_700_000_000_000, items)
    if got != want:
        raise CheckFailed(f"EVENT_NOTIFY carried {got!r}, want {want!r}")
    for body, code, what in (
            (EventRaise(device_id=ctx.device + "-other", channel=0, type="motion", phase=0,
                        severity=0, pu_time=0, items=[]), ResultCode.FORBIDDEN,
             "an event of another device"),
            (EventRaise(device_id=ctx.device, channel=0, type="Not A Type", phase=0,
                        severity=0, pu_time=0, items=[]), ResultCode.INVALID_ARGUMENT,
             "a bad type"),
            (EventRaise(device_id=ctx.device, channel=0, type="motion", phase=9, severity=0,
                        pu_time=0, items=[]), ResultCode.INVALID_ARGUMENT, "phase 9")):
        try:
            yield pu.request(MsgType.EVENT_RAISE, body)
        except VssError as err:
            if err.code != code:
                raise CheckFailed(f"EVENT_RAISE of {what}: got {code_name(err.code)}, want "
                                  f"{code_name(code)}") from None
        else:
            raise CheckFailed(f"EVENT_RAISE of {what} was accepted; want {code_name(code)}")


@check("events_resume",
       "a CU subscribing again on a fresh link with resume_after = the feed id before an event "
       "gets it once, after EventSubscribed (replayed counts it) (9.7)")
@defer.inlineCallbacks
def events_resume(ctx):
    link = yield ctx.cu()
    before = (yield _subscribe(ctx, link)).head
    pu = yield ctx.pu()
    raised = (yield pu.request(MsgType.EVENT_RAISE, EventRaise(
        device_id=ctx.device, channel=0, type="conformance.resume", phase=EventPhase.PULSE,
        severity=Severity.INFO, pu_time=0, items=[]))).body
    link.abort()
    again = yield ctx.cu()
    answer = yield _subscribe(ctx, again, resume_after=before)
    if answer.replayed < 1 or answer.head <= before:
        raise CheckFailed(f"EventSubscribed after resume: replayed {answer.replayed}, head "
                          f"{answer.head} (before {before}); want at least the one event")
    yield _event_notify(again, raised.seq, ctx.timeout, "the missed event, sent again")
    extra = [f for f in again.unread() if f.type == MsgType.EVENT_NOTIFY
             and codec.decode_body(f).body.event.seq == raised.seq]
    if extra:
        raise CheckFailed("the missed event was sent more than once")


@check("events_limits",
       "EVENT_SUBSCRIBE: a device the user may not view is FORBIDDEN, 65 types "
       "INVALID_ARGUMENT, the 17th subscription of a link LIMIT_REACHED; EVENT_UNSUBSCRIBE of "
       "an unknown subscription NOT_FOUND; the link stays up (9.7)")
@defer.inlineCallbacks
def events_limits(ctx):
    link = yield ctx.cu()
    yield _subscribe(ctx, link)
    cases = [
        (EventSubscribe(devices=[f"conformance-none-{random.getrandbits(32):08x}"], groups=[],
                        types=[], resume_after=0), ResultCode.FORBIDDEN, "an unknown device"),
        (EventSubscribe(devices=[], groups=[], types=[f"t{i}" for i in range(65)],
                        resume_after=0), ResultCode.INVALID_ARGUMENT, "65 types"),
    ]
    for body, code, what in cases:
        txid = link.request(MsgType.EVENT_SUBSCRIBE, body)
        frame = yield link.response(txid, ctx.timeout, f"answer to a subscription to {what}")
        expect_error(frame, code, MsgType.EVENT_SUBSCRIBE, txid, f"subscribing to {what}")
    txid = link.request(MsgType.EVENT_UNSUBSCRIBE, EventUnsubscribe(subscription=0xFFFFFFF0))
    frame = yield link.response(txid, ctx.timeout, "answer to EVENT_UNSUBSCRIBE")
    expect_error(frame, ResultCode.NOT_FOUND, MsgType.EVENT_UNSUBSCRIBE, txid,
                 "ending a subscription the link does not hold")
    for _ in range(15):
        yield _subscribe(ctx, link)
    txid = link.request(MsgType.EVENT_SUBSCRIBE, EventSubscribe(
        devices=[ctx.device], groups=[], types=[], resume_after=0))
    frame = yield link.response(txid, ctx.timeout, "answer to the 17th subscription")
    expect_error(frame, ResultCode.LIMIT_REACHED, MsgType.EVENT_SUBSCRIBE, txid,
                 "the 17th subscription of a link")
    frame = yield link.call(MsgType.KEEPALIVE, Empty(), timeout=ctx.timeout)
    expect_response(frame, MsgType.KEEPALIVE, frame.txid, "KEEPALIVE after the refusals")


# ---------------------------------------------------------------------------
# 9.9 TV walls and decoders

_NO_WALLS = (ResultCode.UNKNOWN_MESSAGE, ResultCode.UNEXPECTED_MESSAGE,
             ResultCode.NOT_SUPPORTED)


def _wall_answer(frame, type, txid, what):
    """The WallState of an answer; a node that knows no walls skips the check."""
    if frame.flags & codec.FLAG_ERROR and frame.status in _NO_WALLS:
        raise Skip(f"the node does not serve walls ({code_name(frame.status)})")
    return expect_response(frame, type, txid, what).body


@check("wall_describe_assign_notify",
       "a TVWALL CU describes 4 tiles (the node lists them), assigns the suite's device to "
       "tile 3 and is told (WALL_NOTIFY, same version); tile 4 is INVALID_ARGUMENT; its "
       "WALL_REPORT shows in WALL_STATE (9.9)")
@defer.inlineCallbacks
def wall_describe_assign_notify(ctx):
    link = yield ctx.open("cu")
    yield login(link, Role.CU, ctx.user, ctx.password, kind=CuKind.TVWALL, timeout=ctx.timeout)
    txid = link.request(MsgType.WALL_DESCRIBE, WallDescribe(
        wall_id="", layout=WallLayout.FOUR, tiles=[], assignments=[]))
    frame = yield link.response(txid, ctx.timeout, "WallState")
    state = _wall_answer(frame, MsgType.WALL_DESCRIBE, txid, "WallState")
    quad = [Tile(x=x, y=y, width=5000, height=5000) for y in (0, 5000) for x in (0, 5000)]
    if state.wall_id != ctx.user or state.layout != WallLayout.FOUR or state.tiles != quad:
        raise CheckFailed(f"WALL_DESCRIBE of 4 tiles answered wall {state.wall_id!r}, layout "
                          f"{state.layout}, tiles {state.tiles}; want {ctx.user!r}, 4, {quad}")
    txid = link.request(MsgType.WALL_ASSIGN, WallAssign(
        wall_id="", tile=3, device_id=ctx.device, channel=0, stream=Stream.MAIN))
    frame = yield link.response(txid, ctx.timeout, "WallState")
    state = expect_response(frame, MsgType.WALL_ASSIGN, txid, "WallState").body
    shown = [(a.tile, a.device_id) for a in state.assignments]
    if shown != [(3, ctx.device)]:
        raise CheckFailed(f"after WALL_ASSIGN of tile 3 the tiles show {shown}")
    note = yield link.expect(lambda f: f.type == MsgType.WALL_NOTIFY
                             and f.flags & codec.FLAG_NOTIFY
                             and codec.decode_body(f).body.version == state.version,
                             ctx.timeout, f"WALL_NOTIFY of version {state.version}")
    told = codec.decode_body(note).body
    if told.assignments != state.assignments:
        raise CheckFailed(f"WALL_NOTIFY told version {told.version} {told.assignments}, "
                          f"the answer version {state.version} {state.assignments}")
    txid = link.request(MsgType.WALL_ASSIGN, WallAssign(
        wall_id="", tile=4, device_id=ctx.device, channel=0, stream=Stream.MAIN))
    frame = yield link.response(txid, ctx.timeout, "answer to WALL_ASSIGN of tile 4")
    expect_error(frame, ResultCode.INVALID_ARGUMENT, MsgType.WALL_ASSIGN, txid,
                 "assigning tile 4 of 4")
    txid = link.request(MsgType.WALL_REPORT, WallReport(tiles=[TileReport(
        tile=3, device_id=ctx.device, frames=42, errors=0, last_error="")]))
    frame = yield link.response(txid, ctx.timeout, "answer to WALL_REPORT")
    expect_response(frame, MsgType.WALL_REPORT, txid, "Empty")
    txid = link.request(MsgType.WALL_STATE, WallQuery(wall_id=""))
    frame = yield link.response(txid, ctx.timeout, "WallState")
    state = expect_response(frame, MsgType.WALL_STATE, txid, "WallState").body
    if [(a.tile, a.frames) for a in state.assignments] != [(3, 42)]:
        raise CheckFailed(f"WALL_STATE after a report of 42 frames on tile 3: "
                          f"{state.assignments}")


@check("wall_refusals",
       "a CU that is not a wall: WALL_DESCRIBE of itself and WALL_REPORT are NOT_A_WALL; "
       "WALL_ASSIGN for a wall it holds no WALL grant on is FORBIDDEN (9.8)")
@defer.inlineCallbacks
def wall_refusals(ctx):
    link = yield ctx.cu()
    wall = f"conformance-wall-{random.getrandbits(32):08x}"
    cases = [
        (MsgType.WALL_DESCRIBE, WallDescribe(wall_id="", layout=1, tiles=[], assignments=[]),
         ResultCode.NOT_A_WALL, "WALL_DESCRIBE of itself from a MOC"),
        (MsgType.WALL_REPORT, WallReport(tiles=[]), ResultCode.NOT_A_WALL,
         "WALL_REPORT from a MOC"),
        (MsgType.WALL_ASSIGN, WallAssign(wall_id=wall, tile=0, device_id=ctx.device,
                                         channel=0, stream=0),
         ResultCode.FORBIDDEN, "WALL_ASSIGN for a wall without the grant"),
    ]
    for type, body, code, what in cases:
        txid = link.request(type, body)
        frame = yield link.response(txid, ctx.timeout, f"answer to {what}")
        if frame.flags & codec.FLAG_ERROR and frame.status in _NO_WALLS:
            raise Skip(f"the node does not serve walls ({code_name(frame.status)})")
        expect_error(frame, code, type, txid, what)


# ---------------------------------------------------------------------------
# 8.6 Transaction ids


@check("correlation_200",
       "200 CU requests in flight (txids out of order) relayed to the suite's PU, answered "
       "in shuffled order: each gets its own answer")
@defer.inlineCallbacks
def correlation_200(ctx):
    count = 200
    yield ctx.pu()
    ctx.hold()
    link = yield ctx.cu()
    rng = random.Random()
    txids = rng.sample(range(1, 0x3FFFFFFF), count - 2) + [0x3FFFFFFF, 1]
    rng.shuffle(txids)
    keys = {}
    for i, txid in enumerate(txids):
        keys[txid] = f"corr.{i}.{rng.getrandbits(24):06x}"
        ctx.config_get(link, keys[txid], txid)
    answers = [link.response(t, ctx.timeout * 3, f"answer to txid {t}") for t in txids]
    arrived = yield ctx.wait_held(count, ctx.timeout * 2)
    if arrived != count:
        ctx.release()
        raise CheckFailed(f"only {arrived} of {count} requests in flight reached the PU")
    ctx.release(rng)
    results = yield defer.DeferredList(answers, consumeErrors=True)
    missing = [str(r.value) for ok, r in results if not ok]
    if missing:
        raise CheckFailed(f"{len(missing)} of {count} requests got no answer: {missing[0]}")
    wrong = []
    for txid, (_ok, frame) in zip(txids, results, strict=True):
        body = expect_response(frame, MsgType.CONFIG_GET, txid, "Config").body
        want = [KV(key=keys[txid], value=answer_value(keys[txid]))]
        if list(body.items) != want:
            wrong.append(f"txid {txid} got {list(body.items)!r}")
    if wrong:
        raise CheckFailed(f"{len(wrong)} answers crossed: " + "; ".join(wrong[:3]))
    extra = [describe(f) for f in link.unread()]
    if extra:
        raise CheckFailed(f"unexpected extra frames: {', '.join(extra[:3])}")


@check("txid_duplicate",
       "a request reusing a txid still in flight gets DUPLICATE_TXID; the first is answered once")
@defer.inlineCallbacks
def txid_duplicate(ctx):
    yield ctx.pu()
    ctx.hold()
    link = yield ctx.cu()
    txid = 4242
    ctx.config_get(link, "dup.first", txid)
    if not (yield ctx.wait_held(1)):
        raise CheckFailed("the first request never reached the PU")
    ctx.config_get(link, "dup.second", txid)
    try:
        try:
            frame = yield link.response(txid, ctx.timeout, "answer to the duplicate txid")
        except ProbeTimeout:
            if len(ctx.held) > 1:
                raise CheckFailed(f"the node relayed a second request with txid {txid}, still "
                                  "in flight, to the PU instead of answering DUPLICATE_TXID "
                                  "(8.6)") from None
            raise
        expect_error(frame, ResultCode.DUPLICATE_TXID, MsgType.CONFIG_GET, txid,
                     "second request with a txid in flight")
    finally:
        ctx.release()
    frame = yield link.response(txid, ctx.timeout, "answer to the first request")
    body = expect_response(frame, MsgType.CONFIG_GET, txid, "Config").body
    if [kv.key for kv in body.items] != ["dup.first"]:
        raise CheckFailed(f"the first request was answered {body.items!r}")
    yield sleep(ctx, 0.3)
    extra = [describe(f) for f in link.unread() if f.txid == txid]
    if extra:
        raise CheckFailed(f"txid {txid} answered more than once: {', '.join(extra)}")
    # Once answered, the txid is free again.
    ctx.config_get(link, "dup.reused", txid)
    frame = yield link.response(txid, ctx.timeout, f"answer to txid {txid} reused after its answer")
    body = expect_response(frame, MsgType.CONFIG_GET, txid, "Config").body
    if [kv.key for kv in body.items] != ["dup.reused"]:
        raise CheckFailed(f"the reused txid was answered {body.items!r}")


@check("stray_response",
       "a response matching no request in flight is dropped: no answer, the link stays up")
@defer.inlineCallbacks
def stray_response(ctx):
    link = yield ctx.cu()
    link.send(_frame(MsgType.KEEPALIVE, b"\x00\x00", 31337, flags=codec.FLAG_RESPONSE))
    link.send(_frame(MsgType.PTZ_CONTROL, codec.encode_body(
        PtzStatus(pan=0.0, tilt=0.0, zoom=0.0, moving=False)), 31338, flags=codec.FLAG_RESPONSE))
    txid = link.request(MsgType.KEEPALIVE, Empty())
    frame = yield link.response(txid, ctx.timeout, "KEEPALIVE answer after stray responses")
    expect_response(frame, MsgType.KEEPALIVE, txid)
    extra = [describe(f) for f in link.unread()]
    if extra:
        raise CheckFailed(f"stray responses were answered: {', '.join(extra)}")


@check("txid_zero",
       "a request with txid 0 (reserved for notifications) gets UNEXPECTED_MESSAGE with txid "
       "0, is not served, and the link stays up")
@defer.inlineCallbacks
def txid_zero(ctx):
    yield ctx.pu()
    ctx.hold()
    link = yield ctx.cu()
    for type, body in ((MsgType.KEEPALIVE, Empty()),
                       (MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0,
                                                      keys=["txid.zero"]))):
        name = codec.message_name(type)
        link.request(type, body, txid=0)
        frame = yield link.response(0, ctx.timeout, f"answer to {name} with txid 0")
        msg = expect_error(frame, ResultCode.UNEXPECTED_MESSAGE, type, 0,
                           f"{name} with txid 0 (8.6)")
        expect_message(msg, f"UNEXPECTED_MESSAGE to {name} with txid 0")
    reached = yield ctx.wait_held(1, 0.3)
    ctx.release()
    if reached:
        raise CheckFailed("a CONFIG_GET with txid 0 was relayed to the PU (8.6: not served)")
    yield ctx.relayed_round_trip(link, "after requests with txid 0")


@check("too_many_in_flight",
       "the 257th request in flight on one CU link gets TOO_MANY_IN_FLIGHT; the others are "
       "answered")
@defer.inlineCallbacks
def too_many_in_flight(ctx):
    limit = 256
    yield ctx.pu()
    ctx.hold()
    link = yield ctx.cu()
    txids = list(range(1, limit + 2))
    for txid in txids:
        ctx.config_get(link, f"flight.{txid}", txid)
    try:
        frame = yield link.response(txids[-1], ctx.timeout * 2, f"answer to request {limit + 1}")
        expect_error(frame, ResultCode.TOO_MANY_IN_FLIGHT, MsgType.CONFIG_GET, txids[-1],
                     f"request {limit + 1} in flight on one link (8.6: at most {limit})")
        yield ctx.wait_held(limit)
    finally:
        ctx.release()
    results = yield defer.DeferredList(
        [link.response(t, ctx.timeout, f"answer to txid {t}") for t in txids[:-1]],
        consumeErrors=True)
    bad = [str(r.value) if not ok else describe(r) for ok, r in results
           if not ok or r.flags & codec.FLAG_ERROR]
    if bad:
        raise CheckFailed(f"{len(bad)} of the first {limit} requests failed: {bad[0]}")


# ---------------------------------------------------------------------------
# 2, 3, 4, 6 Malformed frames, each on a fresh logged-in CU link


def _frame(type, body, txid, flags=0, version=1, length=None):
    header = codec.HEADER_STRUCT.pack(codec.MAGIC, version, flags, type, 0, txid,
                                      len(body) if length is None else length)
    return header + body


def _keepalive_frame(txid):
    return _frame(MsgType.KEEPALIVE, b"\x00\x00", txid)


@defer.inlineCallbacks
def _fatal_case(ctx, what, data, code, type, txid, closes=True):
    """Send ``data`` then a valid KEEPALIVE in one write; expect exactly the error
    response (code, type, txid), no KEEPALIVE answer, and the close."""
    link = yield ctx.cu()
    link.stop_keepalive()
    after = 0x3FFF0001
    link.send(data + _keepalive_frame(after))
    frame = yield link.next_frame(ctx.timeout, f"answer to {what}")
    expect_error(frame, code, type, txid, what)
    yield expect_closed(ctx, link, what)
    late = [describe(f) for f in link.unread() if f.flags & codec.FLAG_RESPONSE]
    if late:
        raise CheckFailed(f"after {what} the node went on reading the link: {', '.join(late)}")
    yield ctx.node_still_serves(what)


def _malformed(name, description, build, code, header_known=True):
    @defer.inlineCallbacks
    def run(ctx):
        yield ctx.pu()
        txid = 0x1000 + random.getrandbits(12)
        data, type = build(ctx, txid)
        if header_known:
            yield _fatal_case(ctx, description, data, code, type, txid)
        else:
            yield _fatal_case(ctx, description, data, code, MsgType.ERROR, 0)

    run.__name__ = name
    check(name, description)(run)
    return run


def _device_list_body(cursor_bytes, declared=None):
    n = len(cursor_bytes) if declared is None else declared
    return n.to_bytes(2, "big") + cursor_bytes + b"\x00\x00" + b"\x00\x00"


malformed_bad_magic = _malformed(
    "malformed_bad_magic",
    "bad magic gets BAD_MAGIC (type ERROR, txid 0) and the close",
    lambda ctx, txid: (b"XS" + _keepalive_frame(txid)[2:], MsgType.KEEPALIVE),
    ResultCode.BAD_MAGIC,
    header_known=False,
)
malformed_version = _malformed(
    "malformed_version",
    "header version 2 gets UNSUPPORTED_VERSION (its type and txid) and the close",
    lambda ctx, txid: (_frame(MsgType.KEEPALIVE, b"\x00\x00", txid, version=2),
                       MsgType.KEEPALIVE),
    ResultCode.UNSUPPORTED_VERSION,
)
malformed_too_large = _malformed(
    "malformed_too_large",
    "a body length of 1 MiB + 1 gets FRAME_TOO_LARGE (its type and txid) and the close",
    lambda ctx, txid: (_frame(MsgType.DEVICE_LIST, b"", txid, length=codec.MAX_BODY + 1),
                       MsgType.DEVICE_LIST),
    ResultCode.FRAME_TOO_LARGE,
)
malformed_truncated = _malformed(
    "malformed_truncated",
    "a body shorter than its fields gets TRUNCATED_BODY (its type and txid) and the close",
    lambda ctx, txid: (_frame(MsgType.DEVICE_LIST, b"\x00\x0aabc", txid), MsgType.DEVICE_LIST),
    ResultCode.TRUNCATED_BODY,
)
malformed_trailing = _malformed(
    "malformed_trailing",
    "bytes after the extension block get TRAILING_BYTES (its type and txid) and the close",
    lambda ctx, txid: (_frame(MsgType.KEEPALIVE, b"\x00\x00\xff", txid), MsgType.KEEPALIVE),
    ResultCode.TRAILING_BYTES,
)
malformed_utf8 = _malformed(
    "malformed_utf8",
    "a string that is not UTF-8 gets BAD_UTF8 (its type and txid) and the close",
    lambda ctx, txid: (_frame(MsgType.DEVICE_LIST, _device_list_body(b"\xff\xfe\xc3"), txid),
                       MsgType.DEVICE_LIST),
    ResultCode.BAD_UTF8,
)


@check("bad_magic_two_bytes",
       "two bytes that are not 'VS' (and nothing more) get BAD_MAGIC (type ERROR, txid 0) at "
       "once, without waiting for a whole header, and the close")
@defer.inlineCallbacks
def bad_magic_two_bytes(ctx):
    yield ctx.pu()
    link = yield ctx.cu()
    link.stop_keepalive()
    link.send(b"GE")
    frame = yield link.next_frame(ctx.timeout, "BAD_MAGIC after two bytes (6)")
    expect_error(frame, ResultCode.BAD_MAGIC, MsgType.ERROR, 0, "two bytes 'GE'")
    yield expect_closed(ctx, link, "BAD_MAGIC")
    yield ctx.node_still_serves("a bad magic")


@check("pu_bad_answer",
       "a PU answer that does not decode: the CU gets INTERNAL_ERROR, the PU link is told the "
       "body error (type and txid of its answer) and closed; CONFIG_GET and PTZ_CONTROL")
@defer.inlineCallbacks
def pu_bad_answer(ctx):
    yield ctx.pu()
    cu = yield ctx.cu()
    status = codec.encode_body(PtzStatus(pan=0.0, tilt=0.0, zoom=0.0, moving=False))
    cases = (
        (MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0, keys=["bad"]),
         b"\x00\x05ab", ResultCode.TRUNCATED_BODY),
        (MsgType.PTZ_CONTROL, PtzControl(device_id=ctx.device, channel=0, op=4, pan=0.0,
                                         tilt=0.0, zoom=0.0, speed=0.0, timeout_ms=0),
         status + b"\xff", ResultCode.TRAILING_BYTES),
    )
    for type, body, answer, code in cases:
        name = codec.message_name(type)
        pu = yield ctx.open("pu")
        result = yield login(pu, Role.PU, ctx.device, ctx.pu_secret, kind=PuKind.IPC,
                             channels=1, timeout=ctx.timeout)
        pu.start_keepalive(result.registered.keepalive_interval)
        txid = cu.request(type, body)
        asked = yield pu.expect(
            lambda f, type=type: f.type == type and not f.flags, ctx.timeout,
            f"the relayed {name} at the PU")
        pu.send(_frame(type, answer, asked.txid, flags=codec.FLAG_RESPONSE))
        frame = yield cu.response(txid, ctx.timeout, f"the CU's answer to {name}")
        expect_error(frame, ResultCode.INTERNAL_ERROR, type, txid,
                     f"{name} answered by the PU with a body that does not decode (8.7)")
        told = yield pu.expect(lambda f: bool(f.flags & codec.FLAG_ERROR), ctx.timeout,
                               f"the error for the PU's bad {name} answer (6, rule 1)")
        expect_error(told, code, type, asked.txid, f"the PU's bad {name} answer")
        yield expect_closed(ctx, pu, f"the PU's bad {name} answer (6, rule 1: fatal)")
    yield ctx.pu()
    yield ctx.relayed_round_trip(cu, "after the PU's bad answers")


@check("unknown_message",
       "an unknown type gets UNKNOWN_MESSAGE (its type and txid) as a request, nothing as a "
       "notification; the link stays up and KEEPALIVE works")
@defer.inlineCallbacks
def unknown_message(ctx):
    yield ctx.pu()
    link = yield ctx.cu()
    unknown = 0x7ABC
    link.send(_frame(unknown, b"\x00\x00", 0, flags=codec.FLAG_NOTIFY))
    txid = link.request(unknown, b"\x01\x02\x03\x00\x00")
    frame = yield link.response(txid, ctx.timeout, "answer to an unknown message type")
    expect_error(frame, ResultCode.UNKNOWN_MESSAGE, unknown, txid)
    txid = link.request(MsgType.KEEPALIVE, Empty())
    frame = yield link.response(txid, ctx.timeout, "KEEPALIVE answer after the unknown type")
    expect_response(frame, MsgType.KEEPALIVE, txid)
    extra = [describe(f) for f in link.unread()]
    if extra:
        raise CheckFailed("a notification of an unknown type was answered (6: it is dropped, "
                          f"not answered): {', '.join(extra)}")
    yield ctx.relayed_round_trip(link, "after an unknown message type")
    yield ctx.node_still_serves("an unknown message type")


@check("oversized_4gib",
       "a header announcing a 4 GiB body is answered FRAME_TOO_LARGE at once, without the body")
@defer.inlineCallbacks
def oversized_4gib(ctx):
    yield ctx.pu()
    link = yield ctx.cu()
    link.stop_keepalive()
    txid = 0x0ABCDEF0
    link.send(_frame(MsgType.CONFIG_GET, b"", txid, length=0xFFFFFFFF))
    # Only the header was sent: an answer proves the node did not wait for the body.
    frame = yield link.next_frame(ctx.timeout, "FRAME_TOO_LARGE for a 4 GiB header")
    expect_error(frame, ResultCode.FRAME_TOO_LARGE, MsgType.CONFIG_GET, txid)
    if not link.closed:
        link.send(b"\x00" * 65536)
    yield expect_closed(ctx, link, "FRAME_TOO_LARGE")
    yield ctx.node_still_serves("a 4 GiB frame header")


# ---------------------------------------------------------------------------
# Slow and vanished peers


@check("slow_peer", "a request written one byte at a time with pauses is still answered")
@defer.inlineCallbacks
def slow_peer(ctx):
    yield ctx.pu()
    link = yield ctx.cu()
    txid = 77
    data = codec.encode_request(
        MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0, keys=["slow.key"]), txid
    )
    link.stop_keepalive()  # a keepalive must not land inside the half-written frame
    pause = 0.1 if ctx.slow else 0.03
    for i in range(len(data)):
        if link.closed:
            raise CheckFailed(f"the node closed the link after {i} bytes of a slow request")
        link.send(data[i:i + 1])
        yield sleep(ctx, pause)
    frame = yield link.response(txid, ctx.timeout, "answer to the slowly written request")
    body = expect_response(frame, MsgType.CONFIG_GET, txid, "Config").body
    if list(body.items) != [KV(key="slow.key", value=answer_value("slow.key"))]:
        raise CheckFailed(f"the slow request was answered {body.items!r}")


@check("vanished_mid_frame",
       "a CU link dropped in the middle of a frame does not disturb the node")
@defer.inlineCallbacks
def vanished_mid_frame(ctx):
    yield ctx.pu()
    link = yield ctx.cu()
    data = codec.encode_request(
        MsgType.CONFIG_GET, ConfigGet(device_id=ctx.device, channel=0, keys=["gone"]), 9
    )
    link.send(data[: len(data) // 2])
    yield sleep(ctx, 0.1)
    link.abort()
    yield sleep(ctx, 0.1)
    yield ctx.node_still_serves("a link dropped mid-frame")


@check("pu_vanished_in_flight",
       "a PU that drops with a CU request in flight: the CU gets DEVICE_OFFLINE quickly")
@defer.inlineCallbacks
def pu_vanished_in_flight(ctx):
    pu = yield ctx.pu()
    ctx.hold()  # never answered: the PU vanishes first
    link = yield ctx.cu()
    txid = ctx.config_get(link, "vanish")
    if not (yield ctx.wait_held(1)):
        raise CheckFailed("the request never reached the PU")
    if pu.link is None:
        raise CheckFailed("the suite's PU link was dropped before the request arrived")
    pu.link.abort()
    started = ctx.clock.seconds()
    frame = yield link.response(txid, ctx.timeout, "answer once the PU vanished")
    elapsed = ctx.clock.seconds() - started
    expect_error(frame, ResultCode.DEVICE_OFFLINE, MsgType.CONFIG_GET, txid,
                 "request in flight to a PU that dropped")
    if elapsed > 2.0:
        raise CheckFailed(f"DEVICE_OFFLINE came {elapsed:.1f} s after the PU dropped")
    ctx.release()
    yield ctx.pu()
    yield ctx.relayed_round_trip(link, "after the PU came back")


def names():
    return [c.name for c in CHECKS]
