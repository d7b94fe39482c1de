"""
Reports a node sends CMS in batches, off the hot path (the audit of media, the events):
``queue`` appends one record to a bounded queue and returns; every ``interval`` seconds
the reporter sends what waits, at most ``batch`` records per report, one report in
flight at a time. An acknowledged report leaves the queue (a backlog sends the next at
once); a failed one (CMS down, the link lost) goes back to the queue's front and is sent
again later, in order. Past ``max_queue`` waiting records the oldest are dropped and
counted, and the next report says how many. A reporter that stops sends what waits
once, without waiting for the answer.
"""

from collections import deque

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

MAX_BATCH = 500
MAX_QUEUE = 50_000


class BatchReporter(service.Service):
    """Subclasses give ``what`` (for the log), ``queued`` (the counter of records
    queued) and ``report(records, dropped, batch_id)``, a Deferred CMS's answer fires."""

    log = Logger()
    what = "report"
    queued = "queued"

    def __init__(self, central, clock, interval, batch=MAX_BATCH, max_queue=MAX_QUEUE):
        self.central = central
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.max_queue = max_queue
        self.queue = deque()
        self.dropped = 0  # dropped and not reported yet
        self.counters = {self.queued: 0, "reported": 0, "dropped": 0, "failed_reports": 0}
        self._inflight = None  # (records, dropped) of the report CMS has not answered
        self._batch_id = 0
        self._loop = None

    def report(self, records, dropped, batch_id):
        raise NotImplementedError

    def enqueue(self, record):
        self.queue.append(record)
        self.counters[self.queued] += 1
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
        self.flush()  # what waits, once; the answer is not waited for
        return super().stopService()

    def flush(self):
        """Send the next batch unless one is in flight or nothing waits."""
        if self._inflight is not None or not (self.queue or self.dropped):
            return None
        records = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
        dropped, self.dropped = self.dropped, 0
        self._batch_id += 1
        self._inflight = (records, dropped)
        d = self.report(records, dropped, self._batch_id)
        d.addCallbacks(self._acked, self._failed)
        return d

    def _acked(self, ack):
        records, _ = self._inflight
        self._inflight = None
        self.counters["reported"] += len(records)
        if len(self.queue) >= self.batch:
            self.flush()  # a backlog: the next batch now

    def _failed(self, failure):
        records, dropped = self._inflight
        self._inflight = None
        self.counters["failed_reports"] += 1
        self.queue.extendleft(reversed(records))  # sent again first, in order
        self.dropped += dropped
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
            self.counters["dropped"] += 1
        self.log.info("{what} not delivered ({error}); {count} wait", what=self.what,
                      error=failure.getErrorMessage(), count=len(self.queue))

    def status(self):
        return {**self.counters, "waiting": len(self.queue)}
