"""
Playback of recordings: a CU asks its node for a device from a wall-clock time
(MEDIA_OPEN, ``purpose=PLAYBACK``, ``start_time`` in ms UTC) and gets an ``rtsp://`` URL
with a short-lived play token for a path of its own, ``/live/<device>/pb-<random id>``
(the token rules of live video: bound to that path, ``play`` only, expiring).

How it is served (the approach, and why):

- A CHILD PROCESS (``python -m vss.recording.playback``), like the PU's publisher and the
  recorder: it reads the catalogue (read only), demuxes the segment files with PyAV and
  REMUXES them (no transcoding) into this node's SS over RTSP (ANNOUNCE + RECORD, RTP
  over TCP), paced in real time. It starts at the keyframe at or before the asked time
  (the catalogue's keyframe offsets, then a PyAV seek in that segment), goes on into the
  next segments with continuous timestamps (each segment's packets are shifted to follow
  the previous one's last packet, so a boundary, or a gap in the recording, is not seen
  by the player; a segment that overlaps the next one, e.g. one salvaged by an older
  version whose start was cut to the second, ends where the next starts, so no picture
  is shown twice and no timestamp runs back) and ends at the end of the footage. Its publish URL (with a token) is
  in its environment, never its command line; its start command comes on stdin.
- The child publishes to an INTERNAL path ``/live/<device>/pb-<id>.<n>`` (``n`` one per
  child), never handed out (its publish token, in the child's environment only, lives a
  day: a spare child may wait long before it publishes). The node relays that source,
  in process, into the PUBLIC source ``pb-<id>`` that the viewer plays. The public
  source outlives the children:
  a seek or a resume replaces the child, and the viewer's RTSP session and connection
  stay. The relay rewrites the RTP sequence numbers and timestamps so the public stream
  stays continuous across children, keeps one SSRC per track, forwards only the current
  child's packets (so nothing from before a seek reaches the viewer after its PLAY) and
  drops the children's RTCP (the players used here need no sender report; its NTP
  times would be those of the child).
- Seeking: the SS calls this playback's controller on PLAY (``RTSPServerFactory.
  controllers``). ``Range: npt=S-`` means S seconds after the playback's origin (the
  time the CU asked, or the start of the first footage after it), ``Range:
  clock=YYYYMMDDTHHMMSS[.fff]Z-`` a wall-clock time. A Range that is malformed, of
  another kind, absurdly far or at a time with no footage at or after it (within a day)
  is answered 457 and changes nothing. Otherwise the current child is stopped and
  a new one starts at that time, from the keyframe at or before it; the reply's
  ``Range`` says where: the npt of that keyframe (looked up in the catalogue as the
  child does), not the time asked, since a player gives the first packet after its
  PLAY that npt and counts on from its RTP timestamps. To make that
  fast one SPARE child is kept started (Python and PyAV loaded, waiting on stdin), so a
  seek costs opening a segment, a seek in it and an RTSP handshake on loopback.
- PAUSE stops the child and remembers the position (the last keyframe the child sent
  plus the media time relayed since); PLAY without a Range resumes there with a new
  child, from the keyframe at or before it (so up to one GOP is shown again; the reply's
  ``Range`` is that keyframe's npt). Stopping
  the child rather than holding back packets means a long pause costs nothing and the
  publisher side never sits idle past a session timeout.
- The public source ends when the footage ends (the child says so), or, through the CDN
  module's idle stop, ``linger`` seconds after its last reader left and no RTSP session
  (a paused viewer) is left on it.

This service plays recordings of this node's catalogue only. Footage another node holds
is played there, by that node's playback service, and relayed to this node's SS
(``vss.recording.remote``: a routed MEDIA_OPEN, an RTSP pull, PLAY with Range and PAUSE passed
on to that node's controller); the CU's URL is still one of this node.
"""

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction

from twisted.internet import defer, protocol
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.recording.catalogue import CatalogueDB
from vss.recording.segments import stream_name
from vss.redact import redact
from vss.rtsp import ffmpeg_options
from vss.rtsp.server import ControlError

