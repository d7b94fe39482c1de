"""
Playback of footage held by another node, relayed through the CU's node (vss.recording.remote).

An in-process platform of two nodes over real loopback TCP and RTSP: footage is written
on node-a only (as the recorder writes it); a CU logged in to node-b asks node-b for
playback, gets an rtsp:// URL of node-b's SS with node-b's token, and PyAV, as the
player, decodes the recorded frames from there: at the asked time (from the keyframe at
or before it), after a seek, and after a PAUSE and a resume, all forwarded to node-a's
playback. A DVR logged in to node-a is played by a CU of node-b the same way, and so is
footage on a node home to no device (the device moved away), which node-b reaches by the
node's id (NODE_LOOKUP), also after that node came back at another address.

The unit tests drive the SS's asynchronous PLAY controller over StringTransport, the
choice of who plays and how the request gets there over fakes, and the relay's
controller over a fake RTSP client with a task.Clock.
"""

import datetime
import os
from dataclasses import replace

from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.test_dvr import decode, dvr_platform, query
from tests.test_playback import (
    FRAME_MS,
    GOP_MS,
    index_segments,
    open_playback,
    play,
    play_to_end,
    write_gop_footage,
)
from tests.test_rtsp_server import SDP, ServerTestBase, idr, pframe
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.listing import decode_recordings, encode_recordings
from vss.protocols.messages import (
    Action,
    Error,
    MediaUrl,
    MsgType,
    NodeRoute,
    PuKind,
    Purpose,
    Recordings,
    RecordSegment,
    Role,
    RouteRequest,
)
from vss.recording import remote
from vss.recording.catalogue import Segment
from vss.recording.remote import CONTROL_TIMEOUT, RelayedPlayback
from vss.rgm.localcentral import MemoryCentral
from vss.rgm.peers import serve_route
from vss.rtsp.client import RTSPError
from vss.rtsp.server import ControlError
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.rawrtsp import RawRTSP

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None


class Controller:
    """A controller answering PLAY later (a Deferred), as a relayed playback does."""

    def __init__(self):
        self.plays = []
        self.pauses = 0

    def play(self, session, header, scale=None):
        d = defer.Deferred()
        self.plays.append((header, d) if scale is None else (header, scale, d))
        return d

    def pause(self, session):
        self.pauses += 1


