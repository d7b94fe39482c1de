"""
The state table of docs/protocol.md 8 on the links between servers (the CU and PU links
are in tests/test_rgm.py, LinkStateTests): CMS's node endpoint and a node's inter-node
endpoint refuse a request before HELLO with UNEXPECTED_MESSAGE "HELLO first" and keep
the link, answer KEEPALIVE in every state, and answer a HELLO they refuse, then send a
BYE with the same code and close.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from vss.cms.service import CMSConfig, CMSService
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.messages import Bye, Hello, MsgType, NodeLookup, Role
from vss.rgm.peers import PeerServer
from vss.testing.harness import NodeHarness

ERR = codec.FLAG_RESPONSE | codec.FLAG_ERROR


class NoNodes:
    def list_nodes(self):
        from twisted.internet import defer

        return defer.succeed([])


class Endpoint:
    """A server link over a StringTransport: send frames, read what it answered."""

    def __init__(self, factory):
        self.link = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.link.makeConnection(self.transport)
        self.decoder = codec.FrameDecoder()

    def send(self, type, body, txid=1, flags=0):
        self.link.dataReceived(codec.encode_frame(type, codec.encode_body(body), txid, flags))
        out = []
        for frame in self.decoder.feed(self.transport.value()):
            msg = codec.decode_body(frame)
            text = msg.body.message if frame.flags & codec.FLAG_ERROR else None
            if frame.type == MsgType.BYE:
                text = (msg.body.reason, msg.body.message)
            out.append((frame.type, frame.flags, frame.status, frame.txid, text))
        self.transport.clear()
        return out

    @property
    def closed(self):
        return self.transport.disconnecting


def hello(lo=1, hi=1, role=Role.NODE):
    return Hello(min_version=lo, max_version=hi, role=role, agent="t", features=[])


class Cases:
    def endpoint(self):
        raise NotImplementedError

    def test_before_hello(self):
        e = self.endpoint()
        got = e.send(MsgType.NODE_LOOKUP, NodeLookup(node_id="x"), txid=2)
        self.assertEqual(got, [(MsgType.NODE_LOOKUP, ERR, ResultCode.UNEXPECTED_MESSAGE, 2,
                                "HELLO first")])
        got = e.send(MsgType.KEEPALIVE, codec.Empty(), txid=3)
        self.assertEqual(got, [(MsgType.KEEPALIVE, codec.FLAG_RESPONSE, 0, 3, None)])
        self.assertFalse(e.closed)
        got = e.send(MsgType.HELLO, hello(), txid=4)
        self.assertEqual(got[0][:4], (MsgType.HELLO, codec.FLAG_RESPONSE, 0, 4))

    def test_after_hello_requests_are_not_authenticated(self):
        e = self.endpoint()
        e.send(MsgType.HELLO, hello())
        got = e.send(MsgType.NODE_LOOKUP, NodeLookup(node_id="x"), txid=2)
        self.assertEqual(got, [(MsgType.NODE_LOOKUP, ERR, ResultCode.NOT_AUTHENTICATED, 2,
                                "log in first")])
        got = e.send(MsgType.HELLO, hello(), txid=3)
        self.assertEqual(got, [(MsgType.HELLO, ERR, ResultCode.UNEXPECTED_MESSAGE, 3,
                                "HELLO already done")])
        self.assertFalse(e.closed)

    def test_refused_hellos_are_answered_then_bye_then_close(self):
        for body, code in ((hello(2, 9), ResultCode.NO_COMMON_VERSION),
                           (hello(3, 1), ResultCode.NO_COMMON_VERSION),
                           (hello(role=Role.CU), ResultCode.UNEXPECTED_MESSAGE)):
            e = self.endpoint()
            got = e.send(MsgType.HELLO, body, txid=5)
            self.assertEqual([g[:4] for g in got], [(MsgType.HELLO, ERR, code, 5),
                                                    (MsgType.BYE, codec.FLAG_NOTIFY, 0, 0)])
            self.assertTrue(got[0][4])
            self.assertEqual(got[1][4], (code, got[0][4]))
            self.assertTrue(e.closed)

    def test_bye_closes_in_any_state(self):
        e = self.endpoint()
        self.assertEqual(e.send(MsgType.BYE, Bye(reason=0, message=""), 0, codec.FLAG_NOTIFY),
                         [])
        self.assertTrue(e.closed)


class CMSNodeEndpoint(Cases, unittest.TestCase):
    def endpoint(self):
        cms = CMSService(CMSConfig(cms_id="cms", cluster_secret=b"s"), NoNodes(), Clock())
        return Endpoint(cms.factory())


class InterNodeEndpoint(Cases, unittest.TestCase):
    def endpoint(self):
        h = NodeHarness()
        self.addCleanup(h.stop)
        return Endpoint(PeerServer(h.rgm, b"s", h.clock).factory())
