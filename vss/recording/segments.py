"""The files a recording writes, shared by the in-process writer (``vss.recording.live``)
and the child process (``vss.recording.child``): the ``.part`` file sealed at its close,
segment names aligned on UTC, timestamp continuity across a segment cut. The approach is
explained in ``vss.recording.recorder``."""

import errno
import os

from twisted.logger import Logger

from vss.recording.catalogue import (
    fsync_dir,
    scan_fmp4,
    segment_name,
)

log = Logger()

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
MP4_AUDIO = frozenset(("aac", "mp3", "opus", "alac", "flac", "ac3", "eac3"))
DISK_FULL = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
EXIT_DISK_FULL = 3
#: the environment variable that hands a recording child its live URL (it carries a token)
URL_ENV = "VSS_RECORD_URL"


def stream_name(channel, stream):
    """The stream part of a live path: ``main``/``sub``, ``chN-main`` for channel N > 0
    (``stream`` is 0/'main' or 1/'sub')."""
    name = stream if isinstance(stream, str) else ("main" if int(stream) == 0 else "sub")
    return f"ch{channel}-{name}" if channel else name



def raw_open(path):
    return open(path, "wb", buffering=0)  # noqa: SIM115 - closed by the segment


class PartFile:
    """A segment being written to ``<final>.part`` through ``self.file`` by the MP4
    muxer ``self.out``: sealed (fsync, keyframe scan, rename, directory fsync) or
    abandoned (deleted)."""

    def _seal(self):
        """fsync, close, read the keyframe offsets, rename to the final name, fsync the
        directory. Returns (bytes, keyframe offsets)."""
        os.fsync(self.file.fileno())
        self.file.close()
        with open(self.part, "rb") as f:
            info = scan_fmp4(f)
        os.replace(self.part, self.final)
        fsync_dir(os.path.dirname(self.final))
        return info["size"], info["fragments"]

    def abandon(self):
        for step in (self.out.close, self.file.close):
            try:
                step()
            except Exception:  # noqa: BLE001,S110 - the file is deleted anyway
                pass
        try:
            os.unlink(self.part)
        except FileNotFoundError:
            pass


class SegmentFile(PartFile):
    """One ``.part`` file being written by an MP4 muxer."""

    def __init__(self, final, start_ms, in_streams, base, opener):
        import av
        self.final = final
        self.base = base  # media time (s) of the cut, time zero of this file
        self.part = final + ".part"
        self.start_ms = start_ms
        self.frames = 0
        self.file = opener(self.part)
        self.out = av.open(self.file, "w", format="mp4",
                           options={"movflags": MOVFLAGS, "flush_packets": "1"})
        self.map = {}
        for s in in_streams:
            self.map[s.index] = (self.out.add_stream_from_template(s),
                                 int(base / s.time_base))

    def write(self, packet, video):
        out_stream, offset = self.map[packet.stream.index]
        packet.dts -= offset
        if packet.pts is not None:
            packet.pts -= offset
        if packet.dts < 0:
            return  # audio from before the cut
        packet.stream = out_stream
        self.out.mux(packet)
        if video:
            self.frames += 1

    def close(self):
        """Finish, fsync, rename. Returns (bytes, keyframe offsets)."""
        self.out.close()
        return self._seal()



def free_name(out_dir, start_ms):
    """``<UTC start>.mp4``, or ``<UTC start>-N.mp4`` if a file (closed or not) already
    has that name: a closed segment is never overwritten."""
    stem = os.path.join(out_dir, segment_name(start_ms))
    name, n = stem + ".mp4", 0
    while os.path.exists(name) or os.path.exists(name + ".part"):
        n += 1
        name = f"{stem}-{n}.mp4"
    return name


class Continuity:
    """Keeps each stream's timestamps increasing. FFmpeg's RTSP demuxer rebases a
    stream's timestamps when the first RTCP sender report arrives (a jump back or forth
    of up to a few hundred ms, a few seconds after joining), and a publisher that
    restarts its clock jumps too; the MP4 muxer refuses any dts that does not increase.
    A step back, or forward by more than ``MAX_JUMP`` seconds, is absorbed into a
    per-stream shift so the stream goes on one packet duration after its last packet; a
    smaller step forward is kept (the realignment, or time the camera really lost)."""

    MAX_JUMP = 5

    def __init__(self):
        self.state = {}  # stream index -> [shift, last dts, last step]

    def __call__(self, packet):
        st = self.state.get(packet.stream.index)
        if st is None:
            st = self.state[packet.stream.index] = [0, None, 1]
        dts = packet.dts + st[0]
        last = st[1]
        if last is not None:
            if dts <= last or (dts - last) * packet.time_base > self.MAX_JUMP:
                step = packet.duration or st[2]
                st[0] += last + step - dts
                dts = last + step
            else:
                st[2] = dts - last
        if packet.pts is not None:
            packet.pts += dts - packet.dts
        packet.dts = dts
        st[1] = dts


def close_segment(seg, end_ms, data_dir, emit):
    size, keyframes = seg.close()
    emit({"event": "segment", "path": os.path.relpath(seg.final, data_dir),
          "start_ms": seg.start_ms, "end_ms": end_ms, "bytes": size, "frames": seg.frames,
          "keyframes": keyframes})


