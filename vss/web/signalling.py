"""
The CU link over a WebSocket: ``/ws/cu`` on the node's HTTP listener (subprotocol
``vss.cu.v1``), for the browser client (docs/protocol.md, "WebSocket transport").

It is the CU link itself, not a translation: the node's own ``SignallingLink`` with the
RGM's CU handler (``RGMService.factory(Role.CU)``) runs over a ``WebSocketTransport``,
so the browser gets the same frames, the same login (SCRAM-SHA-256, computed in the
page: the password never leaves it), the same grants, throttling (per source address:
the WebSocket's TCP peer), keepalive and session rules as any CU on the CU port.

- Page to node: binary messages whose payloads, one after the other, are the link's
  byte stream (a page sends one frame per message; a frame cut over several messages,
  or several frames in one, read the same). A text message is refused (close 1003).
- Node to page: exactly one whole frame per binary message.
- Closing: a link that closes (BYE sent, a fatal error) closes the WebSocket (1000); a
  WebSocket that closes is the link's connection lost.
"""

import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import ISSLTransport, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer

from vss.protocols import codec

log = Logger()

SUBPROTOCOL = "vss.cu.v1"
HEADER = 16
_LENGTH = struct.Struct(">I")


@implementer(ITransport)
class MessageTransport:
    """A Twisted transport over a WebSocket: one binary message per write. TLS when
    ``tls`` says so, or (None) when the WebSocket's own transport is (``ISSLTransport``
    is then provided, e.g. for CRED_CREATE's rule)."""

    def __init__(self, ws, tls=None):
        self.ws = ws
        self.disconnecting = False
        if tls is None:
            tls = ISSLTransport.providedBy(ws.transport)
        if tls:
            directlyProvides(self, ITransport, ISSLTransport)

    def write(self, data):
        if data and not self.disconnecting:
            self.ws.sendMessage(bytes(data), isBinary=True)

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self.ws.sendClose(1000)

    def abortConnection(self):
        self.disconnecting = True
        self.ws.dropConnection(abort=True)

    def getPeer(self):
        return self.ws.transport.getPeer()

    def getHost(self):
        return self.ws.transport.getHost()


class WebSocketTransport(MessageTransport):
    """What a ``SignallingLink`` writes to, over a WebSocket: its byte stream cut into
    whole frames, one binary message each."""

    def __init__(self, ws, max_body=codec.MAX_BODY):
        super().__init__(ws)
        self.max_body = max_body
        self.pending = b""

    def write(self, data):
        if self.disconnecting:
            return
        buf = self.pending + data if self.pending else data
        i, n = 0, len(buf)
        while n - i >= HEADER:
            size = HEADER + _LENGTH.unpack_from(buf, i + 12)[0]
            if size - HEADER > self.max_body:  # never: the encoder refuses those
                log.error("a frame of {size} bytes for a WebSocket CU: dropped", size=size)
                self.abortConnection()
                return
            if n - i < size:
                break
            self.ws.sendMessage(bytes(buf[i:i + size]), isBinary=True)
            i += size
        self.pending = bytes(buf[i:])


class SignallingProtocol(WebSocketServerProtocol):
    """Thin: WebSocket messages in and out of one ``SignallingLink``."""

    link = None

    def onConnect(self, request):
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self):
        self.link = self.factory.links.buildProtocol(self.transport.getPeer())
        self.link.makeConnection(WebSocketTransport(self))

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.sendClose(1003, "frames are binary messages")
            return
        if self.link is not None:
            self.link.dataReceived(payload)

    def onClose(self, wasClean, code, reason):
        link, self.link = self.link, None
        if link is not None:
            link.connectionLost(Failure(ConnectionError(f"WebSocket closed ({code})")))


def signalling_factory(links, max_body=codec.MAX_BODY):
    """The autobahn factory of ``/ws/cu``; ``links`` is the RGM's CU link factory."""
    factory = WebSocketServerFactory()
    factory.protocol = SignallingProtocol
    factory.links = links
    factory.setProtocolOptions(maxMessagePayloadSize=max_body + HEADER,
                               maxFramePayloadSize=max_body + HEADER)
    return factory
