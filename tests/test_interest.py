"""
S503 node routing (``vss.cms.interest``), without a reactor: which nodes a change goes
to, which log entries a node's fetch keeps, and the interests a change makes nodes gain
(docs/consistency.md, "What each node holds").
"""

from dataclasses import replace

from twisted.trial import unittest

from vss.cms.interest import EVERY_NODE, Interest
from vss.protocols.messages import Change, ChangeOp, Entity, StreamCredential
from vss.testing import records


def change(seq, entity, key, record=None, delete=False, origin="mms"):
    op = ChangeOp.DELETE if delete else ChangeOp.UPSERT
    fields = {Entity.DEVICE: "device", Entity.USER: "user", Entity.GRANT: "grant",
              Entity.CREDENTIAL: "credential"}
    c = Change(seq, int(entity), int(op), key, 1, origin, None, None, None)
    if record is not None:
        c = replace(c, **{fields[entity]: record})
    return c


def device(device_id, home):
    return change(1, Entity.DEVICE, device_id,
                  records.device(device_id, "s", home_node=home, iterations=1))


def user(name, groups=()):
    return change(1, Entity.USER, name, records.user(name, "pw", groups=list(groups),
                                                     iterations=1))


def grant(principal, device_id, origin="mms"):
    return change(1, Entity.GRANT, f"{principal}|{device_id}",
                  records.grant(principal, device_id, 15, 1), origin=origin)


class InterestTests(unittest.TestCase):
    def setUp(self):
        self.i = Interest()
        for c in (device("cam-a", "node-a"), device("cam-b", "node-b"), user("ann", ["ops"]),
                  user("bob")):
            self.i.apply(c)
        self.i.load_rows([("node-c", "cam-a")], [("node-c", "ann")])

    def test_a_device_change_goes_to_its_home_and_its_followers(self):
        self.assertEqual(self.i.nodes_for(device("cam-a", "node-a")), {"node-a", "node-c"})
        self.assertEqual(self.i.nodes_for(device("cam-b", "node-b")), {"node-b"})
        self.assertEqual(self.i.nodes_for(grant("user:bob", "cam-b")), {"node-b"})
        self.assertEqual(self.i.nodes_for(user("ann", ["ops"])), {"node-c"})
        self.assertEqual(self.i.nodes_for(user("bob")), set())

    def test_a_move_and_a_delete_reach_the_former_home(self):
        moved = device("cam-b", "node-d")
        self.i.apply(moved)
        self.assertEqual(self.i.nodes_for(moved), {"node-b", "node-d"})
        gone = change(5, Entity.DEVICE, "cam-b", delete=True)
        self.i.apply(gone)
        self.assertEqual(self.i.nodes_for(gone), {"node-b", "node-d"})
        self.assertTrue(self.i.keeps("node-b", Entity.DEVICE, ChangeOp.DELETE, "cam-b", "mms"))

    def test_follow_entries_go_to_their_node_only_and_it_keeps_the_device(self):
        entry = replace(device("cam-b", "node-b"), origin="follow:node-c")
        self.assertEqual(self.i.nodes_for(entry), {"node-c"})
        self.i.apply(entry)
        self.assertEqual(self.i.nodes_for(device("cam-b", "node-b")), {"node-b", "node-c"})
        self.assertFalse(self.i.keeps("node-a", Entity.DEVICE, ChangeOp.UPSERT, "cam-b",
                                      "follow:node-c"))
        self.assertTrue(self.i.keeps("node-c", Entity.GRANT, ChangeOp.UPSERT,
                                     "user:x|cam-b", "mms"))

    def test_a_grant_or_a_new_group_makes_the_users_nodes_follow(self):
        self.assertEqual(self.i.apply(grant("group:ops", "cam-b")),
                         [("device", "node-c", "cam-b")])
        self.assertEqual(self.i.apply(grant("group:ops", "cam-a")), [])  # held already
        self.assertEqual(self.i.apply(grant("group:ops", "cam-b", origin="follow:node-c")), [])
        self.i.load_rows([], [("node-d", "bob")])
        self.assertEqual(self.i.apply(user("bob", ["night"])), [("user", "node-d", "bob")])
        self.assertEqual(self.i.apply(user("bob", ["night"])), [])  # no new group

    def test_a_credential_goes_with_its_user_and_an_unplaced_one_everywhere(self):
        cred = change(1, Entity.CREDENTIAL, "c1", StreamCredential(
            "c1", "ann", "cam-a", "vlc", 1, 0, 0, b"sealed", 1))
        self.assertEqual(self.i.nodes_for(cred), {"node-c"})
        self.assertTrue(self.i.keeps_record("node-c", cred))
        self.assertFalse(self.i.keeps_record("node-a", cred))
        self.assertIs(self.i.nodes_for(change(2, Entity.CREDENTIAL, "c1", delete=True)),
                      EVERY_NODE)
        self.assertEqual(self.i.nodes_for(change(3, Entity.NODE, "node-a")), set())


class _Store:
    writes_in_flight = 0


class PublishOrderTests(unittest.TestCase):
    """CMS publishes transactions in log order (docs/consistency.md, S504): one that
    comes before the one it follows waits for it while a write is in flight, and a hole
    nothing fills is passed with every node made to fetch across it."""

    def setUp(self):
        from twisted.internet import task

        from vss.cms.service import CMSConfig, CMSService

        self.clock = task.Clock()
        self.store = _Store()
        self.cms = CMSService(CMSConfig(cms_id="cms", cluster_secret=b"x"), self.store,
                              self.clock)
        self.cms.published_seq = 10
        self.order = []
        self.cms._publish = lambda changes: self.order.append([c.seq for c in changes])

    def tx(self, *seqs):
        return [change(s, Entity.NODE, "n") for s in seqs]

    def test_transactions_in_order_go_at_once(self):
        self.cms.publish(self.tx(11, 12))
        self.cms.publish(self.tx(13))
        self.assertEqual(self.order, [[11, 12], [13]])
        self.assertEqual((self.cms.published_seq, self.cms._hole_end), (13, 0))

    def test_a_transaction_waits_for_the_one_before_it_while_a_write_is_in_flight(self):
        self.store.writes_in_flight = 1
        self.cms.publish(self.tx(13))
        self.clock.advance(0.1)
        self.assertEqual(self.order, [])
        self.store.writes_in_flight = 0
        self.cms.publish(self.tx(11, 12))
        self.assertEqual(self.order, [[11, 12], [13]])
        self.assertEqual((self.cms.published_seq, self.cms._hole_end), (13, 0))
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_hole_nothing_fills_is_passed_and_the_nodes_fetch_across_it(self):
        self.store.writes_in_flight = 1
        self.cms.publish(self.tx(13))
        self.clock.pump([0.1] * 6)
        self.assertEqual(self.order, [[13]])
        self.assertEqual((self.cms.published_seq, self.cms._hole_end), (13, 12))
        self.assertEqual(self.cms.counters["holes"], 1)
        # with no write in flight a hole is passed at once
        self.store.writes_in_flight = 0
        self.cms.publish(self.tx(20))
        self.assertEqual(self.order, [[13], [20]])
        self.assertEqual(self.cms._hole_end, 19)