log = Logger()

URL_ENV = "VSS_PLAYBACK_URL"
PREFIX = "pb-"
WINDOW_MS = 86400_000  # footage is looked for up to a day after the asked time
INTERNAL_TTL = 86400  # publish tokens of the internal paths (never leave the node)
EXIT_NO_FOOTAGE = 4
KILL_AFTER = 5.0  # seconds a child has to exit after TERM
END_GRACE = 2.0  # seconds the last packets of a finished child have to arrive
MP4_AUDIO = frozenset(("aac", "mp3", "opus"))
MAX_LINE = 1 << 16  # a child's JSON line is far shorter


MAX_NPT_S = 10 * 366 * 86400  # an npt past ten years is not a time of this footage
MIN_SCALE, MAX_SCALE = 0.25, 8.0  # the speeds a playback plays at (Scale)


def parse_scale(header):
    """The speed a PLAY ``Scale`` header asks for (RFC 2326 12.34), or None (absent).
    Forward only, from ``MIN_SCALE`` to ``MAX_SCALE``; raises ValueError for anything
    else (the PLAY is answered 456)."""
    if header is None:
        return None
    try:
        scale = float(header.strip())
    except ValueError:
        raise ValueError(f"malformed Scale {header[:40]!r}") from None
    if not MIN_SCALE <= scale <= MAX_SCALE:  # also NaN and infinities
        raise ValueError(f"Scale {header[:40]!r} not within {MIN_SCALE:g}-{MAX_SCALE:g}")
    return scale


def format_scale(scale):
    """A Scale header's value: ``2``, ``0.5``."""
    return f"{scale:g}"


