"""
The RGM's recording task manager: the document's *split*, *stack* and *queue*.

A recording is keyed by ``(device_id, channel, stream)``. Many *reasons* may want the
same recording at once; each reason is a short string:

==================  =====================================================  ========
reason              held while                                             priority
==================  =====================================================  ========
``event``           an alarm's post-event seconds have not run out         3
``manual:<user>``   the user has not stopped it (RECORD_START/RECORD_STOP) 2
``schedule``        the clock is inside a weekly slot of the settings      1
``continuous``      the settings say CONTINUOUS                            1
==================  =====================================================  ========

The three parts, each one function or class:

1. ``split(start, end, segment_seconds, edges)``: a stretch of recording becomes segment
   tasks cut on the segment boundaries (multiples of ``segment_seconds`` since the
   epoch, so every reason and every node cuts at the same instants) and at every edge
   given (a schedule edge). ``schedule_windows`` turns weekly slots into UTC windows.
2. ``Stack``: the reasons of one recording, reference-counted: the recording starts with
   its first reason and stops only when its last reason ends.
3. ``Queue``: when the node is at its recording capacity (``Capacity``: concurrent
   streams and write rate in Mb/s), recordings wait in priority order (event > manual >
   schedule, then first come first served) and start when capacity frees.

``RecordingManager`` is what the RGM holds (``rgm.recordings``): it keeps the stacks,
admits them through the queue, drives the injected ``IRecorder`` (the CDN module's
recording interface, the only path to the SS) and keeps everything in
``recordings.json`` in the data directory so the tasks resume after an RGM restart.
``serve_request`` answers the CU messages RECORD_START, RECORD_STOP, RECORD_STATUS.

Times are UTC seconds from the injected clock (``clock.seconds()``); weekly slots are
UTC too (day 0 = Monday). No timer or file I/O happens in a constructor: the manager
loads and resumes in ``startService``.
"""

import json
import os
from dataclasses import dataclass, field

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vss.interfaces import IRecorder
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    MsgType,
    RecordingState,
    RecordMode,
    RecordState,
    RecordStates,
    RecordTask,
    Stream,
)

WEEK = 7 * 86400
#: 1970-01-01 was a Thursday: the Monday 00:00 UTC that starts the epoch's week.
_EPOCH_MONDAY = -3 * 86400
DEFAULT_SEGMENT_SECONDS = 300
DEFAULT_PRE_EVENT = 5
DEFAULT_POST_EVENT = 10
STATE_FILE = "recordings.json"

PRIORITY = {"event": 3, "manual": 2, "schedule": 1, "continuous": 1}


def priority_of(reason):
    """The queue priority of a reason (``manual:alice`` is a manual reason)."""
    return PRIORITY[reason.split(":", 1)[0]]


# ---------------------------------------------------------------------------
# 1. split


