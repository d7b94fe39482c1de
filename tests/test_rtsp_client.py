"""The pull client against a scripted camera over a StringTransport."""

import struct

from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from vss.rtsp.auth import md5hex
from vss.rtsp.client import RTSPClientProtocol, RTSPError, control_url, split_credentials
from vss.rtsp.parser import MessageParser, build_interleaved, build_response

CAMERA_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=Media Presentation\r\nt=0 0\r\n"
    b"a=control:rtsp://10.0.0.9:554/Streaming/Channels/101/\r\n"
    b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=1\r\n"
    b"m=audio 0 RTP/AVP 8\r\na=control:trackID=2\r\n")
URL = "rtsp://10.0.0.9:554/Streaming/Channels/101"


class Sink:
    def __init__(self, sdp):
        self.sdp = sdp
        self.packets = []
        self.flushes = 0

    def feed(self, track, rtcp, data):
        self.packets.append((track, rtcp, data))

    def end_of_input(self):
        self.flushes += 1


class ScriptedCamera:
    """The camera's side of the conversation: the client's requests from
    ``self.transport`` (parsed by ``self.requests``), answers fed to ``self.proto``."""

    def next_request(self):
        [req] = self.requests.feed(self.transport.value())
        self.transport.clear()
        return req

    def answer(self, req, status=200, headers=(), body=b""):
        self.proto.dataReceived(build_response(status, [("CSeq", req.cseq), *headers], body))


