"""
Re-homing without sockets (task.Clock, iosim): CMS moving a dead node's PUs by load and
in bounded rounds, and giving them back only with failback; a node answering HOME_QUERY
from its copy or from CMS; a PU client following the redirect; the reconnector's
jittered, bounded waits after HOME_NODE_DOWN.
"""

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from vss.client import SignallingClient
from vss.cms.service import REHOME_ROUND, CMSConfig, CMSService
from vss.node import with_backlog
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    EXT_HOME_EPOCH,
    EXT_PU_ADDRESS,
    Change,
    ChangeOp,
    Entity,
    Hello,
    HomeQuery,
    MsgType,
    NodeAddress,
    NodeList,
    PuKind,
    Role,
)
from vss.protocols.reconnect import HOME_DOWN_MAX_DELAY, Reconnector, Redirect
from vss.rgm.service import HOME_HOLD
from vss.testing import records
from vss.testing.harness import NodeHarness


class FakeLink:
    peer = "127.0.0.1:1"
    last_rx = 0.0  # never silent for long in these tests (node_timeout 15 s)

    def __init__(self):
        self.sent = []

    def send_raw(self, frame):
        self.sent.append(frame)

    def request_raw(self, type, body):
        self.sent.append((type, body))
        return defer.Deferred()

    def close(self, *args):
        pass


class FakeSession:
    def __init__(self, node_id, pus=0, capacity=0, pu_address=""):
        self.node_id = node_id
        self.link = FakeLink()
        self.load = {"pus": pus}
        self.capacity = capacity
        self.pu_address = pu_address
        self.signalling = self.media = ""
        self.sent_seq = 0
        self.applied_seq = 0


class MovingStore:
    """``move_devices`` of a static store: each move one device change, numbered."""

    writes_in_flight = 0

    def __init__(self):
        self.seq = 0
        self.moves = []
        self.versions = {}
        self.failed_from = {}  # device_id -> its first home that was down

    def move_devices(self, moves, origin="", failed_node=""):
        changes = []
        for device_id, node_id in moves:
            self.seq += 1
            self.moves.append((device_id, node_id))
            back_to = self.failed_from.pop(device_id, None)
            if failed_node and (back_to or failed_node) != node_id:
                self.failed_from[device_id] = back_to or failed_node
            version = self.versions[device_id] = self.versions.get(device_id, 1) + 1
            record = records.device(device_id, "s", home_node=node_id, version=version,
                                    iterations=1000)
            changes.append(Change(seq=self.seq, entity=int(Entity.DEVICE),
                                  op=int(ChangeOp.UPSERT), key=device_id, version=version,
                                  origin=origin, device=record, user=None, grant=None))
        return defer.succeed(changes)

    def set_node_state(self, node_id, state, load=None):
        return defer.succeed(None)

    def store_events(self, events):  # node-down, node-up
        self.events = getattr(self, "events", []) + [e.type for e in events]
        return defer.succeed(len(events))

    def failover_moves(self, node_id=None):
        return defer.succeed({d: n for d, n in self.failed_from.items()
                              if node_id in (None, n)})


class CmsRehomeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MovingStore()
        self.cms = CMSService(CMSConfig(cms_id="cms", cluster_secret=b"s" * 32,
                                        rehome_after=2.0, rehome_batch=4,
                                        event_retention_days=0),
                              self.store, self.clock)
        self.cms.startService()
        self.addCleanup(self.cms.stopService)

    def homed(self, node_id, count):
        for i in range(count):
            self.cms.homes[f"{node_id}-{i:02d}"] = node_id

    def test_a_node_silent_for_the_node_timeout_is_down(self):
        closed = []
        session = FakeSession("b")
        session.link.close = lambda code=None, *a: closed.append(code)
        self.cms.sessions = {"b": session}
        # the sweeper runs every node_timeout / 3 (5 s); CMSConfig's node_timeout: 15 s
        self.clock.pump([1.0] * 15)
        self.assertEqual(closed, [])
        self.clock.pump([1.0] * 5)
        self.assertEqual(set(closed), {ResultCode.KEEPALIVE_TIMEOUT})

    def test_targets_by_load_at_most_a_batch_each_and_within_capacity(self):
        self.cms.sessions = {"b": FakeSession("b", pus=3), "c": FakeSession("c", pus=0),
                             "d": FakeSession("d", pus=0, capacity=1)}
        picks = self.cms.pick_targets(20)
        # c and d start empty; d holds 1 at most, every node 4 at most per round
        self.assertEqual(picks.count("d"), 1)
        self.assertEqual(picks.count("c"), 4)
        self.assertEqual(picks.count("b"), 4)
        self.assertEqual(len(picks), 9)
        self.assertEqual(picks[0], "c")  # the least loaded first

    def test_a_dead_nodes_pus_move_after_the_delay_in_bounded_rounds(self):
        self.homed("a", 10)
        self.cms.sessions = {"b": FakeSession("b"), "c": FakeSession("c")}
        self.cms._schedule_rehome("a")
        self.clock.advance(1.9)
        self.assertEqual(self.store.moves, [])  # not before --rehome-after
        self.clock.advance(0.2)
        self.assertEqual(len(self.store.moves), 8)  # a round: 4 to each
        self.assertEqual({n for _, n in self.store.moves}, {"b", "c"})
        self.clock.advance(REHOME_ROUND)
        self.assertEqual(len(self.store.moves), 10)
        self.assertEqual(sorted(d for d, h in self.cms.homes.items() if h == "a"), [])
        # the home epoch (the record's version) rose with the move and Route names it
        self.assertEqual(self.cms.epochs["a-00"], 2)
        self.assertEqual(self.cms.counters["rehomed"], 10)
        # the new homes were told (SYNC_NOTIFY) of the devices they now hold
        self.assertTrue(any(isinstance(x, tuple) and x[0] == MsgType.SYNC_NOTIFY
                            for x in self.cms.sessions["b"].link.sent))

    def test_a_database_failure_is_tried_again(self):
        self.homed("a", 2)
        self.cms.sessions = {"b": FakeSession("b")}
        moves = self.store.move_devices
        self.store.move_devices = lambda m, origin="": defer.fail(
            VssError(ResultCode.DB_UNAVAILABLE, "locked"))
        self.cms._schedule_rehome("a")
        self.clock.advance(2.1)
        self.assertEqual(self.store.moves, [])
        self.store.move_devices = moves
        self.clock.advance(2.1)
        self.assertEqual(len(self.store.moves), 2)

    def test_a_node_back_within_the_delay_keeps_its_pus(self):
        self.homed("a", 3)
        self.cms.sessions = {"b": FakeSession("b")}
        self.cms._schedule_rehome("a")
        self.cms.sessions["a"] = FakeSession("a")  # it registered again
        self.clock.advance(5)
        self.assertEqual(self.store.moves, [])

    def test_without_live_nodes_it_waits_then_moves(self):
        self.homed("a", 2)
        self.cms._schedule_rehome("a")
        self.clock.advance(2.1)
        self.assertEqual(self.store.moves, [])
        self.cms.sessions = {"c": FakeSession("c")}
        self.clock.advance(2.1)
        self.assertEqual(self.store.moves, [("a-00", "c"), ("a-01", "c")])

    def moved_away(self, count=2):
        """``count`` PUs of node a, down, moved to b (the only node up)."""
        self.homed("a", count)
        self.cms.sessions = {"b": FakeSession("b")}
        self.cms._schedule_rehome("a")
        self.clock.advance(2.1)

    def test_failback_gives_the_moved_pus_back_only_when_asked(self):
        self.moved_away()
        self.assertEqual(len(self.store.moves), 2)
        self.cms.sessions["a"] = FakeSession("a")
        self.assertEqual(self.successResultOf(self.cms.failback("a")), 2)
        self.assertEqual(self.store.moves[2:], [("a-00", "a"), ("a-01", "a")])
        self.assertEqual({h for h in self.cms.homes.values()}, {"a"})
        self.assertEqual(self.store.failed_from, {})  # given back: nothing more to give

    def test_failback_gives_back_to_the_first_home_that_died(self):
        """a dies (its PUs go to b), then b dies (they go to c): a back takes them all,
        b back takes none."""
        self.moved_away()
        self.cms.sessions = {"c": FakeSession("c")}
        self.cms._schedule_rehome("b")
        self.clock.advance(2.1)
        self.assertEqual({h for h in self.cms.homes.values()}, {"c"})
        self.cms.sessions["b"] = FakeSession("b")
        self.assertEqual(self.successResultOf(self.cms.failback("b")), 0)
        self.cms.sessions["a"] = FakeSession("a")
        self.assertEqual(self.successResultOf(self.cms.failback("a")), 2)
        self.assertEqual({h for h in self.cms.homes.values()}, {"a"})

    def test_failback_waits_until_the_node_has_stayed_up_and_not_if_it_flaps(self):
        self.cms.config = CMSConfig(cms_id="cms", cluster_secret=b"s" * 32,
                                    rehome_after=2.0, rehome_batch=4, failback=True,
                                    failback_after=10.0, event_retention_days=0)
        self.moved_away()
        self.assertEqual(len(self.store.moves), 2)
        # a comes back, goes down again 5 s later, is back 3 s after that: the first
        # return's time comes and goes, nothing moves
        self.cms.sessions["a"] = FakeSession("a")
        self.cms._schedule_failback("a")
        self.clock.advance(5.0)
        link = FakeLink()
        link.session = self.cms.sessions["a"]
        link.session.registered = True
        self.cms.links.add(link)
        self.cms.linkDown(link, None)
        self.assertNotIn("a", self.cms.sessions)
        self.assertEqual(self.store.events, ["node-down"])
        self.clock.advance(3.0)
        self.cms.sessions["a"] = FakeSession("a")
        self.cms._schedule_failback("a")
        self.clock.advance(2.1)  # 10.1 s after the first return
        self.assertEqual(len(self.store.moves), 2)
        # up for failback_after since it last came back: it takes them back
        self.clock.advance(7.8)
        self.assertEqual(len(self.store.moves), 2)
        self.clock.advance(0.2)
        self.assertEqual(self.store.moves[2:], [("a-00", "a"), ("a-01", "a")])

    def test_failback_that_fails_is_logged_and_moves_nothing(self):
        self.homed("a", 1)
        self.store.failed_from["a-00"] = "a"
        self.store.failover_moves = lambda node_id=None: defer.fail(
            VssError(ResultCode.DB_UNAVAILABLE, "locked"))
        self.cms.sessions = {"a": FakeSession("a")}
        self.successResultOf(self.cms._failback_now("a"))
        self.assertEqual(self.store.moves, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_route_names_the_homes_pu_address_and_epoch(self):
        self.cms.homes["cam1"] = "b"
        self.cms.epochs["cam1"] = 7
        self.cms.sessions = {"b": FakeSession("b", pu_address="tcp:10.0.0.2:7100")}
        route = self.cms.on_route_lookup(None, HomeQuery(device_id="cam1"))
        ext = dict(route.ext)
        self.assertEqual(ext[EXT_PU_ADDRESS], b"tcp:10.0.0.2:7100")
        self.assertEqual(int.from_bytes(ext[EXT_HOME_EPOCH], "big"), 7)
        self.assertTrue(route.node_up)

    def test_node_list_least_loaded_first_to_every_node(self):
        self.cms.sessions = {"b": FakeSession("b", pus=5, pu_address="tcp:h:2"),
                             "c": FakeSession("c", pus=1, pu_address="tcp:h:3"),
                             "d": FakeSession("d", pus=0)}  # names no PU address
        self.assertEqual([(n.node_id, n.address) for n in self.cms.node_list().nodes],
                         [("c", "tcp:h:3"), ("b", "tcp:h:2")])
        self.cms._announce_nodes()
        frame = self.cms.sessions["d"].link.sent[-1]
        (decoded,) = codec.FrameDecoder().feed(frame)
        self.assertEqual(decoded.type, MsgType.NODE_LIST)


class HomeQueryTests(unittest.TestCase):
    """A node answers HOME_QUERY after HELLO (iosim, the in-memory central)."""

    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30)
        self.h.rgm.pu_address = lambda: "tcp:127.0.0.1:7100"
        self.addCleanup(self.h.stop)

    def ask(self, device_id):
        return self.ask_all(device_id)[0]

    def ask_all(self, device_id):
        client = SignallingClient(Role.PU, device_id, "pu-secret", kind=PuKind.IPC)
        link, _, _ = self.h.connect(client, Role.PU)
        out = []
        d = link.request(MsgType.HELLO, Hello(min_version=1, max_version=1, role=Role.PU,
                                              agent="t", features=[]))
        d.addCallback(lambda _: link.request(MsgType.HOME_QUERY, HomeQuery(device_id=device_id)))
        d.addBoth(out.append)
        self.h.pump()
        return out

    def test_a_pu_homed_here_is_told_to_log_in_here(self):
        self.h.add_device("cam1")
        self.h.store.put_device(self.h.central.devices["cam1"])
        answer = self.ask("cam1").body
        self.assertEqual((answer.home_node, answer.address, answer.epoch),
                         ("node-a", "tcp:127.0.0.1:7100", 1))

    def test_a_pu_homed_on_a_down_node_is_told_home_node_down(self):
        self.h.add_device("cam2", home="node-x")
        self.h.central.nodes["node-x"] = None
        failure = self.ask("cam2")
        failure.trap(VssError)
        self.assertEqual(failure.value.code, ResultCode.HOME_NODE_DOWN)

    def test_a_held_pu_whose_home_is_not_up_is_told_so_without_asking_cms(self):
        record = self.h.add_device("cam7", home="node-x")
        self.h.store.put_device(record)
        self.h.central.available = False  # CMS is not asked
        self.h.central.node_addresses = lambda: [NodeAddress(node_id="node-a",
                                                             address="tcp:h:1")]
        out = self.ask_all("cam7")
        self.assertEqual(out, [])  # held for the PU's move
        self.h.clock.advance(HOME_HOLD)
        self.h.pump()
        out[0].trap(VssError)
        self.assertEqual(out[0].value.code, ResultCode.HOME_NODE_DOWN)

    def test_a_held_query_is_answered_as_soon_as_the_pu_moves(self):
        record = self.h.add_device("cam9", home="node-x")
        self.h.store.put_device(record)
        self.h.central.node_addresses = lambda: [
            NodeAddress(node_id="node-a", address="tcp:h:1"),
            NodeAddress(node_id="node-c", address="tcp:h:3")]
        out = self.ask_all("cam9")
        self.assertEqual(out, [])
        moved = records.device("cam9", "pu-secret", home_node="node-c", version=2,
                               iterations=1000)
        self.h.store.put_device(moved)
        self.h.rgm.home_changed("cam9", record, moved)  # passive sync brought the move
        self.h.pump()
        self.assertEqual((out[0].body.home_node, out[0].body.address, out[0].body.epoch),
                         ("node-c", "tcp:h:3", 2))
        self.assertEqual(self.h.rgm._held_count, 0)
        self.assertEqual([c for c in self.h.clock.getDelayedCalls()
                          if c.func == self.h.rgm._home_held_out], [])

    def test_an_unknown_device_gets_no_oracle(self):
        answer = self.ask("nobody").body
        self.assertEqual(answer.home_node, "node-a")

    def test_a_pu_homed_elsewhere_is_redirected_by_the_nodes_copy_without_cms(self):
        record = self.h.add_device("cam3", home="node-b")
        self.h.store.put_device(record)
        self.h.central.available = False
        self.h.central.node_addresses = lambda: [NodeAddress(node_id="node-b",
                                                             address="tcp:10.0.0.2:7100")]
        answer = self.ask("cam3").body
        self.assertEqual((answer.home_node, answer.address), ("node-b", "tcp:10.0.0.2:7100"))

    def test_a_cu_may_not_ask(self):
        client = SignallingClient(Role.CU, "alice", "pw")
        link, _, _ = self.h.connect(client, Role.CU)
        out = []
        d = link.request(MsgType.HELLO, Hello(min_version=1, max_version=1, role=Role.CU,
                                              agent="t", features=[]))
        d.addCallback(lambda _: link.request(MsgType.HOME_QUERY, HomeQuery(device_id="x")))
        d.addErrback(out.append)
        self.h.pump()
        out[0].trap(VssError)
        self.assertEqual(out[0].value.code, ResultCode.UNEXPECTED_MESSAGE)

    def test_the_pu_client_follows_a_redirect_and_logs_in_at_home(self):
        self.h.add_device("cam4")
        client = SignallingClient(Role.PU, "cam4", "pu-secret", kind=PuKind.IPC,
                                  home_query=True)
        d, _, _ = self.h.login(client, Role.PU)
        self.h.pump()
        out = []
        d.addBoth(out.append)
        self.assertEqual(out[0].node_id, "node-a")
        self.assertEqual(client.home.home_node, "node-a")
        # a node that names another home: the client raises Redirect to its address
        record = self.h.add_device("cam5", home="node-b")
        self.h.store.put_device(record)
        self.h.central.available = False
        self.h.central.node_addresses = lambda: [NodeAddress(node_id="node-b",
                                                             address="tcp:10.0.0.2:7100")]
        client = SignallingClient(Role.PU, "cam5", "pu-secret", kind=PuKind.IPC,
                                  home_query=True)
        d, _, _ = self.h.login(client, Role.PU)
        self.h.pump()
        out = []
        d.addErrback(out.append)
        out[0].trap(Redirect)
        self.assertEqual(out[0].value.address, "tcp:10.0.0.2:7100")

    def test_a_pu_whose_home_is_down_asks_again_on_its_link_and_logs_in_once_moved(self):
        self.h.add_device("cam8", home="node-x")
        self.h.central.nodes["node-x"] = None  # down
        client = SignallingClient(Role.PU, "cam8", "pu-secret", kind=PuKind.IPC,
                                  home_query=True)
        d, _, _ = self.h.login(client, Role.PU)
        self.h.pump()
        out = []
        d.addBoth(out.append)
        self.assertEqual(out, [])  # waiting, not failed
        asked = self.h.rgm.counters["home_queries"]
        self.h.clock.advance(1.0)
        self.h.pump()
        self.assertEqual(self.h.rgm.counters["home_queries"], asked + 1)  # asked again
        self.assertEqual(len(self.h.rgm.links), 1)  # on the same link
        # CMS moves it here: the next answer is "here", and the PU logs in
        self.h.add_device("cam8")
        self.h.clock.advance(1.0)
        self.h.pump()
        self.assertEqual(out[0].node_id, "node-a")

    def test_a_registered_pu_gets_the_node_list_this_node_first(self):
        self.h.add_device("cam6")
        self.h.central.node_addresses = lambda: [
            NodeAddress(node_id="node-c", address="tcp:h:3"),
            NodeAddress(node_id="node-a", address="tcp:127.0.0.1:7100")]
        seen = []
        client = SignallingClient(Role.PU, "cam6", "pu-secret", kind=PuKind.IPC,
                                  home_query=True)
        client.on_nodes = seen.append
        self.h.login(client, Role.PU)
        self.h.pump()
        self.assertEqual([n.node_id for n in seen[-1].nodes], ["node-a", "node-c"])
        self.h.rgm.send_node_list(NodeList(nodes=[]))
        self.h.pump()
        self.assertEqual(len(seen), 2)


