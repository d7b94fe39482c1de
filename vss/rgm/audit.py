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

from vss.batches import MAX_BATCH, MAX_QUEUE, BatchReporter
from vss.protocols.messages import AuditEvent, AuditKind, AuditReport

FLUSH_INTERVAL = 2.0


class AuditReporter(BatchReporter):
    """``central`` provides ``report_audit(AuditReport)`` (``ICentral``)."""

    name = "audit"
    what = "audit report"
    queued = "noted"

    def __init__(self, central, clock, interval=FLUSH_INTERVAL, batch=MAX_BATCH,
                 max_queue=MAX_QUEUE):
        super().__init__(central, clock, interval, batch, max_queue)

    # -- on the request path

    def note(self, kind, username, device_id, channel=0, stream=0, from_time=0, to_time=0,
             peer="", via=""):
        """Media started: queued as a plain tuple (the AuditEvent is made when sent)."""
        self.enqueue((int(self.clock.seconds() * 1000), kind, username or "", device_id,
                      channel, stream, from_time or 0, to_time or 0, peer or "", via or ""))

    def live(self, username, body, peer, via):
        """A MEDIA_OPEN (live or playback) that was granted."""
        playback = body.purpose == 2
        self.note(AuditKind.PLAYBACK if playback else AuditKind.LIVE, username,
                  body.device_id, body.channel, body.stream,
                  body.start_time if playback else 0, 0, peer, via)

    # -- reporting

    def report(self, records, dropped, batch_id):
        return self.central.report_audit(AuditReport(
            batch=batch_id, dropped=dropped, events=[AuditEvent(*e) for e in records]))
