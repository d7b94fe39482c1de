"""
An export across segments that overlap or abut (``vss.recording.export.remux``), on real
fragmented MP4 files: a segment salvaged by an older version started at its whole second,
up to a second before the segment it follows ended; segments written by the in-process
writer (90 kHz) and by a child (another time base) follow each other. The export must
decode with PyAV, every stream's timestamps must increase, and no picture may be squeezed
onto the one before it.
"""

import os
from fractions import Fraction

from twisted.trial import unittest

from vss.recording.export import remux

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

T0 = 1_700_000_000_000
FPS = 25
FRAME_MS = 1000 // FPS


def write_segment(path, seconds, time_base, audio=False, first=0):
    """Blocking: an fMP4 file as the recorder writes them (a fragment at each keyframe,
    one every 2 s, no B-frames), ``seconds`` long, 320x240 at 25 fps, video in
    ``time_base``, with AAC audio when asked; pictures numbered from ``first``."""
    src = av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi")
    frames = src.decode(video=0)
    for _ in range(first):
        next(frames)
    with av.open(path, "w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
        st.codec_context.time_base = Fraction(1, FPS)
        st.time_base = time_base
        st.options = {"preset": "ultrafast", "g": str(2 * FPS), "sc_threshold": "0",
                      "bf": "0"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=8000)
            a.layout = "mono"
            tone = av.open("sine=frequency=440:sample_rate=8000", format="lavfi")
            samples = tone.decode(audio=0)
        apts = 0
        for n in range(seconds * FPS):
            frame = next(frames).reformat(format="yuv420p")
            frame.pict_type = av.video.frame.PictureType.NONE
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            for packet in st.encode(frame):
                out.mux(packet)
            while a is not None and apts < (n + 1) * 8000 // FPS:
                chunk = next(samples)
                # the AAC encoder starts 1024 samples early: start at 0, as the recorder does
                chunk.pts, chunk.time_base = apts + 1024, Fraction(1, 8000)
                apts += chunk.samples
                for packet in a.encode(chunk):
                    out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
        if a is not None:
            for packet in a.encode(None):
                out.mux(packet)
            tone.close()
    src.close()


def examine(path):
    """Blocking: (decoded picture times in ms, {stream type: its dts in order})."""
    with av.open(path) as c:
        times = [round(f.time * 1000) for f in c.decode(video=0)]
    dts = {}
    with av.open(path) as c:
        for p in c.demux():
            if p.dts is not None:
                dts.setdefault(p.stream.type, []).append(p.dts)
    return times, dts


class OverlapTests(unittest.TestCase):
    def setUp(self):
        if av is None:
            raise unittest.SkipTest("PyAV is not installed")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def segment(self, name, seconds=4, time_base=Fraction(1, 90000), audio=False, first=0):
        path = os.path.join(self.dir, name)
        write_segment(path, seconds, time_base, audio, first)
        return path

    def export(self, parts, frm, to, audio=False):
        out = os.path.join(self.dir, "export.mp4")
        duration, frames = remux(parts, out, frm, to)
        times, dts = examine(out)
        self.assertEqual(len(times), frames)
        self.assertEqual(set(dts), {"video", "audio"} if audio else {"video"})
        for kind, values in dts.items():
            self.assertTrue(all(a < b for a, b in zip(values, values[1:], strict=False)),
                            f"{kind} dts do not increase")
        return duration, times

    def test_a_segment_that_starts_before_the_previous_ended(self):
        """The previous segment ran to 4.000 s; the next (salvaged by an older version)
        says it started at 3.772 s: the first one ends at 3.772 s, then the second is
        written whole, its timestamps following on."""
        a = self.segment("a.mp4", audio=True)
        b = self.segment("b.mp4", audio=True, first=100)
        second = T0 + 4000 - 228
        duration, times = self.export([(a, T0), (b, second)], T0, T0 + 8000, audio=True)
        kept = -(-(4000 - 228) // FRAME_MS)  # pictures of the first before 3.772 s
        self.assertEqual(times, [FRAME_MS * i for i in range(kept)]
                         + [3772 + FRAME_MS * i for i in range(100)])
        self.assertEqual(duration, 3772 + 4000)

    def test_abutting_segments_of_different_time_bases(self):
        """An in-process segment (90 kHz) then one a child wrote (1/12800), and back."""
        a = self.segment("a.mp4", time_base=Fraction(1, 90000))
        b = self.segment("b.mp4", time_base=Fraction(1, 12800), first=100)
        c = self.segment("c.mp4", time_base=Fraction(1, 90000), first=200)
        duration, times = self.export([(a, T0), (b, T0 + 4000), (c, T0 + 8000)],
                                      T0, T0 + 12000)
        self.assertEqual(times, [FRAME_MS * i for i in range(300)])
        self.assertEqual(duration, 12000)

    def test_segments_of_one_start_and_one_inside_another(self):
        """Two recordings of one stream (same start): the later listed one is written;
        a segment inside another cuts the first where it starts."""
        a = self.segment("a.mp4")
        b = self.segment("b.mp4", first=100)
        c = self.segment("c.mp4", seconds=2, first=200)
        duration, times = self.export([(a, T0), (b, T0)], T0, T0 + 4000)
        self.assertEqual((times, duration), ([FRAME_MS * i for i in range(100)], 4000))
        duration, times = self.export([(a, T0), (c, T0 + 1000)], T0, T0 + 4000)
        self.assertEqual((times, duration), ([FRAME_MS * i for i in range(75)], 3000))

    def test_an_export_that_starts_inside_the_overlap(self):
        """From a time the first segment covers and the second too: the first's GOP is
        not needed past the second's start, so the export begins at the second's
        keyframe."""
        a = self.segment("a.mp4", audio=True)
        b = self.segment("b.mp4", audio=True, first=100)
        second = T0 + 4000 - 500
        duration, times = self.export([(a, T0), (b, second)], second + 100, second + 4000,
                                      audio=True)
        self.assertEqual((times, duration), ([FRAME_MS * i for i in range(100)], 4000))
