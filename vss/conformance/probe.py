"""
A raw client link for the conformance suite.

Unlike ``vss.protocols.link.SignallingLink`` a ``ProbeLink`` applies no policy of its
own: it writes whatever bytes a check asks for (broken frames included), keeps every
frame the node sends, and lets a check wait for the frame it expects, or for the close,
with a timeout. Anything the node sends that does not decode as a frame is kept in
``bad_input`` and ends the link: a conformant node never sends it.
"""

from twisted.internet import defer, protocol, task

from vss.protocols import codec, scram
from vss.protocols.codes import ResultCode
from vss.protocols.messages import (
    AuthProof,
    AuthStart,
    Empty,
    Hello,
    MsgType,
    Register,
)
from vss.web.client import client_endpoint

AGENT = "vss-conformance/0.1"
#: Txids the probe picks itself start here; checks choose their own below it.
AUTO_TXID_BASE = 0x40000000
#: Keepalives sent on the probe's own behalf use txids from here.
KEEPALIVE_TXID_BASE = 0x70000000


class CheckFailed(Exception):
    """The node did not behave as docs/protocol.md says; the message says how."""


class ProbeTimeout(CheckFailed):
    pass


class LinkClosed(CheckFailed):
    pass


def code_name(code):
    try:
        return f"{ResultCode(code).name} (0x{code:04x})"
    except ValueError:
        return f"0x{code:04x}"


def describe(frame):
    """A readable line for one frame."""
    name = codec.message_name(frame.type)
    if frame.flags & codec.FLAG_ERROR:
        msg = codec.decode_body(frame)
        text = msg.body.message if isinstance(msg, codec.Message) else "<undecodable body>"
        return f"error {code_name(frame.status)} type {name} txid {frame.txid} {text!r}"
    if frame.flags & codec.FLAG_RESPONSE:
        status = f" status {code_name(frame.status)}" if frame.status else ""
        return f"response {name} txid {frame.txid}{status}"
    if frame.flags & codec.FLAG_NOTIFY:
        extra = ""
        if frame.type == MsgType.BYE:
            msg = codec.decode_body(frame)
            if isinstance(msg, codec.Message):
                extra = f" reason {code_name(msg.body.reason)}"
        return f"notification {name}{extra}"
    return f"request {name} txid {frame.txid}"


