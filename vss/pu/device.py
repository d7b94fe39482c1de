"""
A simulated PU with real state: an IPC (one channel), a DVS (N channels) or a DVR.

Pan, tilt and zoom move over time at the commanded speed (positions in [-1, 1], zoom in
[0, 1]; full speed crosses the range in 2 s), presets and configuration are stored, and
every change is reported to the node as a STATE_CHANGE notification (S601). Time comes
from an injected clock, so tests drive it with ``task.Clock``.
"""

from datetime import UTC, datetime

from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.listing import gaps_of
from vss.protocols.messages import (
    KV,
    ChangeKind,
    Config,
    Empty,
    EventPhase,
    EventRaise,
    FocusOp,
    IrisOp,
    LensStatus,
    MsgType,
    PresetEntry,
    PresetOp,
    Presets,
    PtzOp,
    PtzStatus,
    PuKind,
    Recordings,
    RecordMode,
    RecordSegment,
    RecordSettings,
    Severity,
    StateChange,
)
from vss.pu import dvr

#: Units per second at speed 1.0.
MAX_RATE = 1.0

DEFAULT_CONFIG = {
    "video.codec": "H264",
    "video.resolution": "1920x1080",
    "video.fps": "25",
    "video.bitrate_kbps": "4096",
    "video.gop": "50",
    "osd.text": "",
    "osd.clock": "on",
    "image.brightness": "50",
    "image.contrast": "50",
    "ir.mode": "auto",
}

LIMITS = {"pan": (-1.0, 1.0), "tilt": (-1.0, 1.0), "zoom": (0.0, 1.0)}


def _clamp(axis, value):
    lo, hi = LIMITS[axis]
    return min(hi, max(lo, value))


class Axis:
    """One PTZ axis: a position and, while moving, a rate and an optional target."""

    __slots__ = ("name", "origin", "t0", "rate", "target")

    def __init__(self, name, position=0.0):
        self.name = name
        self.origin = position
        self.t0 = 0.0
        self.rate = 0.0
        self.target = None

    def position(self, now):
        if self.rate == 0.0:
            return self.origin
        p = self.origin + self.rate * (now - self.t0)
        if self.target is not None:
            if (self.rate > 0 and p >= self.target) or (self.rate < 0 and p <= self.target):
                return self.target
        return _clamp(self.name, p)

    def moving(self, now):
        if self.rate == 0.0:
            return False
        p = self.position(now)
        if self.target is not None:
            return p != self.target
        lo, hi = LIMITS[self.name]
        return lo < p < hi or (p == lo and self.rate > 0) or (p == hi and self.rate < 0)

    def move(self, now, rate, target=None):
        self.origin = self.position(now)
        self.t0 = now
        self.rate = rate
        self.target = target

    def stop(self, now):
        self.origin = self.position(now)
        self.rate = 0.0
        self.target = None

    def eta(self, now):
        """Seconds until the axis stops by itself (None if it never does)."""
        if self.rate == 0.0:
            return 0.0
        p = self.position(now)
        end = self.target if self.target is not None else LIMITS[self.name][1 if self.rate > 0 else 0]
        return max(0.0, (end - p) / self.rate)


class Channel:
    def __init__(self, index):
        self.index = index
        self.axes = {n: Axis(n) for n in ("pan", "tilt", "zoom")}
        self.focus = 0.5
        self.iris = 0.5
        self.auto_focus = True
        self.auto_iris = True
        self.presets = {}  # id -> (name, pan, tilt, zoom)
        self.config = dict(DEFAULT_CONFIG)
        self.config_version = 1
        self.record = {"mode": int(RecordMode.OFF), "stream": 0, "segment_seconds": 300,
                       "retention_days": 7, "quota_mb": 0, "pre_event_seconds": 5,
                       "post_event_seconds": 10, "schedule": []}
        self.stop_call = None


