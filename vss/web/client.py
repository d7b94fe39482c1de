"""
The CU link over a WebSocket from the client side, as a browser page speaks it
(docs/protocol.md, "Browser clients"): ``ws://host:port/ws/cu`` (``wss://`` for TLS),
subprotocol ``vss.cu.v1``. Any Twisted protocol that speaks the link's byte stream (a
``SignallingLink``, the conformance suite's probes) runs over it unchanged: each write
is one binary message, each binary message of the node is given to ``dataReceived``.

``client_endpoint(reactor, description)``: an endpoint for a ``ws://`` or ``wss://``
URL (``WebSocketClientEndpoint``), else Twisted's ``clientFromString``. Its
``connect(factory)`` fires with the protocol once the WebSocket is open.
"""

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, error, ssl
from twisted.python.failure import Failure

from vss.web.signalling import SUBPROTOCOL, MessageTransport

MAX_MESSAGE = 1 << 21  # a frame of the largest body (docs/protocol.md 2.2) fits


class _Bridge(WebSocketClientProtocol):
    inner = None

    def onOpen(self):
        factory = self.factory
        self.inner = factory.inner.buildProtocol(self.transport.getPeer())
        self.inner.makeConnection(MessageTransport(self, factory.tls))
        if not factory.opened.called:
            factory.opened.callback(self.inner)

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.sendClose(1003)
            return
        if self.inner is not None:
            self.inner.dataReceived(payload)

    def onClose(self, wasClean, code, reason):
        inner, self.inner = self.inner, None
        if inner is not None:
            why = error.ConnectionDone if wasClean else error.ConnectionLost
            inner.connectionLost(Failure(why(f"WebSocket closed ({code})")))
        elif not self.factory.opened.called:
            self.factory.opened.errback(error.ConnectError(
                string=f"the WebSocket did not open: {reason or code}"))


class WebSocketClientEndpoint:
    """An ``IStreamClientEndpoint`` of the CU link over a WebSocket at ``url``."""

    def __init__(self, reactor, url, trust_root=None):
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self.reactor = reactor
        self.url = url
        self.tls = parts.scheme == "wss"
        port = parts.port or (443 if self.tls else 80)
        tcp = endpoints.HostnameEndpoint(reactor, parts.hostname, port)
        if self.tls:
            options = ssl.optionsForClientTLS(parts.hostname, trustRoot=trust_root)
            tcp = endpoints.wrapClientTLS(options, tcp)
        self.tcp = tcp

    def connect(self, factory):
        ws = WebSocketClientFactory(self.url, protocols=[SUBPROTOCOL])
        ws.protocol = _Bridge
        ws.inner = factory
        ws.tls = self.tls
        ws.opened = defer.Deferred()
        ws.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE,
                              maxFramePayloadSize=MAX_MESSAGE, autoPingInterval=0)
        d = self.tcp.connect(ws)
        d.addCallback(lambda _: ws.opened)
        return d


def client_endpoint(reactor, description):
    """A client endpoint for ``description``: a ``ws://``/``wss://`` URL of a node's
    ``/ws/cu``, or a Twisted endpoint string (``tcp:``, ``tls:``)."""
    if description.startswith(("ws://", "wss://")):
        return WebSocketClientEndpoint(reactor, description)
    return endpoints.clientFromString(reactor, description)
