"""
Links between nodes and their authentication with the cluster secret.

- ``node_login``: HELLO and SCRAM as a node (identity = node id, secret = the cluster
  secret that CMS and every node hold; it never crosses the wire).
- ``serve_route``: S404-S405 on the home node, for a request routed by CMS or sent
  straight by a node that cached the route.
- ``PeerServer``: the handler of the node's inter-node listener (``--node-listen``).
- ``PeerLinks``: this node's outgoing links to other nodes, one per peer.
"""

import secrets

from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

from vss.protocols import codec, scram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    AuthChallenge,
    AuthOk,
    AuthProof,
    AuthStart,
    Empty,
    Error,
    Hello,
    HelloAck,
    MsgType,
    Purpose,
    Role,
    RouteRequest,
    RouteResponse,
)
from vss.rgm import relay
from vss.rgm.auth import ScramExchange, node_verifier
from vss.tls import client_host_port, peer_identity_problem, plaintext_problem, split_endpoint

AGENT = "vss-node/0.1"
#: One link to a peer carries the routed requests of every CU of this node (each CU link
#: is held to its own limit by the RGM), so the per-link default of 256 would refuse CUs'
#: requests, and drop the cached route, under ordinary load.
PEER_MAX_IN_FLIGHT = 65536
_ROUTE = int(MsgType.ROUTE_REQUEST)


@defer.inlineCallbacks
def node_login(link, node_id, cluster_secret):
    """HELLO and SCRAM as a node, with the cluster secret. Fires when authenticated."""
    yield link.request(MsgType.HELLO, Hello(min_version=1, max_version=1, role=Role.NODE,
                                            agent=AGENT, features=[]))
    nonce = scram.nonce()
    ch = (yield link.request(MsgType.AUTH_START, AuthStart(
        identity=node_id, mechanism=scram.MECHANISM, client_nonce=nonce))).body
    salted = scram.salted_password(cluster_secret.decode("latin-1"), ch.salt, ch.iterations)
    message = scram.auth_message(node_id, nonce, ch.server_nonce, ch.salt, ch.iterations)
    ok = (yield link.request(MsgType.AUTH_PROOF, AuthProof(
        client_proof=scram.client_proof_from_salted(salted, message)))).body
    if not scram.check_server_signature(salted, ch.salt, ch.iterations, message,
                                        ok.server_signature):
        link.abort()
        raise VssError(ResultCode.AUTH_FAILED, "the peer does not hold the cluster secret")


def error_body(message):
    return codec.encode_body(Error(message=message))


def serve_route(rgm, body):
    """S404-S405 on the home node: a routed request for one of our PUs. Fires with a
    ``RouteResponse`` carrying the PU's answer or the error that stood in its way. A
    routed MEDIA_OPEN is answered by this node's CDN module (a play URL of its SS); one
    with ``purpose=PLAYBACK`` is also served for a device homed elsewhere: it is sent to
    the node that holds the footage (``vss.recording.remote``)."""

    def answered(result):
        status, inner = result
        return RouteResponse(home_node=rgm.node_id, inner_status=status, inner_body=inner)

    def failed(f):
        f.trap(VssError)
        return RouteResponse(home_node=rgm.node_id, inner_status=int(f.value.code),
                             inner_body=error_body(f.value.message))

    if body.device_id.startswith(relay.CU_TARGET):  # a wall or decoder (vss.rgm.walls)
        d = relay.serve_wall(rgm, body.device_id, body.inner_type, body.inner_body)
        return d.addCallbacks(answered, failed)
    record = rgm.store.get_device(body.device_id)
    homed = record is not None and record.home_node in ("", rgm.node_id)
    msg = None
    if body.inner_type == MsgType.MEDIA_OPEN:
        msg = codec.decode_body(codec.Frame(codec.VERSION, 0, MsgType.MEDIA_OPEN, 0, 0,
                                            body.inner_body))
        if isinstance(msg, codec.ProtocolError):
            return defer.succeed(RouteResponse(
                home_node=rgm.node_id, inner_status=int(msg.code),
                inner_body=error_body(msg.message)))
    # a playback goes to the node holding the footage, which need not be the home node
    playback = msg is not None and msg.body.purpose == Purpose.PLAYBACK \
        and rgm.store.get_device(msg.body.device_id) is not None
    if not homed and not playback:
        return defer.succeed(RouteResponse(
            home_node=rgm.node_id, inner_status=int(ResultCode.UNKNOWN_DEVICE),
            inner_body=error_body(f"{body.device_id} is not homed on {rgm.node_id}")))
    if msg is not None:
        if rgm.cdn is None:
            return defer.succeed(RouteResponse(
                home_node=rgm.node_id, inner_status=int(ResultCode.NOT_SUPPORTED),
                inner_body=error_body("the home node has no streaming server")))
        d = rgm.cdn.routed_media_open(msg.body)
        d.addCallback(lambda url: (0, codec.encode_body(url)))
        return d.addCallbacks(answered, failed)
    d = relay.serve_locally(rgm, body.device_id, body.inner_type, body.inner_body)
    return d.addCallbacks(answered, failed)