def parse_range(header, origin_ms):
    """The wall-clock ms a PLAY ``Range`` header asks for, or None (absent, no start,
    ``now``). ``npt`` is relative to ``origin_ms``. Raises ValueError for a Range that
    is malformed, negative, absurdly far or of another kind (smpte): the PLAY is
    answered 457."""
    if not header:
        return None
    value = header.split(";")[0].strip()
    kind, eq, spec = value.partition("=")
    if not eq:
        raise ValueError(f"malformed Range {header[:80]!r}")
    start = spec.split("-", 1)[0].strip()
    kind = kind.strip().lower()
    if kind not in ("npt", "clock"):
        raise ValueError(f"unsupported Range {kind[:20]!r}")
    if not start or start == "now":
        return None
    if kind == "npt":
        if ":" in start:  # npt-hhmmss
            h, m, s = start.split(":")
            if not (h.isdigit() and m.isdigit() and int(m) < 60):
                raise ValueError(f"malformed npt {start[:40]!r}")
            seconds = int(h) * 3600 + int(m) * 60 + float(s)
        else:
            seconds = float(start)
        if not 0 <= seconds <= MAX_NPT_S:  # also NaN and infinities
            raise ValueError(f"npt out of range: {start[:40]!r}")
        return origin_ms + int(round(seconds * 1000))
    text = start.rstrip("Zz")
    whole, _, frac = text.partition(".")
    if frac and not frac.isdigit():
        raise ValueError(f"malformed clock {start[:40]!r}")
    dt = datetime.strptime(whole, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    ms = int(round(float("0." + frac) * 1000)) if frac else 0
    return int(dt.timestamp()) * 1000 + ms


def _public_of(path):
    """The public playback path of a playback path (public or internal), or None."""
    head, _, last = path.rpartition("/")
    if not last.startswith(PREFIX):
        return None
    return f"{head}/{last.split('.', 1)[0]}"


# -- the child: one run of footage into the SS ------------------------------------------

def _keyframe_before(keyframes, offset_ms):
    best = 0
    for k in keyframes:
        if k[0] <= offset_ms and k[0] >= best:
            best = k[0]
    return best


def _next_segment(db, device, stream, after_ms, after_start=None):
    """The first segment (with its keyframes) ending after ``after_ms`` and, with
    ``after_start``, starting after that; None if there is none within a day."""
    rows = db.list(device, stream, after_ms, after_ms + WINDOW_MS)["segments"]
    for s in rows:
        if s.end_ms > after_ms and (after_start is None or s.start_ms > after_start):
            return db.get(s.path)
    return None


def locate(db, device, stream, start_ms):
    """Where a child asked to start at ``start_ms`` begins: (segment, offset ms of the
    keyframe at or before that time in it), or (None, 0) if there is no footage."""
    seg = _next_segment(db, device, stream, start_ms)
    if seg is None:
        return None, 0
    return seg, _keyframe_before(seg.keyframes, max(0, start_ms - seg.start_ms))


def serve(url, data_dir, device, stream, commands, emit, stopping, clock=time.monotonic):
    """Blocking: wait for ``{"start": ms, "go": bool, "speed": x}`` from ``commands``
    (a queue; None is the end), publish the footage from the keyframe at or before
    ``start`` to ``url``, after ``{"go": true}`` if not at once, paced at ``speed`` times
    real time (the timestamps are the footage's: a player plays them at that speed),
    until the footage ends or ``stopping`` is set. ``{"speed": x}`` while it plays
    changes the pace from there on. Returns an exit code."""
    import av

    cmd = commands.get()
    if cmd is None or stopping.is_set():
        return 0
    start_ms = int(cmd["start"])
    go = bool(cmd.get("go"))
    speed = float(cmd.get("speed") or 1.0)
    db = CatalogueDB(data_dir)

    seg, offset = locate(db, device, stream, start_ms)
    if seg is None:
        emit({"event": "no_footage", "at": start_ms})
        return EXIT_NO_FOOTAGE
    inp = av.open(db.abspath(seg.path))
    try:
        out = av.open(url, "w", format="rtsp", options=ffmpeg_options(url, own_server=True),
                      timeout=10)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"cannot publish: {e}"})
        return 1
    try:
        video = inp.streams.video[0]
        audio = [a for a in inp.streams.audio if a.codec_context.name in MP4_AUDIO][:1]
        outs = [out.add_stream_from_template(video)]
        if audio:
            outs.append(out.add_stream_from_template(audio[0]))
        out.start_encoding()  # ANNOUNCE, SETUP, RECORD: the SS has the source now
        emit({"event": "ready", "at": seg.start_ms + offset})
        while not go:
            cmd = commands.get()
            if cmd is None or stopping.is_set():
                return 0
            go = bool(cmd.get("go"))
            speed = float(cmd.get("speed") or speed)
        acc = Fraction(0)  # output time of the first packet of the current segment
        wall0 = None  # the clock at output time t0, paced at ``speed`` from there
        t0 = 0.0
        first = True
        last = {}  # output stream -> output time (s) of its last packet
        after = _next_segment(db, device, stream, seg.end_ms, seg.start_ms)
        while seg is not None and not stopping.is_set():
            streams = [video] + audio
            if first and offset > 0:
                # the catalogue's offsets are whole ms, rounded down: seeking to the next
                # ms lands on that keyframe, never on the one a GOP before it
                inp.seek(int(Fraction(offset + 1, 1000) / video.time_base), stream=video,
                         backward=True)
            # a segment that overlaps the next one (a start cut to the second by an older
            # version) ends where the next one starts: no picture is shown twice
            cut = Fraction(after.start_ms - seg.start_ms, 1000) if after is not None else None
            base = None  # input time (s) mapped to ``acc``
            end = acc
            for packet in inp.demux(streams):
                if stopping.is_set():
                    break
                if packet.dts is None or packet.size == 0:
                    continue
                is_video = packet.stream.index == video.index
                t = packet.dts * packet.time_base
                if cut is not None and (packet.pts if packet.pts is not None
                                        else packet.dts) * packet.time_base >= cut:
                    if is_video:
                        break
                    continue
                if base is None:
                    if not (is_video and packet.is_keyframe):
                        continue  # start on the video keyframe
                    base = t
                t_out = t - base + acc
                ostream = outs[0] if is_video else outs[1]
                if not is_video and t < base:
                    continue  # audio from before the keyframe
                before = last.get(ostream)
                if before is not None and t_out <= before:
                    if not is_video:
                        continue  # audio behind what was sent
                    t_out = before + Fraction(1, 1000)  # never back, never equal
                last[ostream] = t_out
                shift = round((t_out - t) / packet.time_base)
                packet.dts += shift
                if packet.pts is not None:
                    packet.pts += shift
                packet.stream = ostream
                if is_video:
                    end = max(end, t_out + (packet.duration or 0) * packet.time_base)
                    if packet.is_keyframe:
                        emit({"event": "key", "out_ms": int(t_out * 1000),
                              "at": seg.start_ms + int(t * 1000)})
                now = clock()
                if not commands.empty():
                    cmd = commands.get_nowait()
                    if cmd is None:
                        break
                    if cmd.get("speed"):
                        speed = float(cmd["speed"])
                        wall0 = None  # paced at the new speed from this packet on
                if wall0 is None:
                    wall0, t0 = now, float(t_out)
                delay = wall0 + (float(t_out) - t0) / speed - now
                if delay > 0:
                    stopping.wait(delay)
                    if stopping.is_set():
                        break
                out.mux(packet)
            inp.close()
            if stopping.is_set():
                break
            acc = end
            first = False
            seg = after
            if seg is not None:
                after = _next_segment(db, device, stream, seg.end_ms, seg.start_ms)
                inp = av.open(db.abspath(seg.path))
                video = inp.streams.video[0]
                audio = [a for a in inp.streams.audio
                         if a.codec_context.name in MP4_AUDIO][:len(outs) - 1]
        if not stopping.is_set():
            emit({"event": "end"})
        return 0
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        return 1
    finally:
        for c in (inp, out):
            try:
                c.close()
            except Exception:  # noqa: BLE001,S110
                pass
        db.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=f"Play recordings into the SS ({URL_ENV}); "
                                 "the start time comes as JSON on stdin.")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--stream", default="main")
    args = ap.parse_args(argv)
    url = os.environ.get(URL_ENV)
    if not url:
        print(f"{URL_ENV} is not set", file=sys.stderr)
        return 2
    import av  # noqa: F401 - loaded while the child waits as a spare

    stopping = threading.Event()
    commands = queue.Queue()

    def stop(*_):
        stopping.set()
        commands.put(None)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def read():
        for line in sys.stdin:
            try:
                commands.put(json.loads(line))
            except ValueError:
                continue
        stop()

    threading.Thread(target=read, daemon=True).start()

    def emit(event):  # an error may quote the URL: its token never reaches the log
        sys.stdout.write(redact(json.dumps(event, separators=(",", ":"))) + "\n")
        sys.stdout.flush()

    return serve(url, args.data_dir, args.device, args.stream, commands, emit, stopping)


