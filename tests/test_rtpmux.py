"""
The RTP depacketizers of the in-process recorder (``vss.recording.rtpmux``), against RTP
packets built by hand from RFC 6184 (H.264), RFC 7798 (H.265) and RFC 3640 (AAC).
"""

import base64
import random
import struct

from twisted.trial import unittest

from vss.recording import rtpmux
from vss.recording.live import inprocess_codec

SPS = b"\x67\x42\xc0\x1e\xda\x02\x80\xbf\xe5\x84\x00\x00\x03\x00\x04"
PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65\x88\x84" + bytes(range(200))
P1 = b"\x41\x9a\x02" + bytes(range(50))


def rtp(seq, ts, payload, marker=False, pt=96, padding=0, csrc=0, ext=b""):
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext else 0) | csrc
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, 0x1234)
    head += b"\0\0\0\1" * csrc
    if ext:
        head += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    tail = (b"\0" * (padding - 1) + bytes((padding,))) if padding else b""
    return head + payload + tail


def fu_a(nal, size):
    """FU-A payloads of one H.264 NAL cut in ``size``-byte parts."""
    body, ind = nal[1:], (nal[0] & 0xE0) | 28
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    out = []
    for i, part in enumerate(parts):
        fu = (nal[0] & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(parts) - 1 else 0)
        out.append(bytes((ind, fu)) + part)
    return out


def stap_a(*nals):
    return bytes((0x78,)) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