class PeerSession:
    """Who is on a link another node opened to this one: the login's state (new, hello,
    challenged, ready), its SCRAM exchange, the node once logged in."""

    __slots__ = ("state", "exchange", "node")

    def __init__(self):
        self.state = "new"
        self.exchange = None
        self.node = None


class PeerServer:
    """Accepts other nodes' links: HELLO, SCRAM with the cluster secret, then routed
    requests for this node's PUs."""

    log = Logger()

    def __init__(self, rgm, cluster_secret, clock):
        self.rgm = rgm
        self.cluster_secret = cluster_secret
        self.clock = clock
        self._verifiers = {}
        self.links = set()

    def factory(self):
        return LinkFactory(self, self.clock)

    def linkUp(self, link):
        link.session = PeerSession()
        self.links.add(link)

    def linkDown(self, link, reason):
        self.links.discard(link)
        if self.rgm.events is not None:
            self.rgm.events.peer_gone(link)

    def received_frame(self, link, frame):
        """The fast path of a routed PTZ_CONTROL (``relay.fast_routed``), tried before a
        request is decoded; False leaves the frame to ``received``."""
        if frame.type != _ROUTE or frame.flags or link.session.state != "ready":
            return False
        return relay.fast_routed(self.rgm, link, frame)

    def received(self, link, frame, msg):
        s = link.session
        t = frame.type
        if frame.flags & codec.FLAG_NOTIFY:
            if t == MsgType.BYE:
                link.close()
            return
        if not getattr(self.rgm, "running", True):
            # This node stopped (its listener too), and its services with it: a link
            # accepted before is dropped rather than answered from closed services, so
            # the peer asks CMS where this node is now.
            link.close(ResultCode.SESSION_CLOSED, "the node stopped")
            return
        try:
            if t == MsgType.KEEPALIVE:
                body = Empty()
            elif s.state == "new" and t != MsgType.HELLO:
                raise VssError(ResultCode.UNEXPECTED_MESSAGE, "HELLO first")
            elif t == MsgType.HELLO and s.state == "new":
                h = msg.body
                why = None
                if h.role != Role.NODE:
                    why = ResultCode.UNEXPECTED_MESSAGE, "this endpoint serves role NODE"
                elif not h.min_version <= codec.VERSION <= h.max_version:
                    why = (ResultCode.NO_COMMON_VERSION, f"this node speaks version "
                           f"{codec.VERSION}, the client {h.min_version}-{h.max_version}")
                if why is not None:  # answered, then BYE and close (docs/protocol.md 8.1)
                    link.send_error(t, frame.txid, *why)
                    link.close(*why)
                    return
                s.state = "hello"
                body = HelloAck(version=codec.VERSION, node_id=self.rgm.node_id, agent=AGENT,
                                features=[])
            elif t == MsgType.AUTH_START and s.state in ("hello", "challenged"):
                identity = msg.body.identity
                # over mutual TLS, the peer's certificate must name the node logging in
                problem = peer_identity_problem(link.transport, identity)
                if problem is not None:
                    self.log.warn("refused node {node} from {peer}: {problem}",
                                  node=identity, peer=link.peer, problem=problem)
                    link.send_error(t, frame.txid, ResultCode.AUTH_FAILED, problem)
                    link.close()
                    return
                verifier = self._verifiers.get(identity)
                if verifier is None:
                    verifier = self._verifiers[identity] = node_verifier(self.cluster_secret,
                                                                         identity)
                s.exchange = ScramExchange(identity, msg.body.client_nonce, verifier,
                                              self.cluster_secret)
                s.state = "challenged"
                x = s.exchange
                body = AuthChallenge(salt=x.salt, iterations=x.iterations,
                                     server_nonce=x.server_nonce)
            elif t == MsgType.AUTH_PROOF and s.state == "challenged":
                x, s.exchange = s.exchange, None
                signature = x.verify(msg.body.client_proof)
                if signature is None:
                    s.state = "hello"
                    raise VssError(ResultCode.AUTH_FAILED)
                s.state, s.node = "ready", x.identity
                body = AuthOk(server_signature=signature, session_id=secrets.token_hex(8))
            elif t == MsgType.EVENT_SUBSCRIBE and s.state == "ready":
                # the other node follows the events of the devices homed here (9.7)
                if self.rgm.events is None:
                    raise VssError(ResultCode.NOT_SUPPORTED, "this node keeps no events")
                answer, replay = self.rgm.events.peer_subscribe(link, msg.body)
                link.send_response(t, frame.txid, answer)
                for note in replay:
                    link.send_raw(note)
                return
            elif t == MsgType.ROUTE_REQUEST and s.state == "ready":
                serve_route(self.rgm, msg.body).addCallbacks(
                    lambda b: link.send_response(t, frame.txid, b),
                    lambda f: link.send_failure(frame, f))
                return
            elif t in (MsgType.HELLO, MsgType.AUTH_START, MsgType.AUTH_PROOF):
                raise VssError(ResultCode.UNEXPECTED_MESSAGE,
                               "HELLO already done" if t == MsgType.HELLO
                               else "already logged in" if s.state == "ready"
                               else "AUTH_START first")
            elif s.state != "ready":
                raise VssError(ResultCode.NOT_AUTHENTICATED, "log in first")
            else:
                raise VssError(ResultCode.UNEXPECTED_MESSAGE,
                               f"{codec.message_name(t)} is not a node-to-node request")
        except VssError as e:
            link.send_failure(frame, e)
            return
        link.send_response(t, frame.txid, body)