class ProbeLink(protocol.Protocol):
    """One raw link to the node under test."""

    def __init__(self, clock, label):
        self.clock = clock
        self.label = label
        self.decoder = codec.FrameDecoder()
        self.frames = []  # every frame received, in order
        self.notifications = []  # STATE_CHANGE notifications, never matched by expect()
        self._unread = []  # frames no expect() has taken yet
        self._waiters = []  # [predicate, Deferred, DelayedCall, what]
        self.closed = False
        self.bad_input = None
        self.lost = defer.Deferred()
        self._auto_txid = AUTO_TXID_BASE
        self._keepalive_txid = KEEPALIVE_TXID_BASE
        self._keepalive = None

    # -- connection

    def connectionLost(self, reason=None):
        self.closed = True
        self.stop_keepalive()
        waiters, self._waiters = self._waiters, []
        for _pred, d, timer, what in waiters:
            if timer.active():
                timer.cancel()
            d.errback(LinkClosed(self._closed_before(what)))
        self.lost.callback(None)

    def dataReceived(self, data):
        for item in self.decoder.feed(data):
            if isinstance(item, codec.ProtocolError):
                self.bad_input = item
                self.transport.abortConnection()
                return
            if (
                item.flags & codec.FLAG_RESPONSE
                and KEEPALIVE_TXID_BASE <= item.txid < KEEPALIVE_TXID_BASE + 0x1000000
                and item.type == MsgType.KEEPALIVE
            ):
                continue  # the answer to our own keepalive
            self.frames.append(item)
            if item.flags & codec.FLAG_NOTIFY and item.type == MsgType.STATE_CHANGE:
                # A CU hears about its devices at any time (the suite's PU going on and
                # off line): kept apart so it is never mistaken for an answer.
                self.notifications.append(item)
                continue
            self._unread.append(item)
        self._dispatch()

    def _dispatch(self):
        for waiter in list(self._waiters):
            if waiter not in self._waiters:
                continue
            predicate, d, timer, _what = waiter
            for frame in list(self._unread):
                if predicate(frame):
                    self._unread.remove(frame)
                    self._waiters.remove(waiter)
                    if timer.active():
                        timer.cancel()
                    d.callback(frame)
                    break

    # -- output

    def send(self, data):
        self.transport.write(data)

    def next_txid(self):
        self._auto_txid += 1
        return self._auto_txid

    def request(self, type, body, txid=None, version=codec.VERSION):
        """Write a request; ``body`` is a body object or raw bytes. Returns the txid."""
        txid = self.next_txid() if txid is None else txid
        raw = body if isinstance(body, bytes) else codec.encode_body(body)
        self.send(codec.encode_frame(type, raw, txid=txid, version=version))
        return txid

    def call(self, type, body, txid=None, timeout=5.0):
        """Write a request and wait for the response (or error response) to it."""
        txid = self.request(type, body, txid)
        return self.response(txid, timeout, f"an answer to {codec.message_name(type)} txid {txid}")

    def abort(self):
        self.stop_keepalive()
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()

    def start_keepalive(self, interval):
        """Send KEEPALIVE every ``interval`` seconds so the node keeps the link."""
        if not interval or self._keepalive is not None:
            return
        self._keepalive = task.LoopingCall(self._send_keepalive)
        self._keepalive.clock = self.clock
        self._keepalive.start(max(0.2, interval * 0.5), now=False)

    def stop_keepalive(self):
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _send_keepalive(self):
        if not self.closed:
            self._keepalive_txid += 1
            self.request(MsgType.KEEPALIVE, Empty(), self._keepalive_txid)

    # -- input

    def expect(self, predicate, timeout, what):
        """A Deferred firing with the first unread frame matching ``predicate``; it fails
        with ``ProbeTimeout`` or ``LinkClosed`` (messages naming ``what``)."""
        for frame in list(self._unread):
            if predicate(frame):
                self._unread.remove(frame)
                return defer.succeed(frame)
        if self.closed:
            return defer.fail(LinkClosed(self._closed_before(what)))
        d = defer.Deferred()
        waiter = [predicate, d, None, what]
        waiter[2] = self.clock.callLater(timeout, self._timedOut, waiter, timeout)
        self._waiters.append(waiter)
        return d

    def _closed_before(self, what):
        if self.bad_input is not None:
            return (f"{self.label}: the node sent bytes that are not a valid frame "
                    f"({self.bad_input.code.name}: {self.bad_input.message}) before {what}")
        return f"{self.label}: the node closed the link before {what}"

    def _timedOut(self, waiter, timeout):
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter[1].errback(
                ProbeTimeout(f"{self.label}: no {waiter[3]} within {timeout:g} s")
            )

    def response(self, txid, timeout=5.0, what=None):
        return self.expect(
            lambda f: bool(f.flags & codec.FLAG_RESPONSE) and f.txid == txid,
            timeout,
            what or f"answer to txid {txid}",
        )

    def next_frame(self, timeout=5.0, what="frame"):
        return self.expect(lambda f: True, timeout, what)

    def unread(self):
        """Frames received and not taken by an ``expect``."""
        return list(self._unread)

    def wait_closed(self, timeout):
        """Fires True once the link is closed, False if it is still open after ``timeout``."""
        if self.closed:
            return defer.succeed(True)
        d = defer.Deferred()
        timer = self.clock.callLater(timeout, lambda: d.called or d.callback(False))

        def lost(_):
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(True)
            return _

        self.lost.addBoth(lost)
        return d


class _ProbeFactory(protocol.Factory):
    noisy = False

    def __init__(self, clock, label):
        self.clock = clock
        self.label = label

    def buildProtocol(self, addr):
        return ProbeLink(self.clock, self.label)


def connect_probe(reactor, endpoint, label, clock=None, timeout=5.0):
    """Connect a ``ProbeLink`` to an endpoint string (``tcp:``, ``tls:``..., or a
    ``ws://``/``wss://`` URL of a node's CU link over a WebSocket)."""
    if isinstance(endpoint, str):
        endpoint = client_endpoint(reactor, endpoint)
    d = endpoint.connect(_ProbeFactory(clock or reactor, label))
    d.addTimeout(timeout, clock or reactor)

    def failed(f):
        raise CheckFailed(f"{label}: cannot connect: {f.getErrorMessage()}")

    return d.addErrback(failed)


# ---------------------------------------------------------------------------
# Expectations on single frames