class H264Tests(unittest.TestCase):
    def setUp(self):
        self.d = rtpmux.H264Depacketizer()

    def feed(self, packets):
        out = []
        for p in packets:
            out.extend(self.d.push(p))
        return out

    def keyframe(self, seq, ts, fragment=60):
        """STAP-A (SPS, PPS) + the IDR in FU-A parts, marker on the last."""
        parts = fu_a(IDR, fragment)
        packets = [rtp(seq, ts, stap_a(SPS, PPS))]
        packets += [rtp(seq + 1 + i, ts, p, marker=i == len(parts) - 1)
                    for i, p in enumerate(parts)]
        return packets

    def test_single_nal_units_make_one_access_unit_at_the_marker(self):
        out = self.feed([rtp(1, 9000, SPS), rtp(2, 9000, PPS)])
        self.assertEqual(out, [])
        [au] = self.feed([rtp(3, 9000, IDR, marker=True)])
        self.assertEqual((au.ts, au.key, au.nals), (9000, True, [SPS, PPS, IDR]))
        self.assertEqual(au.annexb(), b"\0\0\0\1" + SPS + b"\0\0\0\1" + PPS + b"\0\0\0\1" + IDR)
        self.assertEqual(self.d.parameter_sets(), b"\0\0\0\1" + SPS + b"\0\0\0\1" + PPS)
        [p] = self.feed([rtp(4, 12600, P1, marker=True)])
        self.assertEqual((p.ts, p.key, p.nals), (12600, False, [P1]))
        self.assertEqual((self.d.units, self.d.lost, self.d.errors), (2, 0, 0))

    def test_stap_a_and_fu_a_start_middle_end(self):
        packets = self.keyframe(10, 3000)
        self.assertEqual(len(packets), 5)  # STAP-A + 4 fragments (start, 2 middle, end)
        [au] = self.feed(packets)
        self.assertEqual(au.nals, [SPS, PPS, IDR])  # the NAL header rebuilt from FU-A
        self.assertTrue(au.key)

    def test_a_new_timestamp_ends_a_picture_without_marker(self):
        out = self.feed([rtp(1, 0, SPS), rtp(2, 0, PPS), rtp(3, 0, IDR)])
        self.assertEqual(out, [])
        [au] = self.feed([rtp(4, 3600, P1)])
        self.assertEqual((au.ts, au.nals), (0, [SPS, PPS, IDR]))
        # the new timestamp ends the 3600 picture, the marker ends the 7200 one
        out = self.feed([rtp(5, 7200, P1, marker=True)])
        self.assertEqual([(p.ts, p.nals) for p in out], [(3600, [P1]), (7200, [P1])])

    def test_pictures_before_the_first_keyframe_are_skipped_not_lost(self):
        out = self.feed([rtp(1, 0, P1, marker=True), rtp(2, 3600, P1, marker=True)])
        self.assertEqual(out, [])
        [au] = self.feed(self.keyframe(3, 7200))
        self.assertTrue(au.key)
        self.assertEqual((self.d.skipped, self.d.lost), (2, 0))

    def test_a_lost_fragment_drops_the_picture_and_waits_for_a_keyframe(self):
        self.feed(self.keyframe(1, 0))
        key = self.keyframe(6, 3600)
        del key[2]  # an FU-A middle fragment is lost
        self.assertEqual(self.feed(key), [])
        self.assertEqual(self.d.gaps, 1)
        # the next pictures reference the broken one: dropped up to the keyframe
        self.assertEqual(self.feed([rtp(11, 7200, P1, marker=True),
                                    rtp(12, 10800, P1, marker=True)]), [])
        self.assertEqual(self.d.lost, 3)
        [au] = self.feed(self.keyframe(13, 14400))
        self.assertTrue(au.key)
        [p] = self.feed([rtp(18, 18000, P1, marker=True)])
        self.assertFalse(p.key)
        self.assertEqual((self.d.units, self.d.lost), (3, 3))

    def test_a_lost_marker_packet_damages_its_picture(self):
        self.feed(self.keyframe(1, 0))
        out = self.feed([rtp(6, 3600, P1), rtp(8, 7200, P1, marker=True)])  # 7 lost
        self.assertEqual(out, [])
        self.assertEqual(self.d.lost, 2)

    def test_a_fragment_without_its_start_is_dropped(self):
        self.feed(self.keyframe(1, 0))
        parts = fu_a(IDR, 60)
        out = self.feed([rtp(6, 3600, parts[1]), rtp(7, 3600, parts[2], marker=True)])
        self.assertEqual(out, [])
        self.assertEqual(self.d.lost, 1)

    def test_duplicate_and_late_packets_are_ignored(self):
        self.feed(self.keyframe(1, 0))
        [p] = self.feed([rtp(6, 3600, P1, marker=True), rtp(6, 3600, P1, marker=True),
                         rtp(3, 0, P1, marker=True)])
        self.assertEqual(p.ts, 3600)
        [p] = self.feed([rtp(7, 7200, P1, marker=True)])
        self.assertEqual((self.d.lost, self.d.gaps, self.d.errors), (0, 0, 2))

    def test_sequence_and_timestamp_wrap(self):
        ts = (1 << 32) - 3600
        out = self.feed(self.keyframe(65533, ts))  # sequence 65533 .. 1
        out += self.feed([rtp(2, ts + 3600, P1, marker=True),
                          rtp(3, ts + 7200, P1, marker=True)])
        self.assertEqual([a.ts for a in out], [ts, ts + 3600, ts + 7200])
        self.assertEqual(out[1].ts, 1 << 32)  # counts on past 2**32
        self.assertEqual((self.d.lost, self.d.gaps), (0, 0))

    def test_padding_csrc_and_header_extension(self):
        [au] = self.feed([rtp(1, 0, stap_a(SPS, PPS), csrc=2, ext=b"\1\2\3\4"),
                          rtp(2, 0, IDR, marker=True, padding=4)])
        self.assertEqual(au.nals, [SPS, PPS, IDR])

    def test_garbage_never_raises(self):
        self.feed(self.keyframe(1, 0))
        bad = [b"", b"\x80", b"\x00" * 40, rtp(6, 3600, b""), rtp(7, 3600, b"\x7c"),
               rtp(8, 3600, stap_a(SPS)[:-3] + b"\xff\xff"), rtp(9, 3600, b"\x78\x00"),
               rtp(10, 3600, b"\x19abc"),  # STAP-B: not in mode 1
               rtp(11, 3600, b"\x80", padding=200), b"\x90" + b"\x00" * 12]
        self.assertEqual(self.feed(bad), [])
        self.assertGreaterEqual(self.d.errors, 6)
        rnd = random.Random(7)
        for _ in range(3000):
            n = rnd.randrange(0, 80)
            self.d.push(bytes(rnd.randrange(256) for _ in range(n)))
        # still decodes the stream once it is sane again (the first keyframe after
        # the garbage may count as damaged: its sequence number follows no packet)
        out = self.feed(self.keyframe(100, 90000) + self.keyframe(105, 93600))
        self.assertEqual(out[-1].ts, 93600)
        self.assertTrue(out[-1].key)

    def test_a_unit_that_never_ends_is_bounded_and_dropped(self):
        self.patch(rtpmux, "MAX_UNIT_BYTES", 100_000)
        self.assertEqual(len(self.feed(self.keyframe(1, 0))), 1)
        parts = fu_a(b"\x41" + bytes(3000), 1000)
        endless = [rtp(10 + i, 3600, parts[0] if i == 0 else parts[1]) for i in range(500)]
        held = 0
        for p in endless:  # no marker, no end fragment, the same timestamp: 500 kB
            self.assertEqual(self.d.push(p), ())
            held = max(held, self.d.size + sum(map(len, self.d.nals))
                       + sum(map(len, self.d.fu or ())))
        self.assertLessEqual(held, 2 * 100_000)
        self.assertGreaterEqual(self.d.oversize, 1)
        # the next picture ends it: that one is lost, then the next keyframe plays
        self.assertEqual(self.feed([rtp(510, 7200, P1, marker=True)]), [])
        self.assertEqual(self.d.lost, 2)
        [au] = self.feed(self.keyframe(511, 10800))
        self.assertTrue(au.key)

    def test_in_band_parameter_sets_replace_the_sdp_ones(self):
        sdp = ("v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
               "a=fmtp:96 packetization-mode=1;sprop-parameter-sets="
               f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}\r\n")
        index, codec, d = rtpmux.video_depacketizer(sdp)
        self.assertEqual((index, codec), (0, "h264"))
        self.assertEqual(d.parameter_sets(), b"\0\0\0\1" + SPS + b"\0\0\0\1" + PPS)
        self.assertTrue(d.has_parameter_sets())
        sps2 = SPS[:-1] + b"\x05"
        d.push(rtp(1, 0, sps2))
        self.assertEqual(d.parameter_sets(), b"\0\0\0\1" + sps2 + b"\0\0\0\1" + PPS)