# -- the parent -------------------------------------------------------------------------

class _Child(protocol.ProcessProtocol):
    def __init__(self, playback, internal):
        self.playback = playback
        self.internal = internal  # the path it publishes to
        self.buffer = b""
        self.ended = False
        self.done = defer.Deferred()
        self.kill = None
        self.finished = False  # it said the footage ended
        self.keys = []  # [(output ms, wall ms)] of the last keyframes it sent

    def send(self, command):
        if not self.ended and self.transport is not None:
            self.transport.write(json.dumps(command).encode() + b"\n")

    def stop(self, sig="TERM"):
        if not self.ended and self.transport is not None:
            try:
                self.transport.signalProcess(sig)
            except Exception:  # noqa: BLE001,S110 - already gone
                return
            if sig == "TERM" and self.kill is None:
                self.kill = self.playback.service.reactor.callLater(KILL_AFTER, self.stop,
                                                                    "KILL")

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:  # not one of its JSON lines: dropped
            self.buffer = b""
        for line in lines:
            try:
                event = json.loads(line)
                if event.get("event") == "key":
                    self.keys = self.keys[-7:] + [(int(event["out_ms"]), int(event["at"]))]
                else:
                    self.playback._event(self, event)
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warn("playback child said {line!r}", line=redact(line[:200]))

    def errReceived(self, data):
        log.debug("playback child: {text}",
                  text=redact(data.decode("utf-8", "replace")[-2000:]))

    def processEnded(self, reason):
        self.ended = True
        if self.kill is not None and self.kill.active():
            self.kill.cancel()
        self.playback._ended(self, getattr(reason.value, "exitCode", None))
        self.done.callback(None)