class AsyncControllerTests(ServerTestBase):
    def viewer(self, path="/live/cam1/pb-0123456789abcdef"):
        self.source = self.factory.attach_source(path, SDP)
        self.ctl = self.factory.controllers[path] = Controller()
        token = self.issuer.issue(path, ["play"])
        url = f"rtsp://127.0.0.1:554{path}?token={token}"
        c = self.conn()
        resp = c.request("SETUP", f"rtsp://127.0.0.1:554{path}/streamid=0?token={token}",
                         [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        self.assertEqual(resp.status, 200)
        return c, url, resp.headers["Session"].split(";")[0]

    def test_a_scale_goes_to_the_controller_and_comes_back_in_the_reply(self):
        c, url, sid = self.viewer()
        c.request("PLAY", url, [("Session", sid), ("Scale", " 2 ")])
        [(header, scale, d)] = self.ctl.plays
        self.assertEqual((header, scale), (None, "2"))
        d.callback("npt=0.000-")
        [resp] = c.read()
        self.assertEqual((resp.status, resp.headers["Scale"]), (200, "2"))
        # refused (456): said to the viewer, its session as it was
        c.request("PLAY", url, [("Session", sid), ("Scale", "-1")])
        self.ctl.plays[-1][2].errback(ControlError(456, "Scale Not Supported"))
        [resp] = c.read()
        self.assertEqual(resp.status, 456)

    def test_live_video_takes_no_scale(self):
        self.factory.attach_source("/live/cam1/main", SDP)
        token = self.issuer.issue("/live/cam1/main", ["play"])
        url = f"rtsp://127.0.0.1:554/live/cam1/main?token={token}"
        c = self.conn()
        resp = c.request("SETUP", f"rtsp://127.0.0.1:554/live/cam1/main/streamid=0?token={token}",
                         [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        sid = resp.headers["Session"].split(";")[0]
        resp = c.request("PLAY", url, [("Session", sid), ("Scale", "2")])
        self.assertEqual(resp.status, 200)
        self.assertNotIn("Scale", resp.headers)

    def test_the_reply_and_the_reader_wait_for_the_controller(self):
        c, url, sid = self.viewer()
        self.assertIsNone(c.request("PLAY", url, [("Session", sid), ("Range", "npt=7-")]))
        [(header, d)] = self.ctl.plays
        self.assertEqual(header, "npt=7-")
        self.source.feed(0, False, idr(1, 1000))  # before the answer: not for this viewer
        self.source.flush()
        self.assertEqual(c.read(), [])
        self.assertEqual(self.source.readers, [])
        d.callback("npt=6.000-")
        [resp] = c.read()
        self.assertEqual((resp.status, resp.headers["Range"]), (200, "npt=6.000-"))
        self.source.feed(0, False, idr(2, 4000))
        self.source.feed(0, False, pframe(3, 7600))
        self.source.flush()
        c.read()
        self.assertEqual([f.data[2:4] for f in c.frames], [b"\x00\x02", b"\x00\x03"])
        # a PAUSE goes to the controller at once and stops the reader
        resp = c.request("PAUSE", url, [("Session", sid)])
        self.assertEqual((resp.status, self.ctl.pauses), (200, 1))
        self.assertEqual(self.source.readers, [])

    def test_a_failed_controller_is_answered_502_and_nothing_plays(self):
        c, url, sid = self.viewer()
        c.request("PLAY", url, [("Session", sid)])
        [(_, d)] = self.ctl.plays
        d.errback(RuntimeError("origin gone"))
        [resp] = c.read()
        self.assertEqual(resp.status, 502)
        self.assertEqual(self.source.readers, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_refused_range_is_answered_457_and_the_session_stays(self):
        c, url, sid = self.viewer()
        c.request("PLAY", url, [("Session", sid), ("Range", "npt=x-")])
        [(_, d)] = self.ctl.plays
        d.errback(ControlError(457))
        [resp] = c.read()
        self.assertEqual((resp.status, resp.reason), (457, "Invalid Range"))
        self.assertEqual(self.source.readers, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        c.request("PLAY", url, [("Session", sid)])  # the session is still there
        self.ctl.plays[-1][1].callback("npt=0.000-")
        [resp] = c.read()
        self.assertEqual(resp.status, 200)
        self.assertEqual(len(self.source.readers), 1)

    def test_a_controller_raising_a_refusal_is_answered_with_it(self):
        c, url, sid = self.viewer()

        def refuse(session, header):
            raise ControlError(457, "No Footage There")

        self.ctl.play = refuse
        resp = c.request("PLAY", url, [("Session", sid), ("Range", "npt=99-")])
        self.assertEqual((resp.status, resp.reason), (457, "No Footage There"))
        self.assertEqual(self.source.readers, [])

    def test_a_viewer_gone_before_the_answer_gets_nothing(self):
        c, url, sid = self.viewer()
        c.request("PLAY", url, [("Session", sid)])
        [(_, d)] = self.ctl.plays
        c.request("TEARDOWN", url, [("Session", sid)])
        c.read()
        d.callback("npt=0.000-")
        self.assertEqual(c.read(), [])
        self.assertEqual(self.source.readers, [])


# -- the choice of who plays, over fakes ------------------------------------------------

T = 1_700_000_000_000


class FakeCatalogue:
    def __init__(self, spans):
        self.spans = spans  # [(start, end)] of this node's footage

    def list(self, device, stream, from_ms, to_ms):
        return defer.succeed({"segments": [Segment(device, 0, stream, a, b, 1, "x", [])
                                           for a, b in self.spans
                                           if b > from_ms and a < to_ms]})


class FakePlayback:
    def __init__(self, spans):
        self.catalogue = FakeCatalogue(spans)
        self.opened = []

    def open(self, body):
        self.opened.append(body.start_time)
        if not any(b > body.start_time for _, b in self.catalogue.spans):
            return defer.fail(VssError(ResultCode.NOT_FOUND, f"no recording of "
                                       f"{body.device_id}"))
        return defer.succeed(MediaUrl(url="rtsp://here/pb", session_id="s", expires=0))


class FakePeers:
    def __init__(self, answer):
        self.answer = answer
        self.routed = []
        self.refusing = set()  # endpoints where no node listens any more

    def route(self, node, endpoint, device_id, inner_type, inner_body):
        self.routed.append((node, endpoint, device_id))
        if endpoint in self.refusing:
            return defer.fail(ConnectionRefusedError(endpoint))
        return self.answer()


class ScriptedCentral(MemoryCentral):
    """A ``MemoryCentral`` whose catalogue across nodes, routes and node lookups answer
    what a test scripts (as ``CmsLink`` would for other nodes)."""

    def __init__(self):
        super().__init__()
        self.listing = Recordings(segments=[], gaps=[], missing=[], exports=[],
                                  truncated=False)
        self.query_error = None
        self.queries = []
        self.routed = []
        self.node_endpoints = {}
        self.nodes = {}  # what CMS answers NODE_LOOKUP with: node id -> NodeRoute
        self.lookups = []
        self.answer = lambda: defer.succeed(
            (0, codec.encode_body(MediaUrl(url="rtsp://there/pb", session_id="x",
                                           expires=0))))
        self.peers = FakePeers(lambda: self.answer())

    def query_recordings(self, body, timeout=None):
        self.queries.append((body.from_time, body.to_time))
        if self.query_error is not None:
            return defer.fail(self.query_error)
        return defer.succeed(codec.Frame(1, codec.FLAG_RESPONSE, MsgType.RECORD_QUERY, 0, 1,
                                         encode_recordings(self.listing)))

    def route(self, device_id, inner_type, inner_body):
        self.routed.append(device_id)
        return self.answer()

    def lookup_node(self, node_id):
        """As ``CmsLink.lookup_node``: the signalling address is kept while up."""
        self.lookups.append(node_id)
        if self.query_error is not None:
            return defer.fail(self.query_error)
        found = self.nodes.get(node_id)
        if found is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_NODE, f"no node {node_id!r}"))
        if found.node_up:
            self.node_endpoints[node_id] = found.signalling
        else:
            self.node_endpoints.pop(node_id, None)
        return defer.succeed(found)


def node_route(node_id, signalling, up=True):
    return NodeRoute(node_id=node_id, signalling=signalling if up else "",
                     media="rtsp://h" if up else "", node_up=up)


class Record:
    def __init__(self, device_id, home_node, kind=PuKind.IPC):
        self.device_id = device_id
        self.home_node = home_node
        self.kind = kind


class FakeStore:
    def __init__(self, *records):
        self.records = {r.device_id: r for r in records}

    def get_device(self, device_id):
        return self.records.get(device_id)

    def devices(self):
        return list(self.records.values())


class FakeRGM:
    def __init__(self, central, store):
        self.node_id = "node-b"
        self.central = central
        self.store = store
        self.pu_links = {}


class FakeCDN:
    def __init__(self, spans=(), records=()):
        self.central = ScriptedCentral()
        self.store = FakeStore(Record("cam1", "node-a"), Record("cam2", "node-b"),
                               Record("cam3", "node-c"),
                               Record("dvr1", "node-a", PuKind.DVR), *records)
        self.rgm = FakeRGM(self.central, self.store)
        self.playback = FakePlayback(list(spans))


def seg(start, end, node):
    return RecordSegment(start=start, end=end, bytes=1, node_id=node)


class HolderTests(unittest.TestCase):
    """``remote.media_open`` decides who plays: this node, or which node, and how the
    MEDIA_OPEN gets there (the relay itself is replaced by a recorder)."""

    def setUp(self):
        self.remote = remote
        self.relayed = []
        self.patch(remote, "relay", lambda cdn, body, url, node: self._relayed(
            "footage", url, node))
        self.patch(remote, "relay_dvr", lambda cdn, body, url, node: self._relayed(
            "dvr", url, node))

    def _relayed(self, kind, url, node):
        self.relayed.append((kind, url.url, node))
        return defer.succeed(MediaUrl(url="rtsp://here/relayed", session_id="r", expires=0))

    def open(self, cdn, device="cam1", at=T):
        return self.successResultOf(self.remote.media_open(cdn, open_playback(device, at)))

    def refused(self, cdn, device="cam1", at=T):
        return self.failureResultOf(self.remote.media_open(cdn, open_playback(device, at)),
                                    VssError).value

    def test_footage_here_is_played_here_without_asking_other_nodes(self):
        cdn = FakeCDN(spans=[(T - 1000, T + 1000)])
        self.assertEqual(self.open(cdn).url, "rtsp://here/pb")
        self.assertEqual((cdn.central.queries, self.relayed), ([], []))

    def test_footage_of_the_home_node_is_routed_by_device_and_relayed(self):
        cdn = FakeCDN()
        cdn.central.listing.segments[:] = [seg(T - 500, T + 3500, "node-a")]
        self.assertEqual(self.open(cdn).url, "rtsp://here/relayed")
        self.assertEqual(cdn.central.queries, [(T, T + self.remote.WINDOW_MS)])
        self.assertEqual(cdn.central.routed, ["cam1"])
        self.assertEqual(self.relayed, [("footage", "rtsp://there/pb", "node-a")])

    def test_a_node_not_home_is_reached_directly_its_address_asked_of_cms_once(self):
        cdn = FakeCDN()
        cdn.central.nodes["node-a"] = node_route("node-a", "tcp:127.0.0.1:9")
        cdn.central.listing.segments[:] = [seg(T + 100, T + 4100, "node-a")]
        self.open(cdn, "cam3")  # homed on node-c, footage on node-a: NODE_LOOKUP, then direct
        self.assertEqual(cdn.central.lookups, ["node-a"])
        self.assertEqual(cdn.central.peers.routed, [("node-a", "tcp:127.0.0.1:9", "cam3")])
        self.open(cdn, "cam3")  # the address is kept: not asked again
        self.assertEqual(cdn.central.lookups, ["node-a"])
        self.assertEqual(cdn.central.peers.routed, [("node-a", "tcp:127.0.0.1:9", "cam3")] * 2)
        self.assertEqual(cdn.central.routed, [])  # never through CMS by way of a device
        self.assertEqual([r[2] for r in self.relayed], ["node-a", "node-a"])

    def test_a_holder_cms_does_not_know_or_reports_down_is_named(self):
        cdn = FakeCDN()
        cdn.central.listing.segments[:] = [seg(T + 100, T + 4100, "node-z")]
        e = self.refused(cdn, "cam3")
        self.assertEqual(e.code, ResultCode.UNKNOWN_NODE)
        self.assertEqual(e.message, "node node-z holds the recording of cam3 but CMS does "
                                    "not know it")
        cdn.central.nodes["node-z"] = node_route("node-z", "", up=False)
        e = self.refused(cdn, "cam3")
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertEqual(e.message, "node node-z holds the recording of cam3 but cannot be "
                                    "reached: node node-z is down")
        cdn.central.query_error = VssError(ResultCode.CENTRAL_UNAVAILABLE, "no link to CMS")
        cdn.central.listing = None  # not asked: the lookup fails before
        e = self.failureResultOf(self.remote.to_node(cdn.central, "node-z", "cam3", b""),
                                 VssError).value
        self.assertEqual(e.code, ResultCode.CENTRAL_UNAVAILABLE)
        self.assertEqual((cdn.central.peers.routed, self.relayed), ([], []))

    def test_a_kept_address_that_does_not_answer_is_asked_again_once(self):
        cdn = FakeCDN()
        peers = cdn.central.peers
        cdn.central.listing.segments[:] = [seg(T + 100, T + 4100, "node-a")]
        # node-a restarted on another port: the kept address refuses, CMS knows the new
        cdn.central.node_endpoints["node-a"] = "tcp:127.0.0.1:9"
        peers.refusing.add("tcp:127.0.0.1:9")
        cdn.central.nodes["node-a"] = node_route("node-a", "tcp:127.0.0.1:10")
        self.open(cdn, "cam3")
        self.assertEqual([r[1] for r in peers.routed], ["tcp:127.0.0.1:9", "tcp:127.0.0.1:10"])
        self.assertEqual(cdn.central.node_endpoints["node-a"], "tcp:127.0.0.1:10")
        self.assertEqual(len(self.relayed), 1)
        # the same address again: one more try would not help, the node is named
        peers.refusing.add("tcp:127.0.0.1:10")
        e = self.refused(cdn, "cam3")
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node node-a holds the recording of cam3 but cannot be reached", e.message)
        self.assertIn("tcp:127.0.0.1:10", e.message)
        self.assertEqual([r[1] for r in peers.routed][2:], ["tcp:127.0.0.1:10"])
        self.assertEqual(cdn.central.lookups, ["node-a", "node-a"])
        # CMS cannot be asked: the error is still the node's own
        cdn.central.query_error = VssError(ResultCode.CENTRAL_UNAVAILABLE, "no link to CMS")
        e = self.failureResultOf(self.remote.to_node(cdn.central, "node-a", "cam3", b""),
                                 ConnectionRefusedError).value
        self.assertIn("tcp:127.0.0.1:10", str(e))
        cdn.central.query_error = None
        self.assertEqual(cdn.central.lookups, ["node-a", "node-a", "node-a"])
        # an answer of the node itself (not about its address) is not retried
        peers.refusing.clear()
        cdn.central.answer = lambda: defer.fail(VssError(ResultCode.UNKNOWN_DEVICE, "no"))
        self.assertEqual(self.refused(cdn, "cam3").code, ResultCode.UNKNOWN_DEVICE)
        self.assertEqual(cdn.central.lookups, ["node-a", "node-a", "node-a"])

    def test_the_earliest_footage_wins_and_this_node_when_it_holds_it_too(self):
        cdn = FakeCDN(spans=[(T + 2000, T + 6000)])
        cdn.central.listing.segments[:] = [seg(T + 2000, T + 6000, "node-b"),
                                           seg(T + 2000, T + 6000, "node-a")]
        self.assertEqual(self.open(cdn).url, "rtsp://here/pb")
        self.assertEqual(self.relayed, [])
        cdn.central.listing.segments[:] = [seg(T - 4000, T, "node-c"),  # ends at T
                                           seg(T + 1000, T + 5000, "node-a"),
                                           seg(T + 2000, T + 6000, "node-b")]
        self.open(cdn)
        self.assertEqual(self.relayed, [("footage", "rtsp://there/pb", "node-a")])

    def test_nothing_anywhere_is_not_found_and_a_silent_node_is_named(self):
        cdn = FakeCDN()
        e = self.refused(cdn)
        self.assertEqual(e.code, ResultCode.NOT_FOUND)
        self.assertIn("cam1", e.message)
        cdn.central.listing.missing[:] = ["node-a"]
        e = self.refused(cdn)
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node-a", e.message)

    def test_a_holder_that_cannot_be_reached_or_refuses_is_named(self):
        cdn = FakeCDN()
        cdn.central.listing.segments[:] = [seg(T, T + 4000, "node-a")]
        cdn.central.answer = lambda: defer.fail(VssError(ResultCode.HOME_NODE_DOWN,
                                                         "node node-a is down"))
        e = self.refused(cdn)
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node-a", e.message)
        cdn.central.node_endpoints["node-a"] = "tcp:127.0.0.1:9"
        cdn.central.nodes["node-a"] = node_route("node-a", "tcp:127.0.0.1:9")
        cdn.central.answer = lambda: defer.fail(ConnectionRefusedError("refused"))
        e = self.refused(cdn, "cam3")  # straight to the node: the link cannot be made
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node-a", e.message)
        cdn.central.answer = lambda: defer.succeed(
            (int(ResultCode.NOT_FOUND), codec.encode_body(Error(message="gone by now"))))
        e = self.refused(cdn)
        self.assertEqual(e.code, ResultCode.NOT_FOUND)
        self.assertEqual(e.message, "node node-a: gone by now")
        self.assertEqual(self.relayed, [])

    def test_a_dvr_footage_goes_to_its_home_node(self):
        cdn = FakeCDN()
        cdn.central.listing.segments[:] = [seg(T - 60_000, T + 60_000, "dvr:dvr1")]
        self.open(cdn, "dvr1")
        self.assertEqual(cdn.central.routed, ["dvr1"])
        self.assertEqual(self.relayed, [("dvr", "rtsp://there/pb", "node-a")])

    def test_without_cms_this_node_plays_what_it_has(self):
        cdn = FakeCDN(spans=[(T + 5000, T + 9000)])
        cdn.central.query_error = VssError(ResultCode.CENTRAL_UNAVAILABLE, "no link")
        self.assertEqual(self.open(cdn).url, "rtsp://here/pb")
        self.assertEqual(cdn.playback.opened, [T])


class ServeRouteTests(unittest.TestCase):
    """A routed MEDIA_OPEN on a node that is not the device's home: served for a
    playback (the node holds the footage), refused for live video."""

    def setUp(self):
        self.asked = []
        store = FakeStore(Record("cam1", "node-a"), Record("cam2", "node-b"))
        self.rgm = FakeRGM(None, store)
        self.rgm.cdn = self

    def routed_media_open(self, body):
        self.asked.append((body.device_id, body.purpose))
        return defer.succeed(MediaUrl(url="rtsp://b/pb", session_id="s", expires=0))

    def serve(self, via, body):
        return self.successResultOf(serve_route(self.rgm, RouteRequest(
            origin_node="node-c", device_id=via, hops=1, inner_type=MsgType.MEDIA_OPEN,
            inner_body=codec.encode_body(body))))

    def test_playback_of_a_device_homed_elsewhere_is_served_live_is_not(self):
        answer = self.serve("cam1", open_playback("cam1", T))
        self.assertEqual(answer.inner_status, 0)
        answer = self.serve("cam2", open_playback("cam1", T))  # through a device homed here
        self.assertEqual(answer.inner_status, 0)
        self.assertEqual(self.asked, [("cam1", Purpose.PLAYBACK)] * 2)
        live = replace(open_playback("cam1", 0), purpose=Purpose.LIVE)
        answer = self.serve("cam1", live)
        self.assertEqual(answer.inner_status, ResultCode.UNKNOWN_DEVICE)
        answer = self.serve("cam9", open_playback("cam9", T))  # unknown here
        self.assertEqual(answer.inner_status, ResultCode.UNKNOWN_DEVICE)
        self.assertEqual(len(self.asked), 2)


class FakeProto:
    def __init__(self):
        self.finished = defer.Deferred()
        self.sent = []
        self.torn = False

    def play(self, range=None, scale=None):
        self.sent.append(("PLAY", range) if scale is None else ("PLAY", range, scale))
        d = self.answer = defer.Deferred()
        return d

    def pause(self):
        self.sent.append(("PAUSE", None))
        return defer.succeed(None)

    def teardown(self):
        self.torn = True


class FakeSession:
    def __init__(self, path, state):
        self.path = path
        self.state = state


class RelayedPlaybackTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.rtsp = type("SS", (), {})()
        self.rtsp.sessions = {}
        self.rtsp.controllers = {}
        self.cdn = type("CDN", (), {})()
        self.cdn.rtsp, self.cdn.clock = self.rtsp, self.clock
        self.proto = FakeProto()
        self.path = "/live/cam1/pb-00"
        self.rp = RelayedPlayback(self.cdn, self.path, "node-a", self.proto)
        self.rtsp.controllers[self.path] = self.rp

    def test_play_and_pause_go_upstream_and_the_origin_range_comes_back(self):
        viewer = self.rtsp.sessions["v"] = FakeSession(self.path, "ready")
        got = []
        self.rp.play(viewer, "npt=12-").addCallback(got.append)
        self.assertEqual(self.proto.sent, [("PLAY", "npt=12-")])
        self.proto.answer.callback("npt=10.000-")
        self.assertEqual(got, ["npt=10.000-"])
        self.rp.play(viewer, None, "2").addCallback(got.append)  # a speed goes upstream
        self.assertEqual(self.proto.sent[-1], ("PLAY", None, "2"))
        self.proto.answer.callback("npt=10.000-")
        self.proto.sent.pop()
        viewer.state = "ready"  # the SS stopped its reader before calling pause
        self.rp.pause(viewer)
        self.assertEqual(self.proto.sent[-1], ("PAUSE", None))
        # another viewer still plays: the origin goes on
        self.rtsp.sessions["w"] = FakeSession(self.path, "playing")
        self.assertIsNone(self.rp.pause(viewer))
        self.assertEqual(len(self.proto.sent), 2)
        self.assertFalse(self.rp.may_stop())
        self.rtsp.sessions.clear()
        self.assertTrue(self.rp.may_stop())
        self.rp.close()
        self.assertTrue(self.proto.torn)
        self.assertEqual(self.rtsp.controllers, {})

    def test_an_origin_that_does_not_answer_fails_the_play(self):
        failures = []
        self.rp.play(FakeSession(self.path, "ready"), None).addErrback(failures.append)
        self.clock.advance(CONTROL_TIMEOUT)
        self.assertEqual(len(failures), 1)
        self.proto.answer.callback("npt=0.000-")  # too late: dropped

    def test_the_origin_refusing_the_range_is_passed_on_other_errors_are_not(self):
        failures = []
        self.rp.play(FakeSession(self.path, "ready"), "npt=x-").addErrback(failures.append)
        self.proto.answer.errback(RTSPError("PLAY", 457, "Invalid Range"))
        self.assertTrue(failures[0].check(ControlError))
        self.assertEqual(failures[0].value.status, 457)
        self.rp.play(FakeSession(self.path, "ready"), None).addErrback(failures.append)
        self.proto.answer.errback(RTSPError("PLAY", 500, "Internal Server Error"))
        self.assertTrue(failures[1].check(RTSPError))

    def test_the_pull_ending_removes_the_controller(self):
        self.proto.finished.callback(None)
        self.assertEqual(self.rtsp.controllers, {})
        self.assertIsNone(self.rp.play(FakeSession(self.path, "ready"), "npt=0-"))


def clock_range(ms):
    at = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return f"clock={at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-"


@defer.inlineCallbacks
def two_node_platform(testcase, devices, users=("alice",)):
    """node-a and node-b of a platform holding ``devices`` ((id, name, home node,
    secret)), all viewable by alice, and ``users`` (password NAME-pw); fires with it."""
    if av is None:
        raise unittest.SkipTest("PyAV is not installed")
    p = yield start_platform(testcase)
    store, change = p.cms.store, p.change
    for device, name, home, secret in devices:
        yield change(store.upsert_device(device, name, 1, 1, home, verifier(secret)))
    for user in users:
        yield change(store.upsert_user(user, verifier(f"{user}-pw"), []))
    for device, *_ in devices:
        yield change(store.set_grant("user:alice", device, int(Action.VIEW)))
    for node_id in ("node-a", "node-b"):
        yield p.start_node(node_id)
    return p


@defer.inlineCallbacks
def add_footage(node, device, start):
    """Two 4 s segments of ``device`` from ``start`` (ms) in ``node``'s catalogue; fires
    with (segments, {frame hash: wall ms})."""
    data = node.settings.data_dir
    segments = yield threads.deferToThread(write_gop_footage, data, device, start)
    for seg in segments:
        yield node.recorder.catalogue.add(seg)
    table = yield threads.deferToThread(
        index_segments, [(os.path.join(data, s.path), s.start_ms) for s in segments])
    return segments, table


@defer.inlineCallbacks
def playback_refused(cu, device, at):
    """Fires with the VssError that a MEDIA_OPEN of ``device``'s footage at ``at`` (ms)
    is refused with."""
    try:
        yield cu.request(MsgType.MEDIA_OPEN, open_playback(device, at), timeout=30)
    except VssError as e:
        return e
    raise AssertionError(f"the playback of {device} at {at} was not refused")


def assert_on_node_b(testcase, p, url, device, name="pb-"):
    """``url`` plays ``device`` from node-b's SS, on a playback path, with a token."""
    port = p.port("node-b", "rtsp")
    testcase.assertRegex(
        url, rf"^rtsp://127\.0\.0\.1:{port}/live/{device}/{name}[0-9a-f]{{16}}\?token=")


class RemotePlaybackTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        # cam-a is homed on node-a, cam-b on node-b; footage of both is on node-a only
        self.p = yield two_node_platform(
            self, [("cam-a", "Gate A", "node-a", "a-s"), ("cam-b", "Gate B", "node-b", "b-s")],
            users=("alice", "bob"))
        self.a, self.b = self.p.nodes["node-a"], self.p.nodes["node-b"]
        # node-a recorded cam-b: it holds cam-b's record (a node that recorded a device
        # was its home, and follows it since: docs/consistency.md)
        store = self.p.cms.store
        yield self.p.change(store.follow_devices("node-a", ["cam-b"]))
        yield wait_until(reactor, lambda: self.a.store.get_device("cam-b") is not None,
                         what="node-a to hold cam-b")
        self.start = (int(reactor.seconds()) - 900) * 1000

    def footage(self, device):
        """Two 4 s segments of ``device`` in node-a's catalogue; {frame hash: wall ms}."""
        return add_footage(self.a, device, self.start)

    def assert_on_node_b(self, url, device):
        assert_on_node_b(self, self.p, url, device)

    @defer.inlineCallbacks
    def test_footage_of_node_a_plays_seeks_and_pauses_through_node_b(self):
        segments, table = yield self.footage("cam-a")
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        asked = self.start + 3500  # 1.5 s into the second GOP of the first segment
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-a", asked),
                                   timeout=30)).body.url
        self.assert_on_node_b(url, "cam-a")
        self.assertEqual(self.b.cdn.counters["relayed_playbacks"], 1)
        self.assertEqual(self.a.cdn.playback.counters["opened"], 1)
        self.assertFalse(self.b.cdn.playback.playbacks)  # node-b plays none of its own

        # PyAV from the keyframe at or before the asked time, then a seek (PAUSE and
        # PLAY with Range npt) into the first GOP of the second segment
        target = segments[1].start_ms + 1200
        before, after = yield threads.deferToThread(play, url, 5, (target - asked) / 1000)
        self.assertEqual([table.get(k) for k in before],
                         [self.start + GOP_MS + FRAME_MS * i for i in range(5)])
        self.assertEqual([table.get(k) for k, _ in after],
                         [segments[1].start_ms + FRAME_MS * i for i in range(5)])
        # the seek was done by node-a's playback (counted when it ends, with the footage)
        service = self.a.cdn.playback
        self.assertGreaterEqual(service.counters["seeks"] + sum(
            pb.seeks for pb in service.playbacks.values()), 1)

        # a raw client: PLAY with a clock Range, PAUSE, PLAY resumes where it paused
        url2 = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-a", self.start),
                                    timeout=30)).body.url
        self.assert_on_node_b(url2, "cam-a")

        def raw(url):
            c = RawRTSP(url)
            try:
                c.start()
                status, headers, _ = c.request("PLAY", url, [("Range", clock_range(
                    self.start + 4500))])
                played = c.packets(40)
                status2, _, _ = c.request("PAUSE", url)
                status3, headers3, _ = c.request("PLAY", url)
                resumed = c.packets(40)
                return status, headers, played, status2, status3, headers3, resumed
            finally:
                c.close()

        status, headers, played, status2, status3, headers3, resumed = \
            yield threads.deferToThread(raw, url2)
        self.assertEqual((status, status2, status3), (200, 200, 200))
        # the origin's Range: the keyframe at or before 4.5 s after the origin, at 4 s
        self.assertEqual(headers["range"], "npt=4.000-")
        resumed_at = float(headers3["range"][4:].rstrip("-"))
        self.assertGreaterEqual(resumed_at, 4.0)
        self.assertLess(resumed_at, 8.0)
        self.assertEqual(resumed_at * 1000 % GOP_MS, 0)  # a keyframe of the footage
        # the resumed stream goes on in the same RTP timeline, forward
        self.assertGreater((resumed[0] - played[-1]) & 0xFFFFFFFF, 0)
        self.assertLess((resumed[0] - played[-1]) & 0xFFFFFFFF, 90000)
        relayed = [ctl for path, ctl in self.b.rtsp.controllers.items()
                   if url2.split("?")[0].endswith(path)]
        self.assertEqual([(r.plays, r.pauses) for r in relayed], [(2, 1)])

        # no viewer left: node-b tears the relays down, node-a's playbacks end after it
        self.b.cdn.linger = self.a.cdn.linger = 0.5
        for path in [p for p in self.b.rtsp.sources if "/pb-" in p]:
            self.b.cdn.source_idle(self.b.rtsp.sources[path])
        yield wait_until(reactor, lambda: not [p for p in self.b.rtsp.sources if "/pb-" in p],
                         timeout=20, what="node-b's relays to end")
        self.assertFalse(self.b.rtsp.controllers)
        yield wait_until(reactor, lambda: not self.a.cdn.playback.playbacks, timeout=30,
                         what="node-a's playbacks to end")

    @defer.inlineCallbacks
    def test_stopping_the_relaying_node_tears_its_relays_down_at_the_origin(self):
        yield self.footage("cam-a")
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-a", self.start),
                                   timeout=30)).body.url
        self.assert_on_node_b(url, "cam-a")
        # node-a's SS holds the pull's RTSP session (set up, not playing yet)
        yield wait_until(reactor, lambda: self.a.rtsp.sessions, timeout=10,
                         what="node-b's pull to set up on node-a")
        alice.link.abort()
        yield self.p.stop_node("node-b")
        yield wait_until(reactor, lambda: not self.a.rtsp.sessions, timeout=10,
                         what="the pull's session on node-a to end")

    @defer.inlineCallbacks
    def test_a_device_homed_on_b_recorded_on_a_plays_on_b_and_errors_name_the_node(self):
        segments, table = yield self.footage("cam-b")
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        bob = yield self.p.login("node-b", Role.CU, "bob", "bob-pw")
        asked = self.start + 1000
        e = yield playback_refused(bob, "cam-b", asked)  # the grant is checked on node-b
        self.assertEqual(e.code, ResultCode.FORBIDDEN)
        # node-a is not cam-b's home: node-b asks CMS for node-a's address the first
        # time (NODE_LOOKUP), keeps it, and goes straight over a node link both times
        for _ in range(2):
            url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", asked),
                                       timeout=30)).body.url
            self.assert_on_node_b(url, "cam-b")
            keys, _ = yield threads.deferToThread(play, url, 3)
            self.assertEqual([table.get(k) for k in keys],
                             [self.start + FRAME_MS * i for i in range(3)])
            yield wait_until(reactor, lambda: "node-a" in self.b.central.node_endpoints,
                             timeout=10, what="node-b to learn node-a's address")
        self.assertEqual(self.b.cdn.counters["relayed_playbacks"], 2)
        self.assertIn("node-a", self.b.central.peers.links)
        self.assertEqual(self.b.central.counters["node_lookups"], 1)

        # to the end of the footage: node-a ends its stream, node-b's relay ends with it
        near_end = segments[-1].end_ms - 1500
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-b", near_end),
                                   timeout=30)).body.url
        path = "/" + url.split("?")[0].split("/", 3)[3]
        frames = yield threads.deferToThread(play_to_end, url)
        walls = [table.get(k) for k, _ in frames]
        self.assertEqual(walls[0], segments[-1].start_ms + GOP_MS)
        self.assertEqual(walls, [walls[0] + FRAME_MS * i for i in range(len(walls))])
        self.assertEqual(walls[-1], max(table.values()))
        yield wait_until(reactor, lambda: path not in self.b.rtsp.sources, timeout=20,
                         what="node-b's relay to end with the footage")
        self.assertNotIn(path, self.b.rtsp.controllers)

        # no footage anywhere at or after that time: NOT_FOUND, with a message
        e = yield playback_refused(alice, "cam-b", segments[-1].end_ms + 5000)
        self.assertEqual(e.code, ResultCode.NOT_FOUND)
        self.assertIn("cam-b", e.message)

        # the node holding the footage is down: said so, naming it
        yield self.p.stop_node("node-a")
        e = yield playback_refused(alice, "cam-b", asked)
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node-a", e.message)