H265_VPS = b"\x40\x01\x0c\x01\xff\xff"
H265_SPS = b"\x42\x01\x01\x01\x60\x00"
H265_PPS = b"\x44\x01\xc1\x72"
H265_IDR = b"\x26\x01" + bytes(range(150))  # IDR_W_RADL (19)
H265_P = b"\x02\x01" + bytes(range(40))  # TRAIL_R (1)


class H265Tests(unittest.TestCase):
    def test_single_aggregation_and_fragmentation_units(self):
        d = rtpmux.H265Depacketizer()
        ap = b"\x60\x01" + b"".join(struct.pack("!H", len(n)) + n
                                    for n in (H265_VPS, H265_SPS, H265_PPS))
        body = H265_IDR[2:]
        fu_head = b"\x62\x01"  # type 49, layer 0, tid 1
        frags = [fu_head + bytes((0x80 | 19,)) + body[:50],
                 fu_head + bytes((19,)) + body[50:100],
                 fu_head + bytes((0x40 | 19,)) + body[100:]]
        out = []
        for i, p in enumerate([ap, *frags]):
            out.extend(d.push(rtp(i, 1000, p, marker=i == 3)))
        [au] = out
        self.assertEqual(au.nals, [H265_VPS, H265_SPS, H265_PPS, H265_IDR])
        self.assertTrue(au.key)
        self.assertEqual(d.parameter_sets(), b"".join(
            b"\0\0\0\1" + n for n in (H265_VPS, H265_SPS, H265_PPS)))
        [p] = d.push(rtp(4, 4600, H265_P, marker=True))
        self.assertFalse(p.key)
        # loss inside a fragmented picture: dropped, then wait for the keyframe
        self.assertEqual(list(d.push(rtp(5, 8200, frags[0])))
                         + list(d.push(rtp(7, 8200, frags[2], marker=True)))
                         + list(d.push(rtp(8, 11800, H265_P, marker=True))), [])
        self.assertEqual((d.lost, d.gaps), (2, 1))
        self.assertEqual(list(d.push(b"\x80\x60" + b"\0" * 11)), [])  # short: no raise

    def test_parameter_sets_from_the_sdp(self):
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        sdp = ("v=0\r\nm=audio 0 RTP/AVP 0\r\nm=video 0 RTP/AVP 97\r\n"
               "a=rtpmap:97 H265/90000\r\n"
               f"a=fmtp:97 sprop-vps={b64(H265_VPS)}; sprop-sps={b64(H265_SPS)}; "
               f"sprop-pps={b64(H265_PPS)}\r\n")
        index, codec, d = rtpmux.video_depacketizer(sdp)
        self.assertEqual((index, codec), (1, "hevc"))
        self.assertTrue(d.has_parameter_sets())
        self.assertIsNone(rtpmux.video_depacketizer(sdp.replace(
            "sprop-vps", "sprop-max-don-diff=2; sprop-vps")))


AAC_SDP = ("v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
           "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/8000/1\r\n"
           "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
           "indexdeltalength=3; config=1588\r\n")


def au_headers(sizes):
    bits = 0
    for s in sizes:
        bits = (bits << 16) | (s << 3)  # 13-bit size, 3-bit index(-delta) 0
    return struct.pack("!H", 16 * len(sizes)) + bits.to_bytes(2 * len(sizes), "big")


