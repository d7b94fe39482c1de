"""
The client side of a signalling link, shared by the PU agent (``vss-pu``), the CU
command line (``vssctl``), the conformance suite and the tests.

``SignallingClient`` is the link handler of the connecting side: ``login`` runs HELLO,
the SCRAM exchange (checking the node's signature, so a client knows it talks to a node
that holds its verifier) and REGISTER; then a keepalive is sent every interval the node
announced. Requests the node sends (to a PU) go to ``on_request``; notifications to
``on_notify``. ``ReconnectingClient`` keeps one logged-in link up with backoff.

A PU that knows several nodes (``home_query``) asks the node it reaches where it is
homed first (HOME_QUERY, docs/protocol.md 9.10) and goes there when it is another node
(``Redirect``); it keeps the list of nodes its node names (NODE_LIST) to try in turn
when it loses its node.
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
    HomeQuery,
    MsgType,
    Register,
)
from vss.protocols.reconnect import Reconnector, Redirect
from vss.web.client import client_endpoint

AGENT = "vss-client/0.1"
#: a PU whose home is down (HOME_NODE_DOWN: not moved yet) asks again on the same link
#: after a wait drawn in HOME_WAIT (seconds, jittered), at most HOME_ASKS times, rather
#: than reconnecting: CMS moves it within seconds, and a storm of reconnections would
#: cost the live nodes more than a question on an open link
HOME_WAIT = (0.5, 1.0)
HOME_ASKS = 20


class SignallingClient:
    """Handler of one client link; subclass or pass callables for requests/notifies."""

    log = Logger()

    def __init__(self, role, identity, secret, kind=1, channels=0, model="", firmware="",
                 clock=None, on_request=None, on_notify=None, attributes=(),
                 home_query=False):
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
        self.home_query = home_query  # a PU: ask where it is homed before logging in
        self.on_nodes = None  # f(NodeList): the node named the nodes to try (NODE_LIST)
        self.home = None  # the last HomeRedirect a node answered

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
            if frame.type == MsgType.NODE_LIST and self.on_nodes is not None:
                self.on_nodes(msg.body)
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
        hello = (yield link.request(
            MsgType.HELLO,
            Hello(min_version=1, max_version=1, role=self.role, agent=AGENT, features=[]),
        )).body
        if self.home_query:
            yield self._ask_home(link, hello.node_id)
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

    @defer.inlineCallbacks
    def _ask_home(self, link, node_id):
        """HOME_QUERY: go on here, or raise ``Redirect`` to the home node's address
        (HOME_NODE_DOWN and other refusals are raised as they are)."""
        asks = 0
        while True:
            asks += 1
            try:
                home = (yield link.request(MsgType.HOME_QUERY,
                                           HomeQuery(device_id=self.identity))).body
                break
            except VssError as e:
                if e.code in (ResultCode.NOT_SUPPORTED, ResultCode.UNEXPECTED_MESSAGE):
                    return None  # a node that does not know the question: log in here
                if e.code != ResultCode.HOME_NODE_DOWN or asks >= HOME_ASKS or link.closed:
                    raise
            yield task.deferLater(link.clock, random.uniform(*HOME_WAIT), lambda: None)
        self.home = home
        if home.home_node not in ("", node_id) and home.address:
            raise Redirect(home.address, f"{self.identity} is homed on {home.home_node}")
        return home

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
        """``endpoint``: an endpoint, an endpoint string, or a list of endpoint strings
        (the nodes a PU may try, in order; the list its node names replaces it)."""
        self.reactor = reactor
        names = []
        if isinstance(endpoint, (list, tuple)):
            names = list(endpoint)
            endpoint = [client_endpoint(reactor, e) for e in names]
        elif isinstance(endpoint, str):
            names = [endpoint]
            endpoint = client_endpoint(reactor, endpoint)
        self.seeds = list(names)  # the addresses given: still tried after a refresh
        self.client = client
        clock = clock or reactor
        client.clock = clock
        self.reconnector = Reconnector(endpoint, LinkFactory(client, clock, **link_options),
                                       self._prepare, clock, initial=1.0, max_delay=max_delay,
                                       name=client.identity, names=names,
                                       make_endpoint=lambda a: client_endpoint(reactor, a))
        client.on_lost = self.reconnector.lost
        client.on_nodes = self._nodes
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
            elif f.check(Redirect):
                pass  # the reconnector follows it
            elif f.check(VssError) and f.value.code in (ResultCode.HOME_NODE_DOWN,
                                                        ResultCode.BUSY):
                self.log.info("login of {identity} waits: {error}",
                              identity=self.client.identity, error=f.value.message)
            else:
                self.log.warn("login of {identity} failed: {error}",
                              identity=self.client.identity, error=f.getErrorMessage())
            return f

        return self.client.login(link).addCallbacks(logged_in, failed)

    def _nodes(self, body):
        """The node named the nodes to try when it is lost: its own address first,
        then the others (least loaded first), then the addresses given at start."""
        names = []
        for address in [n.address for n in body.nodes] + self.seeds:
            if address and address not in names:
                names.append(address)
        r = self.reconnector
        if names == r.names:
            return
        current = body.nodes[0].address if body.nodes else None
        known = dict(zip(r.names, r.endpoints, strict=False))
        r.use([known.get(a) or client_endpoint(self.reactor, a) for a in names], names,
              current)

    def start(self):
        self.reconnector.start()

    def stop(self):
        return self.reconnector.stop()
