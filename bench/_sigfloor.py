"""
The floor under bench/signalling.py's idle scenario: a bare Twisted server (epoll
reactor, no vss code) that answers every request frame with an empty response, the
header read and written with one precompiled ``struct``. What a keepalive costs here is
the reactor's and the kernel's share, which no change in the node can remove.

    python bench/_sigfloor.py PORTS_JSON [--direct]
    # writes {"pu": port, "cu": port} and runs until killed; --direct: answers are sent
    # straight to the socket (as the node's links do) instead of through transport.write
"""

import json
import struct
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402

HDR = struct.Struct(">2sBBHHII")
#: Answers straight to the socket when its buffer is empty, as vss.protocols.link does.
WRITE_THROUGH = "--direct" in sys.argv


class Bare(protocol.Protocol):
    buf = b""

    def dataReceived(self, data):
        buf = self.buf + data if self.buf else data
        pos, end, out = 0, len(buf), []
        while end - pos >= 16:
            magic, version, flags, mtype, status, txid, length = HDR.unpack_from(buf, pos)
            if end - pos - 16 < length:
                break
            pos += 16 + length
            if not flags & 1:
                out.append(HDR.pack(magic, version, flags | 1, mtype, 0, txid, 2) + b"\0\0")
        self.buf = buf[pos:]
        if out:
            data = b"".join(out)
            t = self.transport
            if WRITE_THROUGH and not t._tempDataBuffer and not t.dataBuffer:
                try:
                    n = t.socket.send(data)
                except BlockingIOError:
                    n = 0
                data = data[n:]
            if data:
                t.write(data)


def main():
    factory = protocol.Factory.forProtocol(Bare)
    pu = reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
    cu = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    with open(sys.argv[1], "w") as f:
        json.dump({"pu": pu.getHost().port, "cu": cu.getHost().port}, f)
    reactor.run()


if __name__ == "__main__":
    main()
