"""
Grant expiry on a node (``vss.rgm.expiry``) with ``task.Clock``: a grant stops applying
at its expiry time, to the millisecond of the timer, without a request reading a clock.
"""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    DeviceList,
    MediaOpen,
    MsgType,
    Purpose,
    Role,
    Stream,
)
from vss.rgm.expiry import GrantExpiry
from vss.store.memory import MemoryStore
from vss.testing.platform import start_platform, verifier, wait_until
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


class GrantExpiryOnNodesTests(unittest.TestCase):
    """An operator grants a user a camera until a time, through the admin API; both nodes
    let the user list and open it until then, and neither does after, each on its own
    clock (CMS is stopped before the expiry: nothing central is needed)."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Gate", 1, 1, "node-a", verifier("cam-a-s")))
        yield change(store.upsert_user("carl", verifier("carl-pw"), []))
        self.nodes = []
        for n in ("node-a", "node-b"):
            self.nodes.append((yield self.p.start_node(n)))

    @defer.inlineCallbacks
    def test_enforced_at_the_expiry_on_every_node(self):
        until = int((reactor.seconds() + 3.0) * 1000)
        changes = yield self.p.change(self.p.cms.store.set_grant(
            "user:carl", "cam-a", int(Action.VIEW), expires=until))
        seq = changes[-1].seq
        yield wait_until(reactor, lambda: all(n.central.applier.applied_seq >= seq
                                              for n in self.nodes), what="both nodes")
        clients = []
        for n in ("node-a", "node-b"):
            clients.append((yield self.p.login(n, Role.CU, "carl", "carl-pw")))
        for cu in clients:
            listed = (yield cu.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=100)))
            self.assertEqual([d.device_id for d in listed.body.devices], ["cam-a"])
        yield self.p.stop_cms()  # the nodes need nobody to enforce it
        yield wait_until(reactor, lambda: reactor.seconds() * 1000 >= until, timeout=10,
                         what="the expiry")
        yield wait_until(reactor, lambda: all(n.grant_expiry.expired == 1 for n in self.nodes),
                         timeout=2, what="both nodes to take the grant out of force")
        late = reactor.seconds() * 1000 - until
        self.assertLess(late, 1500)
        for cu in clients:
            listed = (yield cu.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=100)))
            self.assertEqual(listed.body.devices, [])
            with self.assertRaises(VssError) as e:
                yield cu.request(MsgType.MEDIA_OPEN, MediaOpen(
                    device_id="cam-a", channel=0, stream=Stream.MAIN, purpose=Purpose.LIVE,
                    start_time=0, transport=0))
            self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)
        # still held (what CMS lists), out of force
        for node in self.nodes:
            self.assertEqual([g.expires for g in node.store.grants()], [until])
