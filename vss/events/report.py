"""
The events a node numbers go to CMS for storage (EVENT_REPORT), off the hot path.

``add`` appends the record to a bounded queue and returns; every ``interval`` seconds the
reporter sends what waits, at most ``batch`` events per report, one report in flight at a
time. A failed report goes back to the front of the queue and is sent again, in order;
CMS stores each event once under its ``(node_id, seq)``, so a report sent twice keeps
nothing twice. Past ``max_queue`` waiting events the oldest are dropped and counted (the
next report says how many). A node that stops sends what waits once.
"""

from vss.batches import MAX_BATCH, MAX_QUEUE, BatchReporter
from vss.protocols.messages import EventReport

FLUSH_INTERVAL = 1.0


class EventReporter(BatchReporter):
    """``central`` provides ``report_events(EventReport)`` (``ICentral``)."""

    name = "event-report"
    what = "event report"
    queued = "added"

    def __init__(self, central, clock, interval=FLUSH_INTERVAL, batch=MAX_BATCH,
                 max_queue=MAX_QUEUE):
        super().__init__(central, clock, interval, batch, max_queue)

    def add(self, event):
        self.enqueue(event)

    def report(self, records, dropped, batch_id):
        return self.central.report_events(EventReport(batch=batch_id, dropped=dropped,
                                                      events=records))