class SimulatedPU:
    """The request handler of one simulated PU (``on_request`` of its client link)."""

    log = Logger()

    def __init__(self, device_id, kind=PuKind.IPC, channels=1, clock=None):
        self.device_id = device_id
        self.kind = PuKind(kind)
        self.channels = [Channel(i) for i in range(max(1, channels))]
        self.clock = clock
        self.client = None  # the SignallingClient, set by the agent
        self.requests = 0
        self.media = None  # set by the agent when it can publish video
        self.dvr_days = dvr.DEFAULT_DAYS  # a DVR's footage: the past N days (vss.pu.dvr)

    def use_media(self, media):
        """Publish video with ``media`` (a ``vss.pu.media.PublisherFactory``): the
        configuration then tells what the stream really is (resolution, rate, bitrate,
        GOP), and the publisher follows the configuration a CU sets."""
        self.media = media
        for ch in self.channels:
            ch.config.update(media.stream_config())

    # -- reporting (S601)

    def report(self, channel, kind, items):
        client = self.client
        if client is None or client.link is None or client.registered is None:
            return
        client.link.send_notify(
            MsgType.STATE_CHANGE,
            StateChange(device_id=self.device_id, channel=channel, change=int(kind),
                        timestamp=int(self.clock.seconds() * 1000),
                        items=[KV(key=k, value=str(v)) for k, v in items.items()]),
        )

    # -- events (EVENT_RAISE, docs/protocol.md 9.7)

    def raise_event(self, type, channel=0, phase=EventPhase.PULSE, severity=Severity.ALARM,
                    items=None):
        """Raise an event of this device; fires with the node's ``EventRaised`` (None
        when offline)."""
        client = self.client
        if client is None or client.link is None or client.registered is None:
            return defer.succeed(None)
        body = EventRaise(device_id=self.device_id, channel=channel, type=type,
                          phase=int(phase), severity=int(severity),
                          pu_time=int(self.clock.seconds() * 1000),
                          items=[KV(key=k, value=str(v)) for k, v in (items or {}).items()])
        d = client.request(MsgType.EVENT_RAISE, body)
        d.addCallback(lambda msg: msg.body)

        def failed(f):
            self.log.warn("event {type} of {device} not raised: {error}", type=type,
                          device=self.device_id, error=f.getErrorMessage())

        return d.addErrback(failed)

    def motion(self, duration=3.0, channel=0):
        """A simulated motion: START now, STOP ``duration`` seconds later."""
        self.raise_event("motion", channel, EventPhase.START, items={"zone": 1})
        self.clock.callLater(duration, self.raise_event, "motion", channel, EventPhase.STOP,
                             items={"zone": 1})

    # -- requests from the node

    def __call__(self, frame, msg):
        return self.on_request(frame, msg)

    def on_request(self, frame, msg):
        self.requests += 1
        body = msg.body
        handler = self.HANDLERS.get(frame.type)
        if handler is None:
            raise VssError(ResultCode.NOT_SUPPORTED)
        if getattr(body, "device_id", self.device_id) != self.device_id:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"this is {self.device_id}")
        channel = getattr(body, "channel", 0)
        if channel >= len(self.channels):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"no channel {channel}")
        return handler(self, self.channels[channel], body)

    def ptz(self, ch, body):
        now = self.clock.seconds()
        op = body.op
        speed = body.speed if body.speed > 0 else 1.0
        if op == PtzOp.STOP:
            self._stop(ch)
        elif op == PtzOp.CONTINUOUS:
            for axis, v in (("pan", body.pan), ("tilt", body.tilt), ("zoom", body.zoom)):
                ch.axes[axis].move(now, v * speed * MAX_RATE)
            self._schedule_stop(ch, body.timeout_ms / 1000.0 if body.timeout_ms else None)
        elif op in (PtzOp.ABSOLUTE, PtzOp.RELATIVE):
            for axis, v in (("pan", body.pan), ("tilt", body.tilt), ("zoom", body.zoom)):
                a = ch.axes[axis]
                here = a.position(now)
                target = _clamp(axis, v if op == PtzOp.ABSOLUTE else here + v)
                rate = speed * MAX_RATE * (1 if target >= here else -1)
                a.move(now, rate if target != here else 0.0, target)
            self._schedule_stop(ch, None)
        else:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown PTZ op {op}")
        return self._status(ch)

    def _status(self, ch):
        now = self.clock.seconds()
        a = ch.axes
        return PtzStatus(pan=a["pan"].position(now), tilt=a["tilt"].position(now),
                         zoom=a["zoom"].position(now),
                         moving=any(x.moving(now) for x in a.values()))

    def _schedule_stop(self, ch, after):
        if ch.stop_call is not None and ch.stop_call.active():
            ch.stop_call.cancel()
        now = self.clock.seconds()
        etas = [a.eta(now) for a in ch.axes.values() if a.rate != 0.0]
        natural = max(etas) if etas else 0.0
        delay = natural if after is None else min(after, natural)
        ch.stop_call = self.clock.callLater(delay, self._stop, ch)

    def _stop(self, ch):
        if ch.stop_call is not None and ch.stop_call.active():
            ch.stop_call.cancel()
        ch.stop_call = None
        now = self.clock.seconds()
        for a in ch.axes.values():
            a.stop(now)
        s = self._status(ch)
        self.report(ch.index, ChangeKind.PTZ, {"pan": s.pan, "tilt": s.tilt, "zoom": s.zoom})

    def lens(self, ch, body):
        step = 0.1 * (body.speed if body.speed > 0 else 1.0)
        if body.focus == FocusOp.NEAR:
            ch.focus, ch.auto_focus = max(0.0, ch.focus - step), False
        elif body.focus == FocusOp.FAR:
            ch.focus, ch.auto_focus = min(1.0, ch.focus + step), False
        elif body.focus == FocusOp.AUTO:
            ch.auto_focus = True
        if body.iris == IrisOp.OPEN:
            ch.iris, ch.auto_iris = min(1.0, ch.iris + step), False
        elif body.iris == IrisOp.CLOSE:
            ch.iris, ch.auto_iris = max(0.0, ch.iris - step), False
        elif body.iris == IrisOp.AUTO:
            ch.auto_iris = True
        return LensStatus(focus=ch.focus, iris=ch.iris, auto_focus=ch.auto_focus,
                          auto_iris=ch.auto_iris)

    def preset(self, ch, body):
        now = self.clock.seconds()
        if body.op == PresetOp.SET:
            s = self._status(ch)
            ch.presets[body.preset] = (body.name or f"preset {body.preset}", s.pan, s.tilt, s.zoom)
            self._report_presets(ch)
        elif body.op == PresetOp.GOTO:
            if body.preset not in ch.presets:
                raise VssError(ResultCode.NOT_FOUND, f"no preset {body.preset}")
            _, pan, tilt, zoom = ch.presets[body.preset]
            for axis, target in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
                a = ch.axes[axis]
                here = a.position(now)
                a.move(now, 0.0 if target == here else MAX_RATE * (1 if target > here else -1),
                       target)
            self._schedule_stop(ch, None)
        elif body.op == PresetOp.REMOVE:
            if ch.presets.pop(body.preset, None) is None:
                raise VssError(ResultCode.NOT_FOUND, f"no preset {body.preset}")
            self._report_presets(ch)
        elif body.op != PresetOp.LIST:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown preset op {body.op}")
        return Presets(presets=[PresetEntry(preset=k, name=v[0], pan=v[1], tilt=v[2], zoom=v[3])
                                for k, v in sorted(ch.presets.items())])

    def _report_presets(self, ch):
        self.report(ch.index, ChangeKind.PRESET,
                    {str(k): v[0] for k, v in sorted(ch.presets.items())})

    def config_get(self, ch, body):
        if body.keys:
            missing = [k for k in body.keys if k not in ch.config]
            if missing:
                raise VssError(ResultCode.NOT_FOUND, f"no such key: {', '.join(missing)}")
            items = [(k, ch.config[k]) for k in body.keys]
        else:
            items = sorted(ch.config.items())
        return Config(items=[KV(key=k, value=v) for k, v in items], version=ch.config_version)

    def config_set(self, ch, body):
        if body.expected_version and body.expected_version != ch.config_version:
            raise VssError(ResultCode.CONFLICT,
                           f"configuration is at version {ch.config_version}")
        changed = {}
        for kv in body.items:
            if ch.config.get(kv.key) != kv.value:
                changed[kv.key] = kv.value
        if changed:
            ch.config.update(changed)
            ch.config_version += 1
            self.report(ch.index, ChangeKind.CONFIG, {**changed, "_version": ch.config_version})
        return Config(items=[KV(key=k, value=ch.config[k]) for k in sorted(ch.config)],
                      version=ch.config_version)

    def record_get(self, ch, body):
        return RecordSettings(device_id=self.device_id, channel=ch.index, **ch.record)

    def record_set(self, ch, body):
        if body.mode not in set(RecordMode):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown record mode {body.mode}")
        ch.record = {n: getattr(body, n) for n in ch.record}
        ch.record["schedule"] = list(body.schedule)
        self.report(ch.index, ChangeKind.RECORDING, {"mode": RecordMode(body.mode).name.lower()})
        return self.record_get(ch, body)

    def record_query(self, ch, body):
        """A DVR's own recordings of the range (segments tagged with its device id)."""
        if self.kind != PuKind.DVR:
            raise VssError(ResultCode.NOT_SUPPORTED, "only a DVR keeps recordings")
        if body.to_time <= body.from_time:
            raise VssError(ResultCode.INVALID_ARGUMENT, "to must be after from")
        now = int(self.clock.seconds() * 1000)
        segs = [RecordSegment(start=a, end=b, bytes=n, node_id=self.device_id)
                for a, b, n in dvr.segments(body.from_time, body.to_time, now, self.dvr_days,
                                            ch.index)]

        return Recordings(segments=segs, gaps=gaps_of(segs, body.from_time, body.to_time),
                          missing=[], exports=[], truncated=False)

    def media_start(self, ch, body):
        if self.media is None:
            raise VssError(ResultCode.NOT_SUPPORTED, "this PU cannot publish video")
        if body.start_time:  # a DVR's playback of its footage from that time
            if self.kind != PuKind.DVR:
                raise VssError(ResultCode.NOT_SUPPORTED, "only a DVR plays back recordings")
            if dvr.footage_from(body.start_time, int(self.clock.seconds() * 1000),
                                self.dvr_days, ch.index, within=dvr.PLAY_WITHIN_MS) is None:

                at = datetime.fromtimestamp(body.start_time / 1000, UTC)
                raise VssError(ResultCode.NOT_FOUND, f"no recording within a day "
                               f"from {at:%Y-%m-%d %H:%M:%S} UTC")
        return self.media.start(self, ch, body)

    def media_stop(self, ch, body):
        if self.media is not None:
            self.media.stop(self, ch, body)
        return Empty()

    HANDLERS = {
        MsgType.PTZ_CONTROL: ptz,
        MsgType.LENS_CONTROL: lens,
        MsgType.PRESET: preset,
        MsgType.CONFIG_GET: config_get,
        MsgType.CONFIG_SET: config_set,
        MsgType.RECORD_SETTINGS_GET: record_get,
        MsgType.RECORD_SETTINGS_SET: record_set,
        MsgType.MEDIA_START: media_start,
        MsgType.RECORD_QUERY: record_query,
        MsgType.MEDIA_STOP: media_stop,
    }