class ReconnectorTests(unittest.TestCase):
    """The PU side of a storm: a HOME_NODE_DOWN round waits at most 2 s, spread wide;
    a redirect is followed at once, not counted as a failure."""

    class Endpoint:
        def __init__(self, name, log):
            self.name = name
            self.log = log

        def connect(self, factory):
            self.log.append(self.name)
            return defer.Deferred()  # never connects: the test drives the reconnector

    def test_home_node_down_rounds_are_short_and_jittered(self):
        clock = task.Clock()
        log = []
        eps = [self.Endpoint("a", log), self.Endpoint("b", log)]
        r = Reconnector(eps, None, None, clock, initial=1.0, max_delay=30.0,
                        names=["a", "b"])
        delays = []
        for _ in range(40):
            r.failures = 10  # a long backoff would be 30 s
            r._tried = 1  # the round's last endpoint
            r._prepare_failed(_failure(VssError(ResultCode.HOME_NODE_DOWN)), _Proto())
            r._schedule()
            delays.append(r.last_delay)
        self.assertLessEqual(max(delays), HOME_DOWN_MAX_DELAY * 1.5)
        self.assertGreater(max(delays) - min(delays), 0.5)  # spread, not in step

    def test_a_redirect_is_followed_at_once(self):
        clock = task.Clock()
        log = []
        made = []

        def make(address):
            made.append(address)
            return self.Endpoint(address, log)

        r = Reconnector([self.Endpoint("a", log)], None, None, clock, names=["a"],
                        make_endpoint=make)
        r.running = True
        r._prepare_failed(_failure(Redirect("tcp:h:9")), _Proto())
        r._schedule()
        self.assertLess(r.last_delay, 0.1)
        self.assertEqual(r.failures, 0)
        clock.advance(r.last_delay)
        self.assertEqual(log, ["tcp:h:9"])
        self.assertEqual(made, ["tcp:h:9"])