def expect_response(frame, type, txid, what=None):
    """The decoded ``Message`` of a successful response, or ``CheckFailed``."""
    what = what or codec.message_name(type)
    if frame.flags & codec.FLAG_ERROR or not frame.flags & codec.FLAG_RESPONSE:
        raise CheckFailed(f"expected a {what} response to txid {txid}, got {describe(frame)}")
    if frame.type != type or frame.txid != txid:
        raise CheckFailed(
            f"expected a {what} response to txid {txid}, got {describe(frame)}"
        )
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        raise CheckFailed(f"the {what} response does not decode: {msg.code.name} {msg.message}")
    return msg


def expect_error(frame, code, type, txid, what=""):
    """Check that ``frame`` is the error response ``code`` for (type, txid)."""
    want = f"error {code_name(code)} type {codec.message_name(type)} txid {txid}"
    ok = (
        frame.flags & (codec.FLAG_RESPONSE | codec.FLAG_ERROR)
        == (codec.FLAG_RESPONSE | codec.FLAG_ERROR)
        and frame.status == code
        and frame.type == type
        and frame.txid == txid
    )
    if not ok:
        raise CheckFailed(f"{what}{': ' if what else ''}expected {want}, got {describe(frame)}")
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        raise CheckFailed(f"{what}: the error body does not decode: {msg.message}")
    return msg


# ---------------------------------------------------------------------------
# Login, step by step


class Login:
    """What one login on a probe link produced."""

    hello = challenge = ok = registered = None


@defer.inlineCallbacks
def hello(link, role, timeout=5.0, min_version=1, max_version=1):
    body = Hello(min_version=min_version, max_version=max_version, role=int(role), agent=AGENT,
                 features=[])
    txid = link.request(MsgType.HELLO, body)
    frame = yield link.response(txid, timeout, "HelloAck")
    return expect_response(frame, MsgType.HELLO, txid, "HelloAck")


@defer.inlineCallbacks
def auth_start(link, identity, timeout=5.0, client_nonce=None):
    """AUTH_START; fires with (txid, frame) for the caller to judge."""
    client_nonce = client_nonce or scram.nonce()
    txid = link.request(
        MsgType.AUTH_START,
        AuthStart(identity=identity, mechanism=scram.MECHANISM, client_nonce=client_nonce),
    )
    frame = yield link.response(txid, timeout, "AuthChallenge")
    return txid, frame, client_nonce


@defer.inlineCallbacks
def authenticate(link, identity, secret, timeout=5.0):
    """AUTH_START and AUTH_PROOF. Fires with (challenge, proof_txid, proof frame,
    auth message, salted password): the caller judges the proof's answer."""
    txid, frame, client_nonce = yield auth_start(link, identity, timeout)
    challenge = expect_response(frame, MsgType.AUTH_START, txid, "AuthChallenge").body
    salted = scram.salted_password(secret, challenge.salt, challenge.iterations)
    message = scram.auth_message(identity, client_nonce, challenge.server_nonce, challenge.salt,
                                 challenge.iterations)
    proof = scram.client_proof_from_salted(salted, message)
    txid = link.request(MsgType.AUTH_PROOF, AuthProof(client_proof=proof))
    frame = yield link.response(txid, timeout, "AuthOk")
    return challenge, txid, frame, message, salted


@defer.inlineCallbacks
def login(link, role, identity, secret, kind=1, channels=0, timeout=5.0, register=True):
    """HELLO, AUTH_START, AUTH_PROOF (checking the node's signature), REGISTER."""
    result = Login()
    result.hello = (yield hello(link, role, timeout)).body
    challenge, txid, frame, message, salted = yield authenticate(link, identity, secret, timeout)
    result.challenge = challenge
    ok = expect_response(frame, MsgType.AUTH_PROOF, txid, f"AuthOk for {identity}").body
    if not scram.check_server_signature(salted, challenge.salt, challenge.iterations, message,
                                        ok.server_signature):
        raise CheckFailed(f"the node's server signature for {identity} does not verify")
    result.ok = ok
    if register:
        body = Register(kind=kind, model="conformance", firmware=AGENT, channels=channels,
                        attributes=[])
        txid = link.request(MsgType.REGISTER, body)
        frame = yield link.response(txid, timeout, "Registered")
        result.registered = expect_response(frame, MsgType.REGISTER, txid, "Registered").body
    return result
