"""
NODE_LOOKUP: a node asks CMS for another node's addresses by its id (docs/protocol.md,
NODE_LOOKUP and 9.5), to reach a node that holds footage but is home to no device.

CMS's handler is driven through the node's real ``CmsLink.lookup_node`` over a pair of
signalling links joined in memory (``iosim``, no sockets, a ``task.Clock``): an up node,
a registered node that is down, an unknown id, and what the node keeps of the answer.
``MemoryCentral`` answers the same question for in-process nodes. A node that stopped
drops the node links it had accepted, so that its peers ask again where it is.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vss.cms.service import CMSConfig, CMSService, NodeSession
from vss.interfaces import ICentral
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import MsgType, NodeRoute
from vss.rgm.cmslink import CmsLink
from vss.rgm.localcentral import MemoryCentral


class NodeRegistry:
    """The part of CMS's static store NODE_LOOKUP reads: the registered nodes."""

    def __init__(self, *node_ids):
        self.node_ids = node_ids
        self.reads = 0

    def list_nodes(self):
        self.reads += 1
        return defer.succeed([{"node_id": n, "state": "down"} for n in self.node_ids])


class NodeStore:
    """What CmsLink needs of the node's memory store when it is built."""

    def get_meta(self, key):
        return None


class NodeLookupTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        # node-a and node-c registered once; node-a is up, node-c is down
        self.registry = NodeRegistry("node-a", "node-b", "node-c")
        self.cms = CMSService(CMSConfig(cms_id="cms", cluster_secret=b"s"), self.registry,
                              self.clock)
        up = NodeSession(None)
        up.node_id, up.signalling, up.media = "node-a", "tcp:10.0.0.1:7102", "rtsp://10.0.0.1:554"
        self.cms.sessions["node-a"] = up
        # node-b's link to CMS, logged in and registered
        self.node = CmsLink("node-b", "tcp:127.0.0.1:9", b"s", NodeStore(), self.clock)
        server = self.cms.factory().buildProtocol(None)
        client = LinkFactory(self.node, self.clock).buildProtocol(None)
        self.pump = iosim.connect(server, iosim.makeFakeServer(server),
                                  client, iosim.makeFakeClient(client))
        server.session.node_id, server.session.registered = "node-b", True
        self.cms.sessions["node-b"] = server.session
        self.node.link = client

    def lookup(self, node_id):
        d = self.node.lookup_node(node_id)
        self.pump.flush()
        return d

    def test_an_up_node_is_answered_with_its_addresses_and_kept(self):
        route = self.successResultOf(self.lookup("node-a"))
        self.assertEqual(route, NodeRoute(node_id="node-a", signalling="tcp:10.0.0.1:7102",
                                          media="rtsp://10.0.0.1:554", node_up=True))
        self.assertEqual(self.node.node_endpoints, {"node-a": "tcp:10.0.0.1:7102"})
        self.assertEqual(self.registry.reads, 0)  # an up node is known without the DB

    def test_a_registered_node_that_is_down_has_no_address_and_is_forgotten(self):
        self.node.node_endpoints["node-c"] = "tcp:10.0.0.3:7102"  # kept from before
        route = self.successResultOf(self.lookup("node-c"))
        self.assertEqual(route, NodeRoute(node_id="node-c", signalling="", media="",
                                          node_up=False))
        self.assertEqual(self.node.node_endpoints, {})
        # node-a goes down: the same answer for it now
        del self.cms.sessions["node-a"]
        self.assertFalse(self.successResultOf(self.lookup("node-a")).node_up)

    def test_an_unknown_node_is_unknown_node_with_a_message(self):
        e = self.failureResultOf(self.lookup("node-z"), VssError).value
        self.assertEqual(e.code, ResultCode.UNKNOWN_NODE)
        self.assertEqual(e.message, "no node 'node-z'")
        self.assertEqual(self.node.node_endpoints, {})
        # the link stays up: the next lookup is answered
        self.assertTrue(self.successResultOf(self.lookup("node-a")).node_up)

    def test_the_node_itself_is_answered_but_not_kept(self):
        self.assertTrue(self.successResultOf(self.lookup("node-b")).node_up)
        self.assertEqual(self.node.node_endpoints, {})

    def test_a_link_not_registered_is_refused(self):
        self.cms.sessions.pop("node-b").registered = False  # not even logged in
        e = self.failureResultOf(self.lookup("node-a"), VssError).value
        self.assertEqual(e.code, ResultCode.UNEXPECTED_MESSAGE)
        self.assertEqual(self.node.node_endpoints, {})
        self.assertIn(MsgType.NODE_LOOKUP, CMSService.REGISTERED)
        self.assertNotIn(MsgType.NODE_LOOKUP, CMSService.HANDSHAKE)

    def test_without_a_link_to_cms_it_fails_at_once(self):
        self.node.link = None
        e = self.failureResultOf(self.node.lookup_node("node-a"), VssError).value
        self.assertEqual(e.code, ResultCode.CENTRAL_UNAVAILABLE)


