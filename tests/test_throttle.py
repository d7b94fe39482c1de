"""
The throttle of failed logins (docs/protocol.md 8.2): per account, per address and per
(account, address) pair, independent of one another, with ``task.Clock``.

The two attacks found from outside are replayed against a node (``NodeHarness``: the
real RGM over in-memory links): guesses for alice interleaved with successful logins
as bob from the same address, and the same account guessed from 10 addresses.
"""

from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.rgm.auth import ADDRESS_FREE, ADDRESS_LEAK, MAX_DELAY, Throttle
from vss.testing.harness import ALL, NodeHarness

from .test_rgm import result


class ThrottleTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.t = Throttle(self.clock)

    def fail_now(self, identity, source, times=1):
        for _ in range(times):
            self.assertEqual(self.t.wait(identity, source), 0.0)
            self.t.failed(identity, source)

    def test_account_delay_doubles_from_the_third_failure_and_is_bounded(self):
        waits = []
        for _ in range(12):
            self.fail_now("alice", "10.0.0.1")
            waits.append(self.t.wait("alice", "10.0.0.1"))
            self.clock.advance(waits[-1])
        self.assertEqual(waits[:9], [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_DELAY])
        self.assertEqual(max(waits), MAX_DELAY)

    def test_account_delay_holds_from_every_address(self):
        for i in range(3):
            self.fail_now("alice", f"10.0.0.{i}")
        self.assertEqual(self.t.wait("alice", "10.0.0.99"), 1.0)
        self.assertEqual(self.t.wait("bob", "10.0.0.0"), 0.0)

    def test_success_for_another_account_resets_nothing(self):
        self.fail_now("alice", "10.0.0.1", 3)
        self.t.succeeded("bob", "10.0.0.1")
        self.assertEqual(self.t.wait("alice", "10.0.0.1"), 1.0)
        self.assertEqual(self.t.failures("alice"), 3)

    def test_success_does_not_reset_the_account_count(self):
        # alice's own success from home gives an attacker elsewhere no fresh guesses.
        self.fail_now("alice", "10.6.6.6", 3)
        self.t.succeeded("alice", "192.168.1.10")
        self.assertEqual(self.t.wait("alice", "10.6.6.6"), 1.0)

    def test_a_known_pair_is_not_slowed_by_failures_elsewhere(self):
        self.t.succeeded("alice", "192.168.1.10")
        self.fail_now("alice", "10.6.6.6", 3)
        self.assertEqual(self.t.wait("alice", "10.6.6.6"), 1.0)
        self.assertEqual(self.t.wait("alice", "192.168.1.10"), 0.0)

    def test_a_known_pair_is_still_slowed_by_its_own_failures(self):
        self.t.succeeded("alice", "192.168.1.10")
        self.fail_now("alice", "192.168.1.10", 3)
        self.assertEqual(self.t.wait("alice", "192.168.1.10"), 1.0)
        self.t.succeeded("alice", "192.168.1.10")
        self.assertEqual(self.t.wait("alice", "192.168.1.10"), 0.0)
        # ...the account's own count stands for everybody else
        self.assertEqual(self.t.wait("alice", "10.0.0.1"), 1.0)

    def test_known_pairs_are_forgotten(self):
        self.t.succeeded("alice", "192.168.1.10")
        self.clock.advance(31 * 86400)
        self.assertFalse(self.t.known("alice", "192.168.1.10"))

    def test_address_slows_down_after_a_burst_over_many_accounts(self):
        for i in range(ADDRESS_FREE):
            self.fail_now(f"user{i}", "10.6.6.6")
        self.assertEqual(self.t.wait("user-new", "10.6.6.6"), 0.0)
        self.t.failed("user-new", "10.6.6.6")
        self.assertAlmostEqual(self.t.wait("user-other", "10.6.6.6"), ADDRESS_LEAK)
        self.clock.advance(ADDRESS_LEAK)
        self.assertEqual(self.t.wait("user-other", "10.6.6.6"), 0.0)
        # users who already logged in from that address are not held back
        self.t.succeeded("carol", "10.6.6.6")
        self.t.failed("user-x", "10.6.6.6")
        self.t.failed("user-y", "10.6.6.6")
        self.assertGreater(self.t.wait("user-z", "10.6.6.6"), 0)
        self.assertEqual(self.t.wait("carol", "10.6.6.6"), 0.0)

    def test_address_count_leaks(self):
        for i in range(4):
            self.fail_now(f"user{i}", "10.0.0.1")
        self.clock.advance(2 * ADDRESS_LEAK)
        self.assertAlmostEqual(self.t.failures(source="10.0.0.1"), 2.0)
        self.clock.advance(10 * ADDRESS_LEAK)
        self.assertEqual(self.t.failures(source="10.0.0.1"), 0.0)

    def test_quiet_accounts_are_forgotten(self):
        for _ in range(5):
            self.t.failed("alice", "10.0.0.1")
        self.assertGreater(self.t.wait("alice", "10.0.0.2"), 0)
        self.clock.advance(601)
        self.assertEqual(self.t.wait("alice", "10.0.0.2"), 0.0)
        self.assertEqual(self.t.failures("alice"), 0)

    def test_memory_is_bounded_under_a_spray(self):
        t = Throttle(self.clock, max_entries=1000)
        for i in range(5000):
            t.failed(f"user{i}", f"10.{i // 250}.{i % 250}.1")
            t.succeeded(f"ok{i}", "10.0.0.1")
        self.assertLessEqual(len(t._accounts), 1000)
        self.assertLessEqual(len(t._pairs), 1000)
        self.assertLessEqual(len(t._addresses), 1000)
        self.assertLessEqual(len(t._known), 1000)


