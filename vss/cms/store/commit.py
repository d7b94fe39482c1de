"""
Group commit of the static store's logged writes.

Every logged write (a change MMS, the admin API or CMS makes) used to be one database
transaction: one writer lock, one log insert, one commit with its WAL flush each. Here
the writes that arrive while a transaction is in flight wait and go, together, into
the next one, in the order they were issued:

- the first write after an idle moment starts at once (no timer, no added latency);
- a transaction carries at most ``max_batch`` writes; the rest wait for the next;
- each write runs in the transaction as it would alone (its own log entries, its own
  origin and time), after the writes issued before it, so the change log holds the same
  sequence of entries one transaction per write would have made, and a write's
  sequences are contiguous;
- a caller is answered only when its transaction has committed (its change is durable),
  with its own changes;
- a write that fails on its own (a refusal: an unknown device, a constraint) fails
  alone: its transaction is rolled back and run again without it, so it leaves
  nothing and the others commit; a failure of the database (lost, locked, timed out) or
  of the transaction (the fence of a CMS that lost office) fails every write of it, as
  it would have failed each of them alone.

``GroupCommit`` is the queue and the ordering, with no database in it: ``run(batch)``
(the store's) runs one transaction for a list of ``Write`` and fires with one result
per write, or fails with ``WriteFailed(index, failure)`` for a write that failed on its
own, or with any other failure for the whole transaction.
"""

from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

#: the most writes one transaction carries
MAX_BATCH = 200


class WriteFailed(Exception):
    """Raised out of a batch's transaction (which rolls it back): the write at
    ``index`` failed on its own with ``failure``."""

    def __init__(self, index, failure):
        super().__init__(index, failure)
        self.index = index
        self.failure = failure


class Write:
    """One logged write waiting for, or in, a transaction."""

    __slots__ = ("fn", "args", "origin", "at", "issued", "deferred")

    def __init__(self, fn, args, origin, at, issued):
        self.fn = fn
        self.args = args
        self.origin = origin
        self.at = at
        self.issued = issued
        self.deferred = Deferred()


class GroupCommit:
    """The writes of a store, in transactions of up to ``max_batch``, one at a time.

    ``run(batch)`` returns a Deferred (see the module's docstring); ``clock`` times
    each write from issued to answered into ``latency`` (a ``Histogram``, optional).
    """

    def __init__(self, run, clock, max_batch=MAX_BATCH, latency=None):
        self._run = run
        self._clock = clock
        self.max_batch = max_batch
        self._latency = latency
        self._queue = deque()
        self._busy = False
        self._closed = None  # the failure every write gets once closed
        self._in_flight = 0
        self._idle = []  # Deferreds of close() waiting for the last writes
        #: transactions run (committed or not), writes answered: for figures and tests
        self.transactions = 0
        self.writes = 0

    @property
    def waiting(self):
        """Writes issued and not answered yet (waiting or in the transaction)."""
        return len(self._queue) + self._in_flight

    def submit(self, fn, args, origin, at):
        """Queue one write; a Deferred that fires with its result once committed."""
        w = Write(fn, args, origin, at, self._clock.seconds())
        if self._closed is not None:
            w.deferred.errback(self._closed)
            return w.deferred
        self._queue.append(w)
        if not self._busy:
            self._next()
        return w.deferred

    def close(self, failure):
        """Refuse the writes issued from now on (they fail with ``failure``); the ones
        issued before still run. A Deferred that fires once they are answered."""
        self._closed = failure
        if not self._busy:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        return d

    def _next(self):
        if not self._queue:
            self._busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._busy = True
        n = min(self.max_batch, len(self._queue))
        batch = [self._queue.popleft() for _ in range(n)]
        self._in_flight = n
        self.transactions += 1
        d = self._run(batch)
        d.addCallbacks(self._committed, self._failed, callbackArgs=(batch,),
                       errbackArgs=(batch,))

    def _committed(self, results, batch):
        self._in_flight = 0
        for w, result in zip(batch, results, strict=True):
            self._answer(w, result)
        self._next()

    def _failed(self, failure, batch):
        self._in_flight = 0
        if failure.check(WriteFailed):
            index, own = failure.value.index, failure.value.failure
            self._answer(batch[index], own)
            # the others run again, first, in their order
            self._queue.extendleft(reversed(batch[:index] + batch[index + 1:]))
        else:
            for w in batch:
                self._answer(w, failure)
        self._next()

    def _answer(self, w, result):
        self.writes += 1
        if self._latency is not None:
            self._latency.observe(self._clock.seconds() - w.issued)
        if isinstance(result, Failure):
            w.deferred.errback(result)
        else:
            w.deferred.callback(result)
