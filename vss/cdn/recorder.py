"""
The recording interface of the CDN module: the only path from the RGM to the SS for
recording. ``Recorder.start(device, channel, stream, segment_seconds)``, ``stop(...)``,
``status()``.

How a recording is written (the approach, and why):

- IN PROCESS when the source's video is H.264 or H.265 (``mode="auto"``, the default;
  the SDP says which): the recording is a READER of the SS's ``Source``, like a TCP
  viewer but writing files (``_LiveWriter``). It gets the very ``Frame`` batches every
  viewer gets, depacketizes them (``vss.cdn.rtpmux``: H.264/H.265 access units, AAC
  frames; G.711 cannot go into MP4 and is left out) and muxes the access units with
  PyAV's MP4 muxer in the reactor thread. Why: the child below costs about 0.75 % of a
  core per 4 Mb/s stream, almost all of it the loopback RTSP hop (FFmpeg's RTSP client,
  a second depacketizer) and a process per stream; depacketizing and muxing here costs
  a fraction of that (docs/performance.md, "Recording"). Writes go to the page cache
  (fine in the reactor); the fsync, keyframe scan and rename at each segment close run
  in a thread (``in_thread``), so the reactor never waits on the disk. So does the codec
  probe (FFmpeg decodes a keyframe to learn the picture size: ~5 ms at 720p, more at
  4K) at the first keyframe and whenever the parameter sets change; what arrives
  meanwhile is held in order (bounded, ``MAX_BACKLOG_BYTES``) and written once it
  answers. The reader has no queue: it never drops; the depacketizer counts the
  pictures a packet loss makes useless (it drops up to the next keyframe) in ``frames_lost`` (``status()``). A
  source that ends closes the open segment and the recording waits for the source to
  come back, retried every ``restart_delay`` seconds.
- In a CHILD PROCESS otherwise (another video codec, audio MP4 keeps that is not AAC,
  or ``mode="process"``): ``python -m vss.cdn.recorder``, like the PU's publisher
  (``vss.pu.media``): PyAV/FFmpeg calls block and use CPU; in a child they never stall
  the node's reactor, they use another core, and a crash or kill -9 of one recording
  costs only that recording. The child is an ordinary viewer of this node's OWN
  streaming server: it opens the live path
  (``rtsp://<node>/live/<device>/<stream>?token=<play token>``, RTP over TCP) with
  PyAV. The URL carries a token, so it is passed in the environment
  (``VSS_RECORD_URL``), never on the command line. Audio is kept when MP4 can carry it
  without transcoding (AAC, Opus, MP3...).

Both write the same files:

- Packets are REMUXED, never decoded nor transcoded, into fragmented MP4
  (``movflags=frag_keyframe+empty_moov+default_base_moof``): the header is written first
  and every keyframe starts a self-contained fragment (moof + mdat), so a file cut
  short by a crash is still playable up to its last complete fragment, and a player can
  seek by fragment.
- Segments are aligned on UTC multiples of ``segment_seconds`` since the epoch (5-minute
  files start at :00, :05...): a segment is cut at the first video keyframe at or after
  the next boundary, so the first one may be shorter; the segment clock is the wall
  clock at the first packet plus the stream's media time (in process: the RTP
  timestamps: video is placed on the wall clock at its first picture, the time the SS
  got it, so frames replayed from the source's GOP cache or the pre-event buffer keep
  theirs; audio is placed against the video by the publisher's RTCP sender reports of
  both tracks once they came (lip sync as captured), before that by the arrival of its
  first packet, which leaves the tracks' arrival skew in the file). Timestamps
  are rebased so each file starts at 0. It is written to ``<name>.mp4.part`` (every
  fragment flushed to the kernel), and when it closes it is fsynced, renamed to
  ``<name>.mp4`` and the directory fsynced. Names are
  ``<data_dir>/recordings/<device>/<stream>/<YYYYMMDDTHHMMSS.fffZ>.mp4`` (the segment's UTC
  start to the millisecond: a ``.part`` salvaged after a crash gets its start back from
  its name, so it abuts the segment before it as it did when written).
- For each closed segment (start, end, bytes, frames, keyframe offsets read from the
  file's moof/tfdt boxes) the recorder adds a catalogue row (``vss.cdn.catalogue``);
  the child reports it as one JSON line on stdout.
- A full disk (ENOSPC, EDQUOT, EFBIG while writing or syncing) deletes the open
  ``.part`` (closed segments are never written again); the recorder raises the alarm
  (log + ``status()``), refuses new recordings until ``clear_alarm()`` or a retention
  pass frees space, and that recording stops writing (a child exits with
  ``EXIT_DISK_FULL`` and is not restarted). Any other end of a wanted recording is
  retried after ``restart_delay`` seconds (the source may come back).

Pre-event buffer (``prebuffer``/``unprebuffer``, asked by the RGM for a channel in
EVENT mode with pre-event seconds): a ``_PreBuffer`` reader keeps the last seconds of the
source's frames in memory (from a keyframe, bounded in bytes); an in-process recording
of that stream replays them first, each at the wall clock the SS got it, so the event's
first segment starts up to that many seconds before the event.

Limits of the in-process path: RTP timestamps are presentation times and the writer
takes them as decoding order, so a stream with B-frames (its timestamps step back) is
handed over to a child after ``MAX_REORDERS`` small steps back (the few pictures written
in process are dropped); surveillance cameras rarely send B-frames. H.264 interleaved
mode and H.265 with DONL go to a child from the start.
"""

import errno
import io
import json
import os
import signal
import sys
import time
from collections import deque
from fractions import Fraction

from twisted.internet import defer, protocol, threads
from twisted.logger import Logger

from vss.cdn import rtpmux
from vss.cdn.catalogue import RECORDINGS, Catalogue, Segment, fsync_dir, scan_fmp4, segment_name
from vss.errors import VssError
from vss.protocols.codes import ResultCode
from vss.redact import redact
from vss.rtsp import ffmpeg_options
from vss.rtsp.fanout import Frame

log = Logger()

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
MP4_AUDIO = frozenset(("aac", "mp3", "opus", "alac", "flac", "ac3", "eac3"))
DISK_FULL = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
EXIT_DISK_FULL = 3
MAX_LINE = 1 << 16  # a child's JSON line is far shorter
URL_ENV = "VSS_RECORD_URL"


def stream_name(channel, stream):
    """The stream part of a live path: ``main``/``sub``, ``chN-main`` for channel N > 0
    (``stream`` is 0/'main' or 1/'sub')."""
    name = stream if isinstance(stream, str) else ("main" if int(stream) == 0 else "sub")
    return f"ch{channel}-{name}" if channel else name


