"""
The server side of the browser client without sockets: the packager (one per stream,
the same bytes for every viewer, a late viewer starts at once from the last keyframe, a
viewer that does not read drops to the next keyframe), the media messages against
bytes written by hand from docs/protocol.md, the CU link over a WebSocket (the
link's byte stream cut into whole frames, one message each) and the HLS segments of a
stream.
"""

import io
import struct

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.test_web_fmp4 import encode, split_annexb
from vss.protocols import codec
from vss.protocols.messages import Empty, MsgType
from vss.rtsp.fanout import Source
from vss.rtsp.sdp import tracks
from vss.web import live
from vss.web.signalling import WebSocketTransport

SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
       "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:trackID=0\r\n")


def packets(units, start_ts=1000, step=3600, mtu=1200):
    """RTP packets (single NAL units and FU-A) of Annex B access units."""
    seq = 0
    out = []
    for i, (_pts, _key, data) in enumerate(units):
        nals = split_annexb(data)
        ts = start_ts + i * step
        for n, nal in enumerate(nals):
            last = n == len(nals) - 1
            chunks = [nal] if len(nal) <= mtu else None
            if chunks:
                out.append(_rtp(seq, ts, nal, last))
                seq += 1
                continue
            head, body = nal[0], nal[1:]
            parts = [body[k:k + mtu] for k in range(0, len(body), mtu)]
            for k, part in enumerate(parts):
                fu = (head & 0x1F) | (0x80 if k == 0 else 0) | (0x40 if k == len(parts) - 1 else 0)
                out.append(_rtp(seq, ts, bytes(((head & 0xE0) | 28, fu)) + part,
                                last and k == len(parts) - 1))
                seq += 1
    return out


def _rtp(seq, ts, payload, marker):
    return struct.pack(">BBHII", 0x80, 96 | (0x80 if marker else 0), seq & 0xFFFF, ts, 7) + payload


def messages(data):
    """The payloads of the unmasked WebSocket messages in ``data``."""
    out, i = [], 0
    while i < len(data):
        b1 = data[i + 1] & 0x7F
        j = i + 2
        if b1 == 126:
            b1, j = struct.unpack_from(">H", data, j)[0], j + 2
        elif b1 == 127:
            b1, j = struct.unpack_from(">Q", data, j)[0], j + 8
        out.append((data[i] & 0x0F, data[j:j + b1]))
        i = j + b1
    return out


class PackagerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.source = Source("/live/cam/main", SDP, tracks(SDP), self.clock)
        self.units = encode(frames=30, size=(320, 240), gop=10)
        self.packets = packets(self.units)

    def feed(self, upto_unit):
        ts_end = 1000 + upto_unit * 3600
        while self.packets and struct.unpack(">I", self.packets[0][4:8])[0] < ts_end:
            self.source.feed(0, False, self.packets.pop(0))
            self.clock.advance(0.001)

    def viewer(self, max_queue=None):
        t = StringTransport()
        v = live.WebViewer(t, max_queue=max_queue)
        return t, v

    def test_messages_bytes_and_decoding(self):
        import av

        p = live.Packager(self.source, self.clock)
        t1, v1 = self.viewer()
        t2, v2 = self.viewer()
        p.add_viewer(v1)
        p.add_viewer(v2)
        self.feed(30)
        self.assertEqual(t1.value(), t2.value())  # the same bytes for every viewer
        # a packager is a reader of the SS's source like any other: it counts in its stats
        self.assertEqual(self.source.stats()["lag_skips"], 0)
        msgs = messages(t1.value())
        self.assertEqual([op for op, _ in msgs], [2] * len(msgs))  # binary
        init = msgs[0][1]
        self.assertEqual(init[:1], b"I")
        codec_len = init[1]
        self.assertTrue(init[2:2 + codec_len].startswith(b"avc1."))
        frags = [m for _, m in msgs[1:]]
        self.assertEqual(len(frags), 30)  # each picture ends at its marker bit
        kind, flags, zero, ingest, dts = struct.unpack(">cBHQQ", frags[0][:20])
        self.assertEqual((kind, flags, zero, dts), (b"F", 1, 0, 0))
        self.assertEqual(ingest // 1000, 1_700_000_000)
        self.assertEqual(struct.unpack(">Q", frags[1][12:20])[0], 3600)
        mp4 = io.BytesIO(init[2 + codec_len:] + b"".join(f[20:] for f in frags))
        with av.open(mp4, format="mp4") as c:
            pictures = list(c.decode(video=0))
        self.assertEqual(len(pictures), 30)
        self.assertEqual((pictures[0].width, pictures[0].height), (320, 240))

    def test_a_late_viewer_starts_at_the_last_keyframe(self):
        p = live.Packager(self.source, self.clock)
        first_t, first = self.viewer()
        p.add_viewer(first)
        self.feed(15)  # keyframes at pictures 0 and 10; 14 complete pictures
        t, late = self.viewer()
        p.add_viewer(late)
        msgs = [m for _, m in messages(t.value())]
        self.assertEqual(msgs[0][:1], b"I")
        self.assertEqual(msgs[1][:2], b"F\x01")  # picture 10, a keyframe
        self.assertEqual(struct.unpack(">Q", msgs[1][12:20])[0], 10 * 3600)
        self.assertEqual(len(msgs), 1 + 5)  # pictures 10..14

    def test_a_viewer_that_does_not_read_drops_to_the_next_keyframe(self):
        p = live.Packager(self.source, self.clock)
        whole = sum(len(u[2]) for u in self.units)
        t, slow = self.viewer(max_queue=whole // 3)
        p.add_viewer(slow)
        self.feed(30)
        reader = slow.reader
        self.assertGreater(reader.drops, 0)
        self.assertLess(len(t.value()), whole // 3 + 2000)  # bounded, not every picture
        sent = [m for _, m in messages(t.value())]
        kinds = [m[:2] for m in sent]
        # after a drop it resumes with a keyframe
        i = next(k for k, m in enumerate(sent[1:], 1) if m[:1] == b"F" and
                 struct.unpack(">Q", m[12:20])[0] // 3600 != k - 1)
        self.assertEqual(kinds[i], b"F\x01")

    def test_other_codecs_are_refused_with_a_reason(self):
        sdp = SDP.replace("H264", "H265")
        source = Source("/live/cam/sub", sdp, tracks(sdp), self.clock)
        with self.assertRaises(live.Unsupported) as e:
            live.Packager(source, self.clock)
        self.assertIn("RTSP", str(e.exception))

    def test_hand_written_fragment_header(self):
        # docs/protocol.md, "Browser media": a keyframe that reached the SS at
        # 1700000000000 ms, decode time 3600
        head = struct.pack(">cBHQQ", b"F", 1, 0, 1_700_000_000_000, 3600)
        self.assertEqual(head.hex(" "), "46 01 00 00 00 00 01 8b cf e5 68 00 00 00 00 00 "
                         "00 00 0e 10")
        self.assertEqual(live.ws_frame(b"ab")[:2], b"\x82\x02")
        self.assertEqual(live.ws_frame(b"x" * 200)[:4], b"\x82\x7e\x00\xc8")


class FakeWebSocket:
    def __init__(self):
        self.transport = StringTransport()
        self.sent = []
        self.closed = None

    def sendMessage(self, payload, isBinary):
        self.sent.append((payload, isBinary))

    def sendClose(self, code):
        self.closed = code

    def dropConnection(self, abort):
        self.closed = "aborted"


class WebSocketTransportTests(unittest.TestCase):
    def test_one_frame_per_message_whatever_the_writes(self):
        ws = FakeWebSocket()
        t = WebSocketTransport(ws)
        a = codec.encode_request(MsgType.KEEPALIVE, Empty(), 1)
        b = codec.encode_response(MsgType.KEEPALIVE, Empty(), 7)
        t.write(a + b)  # two frames in one write
        t.write(a[:5])  # a frame cut in two
        self.assertEqual(ws.sent, [(a, True), (b, True)])
        t.write(a[5:])
        self.assertEqual(ws.sent[-1], (a, True))
        self.assertEqual(len(ws.sent), 3)
        self.assertEqual(a.hex(" "), "56 53 01 00 00 03 00 00 00 00 00 01 00 00 00 02 00 00")

    def test_peer_and_close(self):
        ws = FakeWebSocket()
        t = WebSocketTransport(ws)
        self.assertEqual(t.getPeer(), ws.transport.getPeer())
        t.loseConnection()
        self.assertEqual(ws.closed, 1000)
        t.write(codec.encode_request(MsgType.KEEPALIVE, Empty(), 1))
        self.assertEqual(ws.sent, [])  # nothing after the close


class HlsStreamTests(unittest.TestCase):
    """The HLS segments of a stream (``vss.web.hls.HlsStream``) from its packager."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.source = Source("/live/cam/main", SDP, tracks(SDP), self.clock)
        # 25 pictures a second, a keyframe every 10 (0.4 s): segments of 3 GOPs (>= 1 s)
        self.units = encode(frames=100, size=(320, 240), gop=10)
        self.packets = packets(self.units)

    def test_segments_of_whole_gops_in_a_playlist_an_hls_demuxer_reads(self):
        import av

        from vss.web import hls

        packager = live.Packager(self.source, self.clock)
        stream = hls.HlsStream("/live/cam/main", packager)
        for packet in self.packets:
            self.source.feed(0, False, packet)
        # pictures 0-99: keyframes every 10; a segment closes at the first keyframe 1 s
        # or more after its start: 0-29, 30-59, 60-89 (90-99 still being built)
        self.assertEqual([s.seq for s in stream.segments], [0, 1, 2])
        self.assertEqual([round(s.duration, 3) for s in stream.segments], [1.2] * 3)
        playlist = stream.media_playlist("session=x").decode().splitlines()
        self.assertEqual(playlist[:7], [
            "#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2",
            "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-DISCONTINUITY-SEQUENCE:0",
            "#EXT-X-INDEPENDENT-SEGMENTS", '#EXT-X-MAP:URI="init-0.mp4?session=x"'])
        self.assertEqual(playlist[7:9], ["#EXTINF:1.200,", "0.m4s?session=x"])
        mp4 = io.BytesIO(stream.inits[0] + b"".join(stream.segment(n) for n in (0, 1, 2)))
        with av.open(mp4, format="mp4") as c:
            pictures = list(c.decode(video=0))
        self.assertEqual(len(pictures), 90)
        self.assertTrue(stream.segment(0).startswith(struct.pack(">I", 100) + b"moof"))
        self.assertIsNone(stream.segment(3))
        # at most KEEP + 1 kept, KEEP listed
        more = packets(self.units * 4, start_ts=1000 + 100 * 3600)
        split = 1000 + 400 * 3600
        for packet in more:
            if struct.unpack(">I", packet[4:8])[0] < split:
                self.source.feed(0, False, packet)
        self.assertEqual(len(stream.segments), hls.KEEP + 1)
        listed = [ln for ln in stream.media_playlist("q").decode().splitlines()
                  if ln.endswith(".m4s?q")]
        self.assertEqual(len(listed), hls.KEEP)
        self.assertEqual(listed[-1], f"{stream.segments[-1].seq}.m4s?q")
        # a GOP too big to keep is dropped, the next one kept
        stream.max_segment_bytes = len(stream.segments[-1].data) // 4
        kept = len(stream.segments)
        last = stream.segments[-1].seq
        for packet in more:
            if struct.unpack(">I", packet[4:8])[0] >= split:
                self.source.feed(0, False, packet)
        self.assertGreater(stream.dropped, 0)
        # only the segment built before the bound was set closes; nothing after it
        self.assertEqual(stream.segments[-1].seq, last + 1)
        self.assertEqual(len(stream.segments), kept)
        self.assertLessEqual(stream.building_bytes, stream.max_segment_bytes)
        stream.close()
        self.assertEqual(packager.viewers, [])
