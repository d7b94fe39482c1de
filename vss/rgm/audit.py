"""
The audit of media on a node: every live view, playback and export a user starts here
(a CU's MEDIA_OPEN, a browser's, a stream credential's first DESCRIBE, an export
download) is reported to CMS, which keeps it in its audit log (``vss.cms.store.audit``).

Off the request path: ``note`` appends one small record to a bounded queue and returns;
every ``interval`` seconds the reporter sends what waits, at most ``batch`` events per
AUDIT_REPORT (docs/protocol.md), one report in flight at a time. An acknowledged report
leaves the queue; a failed one (CMS down, the link lost) goes back to its front and is
sent again later, in order. The queue holds at most ``max_queue`` events: past that
the oldest are dropped and counted, and the next report says how many (CMS records the
loss as an entry of its own). A node that stops sends what waits once, without waiting
for the answer; a node that crashes loses at most what it had not sent yet (the last
``interval`` seconds while CMS answers).
"""

from collections import deque

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from vss.protocols.messages import AuditEvent, AuditKind, AuditReport

FLUSH_INTERVAL = 2.0
MAX_BATCH = 500
MAX_QUEUE = 50_000


class AuditReporter(service.Service):
    """``central`` provides ``report_audit(AuditReport)`` (``ICentral``)."""

    log = Logger()
    name = "audit"

    def __init__(self, central, clock, interval=FLUSH_INTERVAL, batch=MAX_BATCH,
                 max_queue=MAX_QUEUE):
        self.central = central
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.max_queue = max_queue
        self.queue = deque()
        self.dropped = 0  # dropped and not reported yet
        self.counters = {"noted": 0, "reported": 0, "dropped": 0, "failed_reports": 0}
        self._inflight = None  # (events, dropped) of the report CMS has not answered
        self._batch_id = 0
        self._loop = None

    # -- on the request path

    def note(self, kind, username, device_id, channel=0, stream=0, from_time=0, to_time=0,
             peer="", via=""):
        """Media started: queued as a plain tuple (the AuditEvent is made when sent)."""
        self.queue.append((int(self.clock.seconds() * 1000), kind, username or "", device_id,
                           channel, stream, from_time or 0, to_time or 0, peer or "", via or ""))
        self.counters["noted"] += 1
        if len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.counters["dropped"] += 1

    def live(self, username, body, peer, via):
        """A MEDIA_OPEN (live or playback) that was granted."""
        playback = body.purpose == 2
        self.note(AuditKind.PLAYBACK if playback else AuditKind.LIVE, username,
                  body.device_id, body.channel, body.stream,
                  body.start_time if playback else 0, 0, peer, via)

    # -- reporting

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()  # what waits, once; the answer is not waited for
        return super().stopService()

    def flush(self):
        """Send the next batch unless one is in flight or nothing waits."""
        if self._inflight is not None or not (self.queue or self.dropped):
            return None
        events = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        dropped = self.dropped
        self.dropped = 0
        self._batch_id += 1
        self._inflight = (events, dropped)
        report = AuditReport(batch=self._batch_id, dropped=dropped,
                             events=[AuditEvent(*e) for e in events])
        d = self.central.report_audit(report)
        d.addCallbacks(self._acked, self._failed)
        return d

    def _acked(self, ack):
        events, _ = self._inflight
        self._inflight = None
        self.counters["reported"] += len(events)
        if len(self.queue) >= self.batch:
            self.flush()  # a backlog: the next batch now

    def _failed(self, failure):
        events, dropped = self._inflight
        self._inflight = None
        self.counters["failed_reports"] += 1
        self.queue.extendleft(reversed(events))  # sent again first, in order
        self.dropped += dropped
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.counters["dropped"] += 1
        self.log.info("audit report not delivered ({error}); {count} events wait",
                      error=failure.getErrorMessage(), count=len(self.queue))

    def status(self):
        return {**self.counters, "waiting": len(self.queue)}