# -- the child: one recording -----------------------------------------------------------

def _raw_open(path):
    return open(path, "wb", buffering=0)  # noqa: SIM115 - closed by the segment


class _PartFile:
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


class _SegmentFile(_PartFile):
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


def record(url, data_dir, out_rel, segment_seconds, emit, should_stop=lambda: False,
           opener=_raw_open, wall=time.time, open_timeout=10):
    """Blocking: record ``url`` into fMP4 segments under ``data_dir/out_rel`` until the
    input ends or ``should_stop()``; ``emit(dict)`` reports events. Returns an exit
    code (0, 1 error, ``EXIT_DISK_FULL``)."""
    import av

    out_dir = os.path.join(data_dir, out_rel)
    os.makedirs(out_dir, exist_ok=True)
    # the node's own SS (recorder.media_base: this machine), or a file
    options = ffmpeg_options(url, own_server=True) if url.startswith("rtsp") else {}
    try:
        inp = av.open(url, options=options, timeout=open_timeout)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"cannot open the stream: {e}"})
        return 1
    seg = None
    try:
        if not inp.streams.video:
            emit({"event": "error", "message": "the stream has no video"})
            return 1
        video = inp.streams.video[0]
        streams = [video]
        for a in inp.streams.audio:
            if a.codec_context.name in MP4_AUDIO:
                streams.append(a)
            else:
                emit({"event": "note", "message": f"audio {a.codec_context.name} is not "
                      "recorded (MP4 cannot carry it without transcoding)"})
        emit({"event": "started", "video": video.codec_context.name,
              "audio": [s.codec_context.name for s in streams[1:]]})
        smooth = _Continuity()
        seg_ms = max(1, int(segment_seconds * 1000))
        cut_ms = None
        anchor = None  # (wall ms, media seconds) at the first packet
        last_end = None
        for packet in inp.demux(streams):
            if should_stop():
                break
            if packet.dts is None or packet.size == 0:
                continue
            smooth(packet)
            is_video = packet.stream.index == video.index
            t = packet.dts * packet.time_base
            if anchor is None:
                anchor = (wall() * 1000, t)
            if is_video:
                last_end = t + (packet.duration or 0) * packet.time_base
                at_ms = int(anchor[0] + (t - anchor[1]) * 1000)
                if packet.is_keyframe and (seg is None or at_ms >= cut_ms):
                    cut_ms = (at_ms // seg_ms + 1) * seg_ms  # the next UTC boundary
                    if seg is not None:
                        _close(seg, at_ms, data_dir, emit)
                        seg = None
                    seg = _SegmentFile(_free_name(out_dir, at_ms), at_ms, streams, t,
                                       opener)
                    emit({"event": "open", "path": os.path.relpath(seg.part, data_dir),
                          "start_ms": at_ms})
            if seg is not None:
                seg.write(packet, is_video)
        if seg is not None:
            end_ms = int(anchor[0] + (last_end - anchor[1]) * 1000)
            s, seg = seg, None
            _close(s, end_ms, data_dir, emit)
        return 0
    except OSError as e:
        if e.errno in DISK_FULL:
            if seg is not None:
                seg.abandon()
            emit({"event": "disk_full", "message": str(e)})
            return EXIT_DISK_FULL
        emit({"event": "error", "message": str(e)})
        if seg is not None:
            seg.abandon()
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        if seg is not None:
            seg.abandon()
        return 1
    finally:
        try:
            inp.close()
        except Exception:  # noqa: BLE001,S110
            pass


def _free_name(out_dir, start_ms):
    """``<UTC start>.mp4``, or ``<UTC start>-N.mp4`` if a file (closed or not) already
    has that name: a closed segment is never overwritten."""
    stem = os.path.join(out_dir, segment_name(start_ms))
    name, n = stem + ".mp4", 0
    while os.path.exists(name) or os.path.exists(name + ".part"):
        n += 1
        name = f"{stem}-{n}.mp4"
    return name


class _Continuity:
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


def _close(seg, end_ms, data_dir, emit):
    size, keyframes = seg.close()
    emit({"event": "segment", "path": os.path.relpath(seg.final, data_dir),
          "start_ms": seg.start_ms, "end_ms": end_ms, "bytes": size, "frames": seg.frames,
          "keyframes": keyframes})


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="Record one live stream (URL in "
                                 f"{URL_ENV}) into fragmented MP4 segments.")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True, help="directory relative to the data dir")
    ap.add_argument("--segment", type=float, default=300.0)
    args = ap.parse_args(argv)
    url = os.environ.get(URL_ENV)
    if not url:
        print(f"{URL_ENV} is not set", file=sys.stderr)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    def emit(event):  # an error may quote the URL: its token never reaches the log
        sys.stdout.write(redact(json.dumps(event, separators=(",", ":"))) + "\n")
        sys.stdout.flush()

    return record(url, args.data_dir, args.out, args.segment, emit,
                  should_stop=lambda: bool(stopping))


# -- in process: a reader of the SS's own source ------------------------------------------

VIDEO_CLOCK = 90000
PROBE = {"probesize": "32", "analyzeduration": "0"}
# audio MP4 carries that the in-process path does not depacketize: such a source goes to
# a child, which keeps it
CHILD_AUDIO = frozenset(("OPUS", "MP4A-LATM", "MPA", "MP3", "AC3", "EAC3"))


def inprocess_codec(sdp):
    """The video codec (``h264``/``hevc``) if a source with this SDP can be recorded in
    process, else None (another video codec, or audio only a child keeps)."""
    if not sdp:
        return None
    found = rtpmux.video_depacketizer(sdp)
    if found is None:
        return None
    aac = rtpmux.aac_depacketizer(sdp)
    for index, kind, encoding, *_ in rtpmux.media_of(sdp):
        if kind == "audio" and encoding in CHILD_AUDIO and (aac is None or aac[0] != index):
            return None
    return found[1]


def _probe(fmt, data):
    """A PyAV stream to copy codec parameters from, probed from an in-memory elementary
    stream (parameter sets + one keyframe, or one ADTS frame): codec, size, extradata."""
    import av

    container = av.open(io.BytesIO(data), format=fmt, options=PROBE)
    streams = container.streams.video or container.streams.audio
    if not streams:
        raise ValueError(f"no {fmt} stream found")
    return streams[0]


