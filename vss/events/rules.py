"""
Actions on events: a per device, per type rule starts an event recording.

The rule of a channel is part of its recording settings (docs/protocol.md 9.7, the
``RecordSettings`` extension EVENT_TYPES; ``event_types`` in the admin API): a channel
in EVENT mode records, from its pre-event seconds before the event (the recorder's
pre-event buffer) to its post-event seconds after it, when an event of one of its
``event_types`` starts or pulses on it; with no types listed, any event of severity
ALARM or above its PU raises. The node's own events (``online``, ``offline``,
``record-failed``, ``disk-full``) never start one. A STOP ends nothing: the recording
runs its post-event seconds from the last START or PULSE.
"""

from twisted.logger import Logger

from vss.protocols.messages import EventPhase, RecordMode, Severity

#: the node's own events: never a reason to record
NODE_EVENTS = frozenset(("online", "offline", "record-failed", "disk-full"))


class EventRules:
    """``recordings`` is the node's ``RecordingManager``."""

    log = Logger()

    def __init__(self, recordings):
        self.recordings = recordings
        self.counters = {"recordings_started": 0}

    def wants(self, event):
        """The channel settings whose rule the event matches, or None."""
        if event.phase == EventPhase.STOP or event.type in NODE_EVENTS:
            return None
        s = self.recordings.settings.get((event.device_id, event.channel))
        if s is None or s.mode != RecordMode.EVENT:
            return None
        if s.event_types:
            return s if event.type in s.event_types else None
        return s if event.severity >= Severity.ALARM else None

    def on_event(self, event):
        s = self.wants(event)
        if s is None:
            return None
        self.counters["recordings_started"] += 1
        d = self.recordings.event(event.device_id, event.channel, at=event.node_time / 1000)
        d.addErrback(lambda f: self.log.warn(
            "event {node}/{seq} of {device}: no event recording ({error})", node=event.node_id,
            seq=event.seq, device=event.device_id, error=f.getErrorMessage()))
        return d
