"""
The fragmented MP4 writer of the browser client (``vss.web.fmp4``): an SPS read by hand
from its bits, box layouts against hand-counted bytes, and the honest check: H.264
encoded by libx264, packaged here, decoded by FFmpeg (PyAV) with every picture, its size
and its time.
"""

import io
import struct
from fractions import Fraction

from twisted.trial import unittest

from vss.web import fmp4

# An SPS of libx264 at 640x360, Constrained Baseline 3.0 (profile 66), written by hand
# from ITU-T H.264 7.3.2.1.1: id 0, log2_max_frame_num 4, POC type 2, 3 ref frames,
# 40 x 23 macroblocks, frame_mbs_only, direct_8x8, cropping bottom 4 (2 x 4 = 8 lines),
# no VUI.
#   ue(0)=1  ue(0)=1  ue(2)=011  ue(3)=00100  0  ue(39)=00000101000  ue(22)=000010111
#   1 1 1 ue(0)=1 ue(0)=1 ue(0)=1 ue(4)=00101 0 then the stop bit 1
SPS_BITS = "1" "1" "011" "00100" "0" "00000101000" "000010111" "1" "1" "1" "1" "1" "1" \
    "00101" "0" "1"


def sps_640x360():
    bits = SPS_BITS + "0" * (-len(SPS_BITS) % 8)
    body = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes((0x67, 66, 0xC0, 30)) + body


def boxes(data):
    """[(type, payload)] of the top-level boxes of ``data``."""
    out, i = [], 0
    while i < len(data):
        size, kind = struct.unpack_from(">I4s", data, i)
        out.append((kind, data[i + 8:i + size]))
        i += size
    return out


