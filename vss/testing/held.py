"""
``HeldCentral``: a ``MemoryCentral`` whose audit and event reports are answered when a
test says so (``ack``, ``fail``), for the reporters' batching, backlog and retries
under a ``task.Clock``. Everything else is ``MemoryCentral``'s, so it is a whole
``ICentral``.
"""

from twisted.internet import defer

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import AuditAck, EventReportAck
from vss.rgm.localcentral import MemoryCentral


class HeldCentral(MemoryCentral):
    def __init__(self):
        super().__init__()
        self.reports = []  # every report sent, audit and events, in order
        self.pending = []  # (Deferred, report, answer type) not answered yet, oldest first

    def _hold(self, report, answer):
        self.reports.append(report)
        d = defer.Deferred()
        self.pending.append((d, report, answer))
        return d

    def report_audit(self, report):
        return self._hold(report, AuditAck)

    def report_events(self, report):
        return self._hold(report, EventReportAck)

    def ack(self):
        """CMS stored the oldest report held."""
        d, report, answer = self.pending.pop(0)
        d.callback(answer(batch=report.batch, stored=len(report.events)))

    def fail(self, code=ResultCode.CENTRAL_UNAVAILABLE, message="no link"):
        """The oldest report held was not stored."""
        d, _, _ = self.pending.pop(0)
        d.errback(VssError(code, message))
