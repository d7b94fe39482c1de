"""The RTSP server without sockets: StringTransport connections and a task.Clock."""

import struct

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.rtsp import fanout, start_from_gop
from vss.rtsp.parser import MessageParser, Response
from vss.rtsp.server import RTSPServerFactory, RTSPUrl, is_live

SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n"
       "m=audio 0 RTP/AVP 0\r\na=control:streamid=1\r\n")


def rtp(seq, ts, nal, marker=True, size=100, pt=96):
    head = struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, 1234)
    return head + bytes([nal]) + b"\x00" * size


def idr(seq, ts, size=100):
    return rtp(seq, ts, 0x65, size=size)  # NAL type 5


def pframe(seq, ts, size=100):
    return rtp(seq, ts, 0x41, size=size)  # NAL type 1


def fu_a(seq, ts, inner, start, size=100):
    head = struct.pack("!BBHII", 0x80, 96, seq, ts, 1234)
    return head + bytes([0x7C, (0x80 if start else 0) | inner]) + b"\x00" * size


class Conn:
    """A client connection over a StringTransport."""

    def __init__(self, factory, port=40000):
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port),
                                         hostAddress=IPv4Address("TCP", "127.0.0.1", 554))
        self.proto.makeConnection(self.transport)
        self.parser = MessageParser("response")
        self.cseq = 0
        self.frames = []

    def send(self, data):
        self.proto.dataReceived(data)

    def read(self):
        data = self.transport.value()
        self.transport.clear()
        out = []
        for item in self.parser.feed(data):
            if isinstance(item, Response):
                out.append(item)
            else:
                self.frames.append(item)
        return out

    def request(self, method, uri, headers=(), body=b""):
        self.cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        responses = self.read()
        return responses[-1] if responses else None


