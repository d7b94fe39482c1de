"""
Writing straight to a TCP socket, past Twisted's write buffer: the one place vss reads
the internals of ``twisted.internet.tcp.Connection``.

Why: the hot paths (the RTSP fan-out, one ``send`` per viewer per picture, and the
signalling relay's answers) measured 2-3 x cheaper per byte when a write that the
kernel takes at once skips ``transport.write`` (which copies into the transport's
buffer and sends on the next reactor turn). Such a write keeps the byte order only
when nothing is buffered in the transport, so the check reads the transport's buffers
(``dataBuffer``, ``_tempDataBuffer``) and its state (``connected``, ``disconnecting``,
``_writeDisconnected``, ``TLS``). tests/test_directsend.py fails if a Twisted release
renames or drops any of them; anything that is not a plain TCP transport (TLS, UNIX,
test transports) gets ``None`` and goes through ``transport.write``.
"""

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

#: the attributes of ``tcp.Connection`` this module reads
CONNECTION_ATTRIBUTES = ("socket", "TLS", "connected", "disconnecting", "_writeDisconnected",
                         "dataBuffer", "_tempDataBuffer")


def plain_socket(transport):
    """The socket of a plain TCP transport, for direct sends; None for anything else:
    TLS (whose transport lends the attributes of the TCP one under it: never write
    there), transports without a socket. A stand-in with a ``socket``, ``startTLS``
    and ``TLS`` false (a test's fake TCP transport) counts as plain TCP."""
    if isinstance(transport, TLSMemoryBIOProtocol) or getattr(transport, "TLS", False):
        return None
    if not hasattr(transport, "startTLS"):
        return None
    return getattr(transport, "socket", None)


def idle(transport):
    """True when a plain TCP transport holds nothing to send and is open: bytes sent
    straight to its socket now come in order after everything written before."""
    return (transport.connected and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataBuffer)


def send_or_write(transport, data):
    """Send ``data`` straight to the socket of an idle plain TCP transport, and write
    through the transport whatever the socket did not take (or everything, for any
    other transport or a busy one): the byte order is kept either way."""
    sock = plain_socket(transport) if isinstance(transport, tcp.Connection) else None
    if sock is not None and idle(transport):
        try:
            sent = sock.send(data)
        except OSError:  # would block, or broken: Twisted's write path deals with it
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def kernel_socket(transport):
    """The socket under a transport: a TCP transport's own, or the one under TLS (for
    its buffer's fill and size, never to write to)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    return getattr(transport, "socket", None)
