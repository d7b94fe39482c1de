"""
Unit tests of the static store's group commit (``vss.cms.store.commit``): the queue,
the batches and their order, failures of one write and of a transaction, with a fake
transaction runner and ``task.Clock``.
"""

from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.trial import unittest

from vss.cms.store.commit import GroupCommit, WriteFailed
from vss.ops.histogram import Histogram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError


class FakeDatabase:
    """Runs batches when the test says so: ``pending`` holds (batch, Deferred)."""

    def __init__(self):
        self.pending = []
        self.committed = []  # every write's name, in commit order

    def run(self, batch):
        d = Deferred()
        self.pending.append((batch, d))
        return d

    def names(self, i=0):
        return [w.args[0] for w in self.pending[i][0]]

    def commit(self):
        """Commit the oldest transaction: each write answers [its name]."""
        batch, d = self.pending.pop(0)
        self.committed += [w.args[0] for w in batch]
        d.callback([[w.args[0]] for w in batch])

    def fail_write(self, index, error):
        batch, d = self.pending.pop(0)
        try:
            raise error
        except VssError:
            own = Failure()
        d.errback(WriteFailed(index, own))

    def fail_all(self, error):
        self.pending.pop(0)[1].errback(error)


def write(name):
    return (lambda cur, log, arg: None), (name,)


class GroupCommitTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.db = FakeDatabase()
        self.latency = Histogram()
        self.commits = GroupCommit(self.db.run, self.clock, max_batch=3, latency=self.latency)
        self.answers = {}

    def submit(self, name, at=0):
        fn, args = write(name)
        d = self.commits.submit(fn, args, "mms", at)
        d.addBoth(lambda result: self.answers.__setitem__(name, result))
        return d

    def test_the_first_write_goes_at_once_alone(self):
        self.submit("a")
        self.assertEqual(len(self.db.pending), 1)
        self.assertEqual(self.db.names(), ["a"])
        self.assertEqual(self.answers, {})  # not answered before its commit

    def test_writes_arriving_in_flight_share_the_next_transaction_in_order(self):
        self.submit("a")
        self.submit("b")
        self.submit("c")
        self.assertEqual(len(self.db.pending), 1)  # b and c wait: one transaction at a time
        self.assertEqual(self.commits.waiting, 3)
        self.db.commit()
        self.assertEqual(self.answers, {"a": ["a"]})
        self.assertEqual(self.db.names(), ["b", "c"])
        self.db.commit()
        self.assertEqual(self.answers, {"a": ["a"], "b": ["b"], "c": ["c"]})
        self.assertEqual(self.db.committed, ["a", "b", "c"])
        self.assertEqual((self.commits.transactions, self.commits.writes), (2, 3))
        self.assertEqual(self.commits.waiting, 0)
        self.assertEqual(self.db.pending, [])

    def test_a_transaction_carries_at_most_max_batch(self):
        for name in "abcdefg":
            self.submit(name)
        self.db.commit()
        self.assertEqual(self.db.names(), ["b", "c", "d"])
        self.db.commit()
        self.assertEqual(self.db.names(), ["e", "f", "g"])
        self.db.commit()
        self.assertEqual(self.db.committed, list("abcdefg"))
        self.assertEqual(self.commits.transactions, 3)

    def test_writes_issued_by_an_answer_go_into_the_next_transaction(self):
        self.submit("a").addCallback(lambda _: self.submit("after-a"))
        self.submit("b")
        self.db.commit()
        self.assertEqual(self.db.names(), ["b", "after-a"])

    def test_one_failed_write_fails_alone_and_the_others_run_again_in_order(self):
        self.submit("a")
        for name in ("b", "c", "d"):
            self.submit(name)
        self.db.commit()
        self.db.fail_write(1, VssError(ResultCode.UNKNOWN_DEVICE, "no device"))
        self.assertIsInstance(self.answers["c"], Failure)
        self.assertEqual(self.answers["c"].value.code, ResultCode.UNKNOWN_DEVICE)
        self.assertNotIn("b", self.answers)  # rolled back with c: run again
        self.assertEqual(self.db.names(), ["b", "d"])
        self.db.commit()
        self.assertEqual(self.answers["b"], ["b"])
        self.assertEqual(self.answers["d"], ["d"])
        self.assertEqual(self.db.committed, ["a", "b", "d"])

    def test_writes_issued_meanwhile_come_after_the_ones_run_again(self):
        self.submit("a")
        self.submit("b")
        self.submit("c")
        self.db.commit()
        self.submit("d")
        self.db.fail_write(0, VssError(ResultCode.INVALID_ARGUMENT, "bad"))
        self.assertEqual(self.db.names(), ["c", "d"])

    def test_a_failed_transaction_fails_every_write_of_it_and_the_next_goes_on(self):
        self.submit("a")
        self.submit("b")
        self.submit("c")
        self.db.commit()
        self.submit("d")
        self.db.fail_all(VssError(ResultCode.DB_UNAVAILABLE, "lost"))
        for name in ("b", "c"):
            self.assertEqual(self.answers[name].value.code, ResultCode.DB_UNAVAILABLE)
        self.assertEqual(self.db.names(), ["d"])
        self.db.commit()
        self.assertEqual(self.answers["d"], ["d"])

    def test_close_refuses_later_writes_and_waits_for_the_issued_ones(self):
        self.submit("a")
        self.submit("b")
        closed = Failure(VssError(ResultCode.DB_UNAVAILABLE, "closed"))
        done = self.commits.close(closed)
        self.submit("c")
        self.assertIs(self.answers["c"], closed)
        self.assertNoResult(done)
        self.db.commit()
        self.assertEqual(self.answers["a"], ["a"])
        self.assertNoResult(done)
        self.assertEqual(self.db.names(), ["b"])  # issued before close: still runs
        self.db.commit()
        self.assertEqual(self.answers["b"], ["b"])
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(self.db.pending, [])

    def test_close_when_idle_is_at_once(self):
        closed = Failure(VssError(ResultCode.DB_UNAVAILABLE, "closed"))
        self.assertIsNone(self.successResultOf(self.commits.close(closed)))
        self.submit("a")
        self.assertIs(self.answers["a"], closed)
        self.assertEqual(self.db.pending, [])

    def test_writes_run_again_after_close_still_commit(self):
        self.submit("a")
        self.submit("b")
        self.submit("c")
        self.db.commit()
        done = self.commits.close(Failure(VssError(ResultCode.DB_UNAVAILABLE, "closed")))
        self.db.fail_write(1, VssError(ResultCode.UNKNOWN_DEVICE, "no device"))
        self.assertEqual(self.db.names(), ["b"])
        self.db.commit()
        self.assertEqual(self.answers["b"], ["b"])
        self.successResultOf(done)

    def test_latency_is_issue_to_answer(self):
        self.submit("a")
        self.clock.advance(0.004)
        self.submit("b")
        self.clock.advance(0.006)
        self.db.commit()  # a: 10 ms
        self.clock.advance(0.010)
        self.db.commit()  # b: 16 ms
        self.assertEqual(self.latency.count, 2)
        self.assertAlmostEqual(self.latency.cells[-1], 0.026)  # the sum

    def test_a_runner_failing_at_once(self):
        commits = GroupCommit(lambda batch: fail(VssError(ResultCode.DB_UNAVAILABLE, "x")),
                              self.clock)
        d = commits.submit(*write("a"), "mms", 0)
        failure = self.failureResultOf(d, VssError)
        self.assertEqual(failure.value.code, ResultCode.DB_UNAVAILABLE)
        d2 = commits.submit(*write("b"), "mms", 0)
        self.failureResultOf(d2, VssError)
        self.assertEqual(commits.transactions, 2)
