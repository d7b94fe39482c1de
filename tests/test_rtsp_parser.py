"""The sans-IO RTSP parser: hand-written messages, every split, bounds, bad input."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from vss.rtsp.parser import (
    MAX_BODY,
    MAX_HEADER,
    Interleaved,
    MessageParser,
    ParseError,
    Request,
    Response,
    build_interleaved,
    build_request,
    build_response,
    parse_range,
    parse_transport,
)

DESCRIBE = (b"DESCRIBE rtsp://10.0.0.1:554/live/cam1/main?token=abc RTSP/1.0\r\n"
            b"CSeq: 2\r\n"
            b"Accept: application/sdp\r\n"
            b"User-Agent: Lavf60.3.100\r\n\r\n")
ANNOUNCE_BODY = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nm=video 0 RTP/AVP 96\r\n"
ANNOUNCE = (b"ANNOUNCE rtsp://h/live/cam1/main RTSP/1.0\r\nCSeq: 3\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: "
            + str(len(ANNOUNCE_BODY)).encode() + b"\r\n\r\n" + ANNOUNCE_BODY)
FRAME = b"$\x00\x00\x05hello"
STREAM = DESCRIBE + FRAME + ANNOUNCE + b"$\x03\x00\x00" + DESCRIBE


def describe(items):
    out = []
    for it in items:
        if isinstance(it, Request):
            out.append(("req", it.method, it.uri, it.cseq, it.body))
        elif isinstance(it, Interleaved):
            out.append(("bin", it.channel, it.data))
        else:
            out.append(("other", it))
    return out


EXPECTED = [
    ("req", "DESCRIBE", "rtsp://10.0.0.1:554/live/cam1/main?token=abc", "2", b""),
    ("bin", 0, b"hello"),
    ("req", "ANNOUNCE", "rtsp://h/live/cam1/main", "3", ANNOUNCE_BODY),
    ("bin", 3, b""),
    ("req", "DESCRIBE", "rtsp://10.0.0.1:554/live/cam1/main?token=abc", "2", b""),
]


class RequestParsingTests(unittest.TestCase):
    def test_whole_stream(self):
        p = MessageParser()
        self.assertEqual(describe(p.feed(STREAM)), EXPECTED)
        self.assertEqual(p.buffered(), 0)

    def test_headers_case_insensitive_and_repeated(self):
        req = MessageParser().feed(DESCRIBE)[0]
        self.assertEqual(req.headers.get("cseq"), "2")
        self.assertEqual(req.headers["ACCEPT"], "application/sdp")
        self.assertEqual(req.version, "RTSP/1.0")

    def test_split_at_every_byte(self):
        for cut in range(1, len(STREAM)):
            p = MessageParser()
            items = p.feed(STREAM[:cut]) + p.feed(STREAM[cut:])
            self.assertEqual(describe(items), EXPECTED, f"cut at {cut}")

    def test_one_byte_at_a_time(self):
        p = MessageParser()
        items = []
        for i in range(len(STREAM)):
            items += p.feed(STREAM[i:i + 1])
        self.assertEqual(describe(items), EXPECTED)

    def test_bare_lf_line_ends(self):
        p = MessageParser()
        [req] = p.feed(b"OPTIONS * RTSP/1.0\nCSeq: 1\n\n")
        self.assertEqual((req.method, req.uri, req.cseq), ("OPTIONS", "*", "1"))

    def test_partial_frame_is_held(self):
        p = MessageParser()
        self.assertEqual(p.feed(b"$\x01\x00\x04ab"), [])
        self.assertEqual(describe(p.feed(b"cd")), [("bin", 1, b"abcd")])

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=6))
    def test_random_splits(self, cuts):
        cuts = sorted(set(cuts))
        p = MessageParser()
        items, last = [], 0
        for c in cuts + [len(STREAM)]:
            items += p.feed(STREAM[last:c])
            last = c
        self.assertEqual(describe(items), EXPECTED)


class BadInputTests(unittest.TestCase):
    def assertError(self, data, status):
        p = MessageParser()
        items = p.feed(data)
        self.assertIsInstance(items[-1], ParseError)
        self.assertEqual(items[-1].status, status)
        self.assertTrue(p.dead)
        self.assertEqual(p.feed(DESCRIBE), [], "a dead parser yields nothing more")
        return items[-1]

    def test_header_too_large(self):
        data = b"DESCRIBE rtsp://h/x RTSP/1.0\r\nX-Pad: " + b"a" * MAX_HEADER
        self.assertError(data, 400)

    def test_header_too_large_in_pieces(self):
        p = MessageParser()
        out = []
        for _ in range(20):
            out += p.feed(b"X" * 1000)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].status, 400)
        self.assertLessEqual(p.buffered(), MAX_HEADER + 4)

    def test_body_too_large(self):
        data = (b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nCSeq: 9\r\nContent-Length: "
                + str(MAX_BODY + 1).encode() + b"\r\n\r\n")
        err = self.assertError(data, 413)
        self.assertEqual(err.cseq, "9")

    def test_bad_content_length(self):
        self.assertError(b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nContent-Length: -4\r\n\r\n", 400)
        self.assertError(b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nContent-Length: 1e3\r\n\r\n", 400)

    def test_wrong_version(self):
        self.assertError(b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505)

    def test_http_request(self):
        self.assertError(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400)

    def test_garbage(self):
        self.assertError(b"\x00\x01\x02\xff\xfe\r\n\r\n", 400)
        self.assertError(b"NO SPACES\r\n\r\n", 400)
        self.assertError(b"OPTIONS * RTSP/1.0\r\nno colon here\r\n\r\n", 400)
        self.assertError(b"OPT(IONS * RTSP/1.0\r\n\r\n", 400)

    def test_error_after_good_request(self):
        p = MessageParser()
        items = p.feed(DESCRIBE + b"GET / HTTP/1.1\r\n\r\n" + DESCRIBE)
        self.assertIsInstance(items[0], Request)
        self.assertIsInstance(items[1], ParseError)
        self.assertEqual(len(items), 2)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_never_raises(self, data):
        p = MessageParser()
        for item in p.feed(data) + p.feed(data):
            self.assertIsInstance(item, (Request, Interleaved, ParseError))


class ResponseParsingTests(unittest.TestCase):
    def test_response_with_body_and_frames(self):
        body = b"v=0\r\n"
        data = build_response(200, [("CSeq", "4"), ("Content-Type", "application/sdp")], body)
        data += build_interleaved(2, b"rtp!")
        p = MessageParser("response")
        resp, frame = p.feed(data)
        self.assertIsInstance(resp, Response)
        self.assertEqual((resp.status, resp.reason, resp.body), (200, "OK", body))
        self.assertEqual(resp.headers["cseq"], "4")
        self.assertEqual((frame.channel, frame.data), (2, b"rtp!"))

    def test_bad_status_line(self):
        [err] = MessageParser("response").feed(b"RTSP/1.0 OK\r\n\r\n")
        self.assertEqual(err.status, 400)


class BuilderTests(unittest.TestCase):
    def test_build_response_bytes(self):
        self.assertEqual(
            build_response(454, [("CSeq", "7")]),
            b"RTSP/1.0 454 Session Not Found\r\nCSeq: 7\r\n\r\n")

    def test_build_request_bytes(self):
        self.assertEqual(
            build_request("ANNOUNCE", "rtsp://h/a", [("CSeq", "1")], b"xy"),
            b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 2\r\n\r\nxy")

    def test_interleaved(self):
        self.assertEqual(build_interleaved(1, b"ab"), b"$\x01\x00\x02ab")
        self.assertRaises(ValueError, build_interleaved, 0, b"x" * 65536)

    def test_transport(self):
        [tcp, udp] = parse_transport(
            "RTP/AVP/TCP;unicast;interleaved=0-1, RTP/AVP;unicast;client_port=5000-5001")
        self.assertEqual((tcp["spec"], tcp["interleaved"]), ("RTP/AVP/TCP", "0-1"))
        self.assertIn("unicast", udp)
        self.assertEqual(parse_range(udp["client_port"]), (5000, 5001))
        self.assertIsNone(parse_range("x-1"))
        self.assertIsNone(parse_range("70000-70001"))