class _Relay:
    """A reader of one child's internal source feeding the public source."""

    def __init__(self, playback, child):
        self.playback = playback
        self.child = child
        self.mask = frozenset()
        self.drops = 0
        self.lag_skips = 0
        self.waiting_key = True
        self.source = None
        self.first_ts = None  # video RTP timestamp of the child's first packet
        self.last_ts = None

    def deliver(self, frame):
        pb = self.playback
        if pb.child is not self.child or pb.public is None or pb.public.closed:
            return
        if self.waiting_key:
            if not frame.key:
                return
            self.waiting_key = False
        for track, rtcp, data in frame.packets:
            if rtcp or len(data) < 12:
                continue
            out = pb.rewrite(self, track, data)
            if track == pb.video_track:
                ts = int.from_bytes(data[4:8], "big")
                if self.first_ts is None:
                    self.first_ts = ts
                self.last_ts = ts
            pb.public.feed(track, False, out)

    def source_ended(self):
        self.source = None
        if self.child.finished and self.playback.child is self.child:
            self.playback.close()  # all the footage went through

    def media_ms(self):
        if self.first_ts is None:
            return None
        return ((self.last_ts - self.first_ts) & 0xFFFFFFFF) * 1000 // 90000


class Playback:
    """One playback: its public path, the current child and a spare, the relay and the
    PLAY/PAUSE controller the SS calls."""

    def __init__(self, service, device, stream, origin_ms):
        self.service = service
        self.device = device
        self.stream = stream
        self.origin_ms = origin_ms
        self.id = os.urandom(8).hex()
        self.path = f"/live/{device}/{PREFIX}{self.id}"
        self.generation = 0
        self.child = None
        self.relay = None
        self.spare = None
        self.public = None
        self.length_ms = None  # footage from the origin on (the range in the SDP)
        self.state = "held"  # held (ready, waiting for PLAY), playing, paused, ended
        self.position = origin_ms  # where the current child started / paused at
        self.requested = origin_ms  # the time the current child was asked to start at
        self.ready = None  # Deferred of the first child's source
        self.tracks = {}  # track -> [ssrc, last seq, last ts, step]
        self.shift = {}  # (relay, track) -> (seq shift, ts shift)
        self.video_track = 0
        self.seeks = 0
        self.speed = 1.0  # the pace of the footage (PLAY's Scale)
        self.children = []  # every child not known to have exited
        self._end_call = None
        self._spare_call = None

    # -- children

    def _spawn(self):
        svc = self.service
        self.children = [c for c in self.children if not c.ended]
        self.generation += 1
        internal = f"{self.path}.{self.generation}"
        token = svc.issuer.issue(internal, ["publish"], ttl=INTERNAL_TTL)
        env = {**(svc.env if svc.env is not None else os.environ),
               URL_ENV: f"{svc.cdn.media_base}{internal}?token={token}"}
        argv = [svc.python, "-m", "vss.recording.playback", "--data-dir", svc.data_dir,
                "--device", self.device, "--stream", self.stream]
        child = _Child(self, internal)
        svc.reactor.spawnProcess(child, svc.python, argv, env=env)
        self.children.append(child)
        svc.children.add(child)
        child.done.addBoth(lambda _: svc.children.discard(child))
        return child

    def _take_spare(self):
        child, self.spare = self.spare, None
        if child is None or child.ended:
            child = self._spawn()
        return child

    def _make_spare(self):
        if not self.service.spare:
            return
        if self.state != "ended" and (self.spare is None or self.spare.ended):
            self.spare = self._spawn()

    def start(self, at_ms, go, position=None):
        """Replace the current child by one playing from ``at_ms`` (whose keyframe, if
        already looked up, is ``position``)."""
        old, self.child = self.child, None
        if old is not None:
            old.stop()
        self.requested = at_ms
        # where the child will begin, the keyframe at or before ``at_ms``: what the PLAY
        # reply's Range says, the player's clock starting there with the first packet
        self.position = position if position is not None else \
            self.service.keyframe_at(self.device, self.stream, at_ms)
        child = self.child = self._take_spare()
        self.relay = None
        child.send({"start": at_ms, "go": go, "speed": self.speed})
        return child

    def source_added(self, source):
        """The SS got a source: the current child's internal one is relayed."""
        child = self.child
        if child is None or source.path != child.internal:
            return
        relay = _Relay(self, child)
        self.relay = relay
        if self.public is None:
            kinds = [t.kind for t in source.tracks]
            self.video_track = kinds.index("video") if "video" in kinds else 0
            self.public = self.service.rtsp.attach_source(self.path, source.sdp,
                                                          origin="playback")
            if self.length_ms:  # the SDP's range: a seek bar in the player
                self.public.duration = self.length_ms / 1000
        source.add_reader(relay)
        if self.ready is not None:
            d, self.ready = self.ready, None
            d.callback(self.public)

    def rewrite(self, relay, track, data):
        """``data`` with the public stream's SSRC, sequence and timestamp."""
        seq = int.from_bytes(data[2:4], "big")
        ts = int.from_bytes(data[4:8], "big")
        state = self.tracks.get(track)
        if state is None:
            state = self.tracks[track] = [data[8:12], seq - 1, ts - 3600, 3600]
        shift = self.shift.get((relay, track))
        if shift is None:
            # the first packet of this child follows the last one sent, one step later
            shift = ((state[1] + 1 - seq) & 0xFFFF, (state[2] + state[3] - ts) & 0xFFFFFFFF)
            self.shift = {k: v for k, v in self.shift.items() if k[0] is relay}
            self.shift[(relay, track)] = shift
        out_seq = (seq + shift[0]) & 0xFFFF
        out_ts = (ts + shift[1]) & 0xFFFFFFFF
        if out_ts != state[2]:
            step = (out_ts - state[2]) & 0xFFFFFFFF
            if 0 < step < 90000:
                state[3] = step
        state[1], state[2] = out_seq, out_ts
        return b"".join((data[:2], out_seq.to_bytes(2, "big"), out_ts.to_bytes(4, "big"),
                         state[0], data[12:]))

    def where(self):
        """Wall-clock ms of what the viewer is seeing now (approximately)."""
        relay, child = self.relay, self.child
        if relay is None or child is None:
            return self.position
        media = relay.media_ms()
        if media is None:
            return self.position
        for out_ms, at in reversed(child.keys):
            if out_ms <= media:
                return at + (media - out_ms)
        return self.position + media

    # -- the SS's controller

    def play(self, session, header, scale=None):
        """The SS's PLAY: start, resume or seek, at the speed of ``scale`` (the
        ``Scale`` header) if given. A ``Range`` that is malformed, or names a time with
        no footage at or after it (within a day), is refused with 457, a ``Scale`` out
        of ``MIN_SCALE``-``MAX_SCALE`` with 456, and the playback goes on as it was."""
        try:
            target = parse_range(header, self.origin_ms)
        except (ValueError, OverflowError) as e:
            log.info("playback {path}: PLAY refused ({error})", path=self.path, error=e)
            raise ControlError(457) from None
        try:
            speed = parse_scale(scale)
        except ValueError as e:
            log.info("playback {path}: PLAY refused ({error})", path=self.path, error=e)
            raise ControlError(456, "Scale Not Supported") from None
        if self.state == "ended":
            raise ControlError(404, "Playback Ended")
        if target is not None and target != self.requested:
            position = self.service.footage_at(self.device, self.stream, target)
            if position is None:
                log.info("playback {path}: no footage at or after {at}", path=self.path,
                         at=target)
                raise ControlError(457, "No Footage There")
        else:
            position = None
        if speed is not None and speed != self.speed:
            self.speed = speed
            if self.state == "playing" and self.child is not None:
                self.child.send({"speed": speed})  # on from where it is
        if self.state == "held":
            if target is None or target == self.requested:
                self.state = "playing"
                self.child.send({"go": True, "speed": self.speed})
                self._spare_call = self.service.reactor.callLater(0.5, self._make_spare)
            else:
                self._seek(target, position)
        elif self.state == "paused":
            self._seek(self.position if target is None else target, position)
        elif self.state == "playing" and target is not None:
            self._seek(target, position)
        return f"npt={max(0, self.position - self.origin_ms) / 1000:.3f}-"

    def pause(self, session):
        if self.state != "playing" or self._viewers_playing():
            return
        self.position = self.where()
        old, self.child = self.child, None
        self.relay = None
        if old is not None:
            old.stop()
        self.state = "paused"

    def _viewers_playing(self):
        return any(s.path == self.path and s.state == "playing"
                   for s in self.service.rtsp.sessions.values())

    def _seek(self, target, position=None):
        self.seeks += 1
        self.state = "playing"
        self.start(target, True, position)
        self._make_spare()

    def may_stop(self):
        """The CDN module's idle stop: False while an RTSP session (a paused viewer)
        holds this playback."""
        return not any(s.path == self.path for s in self.service.rtsp.sessions.values())

    # -- child events

    def _event(self, child, event):
        kind = event.get("event")
        if kind == "ready" and child is self.child:
            self.position = int(event.get("at", self.position))
        elif kind in ("end", "no_footage") and child is self.child:
            # closed once its source ended (its last packets relayed) or it exited
            log.info("playback {path}: {kind}", path=self.path, kind=kind)
            child.finished = True
        elif kind == "error":
            log.warn("playback {path}: {message}", path=self.path,
                     message=event.get("message"))

    def _ended(self, child, code):
        if child is self.spare:
            self.spare = None
        if child is self.child and self.state != "ended":
            if child.finished and self.relay is not None and self.relay.source is not None:
                # its publishing session may still hold packets not read yet
                if self._end_call is None:
                    self._end_call = self.service.reactor.callLater(END_GRACE, self.close)
                return
            self.child = None
            if self.ready is not None:
                d, self.ready = self.ready, None
                d.errback(VssError(ResultCode.NOT_FOUND if code == EXIT_NO_FOOTAGE
                                   else ResultCode.INTERNAL_ERROR,
                                   "the recording cannot be played"))
            self.close()

    def close(self):
        """End the playback; fires when its children have exited."""
        if self.state == "ended":
            return defer.succeed(None)
        self.state = "ended"
        for call in (self._end_call, self._spare_call):
            if call is not None and call.active():
                call.cancel()
        waits = []
        for child in self.children:
            child.stop()
            waits.append(child.done)
        self.child = self.spare = self.relay = None
        self.service._closed(self)
        if self.public is not None and not self.public.closed:
            self.public.close()
        return defer.DeferredList(waits)


