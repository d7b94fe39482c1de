"""``vss.directsend`` over real loopback TCP: the Twisted internals it reads are there,
a direct send arrives in order after what the transport still holds, and anything but
a plain TCP transport is written through the transport."""

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from vss import directsend


class Collect(protocol.Protocol):
    def __init__(self, want):
        self.want = want
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.want and not self.done.called:
            self.done.callback(self.data)


class DirectSendTests(unittest.TestCase):
    @defer.inlineCallbacks
    def connect(self, want):
        server = Collect(want)
        factory = protocol.Factory.forProtocol(lambda: server)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(client.transport.loseConnection)
        return client.transport, server

    @defer.inlineCallbacks
    def test_twisted_keeps_the_attributes_read(self):
        """Fails when a Twisted release renames what the fast paths read."""
        transport, _ = yield self.connect(1)
        self.assertIsInstance(transport, tcp.Connection)
        for name in directsend.CONNECTION_ATTRIBUTES:
            self.assertTrue(hasattr(transport, name), name)
        self.assertEqual(transport.dataBuffer, b"")
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertFalse(transport.TLS)

    @defer.inlineCallbacks
    def test_direct_send_on_an_idle_transport(self):
        transport, server = yield self.connect(5)
        self.assertIs(directsend.plain_socket(transport), transport.socket)
        self.assertTrue(directsend.idle(transport))
        directsend.send_or_write(transport, b"hello")
        # nothing was left in the transport: the kernel took it
        self.assertFalse(transport.dataBuffer or transport._tempDataBuffer)
        self.assertEqual((yield server.done), b"hello")

    @defer.inlineCallbacks
    def test_order_kept_behind_buffered_bytes(self):
        transport, server = yield self.connect(10)
        transport.write(b"first")  # held by the transport until the next reactor turn
        self.assertFalse(directsend.idle(transport))
        directsend.send_or_write(transport, b"after")
        self.assertEqual((yield server.done), b"firstafter")

    @defer.inlineCallbacks
    def test_a_closing_transport_is_not_idle(self):
        transport, _ = yield self.connect(1)
        transport.loseConnection()
        self.assertFalse(directsend.idle(transport))

    def test_other_transports_are_written_through(self):
        t = StringTransport()
        self.assertIsNone(directsend.plain_socket(t))
        directsend.send_or_write(t, b"abc")
        self.assertEqual(t.value(), b"abc")
        self.assertIsNone(directsend.kernel_socket(t))
