"""
The events a node numbers go to CMS for storage (EVENT_REPORT), off the hot path.

``add`` appends the record to a bounded queue and returns; every ``interval`` seconds the
reporter sends what waits, at most ``batch`` events per report, one report in flight at a
time. A failed report goes back to the front of the queue and is sent again, in order;
CMS stores each event once under its ``(node_id, seq)``, so a report sent twice keeps
nothing twice. Past ``max_queue`` waiting events the oldest are dropped and counted (the
next report says how many). A node that stops sends what waits once.
"""

from collections import deque

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from vss.protocols.messages import EventReport

FLUSH_INTERVAL = 1.0
MAX_BATCH = 500
MAX_QUEUE = 50_000


class EventReporter(service.Service):
    """``central`` provides ``report_events(EventReport)`` (``ICentral``)."""

    log = Logger()
    name = "event-report"

    def __init__(self, central, clock, interval=FLUSH_INTERVAL, batch=MAX_BATCH,
                 max_queue=MAX_QUEUE):
        self.central = central
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.max_queue = max_queue
        self.queue = deque()
        self.dropped = 0
        self.counters = {"added": 0, "reported": 0, "dropped": 0, "failed_reports": 0}
        self._inflight = None
        self._batch_id = 0
        self._loop = None

    def add(self, event):
        self.queue.append(event)
        self.counters["added"] += 1
        if len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.counters["dropped"] += 1

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()
        return super().stopService()

    def flush(self):
        if self._inflight is not None or not (self.queue or self.dropped):
            return None
        events = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        dropped, self.dropped = self.dropped, 0
        self._batch_id += 1
        self._inflight = (events, dropped)
        d = self.central.report_events(EventReport(batch=self._batch_id, dropped=dropped,
                                                   events=events))
        d.addCallbacks(self._acked, self._failed)
        return d

    def _acked(self, ack):
        events, _ = self._inflight
        self._inflight = None
        self.counters["reported"] += len(events)
        if len(self.queue) >= self.batch:
            self.flush()

    def _failed(self, failure):
        events, dropped = self._inflight
        self._inflight = None
        self.counters["failed_reports"] += 1
        self.queue.extendleft(reversed(events))
        self.dropped += dropped
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.counters["dropped"] += 1
        self.log.info("event report not delivered ({error}); {count} events wait",
                      error=failure.getErrorMessage(), count=len(self.queue))

    def status(self):
        return {**self.counters, "waiting": len(self.queue)}