class PlaybackService:
    """The CDN module's playback side: ``open(body)`` for MEDIA_OPEN with
    ``purpose=PLAYBACK`` (the CDN module checked the view grant)."""

    def __init__(self, cdn, catalogue, data_dir, reactor, python=sys.executable, env=None):
        self.cdn = cdn
        self.rtsp = cdn.rtsp
        self.issuer = cdn.issuer
        self.catalogue = catalogue
        self.data_dir = os.path.abspath(data_dir)
        self.reactor = reactor
        self.python = python
        self.env = env
        self.spare = True  # keep a started child per playback for the next seek
        self.children = set()  # every child not known to have exited
        self.playbacks = {}  # public path -> Playback
        self.counters = {"opened": 0, "seeks": 0}
        self._db = None  # a catalogue connection of the reactor's thread (keyframe_at)
        self.rtsp.addObserver(self)

    def keyframe_at(self, device, stream, at_ms):
        """Wall-clock ms of the keyframe a child asked to start at ``at_ms`` begins at
        (``at_ms`` if there is no footage there)."""
        found = self.footage_at(device, stream, at_ms)
        return at_ms if found is None else found

    def footage_at(self, device, stream, at_ms):
        """Wall-clock ms of the keyframe a child asked to start at ``at_ms`` begins at,
        None if there is no footage at or after it within a day (``at_ms`` if the
        catalogue cannot be read: the child will say). Read at once, in the reactor's
        thread: the SS's PLAY controller answers synchronously, and this is two indexed
        lookups of a local SQLite database in WAL mode (never blocked by the recorder's
        writes)."""

        try:
            if self._db is None:
                self._db = CatalogueDB(self.data_dir)
            seg, offset = locate(self._db, device, stream, at_ms)
        except Exception:  # noqa: BLE001 - the Range is then the asked time
            log.failure("playback: catalogue lookup at {at}", at=at_ms)
            return at_ms
        return None if seg is None else seg.start_ms + offset

    @defer.inlineCallbacks
    def open(self, body):
        start = int(body.start_time)
        name = stream_name(body.channel, body.stream)
        listing = yield self.catalogue.list(body.device_id, name, start, start + WINDOW_MS)
        footage = [s for s in listing["segments"] if s.end_ms > start]
        if not footage:
            when = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            raise VssError(ResultCode.NOT_FOUND, f"nothing was recorded of {body.device_id} "
                           f"{name} at or after {when} UTC")
        origin = max(start, footage[0].start_ms)
        pb = Playback(self, body.device_id, name, origin)
        # npt counts wall-clock time from the origin (a seek to npt S is origin + S):
        # the footage of the window ends at its last segment's end
        pb.length_ms = max(s.end_ms for s in footage) - origin
        self.playbacks[pb.path] = pb
        pb.ready = defer.Deferred()
        pb.start(origin, False)
        timeout = self.reactor.callLater(self.cdn.source_wait, self._too_slow, pb)
        try:
            public = yield pb.ready
        finally:
            if timeout.active():
                timeout.cancel()
        self.rtsp.controllers[pb.path] = pb
        self.cdn.origins[pb.path] = ("playback", pb)
        self.cdn.source_idle(public)  # stopped if no viewer comes
        self.counters["opened"] += 1
        log.info("playback {path} of {device} {stream} from {at}", path=pb.path,
                 device=body.device_id, stream=name, at=origin)
        return self.cdn.play_url(pb.path)

    def _too_slow(self, pb):
        if pb.ready is not None:
            d, pb.ready = pb.ready, None
            pb.close()
            d.errback(VssError(ResultCode.TIMEOUT, "the playback did not start"))

    # -- SS observer

    def source_added(self, source):
        pb = self.playbacks.get(_public_of(source.path))
        if pb is not None and source.path != pb.path:
            pb.source_added(source)

    def _closed(self, pb):
        self.counters["seeks"] += pb.seeks
        self.playbacks.pop(pb.path, None)
        self.rtsp.controllers.pop(pb.path, None)

    def close_all(self):
        """End every playback; fires when every child (also those of playbacks that
        ended already) has exited."""
        for pb in list(self.playbacks.values()):
            pb.close()
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
        waits = []
        for child in list(self.children):
            child.stop()
            waits.append(child.done)
        return defer.DeferredList(waits)


if __name__ == "__main__":
    sys.exit(main())