class LoginRateTests(unittest.TestCase):
    """A storm of logins is slowed to the node's login rate with BUSY, which no throttle
    counts: the PUs log in once the node has room, none is held back as a guesser."""

    def test_over_the_rate_is_busy_not_a_failure(self):
        h = NodeHarness(keepalive_interval=30, login_rate=3)
        self.addCleanup(h.stop)
        for i in range(5):
            h.add_device(f"cam{i}")
        answers = []
        for i in range(5):
            client = SignallingClient(Role.PU, f"cam{i}", "pu-secret", kind=PuKind.IPC)
            d, _, _ = h.login(client, Role.PU)
            d.addBoth(answers.append)
        h.pump()
        busy = [a for a in answers if isinstance(a, Failure)]
        self.assertEqual(len(busy), 2)
        for f in busy:
            f.trap(VssError)
            self.assertEqual(f.value.code, ResultCode.BUSY)
        self.assertEqual(h.rgm.logins["pu", "busy"], 2)
        self.assertEqual(h.rgm.logins["pu", "failed"], 0)
        self.assertEqual(h.rgm.throttle.wait("cam3", "127.0.0.1"), 0)
        h.clock.advance(1.0)  # the bucket refills: they log in
        client = SignallingClient(Role.PU, "cam3", "pu-secret", kind=PuKind.IPC)
        d, _, _ = h.login(client, Role.PU)
        h.pump()
        out = []
        d.addBoth(out.append)
        self.assertEqual(out[0].node_id, "node-a")

    def test_a_busy_node_is_tried_again_not_left(self):
        clock = task.Clock()
        log = []
        eps = [ReconnectorTests.Endpoint("a", log), ReconnectorTests.Endpoint("b", log)]
        r = Reconnector(eps, None, None, clock, names=["a", "b"])
        r.running = True
        r._prepare_failed(_failure(VssError(ResultCode.BUSY)), _Proto())
        r._schedule()
        self.assertLessEqual(r.last_delay, HOME_DOWN_MAX_DELAY)
        clock.advance(r.last_delay)
        self.assertEqual(log, ["a"])


class _Proto:
    transport = None


def _failure(exc):
    return Failure(exc)


class BacklogTests(unittest.TestCase):
    def test_the_pu_listener_gets_a_deep_accept_queue_unless_it_names_one(self):
        self.assertEqual(with_backlog("tcp:7100:interface=127.0.0.1", 1024),
                         "tcp:7100:interface=127.0.0.1:backlog=1024")
        self.assertEqual(with_backlog("tcp:7100:backlog=64", 1024), "tcp:7100:backlog=64")
        self.assertEqual(with_backlog("unix:/run/x", 1024), "unix:/run/x")