class _LiveSegment(_PartFile):
    """One ``.part`` file written from depacketized access units by PyAV's MP4 muxer in
    the reactor thread (page-cache writes); ``sync`` (fsync, scan, rename) runs in a
    thread."""

    def __init__(self, final, start_ms, video, audio, opener):
        import av

        self.final = final
        self.part = final + ".part"
        self.start_ms = start_ms
        self.frames = 0
        self.file = opener(self.part)
        try:
            self.out = av.open(self.file, "w", format="mp4",
                               options={"movflags": MOVFLAGS, "flush_packets": "1"})
            self.video = self.out.add_stream_from_template(video)
            self.video.time_base = Fraction(1, VIDEO_CLOCK)
            self.audio = None
            self.audio_base = None  # audio timestamp of this file's time zero
            self.audio_last = -1
            if audio is not None:
                template, config, rate = audio
                self.audio = self.out.add_stream_from_template(template)
                self.audio.codec_context.extradata = config
                self.audio.codec_context.sample_rate = rate
                self.audio.time_base = Fraction(1, rate)
        except Exception:
            self.file.close()
            os.unlink(self.part)
            raise

    def write_video(self, data, dts, duration, key):
        import av

        p = av.Packet(data)
        p.pts = p.dts = dts
        p.duration = duration
        p.time_base = self.video.time_base
        p.is_keyframe = key
        p.stream = self.video
        self.out.mux_one(p)
        self.frames += 1

    def write_audio(self, data, ts):
        import av

        dts = ts - self.audio_base
        if dts <= self.audio_last:  # before the cut, or out of order
            return False
        p = av.Packet(data)
        p.pts = p.dts = dts
        p.time_base = self.audio.time_base
        p.stream = self.audio
        self.out.mux_one(p)
        self.audio_last = dts
        return True

    def finish(self):
        """Write the last fragment (reactor thread: page-cache writes)."""
        self.out.close()

    def sync(self):
        """In a thread: fsync, keyframe offsets, rename, directory fsync. Returns (bytes,
        keyframe offsets). A full disk deletes the ``.part`` and raises."""
        try:
            return self._seal()
        except OSError as e:
            if e.errno in DISK_FULL:
                self.abandon()
            raise