def encode(frames=30, size=(320, 240), fps=25, gop=10):
    """H.264 access units (Annex B) from libx264: [(pts in 1/fps, keyframe, bytes)]."""
    import av

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = size
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop), "bf": "0"}
    out = []
    for i in range(frames):
        frame = av.VideoFrame(size[0], size[1], "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 7) % 256]) * plane.buffer_size)
        frame.pts = i
        frame.time_base = codec.time_base
        out += [(p.pts, p.is_keyframe, bytes(p)) for p in codec.encode(frame)]
    out += [(p.pts, p.is_keyframe, bytes(p)) for p in codec.encode(None)]
    return out


def split_annexb(data):
    parts = data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [p for p in parts if p]


class SpsTests(unittest.TestCase):
    def test_hand_written_sps(self):
        info = fmp4.parse_sps(sps_640x360())
        self.assertEqual((info["width"], info["height"]), (640, 360))
        self.assertEqual((info["profile"], info["level"]), (66, 30))
        self.assertEqual(fmp4.codec_string(sps_640x360()), "avc1.42c01e")

    def test_emulation_prevention_removed(self):
        self.assertEqual(fmp4.unescape(b"\x67\x00\x00\x03\x01\x00\x00\x03"),
                         b"\x67\x00\x00\x01\x00\x00")

    def test_bad_input_is_value_error(self):
        for bad in (b"", b"\x68\x42\xc0\x1e\xff", b"\x67\x42\xc0\x1e", b"\x67\x42\xc0\x1e\x00"):
            with self.assertRaises(ValueError):
                fmp4.parse_sps(bad)

    def test_libx264_sps_sizes(self):
        for size in ((320, 240), (640, 360), (1280, 720)):
            units = encode(frames=1, size=size)
            sps = [n for n in split_annexb(units[0][2]) if n[0] & 0x1F == 7][0]
            info = fmp4.parse_sps(sps)
            self.assertEqual((info["width"], info["height"]), size)


class BoxTests(unittest.TestCase):
    def test_fragment_layout(self):
        sample = b"\x00\x00\x00\x02\x65\x88"
        data = fmp4.fragment(7, 90000 * 3600, 3600, sample, True)
        (moof, moof_body), (mdat, mdat_body) = boxes(data)
        self.assertEqual((moof, mdat), (b"moof", b"mdat"))
        self.assertEqual(len(moof_body) + 8, 100)
        self.assertEqual(mdat_body, sample)
        # mfhd: version/flags 0, sequence 7
        self.assertEqual(moof_body[:16], b"\x00\x00\x00\x10mfhd\x00\x00\x00\x00\x00\x00\x00\x07")
        traf = moof_body[16:]
        self.assertEqual(traf[:8], b"\x00\x00\x00\x4ctraf")
        # tfhd: default-base-is-moof, track 1
        self.assertEqual(traf[8:24], b"\x00\x00\x00\x10tfhd\x00\x02\x00\x00\x00\x00\x00\x01")
        # tfdt version 1: 64-bit decode time
        self.assertEqual(traf[24:44], b"\x00\x00\x00\x14tfdt\x01\x00\x00\x00"
                         + (90000 * 3600).to_bytes(8, "big"))
        # trun: flags 0x701, one sample, data offset 108 (moof + mdat header), duration
        # 3600, size 6, flags of a sync sample
        self.assertEqual(traf[44:], b"\x00\x00\x00\x20trun\x00\x00\x07\x01\x00\x00\x00\x01"
                         b"\x00\x00\x00\x6c\x00\x00\x0e\x10\x00\x00\x00\x06\x02\x00\x00\x00")
        delta = fmp4.fragment(8, 0, 3600, sample, False)
        self.assertEqual(delta[96:100], b"\x01\x01\x00\x00")

    def test_sample_leaves_out_aud_and_parameter_sets(self):
        nals = [b"\x09\xf0", b"\x67\x42", b"\x68\xce", b"\x65\x88\x84"]
        self.assertEqual(fmp4.avcc_sample(nals), b"\x00\x00\x00\x03\x65\x88\x84")

    def test_init_segment_boxes(self):
        init = fmp4.init_segment(sps_640x360(), b"\x68\xce\x38\x80")
        kinds = [k for k, _ in boxes(init)]
        self.assertEqual(kinds, [b"ftyp", b"moov"])
        moov = boxes(init)[1][1]
        self.assertEqual([k for k, _ in boxes(moov)], [b"mvhd", b"trak", b"mvex"])
        self.assertIn(b"avcC\x01\x42\xc0\x1e\xff\xe1", init)
        self.assertIn(struct.pack(">HH", 640, 360), init)


class DecodeTests(unittest.TestCase):
    """What FFmpeg makes of the packaged stream: every picture, its size, its time."""

    def package(self, units, fps=25, start_ts=123_456_789):
        step = 90000 // fps
        out = io.BytesIO()
        init = None
        for i, (_pts, key, data) in enumerate(units):
            nals = split_annexb(data)
            if init is None:
                sps = [n for n in nals if n[0] & 0x1F == 7][0]
                pps = [n for n in nals if n[0] & 0x1F == 8][0]
                init = fmp4.init_segment(sps, pps)
                out.write(init)
            out.write(fmp4.fragment(i + 1, start_ts + i * step, step,
                                    fmp4.avcc_sample(nals), key))
        return out.getvalue()

    def test_pyav_decodes_every_picture_at_its_time(self):
        import av

        units = encode(frames=30, size=(320, 240), gop=10)
        self.assertEqual(len(units), 30)
        data = self.package(units)
        with av.open(io.BytesIO(data), format="mp4") as c:
            v = c.streams.video[0]
            self.assertEqual(v.codec_context.name, "h264")
            frames = list(c.decode(v))
        self.assertEqual(len(frames), 30)
        self.assertEqual({(f.width, f.height) for f in frames}, {(320, 240)})
        times = [float(f.pts * f.time_base) for f in frames]
        self.assertAlmostEqual(times[0], 123_456_789 / 90000, places=3)
        steps = {round(b - a, 4) for a, b in zip(times, times[1:], strict=False)}
        self.assertEqual(steps, {0.04})
        # the pictures are the ones encoded: their grey levels step by 7
        greys = [bytes(f.planes[0])[0] for f in frames]
        self.assertEqual([g // 7 for g in greys[:4]], [0, 1, 2, 3])  # coded as grey levels

    def test_a_viewer_joining_at_a_later_keyframe_decodes(self):
        import av

        units = encode(frames=30, size=(320, 240), gop=10)
        keys = [i for i, u in enumerate(units) if u[1]]
        self.assertEqual(keys, [0, 10, 20])
        # a late viewer gets the init segment and the fragments from the 2nd keyframe
        init = self.package(units[:1])
        first = boxes(init)
        init_only = b"".join(struct.pack(">I4s", len(p) + 8, k) + p
                             for k, p in first if k in (b"ftyp", b"moov"))
        late = io.BytesIO()
        late.write(init_only)
        for i in range(10, 30):
            late.write(fmp4.fragment(i, i * 3600, 3600,
                                     fmp4.avcc_sample(split_annexb(units[i][2])), units[i][1]))
        with av.open(io.BytesIO(late.getvalue()), format="mp4") as c:
            frames = list(c.decode(video=0))
        self.assertEqual(len(frames), 20)