class MemoryCentralTests(unittest.TestCase):
    def test_in_process_nodes_are_up_or_down_without_addresses(self):
        central = MemoryCentral()
        central.nodes = {"node-a": object(), "node-c": None}
        self.assertEqual(self.successResultOf(central.lookup_node("node-a")),
                         NodeRoute(node_id="node-a", signalling="", media="", node_up=True))
        self.assertFalse(self.successResultOf(central.lookup_node("node-c")).node_up)
        e = self.failureResultOf(central.lookup_node("node-z"), VssError).value
        self.assertEqual((e.code, e.message), (ResultCode.UNKNOWN_NODE, "no node 'node-z'"))
        central.available = False
        e = self.failureResultOf(central.lookup_node("node-a"), VssError).value
        self.assertEqual(e.code, ResultCode.CENTRAL_UNAVAILABLE)

    def test_both_centrals_provide_the_interface(self):
        self.assertTrue(verifyObject(ICentral, MemoryCentral()))
        self.assertTrue(verifyObject(ICentral, CmsLink("node-b", "tcp:127.0.0.1:9", b"s",
                                                       NodeStore(), Clock())))


class StoppedNodeTests(unittest.TestCase):
    """A node link accepted before the node stopped is dropped, not answered from the
    node's closed services: the peer then asks CMS where the node is now."""

    def test_a_request_on_a_stopped_node_closes_the_link(self):
        from twisted.internet.testing import StringTransport

        from vss.protocols import codec
        from vss.protocols.messages import Bye, Empty, MediaOpen, RouteRequest
        from vss.rgm.peers import PeerServer

        rgm = type("RGM", (), {"node_id": "node-a", "running": True})()
        server = PeerServer(rgm, b"s", Clock())
        link = server.factory().buildProtocol(None)
        transport = StringTransport()
        link.makeConnection(transport)
        link.session.state = "ready"  # logged in as a node before the stop
        link.dataReceived(codec.encode_request(MsgType.KEEPALIVE, Empty(), 1))
        (answer,) = codec.MessageDecoder().feed(transport.value())
        self.assertEqual((answer.type, answer.status), (MsgType.KEEPALIVE, 0))
        transport.clear()
        rgm.running = False
        inner = codec.encode_body(MediaOpen(device_id="cam-m", channel=0, stream=0,
                                            purpose=2, start_time=0, transport=0))
        link.dataReceived(codec.encode_request(MsgType.ROUTE_REQUEST, RouteRequest(
            origin_node="node-b", device_id="cam-m", hops=1, inner_type=MsgType.MEDIA_OPEN,
            inner_body=inner), 2))
        (bye,) = codec.MessageDecoder().feed(transport.value())
        self.assertEqual((bye.type, bye.body), (MsgType.BYE, Bye(
            reason=int(ResultCode.SESSION_CLOSED), message="the node stopped")))
        self.assertTrue(transport.disconnecting)

    @defer.inlineCallbacks
    def test_stopping_a_node_closes_the_node_links_it_accepted(self):
        """Over real TCP: the node link node-b made to node-a is closed (with a BYE)
        when node-a stops, so node-b does not keep a link to a stopped node."""
        from vss.testing.platform import start_platform, wait_until

        p = yield start_platform(self)
        node_a = yield p.start_node("node-a")
        node_b = yield p.start_node("node-b")
        yield node_b.central.lookup_node("node-a")
        peers = node_b.central.peers
        link = yield peers._link("node-a", node_b.central.node_endpoints["node-a"])
        yield wait_until(p.reactor, lambda: len(node_a.peer_server.links) == 1)
        yield p.stop_node("node-a")
        yield wait_until(p.reactor, lambda: "node-a" not in peers.links)
        self.assertTrue(link.closed)
        self.assertEqual(node_a.peer_server.links, set())