class PeerLinks:
    """Node-to-node links used for cached routes: one logged-in link per peer node."""

    log = Logger()

    def __init__(self, cms):
        self.cms = cms
        self.links = {}  # node id -> logged-in link
        self._connecting = {}  # node id -> Deferreds waiting for the link being made
        #: objects with ``peer_event(node_id, EventNotify)`` and ``peer_link_lost(node_id,
        #: link)``: the event hub, following other nodes' events over these links
        self.event_listeners = []

    def link_to(self, node_id, endpoint):
        """A logged-in link to ``node_id`` (made once, then shared)."""
        return self._link(node_id, endpoint)

    def route(self, node_id, endpoint, device_id, inner_type, inner_body):
        d = self._link(node_id, endpoint)

        def send(link):
            return link.request(MsgType.ROUTE_REQUEST, RouteRequest(
                origin_node=self.cms.node_id, device_id=device_id, hops=1,
                inner_type=inner_type, inner_body=inner_body))

        def answered(msg):
            body = msg.body
            if body.inner_status == ResultCode.UNKNOWN_DEVICE:
                raise VssError(ResultCode.UNKNOWN_DEVICE, "not homed there any more")
            return body.inner_status, body.inner_body

        return d.addCallback(send).addCallback(answered)

    def _link(self, node_id, endpoint):
        link = self.links.get(node_id)
        if link is not None and not link.closed:
            return defer.succeed(link)
        waiting = self._connecting.get(node_id)
        if waiting is not None:
            # A link to this peer is being made: share it rather than open one more for
            # every request that arrives meanwhile.
            d = defer.Deferred()
            waiting.append(d)
            return d
        cms = self.cms
        try:
            ep = self.endpoint(node_id, endpoint)
        except VssError as e:
            self.log.warn("no link to node {node}: {error}", node=node_id, error=e.message)
            return defer.fail(e)
        waiting = self._connecting[node_id] = []
        factory = LinkFactory(_PeerClient(self, node_id), cms.clock, request_timeout=15.0,
                              max_in_flight=PEER_MAX_IN_FLIGHT)

        def connected(link):
            d = node_login(link, cms.node_id, cms.cluster_secret)
            d.addCallback(lambda _: self._check_identity(node_id, link))
            return d.addCallback(lambda _: self._keep(node_id, link))

        def done(result):
            del self._connecting[node_id]
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)
            return result

        return ep.connect(factory).addCallback(connected).addBoth(done)

    def endpoint(self, node_id, advertised):
        """The client endpoint to the node that advertised ``advertised``
        (``tls:HOST:PORT``: mutual TLS; ``tcp:HOST:PORT``: plaintext, loopback only
        unless plaintext links are allowed). VssError FORBIDDEN when refused."""
        cms = self.cms
        kind, _args, _kw = split_endpoint(advertised)
        try:
            host, port = client_host_port("tcp:" + advertised.partition(":")[2])
        except ValueError:
            raise VssError(ResultCode.UNKNOWN_NODE,
                           f"node {node_id} advertised {advertised!r}") from None
        if kind == "tls":
            if cms.link_tls is None:
                raise VssError(ResultCode.FORBIDDEN, f"node {node_id} takes TLS links only "
                               "and this node has no certificate (--tls-cert)")
            return cms.link_tls.client_endpoint(cms.reactor, host, port, timeout=15)
        if kind != "tcp":
            raise VssError(ResultCode.UNKNOWN_NODE,
                           f"node {node_id} advertised {advertised!r}")
        problem = plaintext_problem(f"link to node {node_id}", host, cms.allow_plaintext)
        if problem is not None:
            raise VssError(ResultCode.FORBIDDEN, problem)
        return endpoints.clientFromString(cms.reactor, advertised)

    def _check_identity(self, node_id, link):
        """Over TLS: the certificate must name the node we meant to reach."""
        problem = peer_identity_problem(link.transport, node_id)
        if problem is not None:
            self.log.warn("refused the link to node {node}: {problem}", node=node_id,
                          problem=problem)
            link.abort()
            raise VssError(ResultCode.AUTH_FAILED, problem)

    def _keep(self, node_id, link):
        self.links[node_id] = link
        return link

    def forget(self, node_id, link):
        if self.links.get(node_id) is link:
            del self.links[node_id]
        for listener in self.event_listeners:
            listener.peer_link_lost(node_id, link)

    def close(self):
        for link in list(self.links.values()):
            link.close()
        self.links.clear()


class _PeerClient:
    def __init__(self, peers, node_id):
        self.peers = peers
        self.node_id = node_id

    def linkUp(self, link):
        pass

    def linkDown(self, link, reason):
        self.peers.forget(self.node_id, link)

    def received(self, link, frame, msg):
        if frame.type == MsgType.KEEPALIVE and not frame.flags & codec.FLAG_NOTIFY:
            link.send_response(frame.type, frame.txid, Empty())
        elif frame.type == MsgType.EVENT_NOTIFY and frame.flags & codec.FLAG_NOTIFY:
            for listener in self.peers.event_listeners:
                listener.peer_event(self.node_id, msg.body)