class ArchiveNodeTests(unittest.TestCase):
    """The node holding the footage is home to no device: cam-m recorded on node-a, then
    moved to node-b, its old footage staying on node-a. A CU of node-b plays it: node-b
    asks CMS for node-a's address by its id (NODE_LOOKUP) and routes the MEDIA_OPEN
    straight to node-a, and asks again when node-a comes back at another address."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield two_node_platform(self, [("cam-m", "Moved", "node-a", "m-s")])
        self.a, self.b = self.p.nodes["node-a"], self.p.nodes["node-b"]
        self.start = (int(reactor.seconds()) - 900) * 1000
        # recorded while cam-m was homed on node-a
        _, self.table = yield add_footage(self.a, "cam-m", self.start)
        changes = yield self.p.change(
            self.p.cms.store.update_device_fields("cam-m", home_node="node-b"))
        for node in (self.a, self.b):
            yield wait_until(reactor, lambda n=node: n.central.applier.applied_seq
                             >= changes[-1].seq, what="the move to reach the nodes")

    @defer.inlineCallbacks
    def played(self, alice, asked):
        """MEDIA_OPEN on node-b, then PyAV on its URL: the wall times of 3 frames."""
        url = (yield alice.request(MsgType.MEDIA_OPEN, open_playback("cam-m", asked),
                                   timeout=30)).body.url
        assert_on_node_b(self, self.p, url, "cam-m")
        keys, _ = yield threads.deferToThread(play, url, 3)
        return [self.table.get(k) for k in keys]

    @defer.inlineCallbacks
    def test_footage_of_a_node_home_to_no_device_plays_on_the_other_node(self):
        for node in (self.a, self.b):  # no device is homed on node-a any more
            self.assertEqual([d.device_id for d in node.store.devices()
                              if d.home_node == "node-a"], [])
        self.assertNotIn("node-a", self.b.central.node_endpoints)
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        asked = self.start + 2000  # the second keyframe of the first segment
        expected = [asked + FRAME_MS * i for i in range(3)]
        self.assertEqual((yield self.played(alice, asked)), expected)
        central, cms = self.b.central, self.p.cms.cms
        advertised = self.a.advertise()[0]
        self.assertEqual(central.node_endpoints["node-a"], advertised)
        self.assertEqual(central.counters["node_lookups"], 1)
        self.assertIn("node-a", central.peers.links)  # straight to node-a
        self.assertEqual(cms.counters["routed"], 0)  # no ROUTE_REQUEST through CMS
        self.assertEqual(self.a.cdn.playback.counters["opened"], 1)
        self.assertEqual(self.b.cdn.counters["relayed_playbacks"], 1)

        # the address is kept: the next playback is not asked of CMS again
        self.assertEqual((yield self.played(alice, asked)), expected)
        self.assertEqual(central.counters["node_lookups"], 1)

        # node-a restarts at another address (its catalogue kept): node-b's kept address
        # does not answer, CMS gives the new one, and the footage plays from there
        yield self.p.stop_node("node-a")
        self.a = yield self.p.start_node("node-a")
        moved = self.a.advertise()[0]
        self.assertNotEqual(moved, advertised)
        self.assertEqual((yield self.played(alice, asked)), expected)
        self.assertEqual(central.node_endpoints["node-a"], moved)
        self.assertEqual(central.counters["node_lookups"], 2)
        self.assertEqual(cms.counters["routed"], 0)
        self.assertEqual(self.a.cdn.playback.counters["opened"], 1)

        # node-a down: the playback is refused naming it
        yield self.p.stop_node("node-a")
        e = yield playback_refused(alice, "cam-m", asked)
        self.assertEqual(e.code, ResultCode.HOME_NODE_DOWN)
        self.assertIn("node-a", e.message)


class RemoteDvrTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield dvr_platform(self, "node-a", ["node-a", "node-b"])
        self.a, self.b = self.p.nodes["node-a"], self.p.nodes["node-b"]

    @defer.inlineCallbacks
    def test_a_dvr_homed_on_a_plays_back_to_a_cu_of_b(self):
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        now = int(reactor.seconds() * 1000)
        frame = yield alice.link.request_raw(
            MsgType.RECORD_QUERY, codec.encode_body(query("dvr1", now - 3 * 3600_000, now)),
            10)
        listing = decode_recordings(frame)
        self.assertEqual({s.node_id for s in listing.segments}, {"dvr:dvr1"})
        seg = next(s for s in listing.segments if s.start >= now - 2 * 3600_000)
        url = (yield alice.request(MsgType.MEDIA_OPEN,
                                   open_playback("dvr1", (seg.start + seg.end) // 2),
                                   timeout=30)).body.url
        assert_on_node_b(self, self.p, url, "dvr1", name="pb-dvr-")
        frames = yield threads.deferToThread(decode, url, 10)
        self.assertEqual(frames, [(640, 360)] * 10)
        self.assertEqual(self.a.cdn.counters["dvr_playbacks"], 1)
        self.assertEqual(self.b.cdn.counters["relayed_dvr_playbacks"], 1)
        # a time before the DVR's footage: nothing listed anywhere, NOT_FOUND
        e = yield playback_refused(alice, "dvr1", now - 4 * 86400_000)
        self.assertEqual(e.code, ResultCode.NOT_FOUND)
        # no viewer left: node-b's relay and node-a's DVR playback both stop
        self.b.cdn.linger = self.a.cdn.linger = 0.5
        for path in [p for p in self.b.rtsp.sources if "/pb-dvr-" in p]:
            self.b.cdn.source_idle(self.b.rtsp.sources[path])
        yield wait_until(reactor, lambda: not any("/pb-dvr-" in p for p in self.b.rtsp.sources),
                         timeout=20, what="node-b's relay to end")
        for path in [p for p in self.a.rtsp.sources if "/pb-dvr-" in p]:
            self.a.cdn.source_idle(self.a.rtsp.sources[path])
        yield wait_until(reactor, lambda: not any("/pb-dvr-" in p for p in self.a.rtsp.sources),
                         timeout=20, what="node-a's DVR playback to end")