def schedule_windows(slots, start, end):
    """The UTC windows ``[(s, e), ...]`` of the weekly ``slots`` (ScheduleSlot: day 0 =
    Monday, start/end minutes) that overlap ``[start, end)``, clipped to it, in order;
    windows that touch (Monday 22:00-24:00 and Tuesday 00:00-06:00) are merged."""
    spans = []
    first_week = int((start - _EPOCH_MONDAY) // WEEK)
    last_week = int((end - _EPOCH_MONDAY) // WEEK)
    for week in range(first_week, last_week + 1):
        monday = _EPOCH_MONDAY + week * WEEK
        for slot in slots:
            s = monday + slot.day * 86400 + slot.start_minute * 60
            e = monday + slot.day * 86400 + slot.end_minute * 60
            s, e = max(s, start), min(e, end)
            if s < e:
                spans.append((s, e))
    spans.sort()
    merged = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def next_boundary(t, segment_seconds):
    """The first segment boundary strictly after ``t``."""
    return (int(t // segment_seconds) + 1) * segment_seconds


def split(start, end, segment_seconds, edges=()):
    """The segment tasks ``[(s, e), ...]`` of a recording from ``start`` to ``end``: cut
    on every multiple of ``segment_seconds`` and at every edge strictly inside, so no
    task crosses a segment boundary or a schedule edge."""
    cuts = sorted({t for t in edges if start < t < end})
    out = []
    s = start
    while s < end:
        e = min(next_boundary(s, segment_seconds), end)
        while cuts and cuts[0] <= s:
            cuts.pop(0)
        if cuts and cuts[0] < e:
            e = cuts.pop(0)
        out.append((s, e))
        s = e
    return out


def split_schedule(slots, start, end, segment_seconds):
    """The segment tasks of a weekly schedule between ``start`` and ``end``: each window
    split on the segment boundaries and cut at its own edges."""
    return [seg for s, e in schedule_windows(slots, start, end)
            for seg in split(s, e, segment_seconds)]


# ---------------------------------------------------------------------------
# 2. stack


@dataclass
class Stack:
    """The reasons that want one recording, reference-counted.

    ``reasons`` maps a reason to the time it ends (None: until removed). The recording
    is wanted while at least one reason is held; its priority is its highest reason's.
    """

    key: tuple
    segment_seconds: int = DEFAULT_SEGMENT_SECONDS
    reasons: dict = field(default_factory=dict)
    state: int = RecordingState.STOPPED
    since: float = 0.0  # when the current state began
    order: int = 0  # arrival number, for first come first served in the queue
    retries: int = 0  # failed starts in a row (the device offline, no stream...)

    def add(self, reason, until=None):
        """Hold ``reason``; True if the recording was not wanted before (first ref)."""
        first = not self.reasons
        old = self.reasons.get(reason, 0)
        if reason in self.reasons and (old is None or (until is not None and old >= until)):
            return first
        self.reasons[reason] = until
        return first

    def remove(self, reason):
        """Drop ``reason``; True if that was the last one (the recording must stop)."""
        if self.reasons.pop(reason, False) is False:
            return False
        return not self.reasons

    @property
    def wanted(self):
        return bool(self.reasons)

    @property
    def priority(self):
        return max((priority_of(r) for r in self.reasons), default=0)

    def expired(self, now):
        """The reasons whose time has run out."""
        return [r for r, until in self.reasons.items() if until is not None and until <= now]


# ---------------------------------------------------------------------------
# 3. queue


@dataclass(frozen=True)
class Capacity:
    """What one node may record at once (from its config)."""

    max_streams: int = 32
    max_write_mbps: float = 400.0
    main_mbps: float = 4.0
    sub_mbps: float = 1.0

    def rate(self, stream):
        return self.main_mbps if stream == Stream.MAIN else self.sub_mbps


class Queue:
    """Recordings waiting for capacity: highest priority first, then by arrival."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.running = {}  # key -> write rate in Mb/s
        self.waiting = {}  # key -> Stack

    def fits(self, key):
        rate = self.capacity.rate(key[2])
        return (len(self.running) < self.capacity.max_streams
                and sum(self.running.values()) + rate <= self.capacity.max_write_mbps + 1e-9)

    def admit(self, stack):
        """Queue ``stack``, then start what fits: True if ``stack`` got its capacity."""
        if stack.key not in self.running:
            self.waiting[stack.key] = stack
            self.pump()
        return stack.key in self.running

    def release(self, key):
        """Free the capacity of ``key`` (or take it out of the queue); the stacks that
        now start, in order."""
        self.running.pop(key, None)
        self.waiting.pop(key, None)
        return self.pump()

    def pump(self):
        """Start waiting stacks in order while they fit; the ones started."""
        started = []
        for stack in self.ordered():
            if not self.fits(stack.key):
                break  # strict order: a big low-priority task never overtakes
            del self.waiting[stack.key]
            self.running[stack.key] = self.capacity.rate(stack.key[2])
            started.append(stack)
        return started

    def ordered(self):
        return sorted(self.waiting.values(), key=lambda s: (-s.priority, s.order))

    def position(self, key):
        """1-based position of ``key`` in the queue, 0 if not queued."""
        for i, stack in enumerate(self.ordered(), 1):
            if stack.key == key:
                return i
        return 0


# ---------------------------------------------------------------------------
# The manager


@implementer(IRecorder)
class UnsupportedRecorder:
    """The recorder of a node whose streaming server cannot record yet: every start
    fails with NOT_SUPPORTED."""

    def start(self, device_id, channel, stream, segment_seconds):
        return defer.fail(VssError(ResultCode.NOT_SUPPORTED, "this node cannot record yet"))

    def stop(self, device_id, channel, stream):
        return defer.succeed(None)


#: RecordSettings extension tag: the event types that start an event recording
EXT_EVENT_TYPES = 0x0001


@dataclass(frozen=True)
class ChannelSettings:
    """The parts of a channel's RecordSettings the manager uses."""

    mode: int = RecordMode.MANUAL
    stream: int = Stream.MAIN
    segment_seconds: int = DEFAULT_SEGMENT_SECONDS
    pre_event_seconds: int = DEFAULT_PRE_EVENT
    post_event_seconds: int = DEFAULT_POST_EVENT
    slots: tuple = ()  # ((day, start_minute, end_minute), ...)
    #: EVENT mode: the event types that start an event recording (RecordSettings
    #: extension EVENT_TYPES); empty: every PU event of severity ALARM or above
    event_types: tuple = ()

    @classmethod
    def from_record(cls, s):
        types = ()
        for tag, value in s.ext:
            if tag == EXT_EVENT_TYPES:
                types = tuple(t for t in value.decode("utf-8", "replace").split(",") if t)
        return cls(mode=s.mode, stream=s.stream, segment_seconds=s.segment_seconds or
                   DEFAULT_SEGMENT_SECONDS, pre_event_seconds=s.pre_event_seconds,
                   post_event_seconds=s.post_event_seconds,
                   slots=tuple((x.day, x.start_minute, x.end_minute) for x in s.schedule),
                   event_types=types)

    def schedule(self):
        return [_Slot(*s) for s in self.slots]


@dataclass(frozen=True)
class _Slot:
    day: int
    start_minute: int
    end_minute: int


class RecordingManager(service.Service):
    """Split, stack and queue the recordings of one node, and drive its recorder."""

    log = Logger()

    def __init__(self, clock, recorder, data_dir, capacity=None, retry_delay=2.0,
                 retry_max=60.0):
        self.clock = clock
        # a recording whose start failed (the PU offline, its stream not coming) while a
        # schedule, continuous mode or an event still wants it is tried again after
        # retry_delay seconds, doubling up to retry_max
        self.retry_delay = retry_delay
        self.retry_max = retry_max
        self.recorder = recorder
        self.path = os.path.join(data_dir, STATE_FILE) if data_dir else None
        self.queue = Queue(capacity or Capacity())
        self.stacks = {}  # key -> Stack
        self.settings = {}  # (device_id, channel) -> ChannelSettings
        self._timers = {}  # key or (device, channel) -> DelayedCall
        self._order = 0
        self._starting = {}  # key -> Deferreds waiting for its recorder.start
        #: f(key, error message) when a recording does not start (the node raises a
        #: ``record-failed`` event: vss.events)
        self.failure_listeners = []

    # -- life cycle

    def startService(self):
        super().startService()
        self.resume()

    def stopService(self):
        for dc, s in self.settings.items():
            self._pre_event(dc, s, None)
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        return super().stopService()

    # -- what the RGM calls

    def start_manual(self, device_id, channel, stream, by):
        """A user starts a manual recording. Fires with the state (``status`` item)."""
        return self._add((device_id, channel, stream), f"manual:{by}")

    def stop_manual(self, device_id, channel, stream, by):
        """A user stops the manual recording they started. Fires with the state."""
        key = (device_id, channel, stream)
        stack = self.stacks.get(key)
        if stack is None or f"manual:{by}" not in stack.reasons:
            return defer.fail(VssError(ResultCode.NOT_FOUND,
                                       f"no manual recording of {device_id} by {by}"))
        return self._remove(key, f"manual:{by}").addCallback(lambda _: self.state_of(key))

    def event(self, device_id, channel, at=None):
        """An alarm on a channel: record until its post-event seconds have passed (the
        pre-event seconds come from the recorder's pre-event buffer, kept while the
        channel is in EVENT mode: see ``_pre_event``)."""
        now = self.clock.seconds()
        at = now if at is None else at
        s = self.settings.get((device_id, channel), ChannelSettings())
        until = at + s.post_event_seconds
        if until <= now:
            return defer.succeed(self.state_of((device_id, channel, s.stream)))
        return self._add((device_id, channel, s.stream), "event", until)

    def apply_settings(self, settings):
        """New RecordSettings for a channel: CONTINUOUS holds a ``continuous`` reason,
        SCHEDULE a ``schedule`` reason inside its slots, anything else neither."""
        dc = (settings.device_id, settings.channel)
        new = ChannelSettings.from_record(settings)
        old = self.settings.get(dc)
        self.settings[dc] = new
        self._pre_event(dc, old, new)
        self._cancel(dc)
        key = (*dc, new.stream)
        kept = {RecordMode.CONTINUOUS: "continuous", RecordMode.SCHEDULE: "schedule"}.get(new.mode)
        ds = []
        if new.mode == RecordMode.CONTINUOUS:
            ds.append(self._add(key, "continuous"))
        elif new.mode == RecordMode.SCHEDULE:
            ds.append(self._schedule_edge(dc))
        for k in [k for k in self.stacks if k[:2] == dc]:
            for reason in ("continuous", "schedule"):
                if k in self.stacks and reason in self.stacks[k].reasons and (
                        k != key or reason != kept):
                    ds.append(self._remove(k, reason))
        self._save()
        return defer.DeferredList(ds, consumeErrors=True)

    def _pre_event(self, dc, old, new):
        """A channel in EVENT mode with ``pre_event_seconds`` > 0 has the recorder keep a
        pre-event buffer of its stream (if the recorder can), so an event recording
        starts up to that many seconds before the event."""
        if getattr(self.recorder, "prebuffer", None) is None:
            return

        def wants(s):
            return s is not None and s.mode == RecordMode.EVENT and s.pre_event_seconds > 0

        if wants(old) and not (wants(new) and new.stream == old.stream):
            self.recorder.unprebuffer(dc[0], dc[1], old.stream)
        if wants(new) and new != old:
            d = self.recorder.prebuffer(dc[0], dc[1], new.stream, new.pre_event_seconds)
            d.addErrback(lambda f: self.log.warn(
                "no pre-event buffer for {dc}: {error}", dc=dc, error=f.getErrorMessage()))

    def status(self, device_id=None):
        """The state of every recording wanted (of ``device_id`` only, if given)."""
        return [self.state_of(k) for k in sorted(self.stacks)
                if device_id is None or k[0] == device_id]

    def state_of(self, key):
        stack = self.stacks.get(key)
        if stack is None:
            return {"device_id": key[0], "channel": key[1], "stream": key[2],
                    "state": int(RecordingState.STOPPED), "reasons": [], "since": 0,
                    "queue_position": 0, "segment": None}
        segment = None
        if stack.state == RecordingState.RUNNING:
            segment = self.current_segment(stack)
        return {"device_id": key[0], "channel": key[1], "stream": key[2],
                "state": int(stack.state), "reasons": sorted(stack.reasons),
                "since": stack.since, "queue_position": self.queue.position(key),
                "segment": segment}

    # -- stack: add and remove reasons

    def _add(self, key, reason, until=None):
        stack = self.stacks.get(key)
        if stack is None:
            self._order += 1
            s = self.settings.get(key[:2], ChannelSettings())
            stack = self.stacks[key] = Stack(key, s.segment_seconds, order=self._order,
                                             since=self.clock.seconds(),
                                             state=RecordingState.QUEUED)
        first = stack.add(reason, until)
        self._arm_expiry(key)
        if first:
            if self.queue.admit(stack):
                d = self._start(stack)
            else:
                d = self._wait(key)
                self.log.info("recording {key} queued at {position}", key=key,
                              position=self.queue.position(key))
        elif ("retry", key) in self._timers:  # waiting to try again: a new reason tries now
            self._cancel(("retry", key))
            d = self._start(stack) if self.queue.admit(stack) else self._wait(key)
        else:
            if key in self.queue.waiting:  # a higher priority may put it first in line
                for other in self.queue.pump():
                    self._start(other).addErrback(lambda f: None)
            d = self._wait(key)
        self._save()
        return d.addCallback(lambda _: self.state_of(key))

    def _remove(self, key, reason):
        stack = self.stacks.get(key)
        if stack is None or not stack.remove(reason):
            self._arm_expiry(key)
            self._save()
            return defer.succeed(None)
        return self._stop(stack)

    # -- queue: start and stop through the recorder

    def _start(self, stack):
        """Ask the recorder to start ``stack``'s recording. Returns a Deferred of the
        outcome; while the start is pending, later callers wait on it with ``_wait``."""
        key = stack.key
        stack.state = RecordingState.RUNNING
        stack.since = self.clock.seconds()
        self.log.info("recording {key} starts for {reasons}", key=key,
                      reasons=sorted(stack.reasons))
        waiters = self._starting[key] = []

        def done(result):
            self._starting.pop(key, None)
            if isinstance(result, Failure):
                if self.stacks.get(key) is stack:
                    self._start_failed(stack, result)
            elif key not in self.stacks:  # every reason ended while it was starting
                self._recorder_stop(key)
            else:
                stack.retries = 0
            for w in waiters:
                w.errback(result) if isinstance(result, Failure) else w.callback(None)

        out = self._wait(key)
        defer.maybeDeferred(self.recorder.start, key[0], key[1], key[2],
                            stack.segment_seconds).addBoth(done)
        return out

    def _start_failed(self, stack, failure):
        """A start failed: its capacity is freed. A manual request ends there (the CU
        that asked is told why); a schedule, continuous mode or an unexpired event keeps
        the recording wanted and it is tried again with a doubling delay."""
        key = stack.key
        if stack.retries == 0:  # the first failure in a row, not each retry
            for listener in self.failure_listeners:
                listener(key, failure.getErrorMessage())
        for reason in [r for r in stack.reasons if r.startswith("manual:")]:
            del stack.reasons[reason]
        for other in self.queue.release(key):
            self._start(other).addErrback(lambda f: None)
        if stack.reasons:
            stack.state = RecordingState.QUEUED
            stack.retries += 1
            delay = min(self.retry_max, self.retry_delay * 2 ** (stack.retries - 1))
            self.log.warn("recording {key} did not start: {error}; trying again in {delay} s",
                          key=key, error=failure.getErrorMessage(), delay=delay)
            self._cancel(("retry", key))
            self._timers[("retry", key)] = self.clock.callLater(delay, self._retry, key)
        else:
            self.log.warn("recording {key} did not start: {error}", key=key,
                          error=failure.getErrorMessage())
            del self.stacks[key]
            self._cancel(key)
        self._save()

    def _retry(self, key):
        self._timers.pop(("retry", key), None)
        stack = self.stacks.get(key)
        if (stack is None or key in self.queue.running or key in self.queue.waiting
                or key in self._starting):
            return
        if self.queue.admit(stack):
            self._start(stack).addErrback(lambda f: None)  # logged in _start

    def _wait(self, key):
        """A Deferred that fires when the pending start of ``key`` completes (at once
        when none is pending)."""
        waiters = self._starting.get(key)
        if waiters is None:
            return defer.succeed(None)
        d = defer.Deferred()
        waiters.append(d)
        return d

    def _stop(self, stack):
        key = stack.key
        del self.stacks[key]
        self._cancel(key)
        self._cancel(("retry", key))
        was_running = key in self.queue.running
        ds = [self._start(s) for s in self.queue.release(key)]
        self._save()
        for d in ds:
            d.addErrback(lambda f: None)  # logged in _start; nobody waits for these
        if not was_running:
            return defer.succeed(None)
        self.log.info("recording {key} stops: no reason left", key=key)
        if key in self._starting:  # stopped by ``_start`` once the start completes
            return self._wait(key).addErrback(lambda f: None)
        return self._recorder_stop(key)

    def _recorder_stop(self, key):
        d = defer.maybeDeferred(self.recorder.stop, *key)
        d.addErrback(lambda f: self.log.warn("recording {key} did not stop cleanly: {error}",
                                             key=key, error=f.getErrorMessage()))
        return d

    # -- timers: event expiry and schedule edges

    def _arm_expiry(self, key):
        """One timer per recording, at the end of its earliest timed reason."""
        self._cancel(key)
        stack = self.stacks.get(key)
        if stack is None:
            return
        ends = [u for u in stack.reasons.values() if u is not None]
        if ends:
            delay = max(0.0, min(ends) - self.clock.seconds())
            self._timers[key] = self.clock.callLater(delay, self._expire, key)

    def _expire(self, key):
        self._timers.pop(key, None)
        stack = self.stacks.get(key)
        if stack is None:
            return
        now = self.clock.seconds()
        for reason in stack.expired(now):
            self._remove(key, reason)
        if self.stacks.get(key) is stack:
            self._arm_expiry(key)

    def _schedule_edge(self, dc):
        """At a schedule edge: hold the ``schedule`` reason inside a slot, drop it
        outside, and set the timer for the next edge."""
        self._timers.pop(dc, None)
        s = self.settings.get(dc)
        if s is None or s.mode != RecordMode.SCHEDULE:
            return defer.succeed(None)
        now = self.clock.seconds()
        key = (*dc, s.stream)
        windows = schedule_windows(s.schedule(), now, now + WEEK + 86400)
        inside = bool(windows) and windows[0][0] <= now
        if inside:
            d = self._add(key, "schedule")
            edge = windows[0][1]
        else:
            d = self._remove(key, "schedule") if key in self.stacks else defer.succeed(None)
            edge = windows[0][0] if windows else None
        if edge is not None:
            self._timers[dc] = self.clock.callLater(edge - now, self._edge_fired, dc)
        return d

    def _edge_fired(self, dc):
        self._schedule_edge(dc).addErrback(lambda f: None)  # logged in _start

    def current_segment(self, stack):
        """The segment task a running recording is writing now: its part of ``split``
        between the recording's start and the next boundary or schedule edge."""
        now = self.clock.seconds()
        seg = stack.segment_seconds
        start = max(stack.since, now - seg)
        edges = ()
        s = self.settings.get(stack.key[:2])
        if s is not None and s.mode == RecordMode.SCHEDULE:
            edges = [t for w in schedule_windows(s.schedule(), start, now + seg) for t in w]
        for a, b in split(start, now + seg, seg, edges):
            if a <= now < b:
                return (a, b)
        return None

    def _cancel(self, name):
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    # -- persistence: recordings.json in the data directory

    def _save(self):
        if self.path is None:
            return
        data = {
            "version": 1,
            "settings": [{"device_id": d, "channel": c, **_settings_json(s)}
                         for (d, c), s in sorted(self.settings.items())],
            "recordings": [{"device_id": k[0], "channel": k[1], "stream": k[2],
                            "reasons": st.reasons, "order": st.order,
                            "segment_seconds": st.segment_seconds}
                           for k, st in sorted(self.stacks.items())],
        }
        write_atomically(self.path, data)

    def resume(self):
        """Load ``recordings.json`` and take the recordings up again (highest priority
        first, as capacity allows); reasons that ran out while the RGM was down are
        dropped, schedules are re-evaluated at the current time."""
        if self.path is None or not os.path.exists(self.path):
            return defer.succeed(None)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            self.log.error("recording tasks not resumed: {path}: {error}", path=self.path,
                           error=e)
            return defer.succeed(None)
        for item in data.get("settings", []):
            dc = (item["device_id"], item["channel"])
            self.settings[dc] = ChannelSettings(
                mode=item["mode"], stream=item["stream"],
                segment_seconds=item["segment_seconds"],
                pre_event_seconds=item["pre_event_seconds"],
                post_event_seconds=item["post_event_seconds"],
                slots=tuple(tuple(x) for x in item["slots"]),
                event_types=tuple(item.get("event_types", ())))
        now = self.clock.seconds()
        ds = []
        items = sorted(data.get("recordings", []),
                       key=lambda r: (-max(map(priority_of, r["reasons"]), default=0),
                                      r["order"]))
        for item in items:
            key = (item["device_id"], item["channel"], item["stream"])
            for reason, until in item["reasons"].items():
                if reason == "schedule" or (until is not None and until <= now):
                    continue
                ds.append(self._add(key, reason, until))
        for dc, s in self.settings.items():
            if s.mode == RecordMode.SCHEDULE:
                ds.append(self._schedule_edge(dc))
            self._pre_event(dc, None, s)
        self.log.info("recording tasks resumed: {n}", n=len(self.stacks))
        self._save()
        return defer.DeferredList(ds, consumeErrors=True)


def _settings_json(s):
    return {"mode": int(s.mode), "stream": int(s.stream), "segment_seconds": s.segment_seconds,
            "pre_event_seconds": s.pre_event_seconds,
            "post_event_seconds": s.post_event_seconds, "slots": [list(x) for x in s.slots],
            "event_types": list(s.event_types)}


def write_atomically(path, data):
    """Write JSON to ``path`` so a crash leaves the old file or the new one, never half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The CU messages (RECORD_START, RECORD_STOP, RECORD_STATUS)

REQUESTS = frozenset({MsgType.RECORD_START, MsgType.RECORD_STOP, MsgType.RECORD_STATUS})


def _wire(info, cls):
    return cls(device_id=info["device_id"], channel=info["channel"], stream=info["stream"],
               state=info["state"], reasons=list(info["reasons"]),
               since=int(info["since"] * 1000), queue_position=info["queue_position"])


def serve_request(manager, username, type, body, device=None):
    """A CU's recording request, already checked for the RECORD grant: a Deferred firing
    with the response body. A task that has to wait fails with QUEUED (its queue position
    in the message); a node with no recording manager answers NOT_SUPPORTED."""
    if manager is None:
        return defer.fail(VssError(ResultCode.NOT_SUPPORTED, "this node does not record"))
    if type == MsgType.RECORD_STATUS:
        tasks = [_wire(i, RecordTask) for i in manager.status(body.device_id)]
        return defer.succeed(RecordStates(tasks=tasks))
    channels = device.channels if device is not None else 0
    if channels and body.channel >= channels:
        return defer.fail(VssError(ResultCode.INVALID_ARGUMENT,
                                   f"channel {body.channel} out of range (device has {channels})"))
    if body.stream not in (Stream.MAIN, Stream.SUB):
        return defer.fail(VssError(ResultCode.INVALID_ARGUMENT, f"unknown stream {body.stream}"))
    if type == MsgType.RECORD_START:
        d = manager.start_manual(body.device_id, body.channel, body.stream, username)
    else:
        d = manager.stop_manual(body.device_id, body.channel, body.stream, username)

    def answer(info):
        if type == MsgType.RECORD_START and info["state"] == RecordingState.QUEUED:
            raise VssError(ResultCode.QUEUED, f"queued at position {info['queue_position']}")
        return _wire(info, RecordState)

    return d.addCallback(answer)