class AACTests(unittest.TestCase):
    def setUp(self):
        index, self.d = rtpmux.aac_depacketizer(AAC_SDP)
        self.assertEqual(index, 1)
        self.assertEqual((self.d.config, self.d.clock_rate), (b"\x15\x88", 8000))

    def test_several_access_units_in_one_packet(self):
        a, b = b"\x21" * 30, b"\x22" * 17
        out = self.d.push(rtp(1, 5000, au_headers([30, 17]) + a + b, marker=True))
        self.assertEqual(out, [(5000, a), (6024, b)])

    def test_a_fragmented_access_unit_is_joined(self):
        big = bytes(range(256)) * 8
        first = rtp(1, 100, au_headers([len(big)]) + big[:1000])
        rest = rtp(2, 100, au_headers([len(big)]) + big[1000:], marker=True)
        self.assertEqual(self.d.push(first), [])
        self.assertEqual(self.d.push(rest), [(100, big)])
        # the same with the second fragment lost: nothing, counted
        self.d.push(rtp(3, 2148, au_headers([len(big)]) + big[:1000]))
        self.assertEqual(self.d.push(rtp(5, 3172, au_headers([5]) + b"12345",
                                          marker=True)), [(3172, b"12345")])
        self.assertEqual(self.d.lost, 1)

    def test_a_fragment_longer_than_announced_is_dropped(self):
        self.d.push(rtp(1, 100, au_headers([1500]) + b"x" * 1000))
        for seq in range(2, 50):  # never the marker, always more
            self.assertEqual(self.d.push(rtp(seq, 100, au_headers([1500]) + b"x" * 1000)),
                             [])
            self.assertLessEqual(sum(map(len, self.d.frag[2])) if self.d.frag else 0, 1500)
        self.assertGreaterEqual(self.d.lost, 1)

    def test_garbage_never_raises(self):
        for p in (b"", rtp(1, 0, b""), rtp(2, 0, b"\x00\x10"), rtp(3, 0, b"\xff\xff\x00"),
                  rtp(4, 0, au_headers([500]) + b"short", marker=True)):
            self.assertEqual(self.d.push(p), [])
        self.assertGreaterEqual(self.d.errors, 4)

    def test_adts_header_matches_the_config(self):
        h = rtpmux.adts_header(b"\x15\x88", 100)  # AAC-LC, 8000 Hz (index 11), mono
        self.assertEqual(h[:2], b"\xff\xf1")
        self.assertEqual(h[2] >> 6, 1)  # profile: object type 2 - 1
        self.assertEqual((h[2] >> 2) & 0xF, 11)
        self.assertEqual(((h[2] & 1) << 2) | (h[3] >> 6), 1)
        self.assertEqual(((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5), 107)


class RTCPTests(unittest.TestCase):
    def test_sender_report_and_signed_differences(self):
        sr = struct.pack("!BBHIIII", 0x80, 200, 6, 7, 3_900_000_000, 1 << 31, 0xFFFFFF00) \
            + bytes(8)
        self.assertEqual(rtpmux.sender_report(sr), (3_900_000_000.5, 0xFFFFFF00))
        rr = struct.pack("!BBHI", 0x80, 201, 1, 7)
        for other in (rr, sr[:19], b"", b"\x40" + sr[1:]):
            self.assertIsNone(rtpmux.sender_report(other))
        self.assertEqual(rtpmux.signed32(0x100 - 0xFFFFFF00), 0x200)  # across a wrap
        self.assertEqual(rtpmux.signed32(0xFFFFFF00 - 0x100), -0x200)


class ChoiceTests(unittest.TestCase):
    """Which sources the recorder takes in process (the others go to a child)."""

    def test_codecs(self):
        h264 = "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        self.assertEqual(inprocess_codec(h264), "h264")
        self.assertEqual(inprocess_codec(AAC_SDP), "h264")
        self.assertEqual(inprocess_codec(h264 + "m=audio 0 RTP/AVP 0\r\n"), "h264")  # G.711
        self.assertEqual(inprocess_codec(h264.replace("H264", "H265")), "hevc")
        self.assertIsNone(inprocess_codec(
            h264 + "m=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"))
        self.assertIsNone(inprocess_codec("v=0\r\nm=video 0 RTP/AVP 26\r\n"))  # MJPEG
        self.assertIsNone(inprocess_codec(h264.replace("96 H264", "96 VP8")))
        self.assertIsNone(inprocess_codec(""))
        self.assertIsNone(inprocess_codec(
            h264 + "a=fmtp:96 packetization-mode=2\r\n"))
        # a garbage fmtp goes to a child (FFmpeg's own parsing) rather than raising
        self.assertIsNone(inprocess_codec(h264 + "a=fmtp:96 packetization-mode=x\r\n"))
        self.assertIsNone(inprocess_codec(
            h264.replace("H264", "H265") + "a=fmtp:96 sprop-max-don-diff=-\r\n"))
        self.assertEqual(inprocess_codec(h264 + "a=fmtp:96 packetization-mode=\r\n"),
                         "h264")