class ClientTests(ScriptedCamera, unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.sinks = []
        self.proto = RTSPClientProtocol(URL, self.make_sink, "admin", "12345", self.clock)
        self.transport = StringTransport()
        self.requests = MessageParser("request")
        self.playing = []
        self.proto.ready.addCallback(self.playing.append)
        self.proto.makeConnection(self.transport)

    def tearDown(self):
        self.proto.connectionLost(connectionDone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def make_sink(self, sdp):
        self.sinks.append(Sink(sdp))
        return self.sinks[-1]

    def test_digest_handshake_and_media(self):
        req = self.next_request()
        self.assertEqual((req.method, req.uri), ("OPTIONS", URL))
        self.answer(req, 401, [("WWW-Authenticate", 'Basic realm="IP Camera"'),
                               ("WWW-Authenticate",
                                'Digest realm="IP Camera", nonce="abc123", stale="FALSE"')])
        req = self.next_request()
        self.assertEqual(req.method, "OPTIONS")
        auth = req.headers["Authorization"]
        expect = md5hex(f"{md5hex('admin:IP Camera:12345')}:abc123:{md5hex('OPTIONS:' + URL)}")
        self.assertIn(f'response="{expect}"', auth)
        self.answer(req, 200, [("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN")])
        req = self.next_request()
        self.assertEqual(req.method, "DESCRIBE")
        self.assertIn("Digest", req.headers["Authorization"])
        self.answer(req, 200, [("Content-Type", "application/sdp"),
                               ("Content-Base", URL + "/")], CAMERA_SDP)
        req = self.next_request()
        self.assertEqual((req.method, req.uri), ("SETUP", URL + "/trackID=1"))
        self.assertEqual(req.headers["Transport"], "RTP/AVP/TCP;unicast;interleaved=0-1")
        self.answer(req, 200, [("Session", "7788;timeout=30"),
                               ("Transport", "RTP/AVP/TCP;unicast;interleaved=4-5")])
        req = self.next_request()
        self.assertEqual((req.uri, req.headers["Session"]), (URL + "/trackID=2", "7788"))
        self.answer(req, 200, [("Session", "7788"),
                               ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3")])
        req = self.next_request()
        self.assertEqual((req.method, req.uri),
                         ("PLAY", "rtsp://10.0.0.9:554/Streaming/Channels/101/"))
        self.assertEqual(self.playing, [])
        rtp = struct.pack("!BBHII", 0x80, 0xE0, 1, 2, 3) + b"\x65data"
        self.answer(req, 200, [("Session", "7788")])
        self.assertEqual(self.playing, [self.proto])
        self.proto.dataReceived(build_interleaved(4, rtp) + build_interleaved(5, b"rtcp")
                                + build_interleaved(2, b"audio") + build_interleaved(9, b"?"))
        [sink] = self.sinks
        self.assertEqual(sink.packets, [(0, False, rtp), (0, True, b"rtcp"), (1, False, b"audio")])
        self.assertEqual(sink.flushes, 1)
        # keepalive every timeout/2 with OPTIONS (the camera lacks GET_PARAMETER)
        self.clock.advance(15)
        req = self.next_request()
        self.assertEqual((req.method, req.headers["Session"]), ("OPTIONS", "7788"))

    def test_refused(self):
        req = self.next_request()
        self.answer(req, 401, [("WWW-Authenticate", 'Digest realm="x", nonce="n"')])
        req = self.next_request()
        self.answer(req, 401, [("WWW-Authenticate", 'Digest realm="x", nonce="n"')])
        failures = []
        self.proto.ready.addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0].value, RTSPError)
        self.assertEqual(failures[0].value.status, 401)
        self.assertTrue(self.transport.disconnecting)

    def test_handshake_timeout(self):
        failures = []
        self.proto.ready.addErrback(failures.append)
        self.clock.advance(10)
        self.assertEqual(len(failures), 1)
        self.assertTrue(self.transport.disconnecting)


class HeldPullTests(ScriptedCamera, unittest.TestCase):
    """``play=False``: set up only; PLAY with a Range and PAUSE when the caller says."""

    def setUp(self):
        self.clock = Clock()
        self.proto = RTSPClientProtocol(URL, Sink, clock=self.clock, play=False)
        self.transport = StringTransport()
        self.requests = MessageParser("request")
        self.ready = []
        self.proto.ready.addCallback(self.ready.append)
        self.proto.makeConnection(self.transport)

    def tearDown(self):
        if not self.proto.finished.called:
            self.proto.connectionLost(connectionDone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def set_up(self):
        self.answer(self.next_request(), 200, [("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, "
                                                          "PAUSE, GET_PARAMETER")])
        self.answer(self.next_request(), 200, [("Content-Type", "application/sdp"),
                                               ("Content-Base", URL + "/")], CAMERA_SDP)
        for _ in range(2):
            self.answer(self.next_request(), 200, [("Session", "42;timeout=20")])

    def test_ready_after_setup_then_play_with_range_pause_and_play_again(self):
        self.set_up()
        self.assertEqual(self.ready, [self.proto])
        self.assertEqual(self.transport.value(), b"")  # no PLAY of its own
        ranges = []
        self.proto.play("npt=12.500-").addCallback(ranges.append)
        req = self.next_request()
        self.assertEqual((req.method, req.uri, req.headers["Session"], req.headers["Range"]),
                         ("PLAY", "rtsp://10.0.0.9:554/Streaming/Channels/101/", "42",
                          "npt=12.500-"))
        self.assertEqual(ranges, [])
        self.answer(req, 200, [("Session", "42"), ("Range", "npt=11.960-")])
        self.assertEqual(ranges, ["npt=11.960-"])
        paused = []
        self.proto.pause().addCallback(lambda r: paused.append(r.status))
        req = self.next_request()
        self.assertEqual((req.method, req.headers["Session"]), ("PAUSE", "42"))
        self.assertNotIn("Range", req.headers)
        self.answer(req, 200, [("Session", "42")])
        self.assertEqual(paused, [200])
        # a resume: PLAY without Range; a reply without Range gives None
        self.proto.play().addCallback(ranges.append)
        req = self.next_request()
        self.assertEqual(req.method, "PLAY")
        self.assertNotIn("Range", req.headers)
        self.answer(req, 200, [("Session", "42")])
        self.assertEqual(ranges, ["npt=11.960-", None])
        # keepalives run while held or playing (GET_PARAMETER, the server has it)
        self.clock.advance(10)
        req = self.next_request()
        self.assertEqual((req.method, req.headers["Session"]), ("GET_PARAMETER", "42"))

    def test_an_error_status_fails_the_play(self):
        self.set_up()
        failures = []
        self.proto.play("clock=20260105T080000Z-").addErrback(failures.append)
        self.answer(self.next_request(), 457, [("Session", "42")])
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0].value, RTSPError)
        self.assertEqual((failures[0].value.method, failures[0].value.status), ("PLAY", 457))

    def answer_keepalives(self):
        for req in self.requests.feed(self.transport.value()):
            self.assertEqual(req.method, "GET_PARAMETER")
            self.answer(req, 200, [("Session", "42")])
        self.transport.clear()

    def test_a_server_that_stops_sending_media_while_playing_is_left(self):
        self.set_up()
        self.proto.play("npt=0-")
        self.answer(self.next_request(), 200, [("Session", "42")])
        rtp = struct.pack("!BBHII", 0x80, 0xE0, 1, 2, 3) + b"\x65data"
        for _ in range(12):  # a minute of media, keepalives answered
            self.proto.dataReceived(build_interleaved(0, rtp))
            self.clock.advance(5)
            self.answer_keepalives()
        self.assertFalse(self.transport.disconnecting)
        waited = 0
        while not self.transport.disconnecting and waited < 120:  # silence
            self.clock.advance(5)
            waited += 5
            self.answer_keepalives()
        self.assertTrue(self.transport.disconnecting)
        self.assertLessEqual(waited, 2 * self.proto.stall_timeout)
        self.assertEqual(self.proto.stalled, "no media for 30 s")

    def test_paused_no_media_is_fine_but_an_unanswered_keepalive_is_not(self):
        self.set_up()
        self.proto.play("npt=0-")
        self.answer(self.next_request(), 200, [("Session", "42")])
        self.proto.pause()
        self.answer(self.next_request(), 200, [("Session", "42")])
        for _ in range(40):  # 200 s paused, keepalives answered
            self.clock.advance(5)
            self.answer_keepalives()
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(10)  # a keepalive that gets no answer
        self.transport.clear()
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.proto.stalled, "a keepalive went unanswered")

    def test_garbage_from_the_server_ends_the_pull_without_raising(self):
        self.set_up()
        self.proto.play("npt=0-")
        self.answer(self.next_request(), 200, [("Session", "42")])
        self.proto.url = "rtsp://10.0.0.9:554/live/a/pb-1?token=c2VjcmV0.c2ln"
        with capturedLogs() as events:
            self.proto.dataReceived(b"HELLO? \x00\xff garbage\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        [line] = [formatEvent(e) for e in events]
        self.assertIn("rtsp://10.0.0.9:554/live/a/pb-1?token=REDACTED", line)
        self.assertNotIn("c2VjcmV0", line)

    def test_connection_lost_fails_a_pending_pause(self):
        self.set_up()
        failures = []
        self.proto.pause().addErrback(failures.append)
        self.proto.connectionLost(connectionDone)
        self.assertEqual(len(failures), 1)


class HelperTests(unittest.TestCase):
    def test_split_credentials(self):
        self.assertEqual(split_credentials("rtsp://u%40x:p%3Aw@h:554/a?b=1"),
                         ("rtsp://h:554/a?b=1", "u@x", "p:w"))
        self.assertEqual(split_credentials("rtsp://h/a"), ("rtsp://h/a", None, None))

    def test_control_url(self):
        self.assertEqual(control_url("rtsp://h/a/", "trackID=1"), "rtsp://h/a/trackID=1")
        self.assertEqual(control_url("rtsp://h/a?token=t", "trackID=0"),
                         "rtsp://h/a/trackID=0?token=t")
        self.assertEqual(control_url("rtsp://h/a", "rtsp://o/x"), "rtsp://o/x")
        self.assertEqual(control_url("rtsp://h/a", "*"), "rtsp://h/a")
