"""
Grant expiry on a node (``vss.rgm.expiry``) with ``task.Clock``: a grant stops applying
at its expiry time, to the millisecond of the timer, without a request reading a clock.
"""

from twisted.internet import task
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.rgm.expiry import GrantExpiry
from vss.store.memory import MemoryStore
from vss.testing.records import grant, user

VIEW = int(Action.VIEW)


class GrantExpiryTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(clock=self.clock)
        self.store.put_user(user("ann", "pw"))
        self.seen = []
        self.expiry = GrantExpiry(self.store, self.clock, self.seen.extend, interval=1.0)
        self.expiry.startService()
        self.addCleanup(self.expiry.stopService)

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    def test_expires_at_its_time(self):
        self.store.put_grant(grant("user:ann", "cam-1", VIEW, expires=self.now_ms() + 2_500))
        self.store.put_grant(grant("user:ann", "cam-2", VIEW, expires=self.now_ms() + 2_600))
        self.assertEqual(self.store.actions_for("ann", "cam-1"), VIEW)
        self.clock.advance(2.0)  # the regular look arms the timer for 0.5 s later
        self.assertEqual(self.store.actions_for("ann", "cam-1"), VIEW)
        self.clock.advance(0.49)
        self.assertEqual(self.store.actions_for("ann", "cam-1"), VIEW)
        self.clock.advance(0.02)
        self.assertEqual(self.store.actions_for("ann", "cam-1"), 0)
        self.assertEqual(self.seen, [("user:ann", "cam-1")])
        self.assertEqual(self.store.actions_for("ann", "cam-2"), VIEW)
        self.clock.advance(0.1)
        self.assertEqual(self.store.actions_for("ann", "cam-2"), 0)
        self.assertEqual(self.seen, [("user:ann", "cam-1"), ("user:ann", "cam-2")])
        self.assertEqual(self.expiry.expired, 2)
        # nothing left to wait for: only the regular look stays scheduled
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_an_expired_grant_never_applies(self):
        self.store.put_grant(grant("user:ann", "cam-1", VIEW, expires=self.now_ms() - 1))
        self.assertEqual(self.store.actions_for("ann", "cam-1"), 0)
        self.assertEqual(self.store.granted_devices("ann"), {})
        self.clock.advance(1.0)
        self.assertEqual(self.seen, [])  # it was never in force

    def test_a_failing_listener_does_not_stop_expiry(self):
        def boom(keys):
            raise RuntimeError("listener")

        self.expiry.on_expired = boom
        self.store.put_grant(grant("user:ann", "cam-1", VIEW, expires=self.now_ms() + 100))
        self.store.put_grant(grant("user:ann", "cam-2", VIEW, expires=self.now_ms() + 1_100))
        self.clock.advance(1.0)
        self.assertEqual(self.store.actions_for("ann", "cam-1"), 0)
        self.clock.advance(1.2)
        self.assertEqual(self.store.actions_for("ann", "cam-2"), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
