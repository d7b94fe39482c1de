"""
The client side of a signalling link, shared by the PU agent (``vss-pu``), the CU
command line (``vssctl``), the conformance suite and the tests.

``SignallingClient`` is the link handler of the connecting side: ``login`` runs HELLO,
the SCRAM exchange (checking the node's signature, so a client knows it talks to a node
that holds its verifier) and REGISTER; then a keepalive is sent every interval the node
announced. Requests the node sends (to a PU) go to ``on_request``; notifications to
``on_notify``. ``ReconnectingClient`` keeps one logged-in link up with backoff.
"""

import random

from twisted.internet import defer, task
from twisted.logger import Logger

from vss.protocols import codec, scram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    AuthProof,
    AuthStart,
    Empty,
    Hello,
    MsgType,
    Register,
)
from vss.protocols.reconnect import Reconnector
from vss.web.client import client_endpoint

AGENT = "vss-client/0.1"


class SignallingClient:
    """Handler of one client link; subclass or pass callables for requests/notifies."""

    log = Logger()

    def __init__(self, role, identity, secret, kind=1, channels=0, model="", firmware="",
                 clock=None, on_request=None, on_notify=None, attributes=()):
        self.role = int(role)
        self.identity = identity
        self._secret = secret
        self.kind = kind
        self.channels = channels
        self.model = model
        self.firmware = firmware
        self.attributes = list(attributes)
        self.clock = clock
        self.link = None
        self.registered = None
        self.node_id = None
        self.session_id = None
        self._on_request = on_request
        self._on_notify = on_notify
        self._keepalive = None
        self._salted = {}
        self.lost = defer.Deferred()
        self.on_lost = None  # called with the link when it is lost (reconnection)

    # -- link handler

    def linkUp(self, link):
        self.link = link

    def linkDown(self, link, reason):
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        if self.link is link:
            self.link = None
        if self.on_lost is not None:
            self.on_lost(link)
        self.lost_reason = reason
        lost, self.lost = self.lost, defer.Deferred()
        lost.callback(getattr(reason, "value", reason))

    def received(self, link, frame, msg):
        if frame.flags & codec.FLAG_NOTIFY:
            if frame.type == MsgType.BYE:
                self.log.info("node said bye: {code} {message}",
                              code=msg.body.reason, message=msg.body.message)
            if self._on_notify is not None:
                self._on_notify(msg)
            return
        if frame.type == MsgType.KEEPALIVE:
            link.send_response(frame.type, frame.txid, Empty())
            return
        if self._on_request is None:
            link.send_error(frame.type, frame.txid, ResultCode.NOT_SUPPORTED)
            return
        d = defer.maybeDeferred(self._on_request, frame, msg)
        d.addCallbacks(
            lambda body: link.send_response(frame.type, frame.txid, body),
            lambda f: link.send_failure(frame, f),
        )

    # -- login

    @defer.inlineCallbacks
    def login(self, link):
        """HELLO, AUTH_START, AUTH_PROOF, REGISTER. Fires with ``Registered``."""
        yield link.request(
            MsgType.HELLO,
            Hello(min_version=1, max_version=1, role=self.role, agent=AGENT, features=[]),
        )
        client_nonce = scram.nonce()
        ch = (yield link.request(
            MsgType.AUTH_START,
            AuthStart(identity=self.identity, mechanism=scram.MECHANISM, client_nonce=client_nonce),
        )).body
        salted = self._salted_password(ch.salt, ch.iterations)
        message = scram.auth_message(self.identity, client_nonce, ch.server_nonce, ch.salt,
                                     ch.iterations)
        ok = (yield link.request(
            MsgType.AUTH_PROOF,
            AuthProof(client_proof=scram.client_proof_from_salted(salted, message)),
        )).body
        if not scram.check_server_signature(salted, ch.salt, ch.iterations, message,
                                            ok.server_signature):
            link.abort()
            raise VssError(ResultCode.AUTH_FAILED, "the node's signature is wrong")
        self.session_id = ok.session_id
        reg = (yield link.request(
            MsgType.REGISTER,
            Register(kind=self.kind, model=self.model, firmware=self.firmware,
                     channels=self.channels, attributes=self.attributes),
        )).body
        self.registered = reg
        self.node_id = reg.node_id
        self.start_keepalive(link, reg.keepalive_interval)
        return reg

    def _salted_password(self, salt, iterations):
        key = (salt, iterations)
        if key not in self._salted:
            self._salted.clear()
            self._salted[key] = scram.salted_password(self._secret, salt, iterations)
        return self._salted[key]

    def start_keepalive(self, link, interval):
        if not interval:
            return
        self._keepalive = task.LoopingCall(self._send_keepalive, link)
        self._keepalive.clock = link.clock
        # A little jitter so thousands of simulated PUs do not beat in step.
        self._keepalive.start(interval * random.uniform(0.9, 1.0), now=False)

    def _send_keepalive(self, link):
        link.request(MsgType.KEEPALIVE, Empty()).addErrback(lambda f: None)

    def request(self, type, body, timeout=None):
        if self.link is None:
            return defer.fail(VssError(ResultCode.SESSION_CLOSED, "not connected"))
        return self.link.request(type, body, timeout)


def connect(reactor, endpoint, client, clock=None, **link_options):
    """Connect ``client`` (a SignallingClient) to an endpoint string or object and log
    in. Fires with the client once registered."""
    if isinstance(endpoint, str):
        endpoint = client_endpoint(reactor, endpoint)  # ws:// too: the CU link of a page
    clock = clock or reactor
    client.clock = clock
    factory = LinkFactory(client, clock, **link_options)
    d = endpoint.connect(factory)

    def connected(link):
        return client.login(link).addCallback(lambda _: client)

    def failed_login(f):
        if client.link is not None:
            client.link.abort()
        return f

    return d.addCallback(connected).addErrback(failed_login)


class ReconnectingClient:
    """Keeps one logged-in link up, reconnecting with exponential backoff and jitter."""

    log = Logger()

    def __init__(self, reactor, endpoint, client, clock=None, max_delay=30.0, **link_options):
        if isinstance(endpoint, str):
            endpoint = client_endpoint(reactor, endpoint)
        self.client = client
        clock = clock or reactor
        client.clock = clock
        self.reconnector = Reconnector(endpoint, LinkFactory(client, clock, **link_options),
                                       self._prepare, clock, initial=1.0, max_delay=max_delay,
                                       name=client.identity)
        client.on_lost = self.reconnector.lost
        self.not_ready = False  # the last login was answered NOT_READY

    def _prepare(self, link):
        def logged_in(result):
            self.not_ready = False
            return result

        def failed(f):
            self.not_ready = f.check(VssError) is not None and f.value.code == ResultCode.NOT_READY
            if self.not_ready:
                # Not a failure of ours: the node cannot check logins yet. The
                # reconnector backs off with a wide jitter.
                self.log.info("node not ready for {identity}: {error}",
                              identity=self.client.identity, error=f.value.message)
            else:
                self.log.warn("login of {identity} failed: {error}",
                              identity=self.client.identity, error=f.getErrorMessage())
            return f

        return self.client.login(link).addCallbacks(logged_in, failed)

    def start(self):
        self.reconnector.start()

    def stop(self):
        return self.reconnector.stop()