class AttackTests(unittest.SynchronousTestCase):
    """The attacks of the outside test, against the RGM."""

    def setUp(self):
        self.h = NodeHarness()
        self.addCleanup(self.h.stop)
        self.h.add_device("cam1")
        self.h.add_user("alice", password="alice-password", grants=[("cam1", ALL)])
        self.h.add_user("bob", password="bob-password", grants=[("cam1", ALL)])

    def guess(self, name, password, peer):
        """One login attempt: the result code (0 for success)."""
        client, (d, link, server) = self.h.cu(name, password=password, peer=peer)
        outcome = []
        d.addBoth(outcome.append)
        self.assertTrue(outcome, "the login did not end")
        if link.transport is not None:
            link.transport.loseConnection()
        self.h.pump()
        if isinstance(outcome[0], Failure):
            outcome[0].trap(VssError)
            return outcome[0].value.code
        return 0

    def test_bob_success_does_not_reset_the_throttle_on_alice(self):
        # The outside test: 2 wrong passwords for alice, then a login as bob, again and
        # again from one address: 30 of 30 guesses for alice were checked in 19 s.
        checked = throttled = 0
        while self.h.clock.seconds() < 19.0 and checked < 30:
            for _ in range(2):
                code = self.guess("alice", f"guess-{checked}", "10.6.6.6")
                if code == ResultCode.AUTH_FAILED:
                    checked += 1
                else:
                    self.assertEqual(code, ResultCode.AUTH_THROTTLED)
                    throttled += 1
            self.assertEqual(self.guess("bob", "bob-password", "10.6.6.6"), 0)
            self.h.clock.advance(0.25)
        # 3 free guesses, then one after 1, 2, 4 and 8 s more (a 16 s delay after that).
        self.assertEqual(checked, 7)
        self.assertGreater(throttled, 50)

    def test_ten_addresses_three_guesses_each(self):
        # The outside test: 10 addresses x 3 guesses for one account were all checked.
        codes = [self.guess("alice", f"guess-{a}-{g}", f"10.0.{a}.1")
                 for a in range(10) for g in range(3)]
        self.assertEqual(codes.count(ResultCode.AUTH_FAILED), 3)
        self.assertEqual(codes.count(ResultCode.AUTH_THROTTLED), 27)

    def test_the_victim_keeps_logging_in_from_where_she_did_before(self):
        self.assertEqual(self.guess("alice", "alice-password", "192.168.1.10"), 0)
        for a in range(10):
            self.guess("alice", "wrong", f"10.0.{a}.1")
        self.assertEqual(self.guess("alice", "alice-password", "192.168.1.10"), 0)
        # From a new address she is slowed down, never locked out: the delay is bounded.
        self.assertEqual(self.guess("alice", "alice-password", "172.16.0.9"),
                         ResultCode.AUTH_THROTTLED)
        self.h.clock.advance(MAX_DELAY)
        self.assertEqual(self.guess("alice", "alice-password", "172.16.0.9"), 0)

    def test_other_accounts_behind_one_address_are_not_held_back_by_bad_ones(self):
        # One NAT, one vss-pu process: PUs with wrong secrets fail again and again; the
        # neighbours that logged in before still log in at once.
        for i in range(2, 7):
            self.h.add_device(f"cam{i}", secret="right")
        client, (d, link, server) = self.h.pu("cam1")
        result(d)
        link.transport.loseConnection()
        self.h.pump()
        codes = []
        for _ in range(20):
            for i in range(2, 7):
                client, (d, link, server) = self.h.pu(f"cam{i}", secret="wrong")
                d.addErrback(lambda f: codes.append(f.trap(VssError) and f.value.code))
            self.h.clock.advance(1.0)
        self.assertEqual(set(codes), {ResultCode.AUTH_FAILED, ResultCode.AUTH_THROTTLED})
        self.assertGreater(self.h.rgm.throttle.failures(source="?"), ADDRESS_FREE)
        client, (d, link, server) = self.h.pu("cam1")
        result(d)