class _LiveWriter:
    """An in-process recording: a READER of the SS's source (like ``TCPReader``, but
    writing files). It gets the very ``Frame`` objects every viewer gets, depacketizes
    the video (H.264/H.265) and AAC tracks (``vss.cdn.rtpmux``) and muxes access units
    into fragmented MP4 segments. Everything runs in the reactor thread except the
    codec probe and the fsync/scan/rename at each segment close
    (``recorder._in_thread``). Nothing raises
    out of ``deliver``: one bad recording never hurts the source's other readers."""

    source = None
    full = False
    needs_key = True
    waiting_key = False  # the depacketizer waits for the keyframe itself
    drops = 0  # never drops: no queue (frames the depacketizer loses are in ``lost``)
    lag_skips = 0  # a recording is not a live viewer
    MAX_JUMP = 5 * VIDEO_CLOCK
    MAX_REORDERS = 3  # small steps back: the stream has B-frames, a child records it
    MAX_BACKLOG_BYTES = 16 << 20  # held while a codec probe runs (~30 s at 4 Mb/s)

    def __init__(self, recorder, rec, sdp, opener=_raw_open):
        self.recorder = recorder
        self.rec = rec
        self.clock = recorder.clock
        self.opener = opener
        self.vtrack, self.vcodec, self.vdep = rtpmux.video_depacketizer(sdp)
        aac = rtpmux.aac_depacketizer(sdp)
        self.atrack, self.adep = aac if aac is not None else (None, None)
        self.mask = frozenset(t for t in (self.vtrack, self.atrack) if t is not None)
        self.out_dir = os.path.join(recorder.data_dir, RECORDINGS, rec.device_id, rec.stream)
        os.makedirs(self.out_dir, exist_ok=True)
        self.seg = None
        self.seg_base = None  # video timestamp of the open segment's time zero
        self.cut_ms = None
        self.held = None  # (access unit, timestamp): written when the next one gives
        # its duration
        self.vtemplate = None
        self.vparams = None  # the parameter sets the template was probed with
        self.seg_params = None  # those of the open segment
        self.probing = None  # Deferred of the codec probe running in a thread
        self.probe_error = None
        self.probes = 0
        self.backlog = deque()  # [(wall s, item, bytes)] held while the probe runs
        self.backlog_bytes = 0
        self.backlog_limit = self.MAX_BACKLOG_BYTES  # more while replaying a buffer
        self.backlog_dropped = 0
        self.to_key = False  # the backlog overflowed: wait for a keyframe
        self.draining = False
        self.atemplate = None
        if self.adep is not None:  # codec and channels from an ADTS header
            try:
                self.atemplate = _probe("aac", rtpmux.adts_header(self.adep.config, 0))
            except Exception as e:  # noqa: BLE001
                log.warn("recording {path}: AAC audio left out ({error})", path=rec.path,
                         error=e)
                self.atrack = self.adep = None
        self.anchor = None  # (wall ms, video timestamp) at the first picture
        self.aanchor = None  # (wall ms, audio timestamp) at the first audio frame
        self.alast = None  # the last audio timestamp
        self.sr = {}  # track -> (NTP seconds, 32-bit RTP timestamp) of its last SR
        self.sr_aligned = 0  # segments whose audio was placed by sender reports
        self.seg_raw = None
        self.shift = 0  # added to video timestamps to absorb jumps
        self.last_ts = None
        self.step = VIDEO_CLOCK // 25
        self.jumps = 0
        self.reorders = 0
        self.errors = 0
        self.audio_frames = 0
        self.closed = False
        self.muted = False  # handing over to a child: ignore what comes
        self.now = None  # the wall clock of a replayed frame (pre-event buffer)
        self.replayed = None  # frames already replayed, not to be written twice

    def replay(self, frames):
        """Write buffered ``(wall clock, frame)`` pairs first (the pre-event footage),
        each placed on the wall clock at which the SS got it."""
        # the probe may not answer before the whole buffer is held
        self.backlog_limit = self.MAX_BACKLOG_BYTES + sum(
            len(p[2]) for _, f in frames for p in f.packets)
        for wall, frame in frames:
            self.now = wall
            self.deliver(frame)
        self.now = None
        self.replayed = {id(f.packets) for _, f in frames} or None

    def deliver_at(self, wall, frame):
        """A frame the SS got at ``wall`` (the source's GOP cache, sent when the
        recording joins): placed on the wall clock then, not now."""
        now, self.now = self.now, wall
        try:
            self.deliver(frame)
        finally:
            self.now = now

    def _wall_ms(self):
        return round((self.clock.seconds() if self.now is None else self.now) * 1000)

    # -- the reader interface (Source calls these)

    def deliver(self, frame):
        if self.closed or self.muted:
            return
        if self.replayed is not None:
            if id(frame.packets) in self.replayed:
                return  # the source's GOP cache sends what the buffer had
            self.replayed = None
        try:
            vtrack, atrack = self.vtrack, self.atrack
            for t, rtcp, data in frame.packets:
                if rtcp:
                    if t == vtrack or t == atrack:
                        self._rtcp(t, data)
                    continue
                if t == vtrack:
                    for au in self.vdep.push(data):
                        self._video_in(au)
                elif t == atrack:
                    for ts, raw in self.adep.push(data):
                        if self.backlog or self.probing is not None:
                            self._hold(("a", ts, raw))
                            self._drain()
                        else:
                            self._audio(ts, raw)
        except OSError as e:
            self._error(e)
        except Exception as e:  # noqa: BLE001 - never out of the source's fan-out
            self._error(e)

    def source_ended(self):
        self.source = None
        if not self.closed:
            self.finish()
            self.recorder._live_ended(self.rec, self)

    # -- control

    def finish(self):
        """Stop: leave the source, write the held picture, close the open segment."""
        if self.closed:
            return
        self.closed = True
        self.probing = None
        if self.backlog:  # the probe did not answer: these cannot be written
            self.vdep.lost += sum(1 for _, held, _ in self.backlog if held[0] == "v")
            self.backlog.clear()
            self.backlog_bytes = 0
        if self.source is not None:
            self.source.remove_reader(self)
            self.source = None
        try:
            self._flush_held(self.step)
            if self.seg is not None:
                self._close(self._at_ms(self.last_ts + self.step))
        except Exception as e:  # noqa: BLE001
            self._error(e)

    def counters(self):
        return {"frames_received": self.vdep.units, "frames_lost": self.vdep.lost,
                "gaps": self.vdep.gaps, "skipped": self.vdep.skipped,
                "bad_packets": self.vdep.errors + (self.adep.errors if self.adep else 0),
                "audio_frames": self.audio_frames, "timestamp_jumps": self.jumps,
                "audio_by_reports": self.sr_aligned,
                "errors": self.errors}

    # -- media

    def _at_ms(self, ts):
        wall, ts0 = self.anchor
        return int(wall + (ts - ts0) * 1000 // VIDEO_CLOCK)

    def _video_in(self, au):
        """An access unit from the depacketizer. A keyframe with parameter sets not
        probed yet waits for the probe (in a thread), and so does everything after it."""
        params = self.vdep.parameter_sets() if au.key else None
        if self.backlog or self.probing is not None or self.to_key or \
                (au.key and params != self.vparams):
            self._hold(("v", au, params))
            self._drain()
        else:
            self._video(au, params)

    def _hold(self, item):
        """Keep ``item`` (with its wall clock) until the codec probe answers; bounded:
        past ``backlog_limit`` bytes the backlog is dropped and the video starts again at the
        next keyframe."""
        size = sum(map(len, item[1].nals)) if item[0] == "v" else len(item[2])
        if self.backlog_bytes + size > self.backlog_limit:
            lost = sum(1 for _, held, _ in self.backlog if held[0] == "v")
            self.vdep.lost += lost
            self.backlog_dropped += lost
            self.backlog.clear()
            self.backlog_bytes = 0
            self.to_key = True
        if self.to_key:
            if item[0] != "v" or not item[1].key:
                if item[0] == "v":
                    self.vdep.lost += 1
                    self.backlog_dropped += 1
                return
            self.to_key = False
        wall = self.clock.seconds() if self.now is None else self.now
        self.backlog.append((wall, item, size))
        self.backlog_bytes += size

    def _drain(self):
        """Write the held access units in order, probing the codec (in a thread) at
        each keyframe whose parameter sets were not probed yet."""
        if self.draining:
            return
        self.draining = True
        now = self.now
        try:
            while self.backlog and self.probing is None and not self.closed \
                    and not self.muted:
                wall, item, size = self.backlog[0]
                if item[0] == "v" and item[1].key and item[2] != self.vparams:
                    self._probe_video(item[1], item[2])
                    continue  # answered at once (a synchronous runner) or later
                self.backlog.popleft()
                self.backlog_bytes -= size
                self.now = wall
                try:
                    if item[0] == "v":
                        self._video(item[1], item[2])
                    else:
                        self._audio(item[1], item[2])
                except Exception as e:  # noqa: BLE001 - never out of the fan-out
                    self._error(e)
        finally:
            self.now = now
            self.draining = False

    def _probe_video(self, au, params):
        """Probe the codec parameters (size, extradata) of ``params`` off the reactor:
        FFmpeg decodes the keyframe to find them (milliseconds at 720p, more at 4K)."""
        self.probing = d = self.recorder._in_thread(_probe, self.vcodec,
                                                    params + au.annexb())
        self.probes += 1

        def probed(template):
            if self.probing is not d:
                return
            self.probing = None
            self.vparams = params
            self.vtemplate = template
            if not template.codec_context.width:
                self.vtemplate = None
                self.probe_error = "the picture size is not in the parameter sets"
            self._drain()

        def failed(failure):
            if self.probing is not d:
                return
            self.probing = None
            self.vparams = params
            self.vtemplate = None
            self.probe_error = f"the video cannot be probed: {failure.getErrorMessage()}"
            self._drain()

        d.addCallbacks(probed, failed)
        d.addErrback(lambda f: log.failure("recording {path}: probe", f,
                                           path=self.rec.path))

    def _video(self, au, params):
        if self.muted:
            return
        ts = au.ts + self.shift
        last = self.last_ts
        if last is not None:
            d = ts - last
            if d <= 0 or d > self.MAX_JUMP:  # a step back or a big leap: go on smoothly
                if -VIDEO_CLOCK < d <= 0:
                    self.reorders += 1  # presentation order: B-frames
                    if self.reorders >= self.MAX_REORDERS:
                        self.recorder._live_reordered(self.rec, self)
                        return
                self.shift += last + self.step - ts
                ts = last + self.step
                self.jumps += 1
            else:
                self.step = d
        if self.anchor is None:
            self.anchor = (self._wall_ms(), ts)
        self._flush_held(ts - last if last is not None else self.step)
        self.last_ts = ts
        at_ms = self._at_ms(ts)
        if au.key and (self.seg is None or at_ms >= self.cut_ms
                       or params != self.seg_params):
            if self.seg is not None:
                self._close(at_ms)
                if self.closed:  # the disk is full
                    return
            self._open(params, ts, at_ms)
        if self.seg is not None:
            self.held = (au, ts)

    def _flush_held(self, duration):
        held, self.held = self.held, None
        if held is not None and self.seg is not None:
            au, ts = held
            self.seg.write_video(au.annexb(), ts - self.seg_base, duration, au.key)

    def _open(self, params, ts, at_ms):
        if self.vtemplate is None or params != self.vparams:  # the probe failed
            raise ValueError(self.probe_error or "the video was not probed")
        seg_ms = max(1, int(self.rec.segment_seconds * 1000))
        self.cut_ms = (at_ms // seg_ms + 1) * seg_ms  # the next UTC boundary
        audio = None
        if self.atemplate is not None:
            audio = (self.atemplate, self.adep.config, self.adep.clock_rate)
        self.seg = _LiveSegment(_free_name(self.out_dir, at_ms), at_ms, self.vtemplate,
                                audio, self.opener)
        self.seg_params = params
        self.seg_base = ts
        self.seg_raw = ts - self.shift  # as the sender stamped it (its reports map that)
        if audio is not None:
            self._audio_base()

    def _rtcp(self, track, data):
        """Keep the last sender report of the video and audio tracks: (NTP seconds, RTP
        timestamp), the sender's own mapping of both media clocks to one clock."""
        sr = rtpmux.sender_report(data)
        if sr is not None:
            self.sr[track] = sr

    def _audio_base(self):
        """The audio timestamp at the open segment's time zero. With a sender report of
        both tracks, from the sender's clock (lip sync as it was captured); otherwise
        both tracks are placed on the wall clock at their first packet (arrival skew
        between the tracks is then in the file)."""
        if self.aanchor is None or self.seg is None or self.seg.audio is None:
            return
        rate = self.adep.clock_rate
        vsr, asr = self.sr.get(self.vtrack), self.sr.get(self.atrack)
        if vsr is not None and asr is not None:
            # the sender's clock at the segment's first picture, then the audio
            # timestamp the sender gave that instant (32-bit, near the last audio one)
            at = vsr[0] + rtpmux.signed32(self.seg_raw - vsr[1]) / VIDEO_CLOCK
            a32 = (asr[1] + round((at - asr[0]) * rate)) & 0xFFFFFFFF
            self.seg.audio_base = self.alast + rtpmux.signed32(a32 - self.alast)
            self.sr_aligned += 1
            return
        wall, a0 = self.aanchor
        t = (self._at_ms(self.seg_base) - wall) / 1000  # seconds after audio's anchor
        self.seg.audio_base = a0 + round(t * rate)

    def _audio(self, ts, raw):
        if self.aanchor is None:
            self.aanchor = (self._wall_ms(), ts)
        self.alast = ts
        seg = self.seg
        if seg is None or seg.audio is None:
            return  # no picture yet
        if seg.audio_base is None:
            self._audio_base()
        if seg.write_audio(raw, ts):
            self.audio_frames += 1

    def _close(self, end_ms):
        seg, self.seg = self.seg, None
        try:
            seg.finish()
        except Exception:
            seg.abandon()
            raise
        rec, recorder = self.rec, self.recorder

        def synced(result):
            size, keyframes = result
            return recorder._segment(rec, {
                "path": os.path.relpath(seg.final, recorder.data_dir),
                "start_ms": seg.start_ms, "end_ms": end_ms, "bytes": size,
                "frames": seg.frames, "keyframes": keyframes})

        def failed(failure):
            if failure.check(OSError) and failure.value.errno in DISK_FULL:
                recorder._live_disk_full(rec, self, failure.value)
            else:
                log.failure("closing {path} failed", failure, path=seg.part)

        d = recorder._in_thread(seg.sync).addCallbacks(synced, failed)
        rec.pending.append(d)
        d.addBoth(lambda r: (rec.pending.remove(d), r)[1])

    def _error(self, e):
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            if self.seg is not None:
                self.seg.abandon()
                self.seg = None
            self.recorder._live_disk_full(self.rec, self, e)
            return
        self.errors += 1
        log.failure("recording {path}: {error}", path=self.rec.path, error=e)
        self.rec.error = f"{type(e).__name__}: {e}"
        if self.seg is not None:  # start again at the next keyframe, in a new file
            self.seg.abandon()
            self.seg = None
        self.held = None


class _PreBuffer:
    """A reader of the source that keeps the last ``seconds`` of frames in memory, from
    a keyframe, so an event recording can start with the footage from before the event.
    Bounded: whole GOPs are dropped from the front once the next GOP starts at least
    ``seconds`` ago, or while the buffer holds more than ``max_bytes``. It keeps each
    frame's RTP packets only (not the joined buffer the TCP viewers send), so it holds
    about ``seconds`` of the stream's bytes."""

    source = None
    full = True
    needs_key = True
    waiting_key = True  # Source.add_reader may clear it (audio only): we check frame.key
    drops = 0
    lag_skips = 0

    def __init__(self, recorder, key, path, seconds, max_bytes, want=None):
        self.recorder = recorder
        self.key = key
        self.want = want  # called before each wait for the source (asks for it)
        self.path = path
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.mask = frozenset()
        self.gops = deque()  # [[(wall s, frame, bytes), ...], ...], each from a keyframe
        self.bytes = 0
        self.retry = None
        self.wanted = True

    def attach(self, source):
        self.mask = frozenset(t.index for t in source.tracks)
        source.add_reader(self)

    def deliver_at(self, wall, frame):
        """A frame of the source's GOP cache, got by the SS at ``wall``."""
        self.deliver(frame, wall)

    def deliver(self, frame, wall=None):
        now = self.recorder.clock.seconds() if wall is None else wall
        size = len(frame.data)
        item = (now, Frame(b"", frame.key, frame.packets), size)
        if frame.key:
            self.gops.append([item])
        elif self.gops:
            self.gops[-1].append(item)
        else:
            return
        self.bytes += size
        self.trim(now)

    def trim(self, now):
        gops = self.gops
        while len(gops) > 1 and (gops[1][0][0] <= now - self.seconds
                                 or self.bytes > self.max_bytes):
            self.bytes -= sum(size for _, _, size in gops.popleft())

    def frames(self):
        """The buffered ``(wall clock, frame)`` pairs, oldest first, from a keyframe at
        or before ``seconds`` ago."""
        self.trim(self.recorder.clock.seconds())
        return [(wall, frame) for gop in self.gops for wall, frame, _ in gop]

    def clear(self):
        self.gops.clear()
        self.bytes = 0

    def detach(self):
        self.wanted = False
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None
        if self.source is not None:
            self.source.remove_reader(self)
            self.source = None
        self.clear()

    def source_ended(self):
        self.source = None
        self.clear()
        if self.wanted:
            self.recorder._prebuffer_later(self)


# -- the parent: the CDN module's recording interface -----------------------------------

class _Child(protocol.ProcessProtocol):
    """Reads the JSON lines of one recording child."""

    def __init__(self, recorder, rec):
        self.recorder = recorder
        self.rec = rec
        self.buffer = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:  # not one of its JSON lines: dropped
            log.warn("recorder child wrote {n} bytes without a line end", n=len(self.buffer))
            self.buffer = b""
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("not an object")
                self.recorder._event(self.rec, event)
            except (ValueError, KeyError, TypeError) as e:
                log.warn("recorder child said {line!r} ({error})", line=redact(line[:200]),
                         error=e)

    def errReceived(self, data):
        log.debug("recorder child: {text}",
                  text=redact(data.decode("utf-8", "replace")[-2000:]))

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        self.recorder._ended(self.rec, self, code)
        self.ended.callback(code)


class _Recording:
    def __init__(self, device_id, channel, stream, segment_seconds, path, now):
        self.device_id = device_id
        self.channel = channel
        self.stream = stream
        self.segment_seconds = segment_seconds
        self.path = path  # /live/<device>/<stream>
        self.state = "starting"  # starting, recording, waiting, stopping, disk_full
        self.since = now
        self.segments = 0
        self.bytes = 0
        self.frames = 0
        self.last_segment = None
        self.error = None
        self.child = None
        self.live = None  # the _LiveWriter of an in-process recording
        self.mode = None  # "process" or "inprocess" once launched
        self.lost_before = {}  # counters of the live writers that ended
        self.force_process = False  # B-frames seen in process: a child records it
        self.started = None  # Deferred of start(), until the child says 'started'
        self.retry = None
        self.holds_start = False  # holds a place in Recorder.starting
        self.pending = []  # catalogue adds in flight
        self.open_segment = None  # a child's segment being written: (start ms, .part path)

    def live_counters(self):
        """The in-process counters (frames received and lost...) over every start."""
        out = dict(self.lost_before)
        if self.live is not None:
            for k, v in self.live.counters().items():
                out[k] = out.get(k, 0) + v
        return out

    def info(self):
        live = self.live_counters()
        return {"device": self.device_id, "channel": self.channel, "stream": self.stream,
                "state": self.state, "since": self.since, "segments": self.segments,
                "bytes": self.bytes, "frames": self.frames, "mode": self.mode,
                "frames_received": live.get("frames_received"),
                "frames_lost": live.get("frames_lost"), "live": live or None,
                "segment_seconds": self.segment_seconds, "last_segment": self.last_segment,
                "error": self.error,
                "pid": self.child.transport.pid if self.child and self.child.transport
                else None}


class Recorder:
    """Records live streams of this node's SS (``rtsp_factory``) into segment files under
    ``data_dir`` and indexes them in the node's catalogue. ``media_base`` is the SS URL
    base the children connect to (``rtsp://127.0.0.1:<port>``); ``issuer`` signs their
    play tokens. ``mode``: ``"auto"`` records H.264/H.265 sources in process and others
    with a child, ``"process"`` always with a child. ``in_thread(fn, *args)`` runs the
    segment closes off the reactor (default: the reactor's thread pool); ``opener``
    opens the ``.part`` files. ``open()`` (repairs the catalogue) before use,
    ``close()`` at the end.
    """

    def __init__(self, rtsp_factory, issuer, data_dir, clock, reactor, media_base,
                 source_wait=10.0, restart_delay=2.0, stop_timeout=10.0, max_starting=4,
                 python=sys.executable, env=None, mode="auto", in_thread=None,
                 opener=_raw_open, prebuffer_max_bytes=32 * 1024 * 1024):
        if mode not in ("auto", "process"):
            raise ValueError(f"mode must be 'auto' or 'process', not {mode!r}")
        self.rtsp = rtsp_factory
        self.issuer = issuer
        self.data_dir = os.path.abspath(data_dir)
        self.clock = clock
        self.reactor = reactor
        self.media_base = media_base.rstrip("/")
        self.source_wait = source_wait
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        self.python = python
        self.env = env
        # auto: H.264/H.265 sources are recorded in process (a reader of the source),
        # others by a child; process: always a child
        self.mode = mode
        self._thread = in_thread
        self.opener = opener
        # children starting at once: a start costs a CPython + PyAV start and an RTSP
        # handshake; a hundred at once starve each other (and the node) past their timeouts
        self.starting = defer.DeferredSemaphore(max_starting)
        self.catalogue = Catalogue(self.data_dir, clock=clock, reactor=reactor)
        self.recordings = {}  # (device, channel, stream name) -> _Recording
        self.prebuffers = {}  # (device, channel, stream name) -> _PreBuffer
        self.prebuffer_max_bytes = prebuffer_max_bytes
        self.alarm = None
        #: f(device_id, channel, message) when a recording meets a full disk (the node
        #: raises a ``disk-full`` event: vss.events)
        self.disk_full_listeners = []
        self.counters = {"started": 0, "segments": 0, "bytes": 0, "restarts": 0,
                         "failed": 0, "write_errors": 0}

    # -- lifecycle

    @defer.inlineCallbacks
    def open(self):
        """Open the catalogue and make it equal the files (crash repair)."""
        yield self.catalogue.open()
        report = yield self.catalogue.repair()
        return report

    @defer.inlineCallbacks
    def close(self):
        for pb in list(self.prebuffers.values()):
            pb.detach()
        self.prebuffers.clear()
        yield defer.DeferredList([self._stop(key) for key in list(self.recordings)])
        yield self.catalogue.close()

    # -- the recording interface

    def start(self, device_id, channel, stream, segment_seconds):
        """Start recording (device, channel, stream) in ``segment_seconds`` segments. The
        SS must get the live stream (the RGM opens it through the CDN service
        interface); a missing source is waited for ``source_wait`` seconds. Fires with
        the recording's status once it reads the source (in process) or its child
        receives the stream; a second start of a running recording answers its
        status."""
        name = stream_name(channel, stream)
        key = (device_id, channel, name)
        rec = self.recordings.get(key)
        if rec is not None and rec.state not in ("stopping", "disk_full"):
            return rec.started if rec.started is not None else defer.succeed(rec.info())
        if self.alarm is not None:
            return defer.fail(VssError(ResultCode.BUSY,
                                       f"recording refused: {self.alarm['message']}"))
        if segment_seconds <= 0:
            return defer.fail(VssError(ResultCode.INVALID_ARGUMENT,
                                       "segment_seconds must be > 0"))
        rec = _Recording(device_id, channel, name, segment_seconds,
                         f"/live/{device_id}/{name}", self.clock.seconds())
        rec.started = defer.Deferred()
        self.recordings[key] = rec
        self.counters["started"] += 1
        started = rec.started
        self._launch(rec).addErrback(self._launch_failed, rec)
        return started

    def _launch_failed(self, failure, rec):
        log.failure("cannot start the recording of {path}", failure, path=rec.path)
        rec.error = failure.getErrorMessage()
        self._release(rec)
        self._retry_or_fail(rec, VssError(ResultCode.INTERNAL_ERROR, rec.error))

    def stop(self, device_id, channel, stream):
        """Stop a recording: its open segment is closed and catalogued. Fires with the
        final status (None if it was not recording)."""
        return self._stop((device_id, channel, stream_name(channel, stream)))

    def _stop(self, key):
        rec = self.recordings.get(key)
        if rec is None:
            return defer.succeed(None)
        rec.state = "stopping"
        if rec.retry is not None and rec.retry.active():
            rec.retry.cancel()
        rec.retry = None
        if rec.live is not None:
            self._live_done(rec, rec.live)
        child = rec.child
        if child is None or child.transport is None or child.transport.pid is None:
            return self._finish(rec, key)
        kill = self.clock.callLater(self.stop_timeout, self._signal, child, "KILL")
        self._signal(child, "TERM")

        def ended(_):
            if kill.active():
                kill.cancel()
            return self._finish(rec, key)

        return child.ended.addCallback(ended)

    # -- the pre-event buffer

    def prebuffer(self, device_id, channel, stream, seconds, want=None):
        """Keep the last ``seconds`` of (device, channel, stream)'s live stream in memory
        (from a keyframe; at most ``prebuffer_max_bytes``), so that a recording started
        later (an event) begins with that footage, up to ``seconds`` before its start.
        The SS must get the live stream: ``want()``, if given, is called before each
        wait for it (the CDN service asks for the source there); a missing or ending
        source is waited for again every ``restart_delay`` seconds. Only
        in-process recordings (H.264/H.265) use the buffer. Fires once the buffer
        reads the source (None if the source did not come within ``source_wait``)."""
        name = stream_name(channel, stream)
        key = (device_id, channel, name)
        pb = self.prebuffers.get(key)
        if pb is not None:
            pb.seconds = seconds
            return defer.succeed(None)
        pb = self.prebuffers[key] = _PreBuffer(self, key, f"/live/{device_id}/{name}",
                                               seconds, self.prebuffer_max_bytes, want)
        return self._prebuffer_attach(pb)

    def unprebuffer(self, device_id, channel, stream):
        """Stop keeping the pre-event buffer of (device, channel, stream)."""
        pb = self.prebuffers.pop((device_id, channel, stream_name(channel, stream)), None)
        if pb is not None:
            pb.detach()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def _prebuffer_attach(self, pb):
        pb.retry = None
        if pb.want is not None:
            try:
                pb.want()
            except Exception:  # noqa: BLE001
                log.failure("asking for the source of {path}", path=pb.path)
        source = yield self.rtsp.wait_for_source(pb.path, self.source_wait)
        if not pb.wanted or pb.source is not None:
            return None
        if source is None or getattr(source, "closed", False):
            self._prebuffer_later(pb)
            return None
        pb.attach(source)
        return None

    def _prebuffer_later(self, pb):
        pb.retry = self.clock.callLater(self.restart_delay, self._prebuffer_attach, pb)

    def status(self):
        return {"alarm": self.alarm, **self.counters,
                "recordings": {f"{r.path}": r.info() for r in self.recordings.values()},
                "prebuffers": {pb.path: {"seconds": pb.seconds, "bytes": pb.bytes,
                                         "reading": pb.source is not None}
                               for pb in self.prebuffers.values()}}

    def open_segments(self, device_id, stream):
        """(start ms, bytes written so far) of the segments of (device, stream name)
        being written now: listed beside the closed ones, so that a recording in progress
        is not shown as a gap."""
        out = []
        for rec in self.recordings.values():
            if rec.device_id != device_id or rec.stream != stream:
                continue
            seg = rec.live.seg if rec.live is not None else None
            if seg is not None:
                start, part = seg.start_ms, seg.part
            elif rec.child is not None and rec.open_segment is not None:
                start, part = rec.open_segment
            else:
                continue
            try:
                out.append((start, os.path.getsize(part)))
            except OSError:  # closed (renamed) meanwhile: the catalogue lists it
                continue
        return out

    def clear_alarm(self):
        if self.alarm is not None:
            log.info("recording alarm cleared: {message}", message=self.alarm["message"])
        self.alarm = None

    @defer.inlineCallbacks
    def enforce(self, retention_days, quota_bytes, in_use=()):
        """A retention pass (see ``CatalogueDB.enforce``); clears a disk-full alarm when
        it deleted something."""
        deleted = yield self.catalogue.enforce(retention_days, quota_bytes, in_use)
        if deleted and self.alarm is not None and self.alarm.get("kind") == "disk_full":
            self.clear_alarm()
        return deleted

    # -- internals

    @defer.inlineCallbacks
    def _finish(self, rec, key):
        yield defer.DeferredList(list(rec.pending))
        if self.recordings.get(key) is rec:
            del self.recordings[key]
        state = rec.state
        rec.state = "stopped" if state == "stopping" else state
        self._fire_started(rec, None, VssError(ResultCode.CONFLICT, "recording stopped"))
        return rec.info()

    def _signal(self, child, sig):
        try:
            child.transport.signalProcess(sig)
        except Exception:  # noqa: BLE001,S110 - already gone
            pass

    @defer.inlineCallbacks
    def _launch(self, rec):
        rec.retry = None
        source = yield self.rtsp.wait_for_source(rec.path, self.source_wait)
        if rec.state in ("stopping", "stopped"):
            return
        if source is None:
            rec.error = "no live stream on the SS"
            self._retry_or_fail(rec, VssError(ResultCode.DEVICE_OFFLINE,
                                              f"{rec.path}: {rec.error}"))
            return
        sdp = getattr(source, "sdp", None)
        if self.mode == "auto" and not rec.force_process and \
                not getattr(source, "closed", False) and \
                inprocess_codec(sdp):
            self._attach(rec, source, sdp)
            return
        rec.mode = "process"
        yield self.starting.acquire()
        rec.holds_start = True
        if rec.state in ("stopping", "stopped"):
            self._release(rec)
            return
        # "record": a recording reads at its own pace, never skipped to stay live
        token = self.issuer.issue(rec.path, ["play", "record"])
        env = {**(self.env if self.env is not None else os.environ),
               URL_ENV: f"{self.media_base}{rec.path}?token={token}"}
        out = os.path.join(RECORDINGS, rec.device_id, rec.stream)
        argv = [self.python, "-m", "vss.cdn.recorder", "--data-dir", self.data_dir,
                "--out", out, "--segment", str(rec.segment_seconds)]
        child = _Child(self, rec)
        rec.child = child
        self.reactor.spawnProcess(child, self.python, argv, env=env)
        log.info("recording {path} (pid {pid})", path=rec.path, pid=child.transport.pid)

    def _attach(self, rec, source, sdp):
        """Record in process: a ``_LiveWriter`` reads the source."""
        rec.mode = "inprocess"
        writer = _LiveWriter(self, rec, sdp, self.opener)
        rec.live = writer
        pb = self.prebuffers.get((rec.device_id, rec.channel, rec.stream))
        if pb is not None and pb.source is source:
            writer.replay(pb.frames())  # the footage from before the start
        source.add_reader(writer)
        log.info("recording {path} in process ({codec})", path=rec.path,
                 codec=writer.vcodec)
        self._event(rec, {"event": "started"})

    def _in_thread(self, fn, *args):
        if self._thread is not None:
            return self._thread(fn, *args)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn,
                                         *args)

    def _live_done(self, rec, writer):
        """The live writer leaves: its segment is closed, its counters kept."""
        writer.finish()
        if rec.live is writer:
            rec.live = None
            for k, v in writer.counters().items():
                rec.lost_before[k] = rec.lost_before.get(k, 0) + v

    def _live_ended(self, rec, writer):
        """The source ended (``source_ended``): wait for it to come back."""
        if rec.live is not writer:
            return
        self._live_done(rec, writer)
        if rec.state in ("stopping", "stopped", "disk_full"):
            return
        rec.error = "the live stream ended"
        self._retry_or_fail(rec, VssError(ResultCode.DEVICE_OFFLINE, rec.error))

    def _live_reordered(self, rec, writer):
        """The video's timestamps go back and forth (B-frames, sent in decoding order):
        the in-process writer cannot order them, so the recording goes on with a child
        (FFmpeg derives decoding timestamps)."""
        if rec.live is not writer or writer.muted:
            return
        log.warn("recording {path}: the video has B-frames; recording it with a child "
                 "process", path=rec.path)
        writer.muted = True  # we may be inside the source's fan-out loop: later
        rec.force_process = True

        def handover():
            if writer.seg is not None:  # its few pictures are out of order: dropped
                writer.seg.abandon()
                writer.seg = writer.held = None
            self._live_done(rec, writer)
            if rec.state not in ("stopping", "stopped", "disk_full"):
                self._launch(rec).addErrback(self._launch_failed, rec)

        self.clock.callLater(0, handover)

    def _live_disk_full(self, rec, writer, error):
        """A full disk while writing in process: the open ``.part`` is gone (closed
        segments are kept); alarm, and the recording stops writing."""
        if rec.live is writer:
            writer.closed = True
            if writer.seg is not None:
                writer.seg.abandon()
                writer.seg = None
            # leave the source after its fan-out loop (we may be inside it)
            source, writer.source = writer.source, None
            if source is not None:
                self.clock.callLater(0, source.remove_reader, writer)
            self._live_done(rec, writer)
        if rec.state != "disk_full":
            self._event(rec, {"event": "disk_full", "message": str(error)})

    def _release(self, rec):
        if rec.holds_start:
            rec.holds_start = False
            self.starting.release()

    def _retry_or_fail(self, rec, error):
        if rec.started is not None:  # the first start failed: tell the caller
            self.counters["failed"] += 1
            key = (rec.device_id, rec.channel, rec.stream)
            if self.recordings.get(key) is rec:
                del self.recordings[key]
            rec.state = "failed"
            self._fire_started(rec, None, error)
            return
        rec.state = "waiting"
        self.counters["restarts"] += 1
        log.warn("recording {path} interrupted ({error}); retrying in {delay} s",
                 path=rec.path, error=rec.error, delay=self.restart_delay)
        rec.retry = self.clock.callLater(
            self.restart_delay,
            lambda: self._launch(rec).addErrback(self._launch_failed, rec))

    def _fire_started(self, rec, result, error=None):
        d, rec.started = rec.started, None
        if d is not None:
            if error is not None:
                d.errback(error)
            else:
                d.callback(result)

    def _event(self, rec, event):
        kind = event.get("event")
        if kind == "started":
            self._release(rec)
            if rec.state != "stopping":
                rec.state = "recording"
            rec.error = None
            self._fire_started(rec, rec.info())
        elif kind == "open":
            rec.open_segment = (int(event["start_ms"]),
                                os.path.join(self.data_dir, event["path"]))
        elif kind == "segment":
            rec.open_segment = None
            self._segment(rec, event)
        elif kind == "disk_full":
            self.counters["write_errors"] += 1
            rec.state = "disk_full"
            rec.error = event.get("message")
            self.alarm = {"kind": "disk_full", "since": self.clock.seconds(),
                          "path": rec.path, "message": f"disk full: {rec.error}"}
            log.critical("ALARM disk full while recording {path}: {error}; new segments "
                         "stop, closed segments are kept", path=rec.path, error=rec.error)
            for listener in self.disk_full_listeners:
                listener(rec.device_id, rec.channel, self.alarm["message"])
        elif kind == "error":
            self.counters["write_errors"] += 1
            rec.error = event.get("message")
            log.warn("recording {path}: {error}", path=rec.path, error=rec.error)
        else:
            log.info("recording {path}: {message}", path=rec.path,
                     message=event.get("message"))

    def _segment(self, rec, event):
        seg = Segment(rec.device_id, rec.channel, rec.stream, int(event["start_ms"]),
                      int(event["end_ms"]), int(event["bytes"]), event["path"],
                      [tuple(k) for k in event.get("keyframes", ())])
        rec.segments += 1
        rec.bytes += seg.bytes
        rec.frames += int(event.get("frames", 0))
        rec.last_segment = seg.path
        self.counters["segments"] += 1
        self.counters["bytes"] += seg.bytes
        d = self.catalogue.add(seg)
        rec.pending.append(d)

        def done(result):
            rec.pending.remove(d)
            return result

        d.addBoth(done).addErrback(lambda f: log.failure("catalogue add failed", f))
        return d

    def _ended(self, rec, child, code):
        if rec.child is child:
            rec.child = None
        self._release(rec)
        if rec.state in ("stopping", "stopped", "disk_full"):
            if rec.state == "disk_full":
                self._fire_started(rec, None, VssError(ResultCode.BUSY, "disk full"))
            return
        rec.error = rec.error or f"recorder exited with {code}"
        self._retry_or_fail(rec, VssError(ResultCode.DEVICE_OFFLINE, rec.error))


if __name__ == "__main__":
    sys.exit(main())