class ServerTestBase(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.issuer = TokenIssuer(b"0123456789abcdef-secret", clock=self.clock)
        self.factory = RTSPServerFactory(TokenAuthorizer(self.issuer), reactor=object(),
                                         clock=self.clock, describe_wait=2.0,
                                         max_queue=4096)
        self.events = []
        self.factory.addObserver(self)
        self.conns = []

    def tearDown(self):
        self.factory.close_all()
        for c in self.conns:
            c.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def source_added(self, source):
        self.events.append(("added", source.path))

    def source_idle(self, source):
        self.events.append(("idle", source.path, source.no_readers_since))

    def source_wanted(self, path):
        self.events.append(("wanted", path))

    def source_removed(self, source):
        self.events.append(("removed", source.path))

    def conn(self):
        c = Conn(self.factory, 40000 + len(self.conns))
        self.conns.append(c)
        return c

    def url(self, method="play", path="/live/cam1/main", ttl=None):
        token = self.issuer.issue(path, (method,), ttl=ttl)
        return f"rtsp://127.0.0.1:554{path}?token={token}"

    def publish(self, path="/live/cam1/main"):
        c = self.conn()
        url = self.url("publish", path)
        r = c.request("ANNOUNCE", url, [("Content-Type", "application/sdp")], SDP.encode())
        self.assertEqual(r.status, 200)
        r = c.request("SETUP", url + "/streamid=0",
                      [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")])
        self.assertEqual(r.status, 200, r.reason)
        sid = r.headers["Session"].split(";")[0]
        r = c.request("SETUP", url + "/streamid=1", [
            ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"),
            ("Session", sid)])
        self.assertEqual(r.status, 200)
        r = c.request("RECORD", url, [("Session", sid)])
        self.assertEqual(r.status, 200)
        return c

    def play(self, path="/live/cam1/main", tracks=(0, 1), extra="", play_extra=None):
        """A viewer; ``extra`` (``&start=gop``) is added to the URL of its DESCRIBE and
        SETUPs, ``play_extra`` (default: the same) to its PLAY's."""
        c = self.conn()
        url = self.url("play", path) + extra
        r = c.request("DESCRIBE", url)
        self.assertEqual(r.status, 200, r.reason)
        sid = None
        for t in tracks:
            hdrs = [("Transport", f"RTP/AVP/TCP;unicast;interleaved={2 * t}-{2 * t + 1}")]
            if sid:
                hdrs.append(("Session", sid))
            r = c.request("SETUP", f"rtsp://127.0.0.1:554{path}/trackID={t}?"
                          + url.split("?")[1], hdrs)
            self.assertEqual(r.status, 200, r.reason)
            sid = r.headers["Session"].split(";")[0]
        if play_extra is not None:
            url = url[:len(url) - len(extra)] + play_extra
        r = c.request("PLAY", url, [("Session", sid)])
        self.assertEqual(r.status, 200)
        c.sid = sid
        return c


def frame_bytes(channel, packet):
    return struct.pack("!BBH", 0x24, channel, len(packet)) + packet


class UrlTests(unittest.TestCase):
    def test_start_from_gop(self):
        self.assertEqual(start_from_gop("rtsp://h:1/live/c/main?token=t"),
                         "rtsp://h:1/live/c/main?token=t&start=gop")
        self.assertEqual(start_from_gop("rtsp://h:1/live/c/main"),
                         "rtsp://h:1/live/c/main?start=gop")
        self.assertEqual(start_from_gop("rtsp://h:1/live/c/main?start=x&cred=a.b"),
                         "rtsp://h:1/live/c/main?cred=a.b&start=gop")
        url = RTSPUrl.parse(start_from_gop("rtsp://h:1/live/c/main?token=t"))
        self.assertEqual((url.token, url.start, url.from_gop), ("t", "gop", True))
        self.assertFalse(RTSPUrl.parse("rtsp://h:1/live/c/main?token=t").from_gop)

    def test_forms(self):
        u = RTSPUrl.parse("rtsp://u:p@h:8554/live/cam1/main?token=abc")
        self.assertEqual((u.base, u.path, u.control, u.token), (
            "rtsp://h:8554", "/live/cam1/main", None, "abc"))
        u = RTSPUrl.parse("rtsp://h/live/cam1/main?token=abc/streamid=1")
        self.assertEqual((u.path, u.control, u.track, u.token),
                         ("/live/cam1/main", "streamid=1", 1, "abc"))
        u = RTSPUrl.parse("rtsp://h/live/cam1/sub/trackID=0?token=t")
        self.assertEqual((u.path, u.track, u.token), ("/live/cam1/sub", 0, "t"))
        # a channel N > 0 of a DVS or a DVR (vss.cdn.service.stream_path)
        u = RTSPUrl.parse("rtsp://h/live/dvs1/ch1-main?token=t")
        self.assertEqual((u.path, u.token), ("/live/dvs1/ch1-main", "t"))
        u = RTSPUrl.parse("rtsp://h/live/dvs1/ch255-sub/trackID=0?token=t")
        self.assertEqual((u.path, u.track), ("/live/dvs1/ch255-sub", 0))
        self.assertTrue(is_live("/live/dvs1/ch3-sub"))
        self.assertFalse(is_live("/live/dvs1/pb-12"))
        for bad in ("rtsp://h/live/cam1/other", "rtsp://h/vod/x/main", "http://h/live/a/main",
                    "rtsp://h/live//main", "garbage", "rtsp://h/live/a/main/x/y",
                    "rtsp://h/live/a/ch0-main", "rtsp://h/live/a/ch-main",
                    "rtsp://h/live/a/ch1-other", "rtsp://h/live/a/ch\u00b2-main",
                    "rtsp://h/live/a/ch1000-main", "rtsp://h/live/a/chx-main"):
            self.assertIsNone(RTSPUrl.parse(bad), bad)


class AuthorizationTests(ServerTestBase):
    def test_options_needs_no_token(self):
        r = self.conn().request("OPTIONS", "*")
        self.assertEqual(r.status, 200)
        self.assertIn("DESCRIBE", r.headers["Public"])

    def test_missing_token(self):
        self.publish()
        r = self.conn().request("DESCRIBE", "rtsp://127.0.0.1/live/cam1/main")
        self.assertEqual(r.status, 401)

    def test_expired_token(self):
        self.publish()
        url = self.url("play", ttl=5)
        self.clock.advance(6)
        r = self.conn().request("DESCRIBE", url)
        self.assertEqual(r.status, 401)

    def test_foreign_token(self):
        self.publish()
        url = self.url("play", path="/live/cam2/main").replace("cam2", "cam1")
        self.assertEqual(self.conn().request("DESCRIBE", url).status, 401)

    def test_play_token_cannot_publish(self):
        c = self.conn()
        r = c.request("ANNOUNCE", self.url("play"), [("Content-Type", "application/sdp")],
                      SDP.encode())
        self.assertEqual(r.status, 401)

    def test_setup_without_session_checks_token(self):
        self.publish()
        r = self.conn().request("SETUP", "rtsp://127.0.0.1/live/cam1/main/trackID=0",
                                [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        self.assertEqual(r.status, 401)

    def test_playing_session_survives_token_expiry(self):
        pub = self.publish()
        viewer = self.play()
        for _ in range(4):  # the token expires; keepalives keep the session
            self.clock.advance(30)
            pub.send(frame_bytes(0, idr(1, 9000)))
            r = viewer.request("GET_PARAMETER", "rtsp://127.0.0.1/live/cam1/main",
                               [("Session", viewer.sid)])
            self.assertEqual(r.status, 200)
        r = viewer.request("PLAY", self.url(ttl=-1), [("Session", viewer.sid)])
        self.assertEqual(r.status, 200)
        self.assertTrue(viewer.frames)

    def test_unknown_session(self):
        r = self.conn().request("PLAY", self.url(), [("Session", "nope")])
        self.assertEqual(r.status, 454)

    def test_unknown_path(self):
        r = self.conn().request("DESCRIBE", "rtsp://127.0.0.1/vod/cam1/main?token=x")
        self.assertEqual(r.status, 404)


class MalformedTests(ServerTestBase):
    def test_garbage_gets_400_and_close(self):
        c = self.conn()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [r] = c.read()
        self.assertEqual(r.status, 400)
        self.assertTrue(c.transport.disconnecting)

    def test_huge_body_gets_413(self):
        c = self.conn()
        c.send(b"ANNOUNCE rtsp://h/live/a/main RTSP/1.0\r\nCSeq: 5\r\n"
               b"Content-Length: 999999\r\n\r\n")
        [r] = c.read()
        self.assertEqual((r.status, r.headers["CSeq"]), (413, "5"))
        self.assertTrue(c.transport.disconnecting)

    def test_unknown_method(self):
        r = self.conn().request("FROBNICATE", "*")
        self.assertEqual(r.status, 501)

    def test_a_request_without_a_numeric_cseq_is_400_and_the_link_stays(self):
        pub = self.publish()
        viewer = self.play()
        url = self.url()
        c = self.conn()
        for cseq in (None, "abc", "", "-1", "1.5", "0x10", "\u0661", "12345678901", "1, 2"):
            head = f"DESCRIBE {url} RTSP/1.0\r\n"
            if cseq is not None:
                head += f"CSeq: {cseq}\r\n"
            c.send((head + "\r\n").encode())
            [r] = c.read()
            self.assertEqual((r.status, r.reason), (400, "Bad Request"), repr(cseq))
            self.assertIsNone(r.headers.get("CSeq"), repr(cseq))
            self.assertFalse(c.transport.disconnecting, repr(cseq))
        c.send(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nCSeq: 2\r\n\r\n")
        [r] = c.read()
        self.assertEqual(r.status, 400)
        # the same connection goes on with a good request; no session was made
        r = c.request("DESCRIBE", url)
        self.assertEqual((r.status, r.headers["CSeq"]), (200, "1"))
        self.assertEqual(len(self.factory.sessions), 2)  # the publisher's, the viewer's
        # a viewer that already plays is untouched, and so is its own link
        r = viewer.request("GET_PARAMETER", url, [("Session", viewer.sid)])
        self.assertEqual(r.status, 200)
        viewer.send(f"GET_PARAMETER {url} RTSP/1.0\r\nSession: {viewer.sid}\r\n\r\n"
                    .encode())
        [r] = viewer.read()
        self.assertEqual(r.status, 400)
        pub.send(frame_bytes(0, idr(1, 9000)))
        viewer.read()
        self.assertEqual(len(viewer.frames), 1)
        self.assertIn(viewer.sid, self.factory.sessions)

    def test_a_malformed_request_echoes_its_cseq_only_when_it_is_a_number(self):
        for cseq, echoed in (("7", "7"), ("abc", None)):
            c = self.conn()
            c.send(f"ANNOUNCE rtsp://h/live/a/main RTSP/1.0\r\nCSeq: {cseq}\r\n"
                   "Content-Length: 999999\r\n\r\n".encode())
            [r] = c.read()
            self.assertEqual((r.status, r.headers.get("CSeq")), (413, echoed))

    def test_bad_connection_does_not_hurt_others(self):
        pub = self.publish()
        viewer = self.play()
        bad = self.conn()
        bad.send(b"\x00" * 9000)
        self.assertTrue(bad.transport.disconnecting)
        pub.send(frame_bytes(0, idr(1, 9000)))
        viewer.read()
        self.assertEqual(len(viewer.frames), 1)


class DescribeTests(ServerTestBase):
    def test_sdp_rewritten(self):
        self.publish()
        c = self.conn()
        url = self.url()
        r = c.request("DESCRIBE", url)
        body = r.body.decode()
        token = url.split("token=")[1]
        self.assertIn(f"a=control:rtsp://127.0.0.1:554/live/cam1/main/trackID=0?token={token}",
                      body)
        self.assertIn("trackID=1", body)
        self.assertNotIn("streamid", body)
        self.assertIn("a=rtpmap:96 H264/90000", body)
        self.assertIn("a=range:npt=0-\r\n", body)  # live: no end

    def test_a_stream_of_known_length_says_it_in_the_range(self):
        """A playback's SDP carries its length, so players show a seek bar; a relay of
        it keeps the length its origin gave."""
        from vss.rtsp.sdp import for_viewers

        self.publish()
        self.factory.sources["/live/cam1/main"].duration = 95.5
        body = self.conn().request("DESCRIBE", self.url()).body.decode()
        self.assertEqual([ln for ln in body.split("\r\n") if ln.startswith("a=range")],
                         ["a=range:npt=0-95.500"])
        relayed = for_viewers(body, "rtsp://other/live/cam1/pb-1")
        self.assertIn("a=range:npt=0-95.500\r\n", relayed)
        self.assertIn("a=range:npt=0-\r\n", for_viewers(body.replace("95.500", ""), "x"))

    def test_waits_for_publisher(self):
        c = self.conn()
        url = self.url()
        self.assertIsNone(c.request("DESCRIBE", url))
        self.assertEqual(self.events, [("wanted", "/live/cam1/main")])
        self.clock.advance(1)
        self.publish()
        [r] = c.read()
        self.assertEqual(r.status, 200)
        self.assertIn(b"H264", r.body)

    def test_times_out_with_404(self):
        c = self.conn()
        self.assertIsNone(c.request("DESCRIBE", self.url()))
        self.clock.advance(1.9)
        self.assertEqual(c.read(), [])
        self.clock.advance(0.2)
        [r] = c.read()
        self.assertEqual(r.status, 404)


class SessionTests(ServerTestBase):
    def test_session_keeps_authorizer_info(self):
        self.publish()
        viewer = self.play()
        info = self.factory.sessions[viewer.sid].auth
        self.assertEqual((info["device"], info["stream"], info["methods"]),
                         ("cam1", "main", ("play",)))

    def test_session_header_announces_timeout(self):
        self.publish()
        c = self.conn()
        url = self.url()
        c.request("DESCRIBE", url)
        r = c.request("SETUP", url.replace("main?", "main/trackID=0?"),
                      [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        self.assertTrue(r.headers["Session"].endswith(";timeout=60"))
        self.assertEqual(r.headers["Transport"], "RTP/AVP/TCP;unicast;interleaved=0-1")

    def test_idle_session_times_out(self):
        self.publish()
        viewer = self.play()
        self.assertEqual(len(self.factory.sessions), 2)
        for _ in range(3):  # the publisher keeps sending, the viewer is silent
            self.clock.advance(25)
            self.conns[0].send(frame_bytes(1, rtp(1, 1, 0, pt=0)))
        self.assertTrue(viewer.transport.disconnecting)
        self.assertNotIn(viewer.sid, self.factory.sessions)
        self.assertEqual(len(self.factory.sessions), 1)
        self.assertFalse(viewer.transport.disconnected)
        self.clock.advance(5)  # it does not read what is buffered: abort
        self.assertTrue(viewer.transport.disconnected)
        self.assertEqual(self.factory.sources["/live/cam1/main"].reader_count, 0)

    def test_keepalive_and_rtcp_keep_session(self):
        self.publish()
        viewer = self.play()
        for i in range(6):
            self.clock.advance(40)
            self.conns[0].send(frame_bytes(1, rtp(i, 1, 0, pt=0)))
            if i % 2:
                viewer.request("GET_PARAMETER", "*", [("Session", viewer.sid)])
            else:
                viewer.send(frame_bytes(1, b"\x81\xc9\x00\x01" + b"\x00" * 4))  # RTCP RR
        self.assertIn(viewer.sid, self.factory.sessions)
        self.assertFalse(viewer.transport.disconnecting)

    def test_publisher_gone_ends_source_and_viewers(self):
        pub = self.publish()
        viewer = self.play()
        pub.proto.connectionLost(None)
        self.assertNotIn("/live/cam1/main", self.factory.sources)
        self.assertTrue(viewer.transport.disconnecting)
        self.assertIn(("removed", "/live/cam1/main"), self.events)

    def test_second_publisher_refused(self):
        self.publish()
        c = self.conn()
        r = c.request("ANNOUNCE", self.url("publish"), [("Content-Type", "application/sdp")],
                      SDP.encode())
        self.assertEqual(r.status, 455)

    def test_teardown_and_idle_event(self):
        self.publish()
        viewer = self.play()
        self.clock.advance(3)
        r = viewer.request("TEARDOWN", self.url(), [("Session", viewer.sid)])
        self.assertEqual(r.status, 200)
        self.assertIn(("idle", "/live/cam1/main", 1003), self.events)
        source = self.factory.sources["/live/cam1/main"]
        self.assertEqual(source.stats()["readers"], 0)

    def test_pause_stops_delivery(self):
        pub = self.publish()
        viewer = self.play()
        pub.send(frame_bytes(0, idr(1, 10)))
        viewer.read()
        r = viewer.request("PAUSE", self.url(), [("Session", viewer.sid)])
        self.assertEqual(r.status, 200)
        pub.send(frame_bytes(0, idr(2, 20)))
        viewer.read()
        self.assertEqual(len(viewer.frames), 1)


class FakeUDPPort:
    def __init__(self, port):
        self.port = port
        self.sent = []

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", self.port)

    def write(self, data, addr):
        self.sent.append((addr, data))


class UDPTests(ServerTestBase):
    def setUp(self):
        super().setUp()
        self.factory.udp_ports = (FakeUDPPort(6970), FakeUDPPort(6971))

    def play_udp(self):
        c = self.conn()
        url = self.url()
        r = c.request("SETUP", url.replace("main?", "main/trackID=0?"),
                      [("Transport", "RTP/AVP;unicast;client_port=5000-5001")])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["Transport"],
                         "RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971")
        c.sid = r.headers["Session"].split(";")[0]
        self.assertEqual(c.request("PLAY", url, [("Session", c.sid)]).status, 200)
        return c

    def test_udp_viewer_gets_packets_and_rtcp_keeps_it(self):
        pub = self.publish()
        viewer = self.play_udp()
        rtp_port, rtcp_port = self.factory.udp_ports
        pub.send(frame_bytes(0, idr(1, 10)) + frame_bytes(1, b"\x80\xc8\x00\x01SR!!"))
        self.assertEqual(rtp_port.sent, [(("127.0.0.1", 5000), idr(1, 10))])
        self.assertEqual(rtcp_port.sent, [], "RTCP rides along with the next picture")
        pub.send(frame_bytes(0, pframe(2, 13)))
        self.assertEqual(rtcp_port.sent, [(("127.0.0.1", 5001), b"\x80\xc8\x00\x01SR!!")])
        self.assertEqual(len(rtp_port.sent), 2)
        viewer.proto.connectionLost(None)  # a UDP session outlives its RTSP connection
        for _ in range(4):
            self.clock.advance(40)
            pub.send(frame_bytes(0, pframe(2, 20)))
            self.factory.udp_received(b"\x81\xc9\x00\x01RR!!", ("127.0.0.1", 5001))
        self.assertIn(viewer.sid, self.factory.sessions)
        self.clock.advance(61)
        pub.send(frame_bytes(0, pframe(3, 30)))
        self.assertNotIn(viewer.sid, self.factory.sessions)

    def test_udp_publisher(self):
        c = self.conn()
        url = self.url("publish")
        c.request("ANNOUNCE", url, [("Content-Type", "application/sdp")], SDP.encode())
        r = c.request("SETUP", url + "/streamid=0", [
            ("Transport", "RTP/AVP/UDP;unicast;client_port=7000-7001;mode=record")])
        self.assertEqual(r.status, 200)
        sid = r.headers["Session"].split(";")[0]
        self.assertEqual(c.request("RECORD", url, [("Session", sid)]).status, 200)
        viewer = self.play(tracks=(0,))
        self.factory.udp_received(idr(1, 10), ("127.0.0.1", 7000))
        self.factory.udp_received(idr(1, 10), ("127.0.0.2", 7000))  # a stranger: ignored
        viewer.read()
        self.assertEqual([f.data for f in viewer.frames], [idr(1, 10)])
        stats = self.factory.stats()["sources"]["/live/cam1/main"]
        self.assertEqual((stats["packets"], stats["readers"]), (1, 1))
        self.assertEqual(stats["readers_detail"][0]["frames"], 1)


class IdleConnectionTests(ServerTestBase):
    def test_silent_connection_closed(self):
        c = self.conn()
        self.clock.advance(59)
        self.assertFalse(c.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(c.transport.disconnecting)

    def test_talking_connection_kept(self):
        c = self.conn()
        for _ in range(5):
            self.clock.advance(50)
            c.request("OPTIONS", "*")
        self.assertFalse(c.transport.disconnecting)


class FanoutTests(ServerTestBase):
    def test_frames_start_at_keyframe_and_share_bytes(self):
        pub = self.publish()
        v1 = self.play()
        v2 = self.play()
        pub.send(frame_bytes(0, pframe(1, 10)) + frame_bytes(2, rtp(1, 10, 0, pt=0)))
        pub.send(frame_bytes(0, fu_a(2, 20, 5, True)) + frame_bytes(0, fu_a(3, 20, 5, False))
                 + frame_bytes(0, pframe(4, 30)))
        v1.read()
        v2.read()
        self.assertEqual([f.data[2:4] for f in v1.frames], [b"\x00\x02", b"\x00\x03",
                                                             b"\x00\x04"])
        self.assertEqual(v1.frames, v2.frames)
        readers = self.factory.sources["/live/cam1/main"].readers
        self.assertEqual(readers[0].frames, 2)  # one write per picture
        self.assertEqual(len(v1.transport.value()), 0)

    def test_one_write_per_picture_across_reads(self):
        pub = self.publish()
        self.play()
        reader = self.factory.sources["/live/cam1/main"].readers[0]
        pub.send(frame_bytes(0, idr(1, 10)))
        self.assertEqual(reader.frames, 1)
        pub.send(frame_bytes(0, fu_a(2, 20, 1, True)))
        pub.send(frame_bytes(2, rtp(7, 20, 0, pt=0)) + frame_bytes(0, fu_a(3, 20, 1, False)))
        self.assertEqual(reader.frames, 1, "a picture is held until its marker bit")
        pub.send(frame_bytes(0, rtp(4, 20, 0x5C, marker=True)))  # FU-A end, marker
        self.assertEqual(reader.frames, 2)
        self.assertEqual(reader.direct_sends, 0)  # StringTransport: no socket

    def test_audio_only_viewer(self):
        pub = self.publish()
        v = self.play(tracks=(1,))
        pub.send(frame_bytes(0, pframe(1, 10)) + frame_bytes(2, rtp(2, 10, 0, pt=0)))
        pub.send(frame_bytes(0, pframe(3, 20)))
        v.read()
        self.assertEqual([(f.channel, f.data) for f in v.frames], [(2, rtp(2, 10, 0, pt=0))])

    def test_video_only_viewer_gets_no_audio(self):
        pub = self.publish()
        v = self.play(tracks=(0,))
        pub.send(frame_bytes(0, idr(1, 10)) + frame_bytes(2, rtp(1, 10, 0, pt=0)))
        v.read()
        self.assertEqual([f.channel for f in v.frames], [0])

    def test_full_queue_drops_until_keyframe(self):
        pub = self.publish()
        slow = self.play()
        fast = self.play()
        readers = self.factory.sources["/live/cam1/main"].readers
        slow_reader, fast_reader = readers
        seq = 0
        pub.send(frame_bytes(0, idr(seq, 0, size=1000)))
        for i in range(1, 12):  # ~1 KiB each, the queue holds 4 KiB
            seq += 1
            pub.send(frame_bytes(0, pframe(seq, i * 3000, size=1000)))
            fast_reader.resumeProducing()  # the fast viewer's socket drains
            fast.read()
        self.assertEqual(fast_reader.drops, 0)
        self.assertEqual(fast_reader.frames, 12)
        self.assertEqual(slow_reader.drops, 8)
        self.assertTrue(slow_reader.waiting_key)
        self.assertLessEqual(slow_reader.queued, 4096 + 1)
        slow_reader.resumeProducing()  # drained, but still waits for a keyframe
        seq += 1
        pub.send(frame_bytes(0, pframe(seq, 99000, size=1000)))
        self.assertEqual(slow_reader.frames, 4)
        self.assertEqual(slow_reader.drops, 9)
        seq += 1
        pub.send(frame_bytes(0, idr(seq, 102000, size=1000)))
        self.assertEqual(slow_reader.frames, 5)
        self.assertFalse(slow_reader.waiting_key)
        slow.read()
        seqs = [struct.unpack("!H", f.data[2:4])[0] for f in slow.frames]
        self.assertEqual(seqs, [0, 1, 2, 3, 13])
        stats = self.factory.sources["/live/cam1/main"].stats()
        self.assertEqual((stats["frames"], stats["drops"]), (14, 9))

    def test_gop_cache_starts_new_viewer_at_once(self):
        self.factory.gop_cache = 1 << 20
        pub = self.publish()
        early = self.play()
        pub.send(frame_bytes(0, pframe(1, 10)))  # before any keyframe: not cached
        pub.send(frame_bytes(0, idr(2, 20)) + frame_bytes(2, rtp(3, 20, 0, pt=0)))
        pub.send(frame_bytes(0, pframe(4, 30)))
        late = self.play()
        late.read()
        early.read()
        self.assertEqual([struct.unpack("!H", f.data[2:4])[0] for f in late.frames],
                         [2, 3, 4])
        self.assertEqual(late.frames, early.frames)
        pub.send(frame_bytes(0, idr(5, 40)))  # a new GOP replaces the cache
        third = self.play()
        third.read()
        self.assertEqual([struct.unpack("!H", f.data[2:4])[0] for f in third.frames], [5])

    def test_gop_keep_only_for_readers_that_start_from_it(self):
        """The GOP kept for browser packagers (``gop_keep``): a reader that asks for it
        (``starts_cached``) starts with it, each frame dated when the SS got it; an RTSP
        viewer still starts at the next keyframe."""
        self.factory.gop_keep = 1 << 20
        pub = self.publish()
        pub.send(frame_bytes(0, idr(2, 20)))
        self.clock.advance(0.5)
        pub.send(frame_bytes(0, pframe(3, 30)))

        class Starter:
            starts_cached = True
            mask = frozenset((0,))
            drops = lag_skips = 0

            def __init__(self):
                self.got = []

            def deliver_at(self, wall, frame):
                self.got.append((wall, frame.key))

            def deliver(self, frame):
                self.got.append((None, frame.key))

        source = self.factory.sources["/live/cam1/main"]
        t0 = self.clock.seconds()
        starter = Starter()
        source.add_reader(starter)
        self.assertEqual(starter.got, [(t0 - 0.5, True), (t0, False)])
        late = self.play()
        late.read()
        self.assertEqual(late.frames, [])  # an RTSP viewer waits for the next keyframe
        pub.send(frame_bytes(0, pframe(4, 40)))
        self.assertEqual(starter.got[-1], (None, False))
        source.remove_reader(starter)

    def seqs(self, viewer):
        viewer.read()
        return [struct.unpack("!H", f.data[2:4])[0] for f in viewer.frames]

    def test_a_viewer_asking_start_gop_gets_the_kept_keyframe_first(self):
        """``start=gop`` on the stream URL: the viewer starts with the kept GOP (keyframe
        first); a viewer whose URL does not say it still waits for the next keyframe."""
        self.factory.gop_keep = 1 << 20
        pub = self.publish()
        pub.send(frame_bytes(0, pframe(1, 10)))  # before any keyframe: not kept
        pub.send(frame_bytes(0, idr(2, 20)) + frame_bytes(2, rtp(3, 20, 0, pt=0)))
        pub.send(frame_bytes(0, pframe(4, 30)))
        asking = self.play(extra="&start=gop")
        plain = self.play()
        self.assertEqual(self.seqs(asking), [2, 3, 4])
        self.assertTrue(fanout.h264_is_key(asking.frames[0].data))
        self.assertEqual(self.seqs(plain), [])
        pub.send(frame_bytes(0, pframe(5, 40)))
        self.assertEqual(self.seqs(asking), [2, 3, 4, 5])
        self.assertEqual(self.seqs(plain), [])
        pub.send(frame_bytes(0, idr(6, 50)))
        self.assertEqual(self.seqs(asking), [2, 3, 4, 5, 6])
        self.assertEqual(self.seqs(plain), [6])

    def test_start_gop_said_at_setup_holds_for_a_play_on_the_content_base(self):
        """FFmpeg sends its PLAY to the Content-Base (no query): the SETUP's word holds."""
        self.factory.gop_keep = 1 << 20
        pub = self.publish()
        pub.send(frame_bytes(0, idr(2, 20)))
        asking = self.play(extra="&start=gop", play_extra="")
        self.assertEqual(self.seqs(asking), [2])

    def test_start_gop_without_a_kept_gop_starts_at_the_next_keyframe(self):
        """Without ``gop_keep`` (or a GOP too big for the viewer's queue) the viewer
        starts as any other: at the next keyframe."""
        pub = self.publish()
        pub.send(frame_bytes(0, idr(2, 20)))
        self.assertEqual(self.seqs(self.play(extra="&start=gop")), [])
        self.factory.gop_keep = 1 << 20
        pub.send(frame_bytes(0, idr(3, 30)))
        pub.send(frame_bytes(0, pframe(4, 40, size=2100)))  # 2.2 KiB > half of 4 KiB
        big = self.play(path="/live/cam1/main", extra="&start=gop")
        self.assertEqual(self.seqs(big), [])
        pub.send(frame_bytes(0, idr(5, 50)))
        self.assertEqual(self.seqs(big), [5])

    def test_start_gop_is_authorised_as_any_url(self):
        self.factory.gop_keep = 1 << 20
        pub = self.publish()
        pub.send(frame_bytes(0, idr(2, 20)))
        c = self.conn()
        r = c.request("DESCRIBE", "rtsp://127.0.0.1:554/live/cam1/main?start=gop")
        self.assertEqual(r.status, 401)
        other = self.url("play", "/live/cam2/main") + "&start=gop"
        r = c.request("DESCRIBE", other.replace("/cam2/", "/cam1/"))
        self.assertEqual(r.status, 401)

    def test_an_unknown_start_is_refused(self):
        self.publish()
        c = self.conn()
        r = c.request("DESCRIBE", self.url() + "&start=now")
        self.assertEqual((r.status, r.reason), (400, "Unknown Start"))

    def test_no_gop_cache_by_default(self):
        pub = self.publish()
        pub.send(frame_bytes(0, idr(2, 20)))
        late = self.play()
        late.read()
        self.assertEqual(late.frames, [])

    def test_attach_source_by_code(self):
        source = self.factory.attach_source("/live/cam9/sub", SDP)
        viewer = self.play(path="/live/cam9/sub")
        source.feed(0, False, idr(1, 10))
        source.feed(0, True, b"\x80\xc8\x00\x06" + b"\x00" * 24)  # RTCP SR
        source.flush()
        viewer.read()
        self.assertEqual([f.channel for f in viewer.frames], [0, 1])
        self.assertRaises(ValueError, self.factory.attach_source, "/live/cam9/sub", SDP)
        source.close()
        self.assertNotIn("/live/cam9/sub", self.factory.sources)


class KeyDetectionTests(unittest.TestCase):
    def test_h264(self):
        self.assertTrue(fanout.h264_is_key(idr(1, 1)))
        self.assertTrue(fanout.h264_is_key(rtp(1, 1, 0x67)))  # SPS
        self.assertFalse(fanout.h264_is_key(pframe(1, 1)))
        self.assertTrue(fanout.h264_is_key(fu_a(1, 1, 5, True)))
        self.assertFalse(fanout.h264_is_key(fu_a(1, 1, 5, False)))
        stap = struct.pack("!BBHII", 0x80, 96, 1, 1, 1) + b"\x18\x00\x05\x67abcd"
        self.assertTrue(fanout.h264_is_key(stap))
        self.assertFalse(fanout.h264_is_key(b"\x80"))

    def test_h265(self):
        head = struct.pack("!BBHII", 0x80, 96, 1, 1, 1)
        self.assertTrue(fanout.h265_is_key(head + bytes([19 << 1, 1]) + b"x"))  # IDR_W_RADL
        self.assertTrue(fanout.h265_is_key(head + bytes([32 << 1, 1]) + b"x"))  # VPS
        self.assertFalse(fanout.h265_is_key(head + bytes([1 << 1, 1]) + b"x"))
        self.assertTrue(fanout.h265_is_key(head + bytes([49 << 1, 1, 0x80 | 20]) + b"x"))
        self.assertFalse(fanout.h265_is_key(head + bytes([49 << 1, 1, 20]) + b"x"))
