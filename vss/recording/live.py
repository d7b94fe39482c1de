"""A recording in process: a reader of the SS's own ``Source`` that depacketizes the
frames every viewer gets (``vss.recording.rtpmux``) and muxes them with PyAV in the
reactor thread (``LiveWriter``), and the pre-event buffer (``PreBuffer``). The approach
and its limits are explained in ``vss.recording.recorder``."""

import io
import os
from collections import deque
from fractions import Fraction

from twisted.logger import Logger

from vss.recording import rtpmux
from vss.recording.catalogue import (
    RECORDINGS,
)
from vss.recording.segments import DISK_FULL, MOVFLAGS, PartFile, free_name, raw_open
from vss.rtsp.fanout import Frame

log = Logger()

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


def probe_codec(fmt, data):
    """A PyAV stream to copy codec parameters from, probed from an in-memory elementary
    stream (parameter sets + one keyframe, or one ADTS frame): codec, size, extradata."""
    import av

    container = av.open(io.BytesIO(data), format=fmt, options=PROBE)
    streams = container.streams.video or container.streams.audio
    if not streams:
        raise ValueError(f"no {fmt} stream found")
    return streams[0]


class LiveSegment(PartFile):
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


class LiveWriter:
    """An in-process recording: a READER of the SS's source (like ``TCPReader``, but
    writing files). It gets the very ``Frame`` objects every viewer gets, depacketizes
    the video (H.264/H.265) and AAC tracks (``vss.recording.rtpmux``) and muxes access units
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

    def __init__(self, recorder, rec, sdp, opener=raw_open):
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
                self.atemplate = probe_codec("aac", rtpmux.adts_header(self.adep.config, 0))
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
        self.probing = d = self.recorder._in_thread(probe_codec, self.vcodec,
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
        self.seg = LiveSegment(free_name(self.out_dir, at_ms), at_ms, self.vtemplate,
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


class PreBuffer:
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


