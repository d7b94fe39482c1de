"""
The recording interface of the CDN module: the only path from the RGM to the SS for
recording. ``Recorder.start(device, channel, stream, segment_seconds)``, ``stop(...)``,
``status()``.

How a recording is written (the approach, and why):

- IN PROCESS when the source's video is H.264 or H.265 (``mode="auto"``, the default;
  the SDP says which): the recording is a READER of the SS's ``Source``, like a TCP
  viewer but writing files (``LiveWriter``). It gets the very ``Frame`` batches every
  viewer gets, depacketizes them (``vss.recording.rtpmux``: H.264/H.265 access units, AAC
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
  or ``mode="process"``): ``python -m vss.recording.child``, like the PU's publisher
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
  file's moof/tfdt boxes) the recorder adds a catalogue row (``vss.recording.catalogue``);
  the child reports it as one JSON line on stdout.
- A full disk (ENOSPC, EDQUOT, EFBIG while writing or syncing) deletes the open
  ``.part`` (closed segments are never written again); the recorder raises the alarm
  (log + ``status()``), refuses new recordings until ``clear_alarm()`` or a retention
  pass frees space, and that recording stops writing (a child exits with
  ``EXIT_DISK_FULL`` and is not restarted). Any other end of a wanted recording is
  retried after ``restart_delay`` seconds (the source may come back).

Pre-event buffer (``prebuffer``/``unprebuffer``, asked by the RGM for a channel in
EVENT mode with pre-event seconds): a ``PreBuffer`` reader keeps the last seconds of the
source's frames in memory (from a keyframe, bounded in bytes); an in-process recording
of that stream replays them first, each at the wall clock the SS got it, so the event's
first segment starts up to that many seconds before the event.

Limits of the in-process path: RTP timestamps are presentation times and the writer
takes them as decoding order, so a stream with B-frames (its timestamps step back) is
handed over to a child after ``MAX_REORDERS`` small steps back (the few pictures written
in process are dropped); surveillance cameras rarely send B-frames. H.264 interleaved
mode and H.265 with DONL go to a child from the start.
"""


import json
import os
import sys

from twisted.internet import defer, protocol, threads
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.recording.catalogue import (
    RECORDINGS,
    Catalogue,
    Segment,
)
from vss.recording.live import LiveWriter, PreBuffer, inprocess_codec
from vss.recording.segments import URL_ENV, raw_open, stream_name
from vss.redact import redact

log = Logger()

MAX_LINE = 1 << 16  # a child's JSON line is far shorter



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
        self.live = None  # the LiveWriter of an in-process recording
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
                 opener=raw_open, prebuffer_max_bytes=32 * 1024 * 1024):
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
        self.prebuffers = {}  # (device, channel, stream name) -> PreBuffer
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
        pb = self.prebuffers[key] = PreBuffer(self, key, f"/live/{device_id}/{name}",
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
        argv = [self.python, "-m", "vss.recording.child", "--data-dir", self.data_dir,
                "--out", out, "--segment", str(rec.segment_seconds)]
        child = _Child(self, rec)
        rec.child = child
        self.reactor.spawnProcess(child, self.python, argv, env=env)
        log.info("recording {path} (pid {pid})", path=rec.path, pid=child.transport.pid)

    def _attach(self, rec, source, sdp):
        """Record in process: a ``LiveWriter`` reads the source."""
        rec.mode = "inprocess"
        writer = LiveWriter(self, rec, sdp, self.opener)
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


