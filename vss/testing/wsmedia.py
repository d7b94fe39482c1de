"""
A browser's media connection without a browser, for tests and benchmarks: a small
RFC 6455 client of the node's media WebSocket (``/media<path>?token=``, subprotocol
``vss.media.v1``; docs/protocol.md, "Browser media") on a real TCP connection.

``connect_media(reactor, port, path, token)`` fires with a ``MediaClient`` once the
node accepted the upgrade. The client keeps what it got in ``messages``, in order:
``Init(codec, segment)``, ``Fragment(key, ingest, dts, body)`` and the JSON control
messages as dicts; ``send_json(obj)`` sends a control message; ``pause()`` and
``resume()`` stop and restart reading the socket (a viewer behind a slow link);
``wait_for(predicate)`` polls its messages; ``closed`` fires with the close code.
"""

import base64
import json
import os
import socket
import struct
from collections import namedtuple

from twisted.internet import defer, endpoints, protocol

from vss.testing.platform import wait_until

Init = namedtuple("Init", "codec segment")
Fragment = namedtuple("Fragment", "key ingest dts body")
_F_HEAD = struct.Struct(">cBHQQ")


def parse_media(payload):
    """An ``Init`` or a ``Fragment`` of one binary message of the node."""
    if payload[:1] == b"I":
        n = payload[1]
        return Init(payload[2:2 + n].decode("ascii"), payload[2 + n:])
    if payload[:1] == b"F":
        _, flags, _, ingest, dts = _F_HEAD.unpack_from(payload)
        return Fragment(bool(flags & 1), ingest, dts, payload[_F_HEAD.size:])
    raise ValueError(f"unknown media message {payload[:1]!r}")


def client_frame(opcode, payload):
    """One masked frame of a client (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 1 << 16:
        head += bytes((0x80 | 126,)) + struct.pack(">H", n)
    else:
        head += bytes((0x80 | 127,)) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class MediaClient(protocol.Protocol):
    """See the module docstring."""

    def __init__(self, target, host="127.0.0.1", subprotocol="vss.media.v1"):
        self.target = target
        self.host = host
        self.subprotocol = subprotocol
        self.buf = b""
        self.status = None  # the HTTP status of the upgrade
        self.headers = {}
        self.messages = []
        self.received = 0  # bytes read from the socket
        self.close_code = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()

    def connectionMade(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.target} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {self.subprotocol}\r\n"
            "\r\n".encode())

    def dataReceived(self, data):
        self.received += len(data)
        self.buf += data
        if self.status is None:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {k.strip().lower(): v.strip()
                            for k, _, v in (ln.partition(":") for ln in lines[1:])}
            self.buf = rest
            if self.status != 101:
                self.opened.errback(ValueError(f"upgrade refused: {lines[0]}"))
                self.transport.loseConnection()
                return
            self.opened.callback(self)
        self._frames()

    def _frames(self):
        buf = self.buf
        i = 0
        while len(buf) - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            n, at = b1 & 0x7F, i + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                n, at = struct.unpack_from(">H", buf, at)[0], at + 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                n, at = struct.unpack_from(">Q", buf, at)[0], at + 8
            if len(buf) - at < n:
                break
            payload = buf[at:at + n]
            i = at + n
            self._message(b0 & 0x0F, payload)
        self.buf = buf[i:]

    def _message(self, opcode, payload):
        if opcode == 2:
            self.messages.append(parse_media(payload))
        elif opcode == 1:
            self.messages.append(json.loads(payload.decode("utf-8")))
        elif opcode == 8:
            self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            self.transport.write(client_frame(8, payload[:2]))
            self.transport.loseConnection()
        elif opcode == 9:
            self.transport.write(client_frame(10, payload))

    def connectionLost(self, reason):
        if not self.opened.called:
            self.opened.errback(reason)
        self.closed.callback(self.close_code)

    # -- what a test does

    def send_json(self, obj):
        self.transport.write(client_frame(1, json.dumps(obj).encode()))

    def close(self):
        self.transport.write(client_frame(8, struct.pack(">H", 1000)))

    def pause(self):
        self.transport.pauseProducing()

    def resume(self):
        self.transport.resumeProducing()

    def fragments(self):
        return [m for m in self.messages if isinstance(m, Fragment)]

    def controls(self):
        return [m for m in self.messages if isinstance(m, dict)]

    def wait_for(self, reactor, predicate, timeout=20.0, what="media messages"):
        return wait_until(reactor, lambda: predicate(self), timeout=timeout, what=what)


@defer.inlineCallbacks
def connect_media(reactor, port, path, token, host="127.0.0.1", rcvbuf=None):
    """A ``MediaClient`` of ``/media<path>?token=`` on the node's HTTP ``port``, once
    upgraded. ``rcvbuf``: the client socket's receive buffer (a slow link's share)."""
    client = MediaClient(f"/media{path}?token={token}", host)
    ep = endpoints.TCP4ClientEndpoint(reactor, host, port)
    yield endpoints.connectProtocol(ep, client)
    if rcvbuf:
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    yield client.opened
    return client
