"""
Data consistency: no change is ever lost.

``SyncApplierTests`` drive ``SyncApplier`` (S505) with hand-made change batches and the
memory store, without a reactor: ordering, duplicates, gaps, stale versions, deletes.

``RandomisedSyncTests`` run a central platform and three nodes in one process (real
loopback TCP, SQLite) and interleave, for a seeded random sequence of steps, admin
changes (S501-S506), PU changes (S601-S605), link drops, node restarts (a full reload
from a fresh memory store) and CMS restarts. At the end, once everything is quiet,
every node's memory database must equal what the DB says it should hold, and every PU
change CMS acknowledged as applied must be in the DB, unless a later change overwrote it.

Replay a run with ``VSS_SYNC_SEED=<seed>`` (the seed is in the log and in every failure
message); ``VSS_SYNC_STEPS`` changes the number of steps.
"""

import json
import os
import random
import time
from dataclasses import replace

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from vss.cms.service import CMSService
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    Change,
    ChangeKind,
    ChangeOp,
    Entity,
    MsgType,
    Role,
    StateChange,
    SyncChange,
)
from vss.rgm import cmslink
from vss.rgm.outbox import Outbox
from vss.rgm.sync import SAVE_DELAY, SyncApplier
from vss.store.memory import MemoryStore
from vss.testing import records
from vss.testing.platform import start_platform, wait_until

log = Logger()
NODES = ("node-a", "node-b", "node-c")
ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


# -- SyncApplier without a reactor ------------------------------------------------------


def dev(device_id, version, home="node-a", name=None, secret=True):
    r = records.device(device_id, "s-" + device_id, home_node=home, name=name,
                       version=version, iterations=1)
    if not secret:
        r = replace(r, verifier=replace(r.verifier, stored_key=b"", server_key=b""))
    return r


def device_change(seq, record=None, key=None, version=None, delete=False):
    if delete:
        return Change(seq, int(Entity.DEVICE), int(ChangeOp.DELETE), key, version, "cms",
                      None, None, None)
    return Change(seq, int(Entity.DEVICE), int(ChangeOp.UPSERT), record.device_id,
                  record.version, "cms", record, None, None)


def user_change(seq, username, version, delete=False, groups=()):
    if delete:
        return Change(seq, int(Entity.USER), int(ChangeOp.DELETE), username, version, "cms",
                      None, None, None)
    u = records.user(username, "pw", groups=groups, version=version, iterations=1)
    return Change(seq, int(Entity.USER), int(ChangeOp.UPSERT), username, version, "cms",
                  None, u, None)


def grant_change(seq, principal, device_id, actions=ALL, version=1, delete=False):
    key = f"{principal}|{device_id}"
    if delete:
        return Change(seq, int(Entity.GRANT), int(ChangeOp.DELETE), key, version, "cms",
                      None, None, None)
    g = records.grant(principal, device_id, actions, version)
    return Change(seq, int(Entity.GRANT), int(ChangeOp.UPSERT), key, version, "cms",
                  None, None, g)


class SyncApplierTests(unittest.TestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.seen = []
        self.applier = SyncApplier(self.store, "node-a", self.mktemp_dir(),
                                   on_device_change=lambda k, old, new: self.seen.append(
                                       (k, old and old.version, new and new.version)))

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_changes_apply_in_order_and_the_sequence_is_kept(self):
        self.applier.apply([device_change(1, dev("cam", 1, name="one")),
                            device_change(2, dev("cam", 2, name="two")),
                            user_change(3, "alice", 1)])
        self.assertEqual(self.applier.applied_seq, 3)
        self.assertEqual(self.store.get_device("cam").name, "two")
        self.assertEqual(self.store.get_meta("applied_seq"), 3)
        # A new applier on the same store and data directory resumes from 3.
        again = SyncApplier(self.store, "node-a", self.applier.path.rsplit(os.sep, 1)[0])
        self.assertEqual(again.restore(), 3)

    def test_duplicates_and_replays_are_harmless(self):
        batch = [device_change(1, dev("cam", 1, name="one")),
                 device_change(2, dev("cam", 2, name="two"))]
        self.applier.apply(batch)
        self.applier.apply(batch)
        self.applier.apply(batch[:1])
        self.assertEqual(self.store.get_device("cam").name, "two")
        self.assertEqual(self.applier.applied_count, 2)
        self.assertEqual(len(self.seen), 2)

    def test_a_gap_is_detected_and_nothing_is_skipped_silently(self):
        self.applier.apply([device_change(1, dev("cam", 1))])
        self.assertFalse(self.applier.gap([device_change(2, dev("cam", 2))]))
        self.assertTrue(self.applier.gap([device_change(4, dev("cam", 3))]))
        self.assertFalse(self.applier.gap([]))
        # An old batch (already applied) is not a gap either.
        self.assertFalse(self.applier.gap([device_change(1, dev("cam", 1))]))

    def test_a_stale_record_never_replaces_a_newer_one(self):
        # A fetch carries the current record for an old log entry: version 5 at seq 2.
        self.applier.apply([device_change(1, dev("cam", 1)),
                            device_change(2, dev("cam", 5, name="current"))])
        # A later log entry whose record is older than the one held does nothing.
        self.applier.apply([device_change(3, dev("cam", 3, name="older"))])
        self.assertEqual(self.store.get_device("cam").name, "current")
        self.assertEqual(self.applier.applied_seq, 3)
        self.applier.apply([user_change(4, "alice", 4), user_change(5, "alice", 2)])
        self.assertEqual(self.store.get_user("alice").version, 4)

    def test_deletes_remove_newer_records_only(self):
        self.applier.apply([device_change(1, dev("cam", 3)),
                            grant_change(2, "user:alice", "cam"),
                            user_change(3, "alice", 1)])
        self.assertEqual(self.store.actions_for("alice", "cam"), ALL)
        # A delete older than the record held (the device was re-created since) is ignored.
        self.applier.apply([device_change(4, key="cam", version=2, delete=True)])
        self.assertIsNotNone(self.store.get_device("cam"))
        self.applier.apply([device_change(5, key="cam", version=4, delete=True),
                            user_change(6, "alice", 2, delete=True)])
        self.assertIsNone(self.store.get_device("cam"))
        self.assertIsNone(self.store.get_user("alice"))
        self.assertEqual(self.store.grants(), [])
        self.assertEqual(self.seen[-1], ("cam", 3, None))
        # Deleting what is not held is harmless.
        self.applier.apply([device_change(7, key="ghost", version=9, delete=True),
                            grant_change(8, "user:bob", "ghost", delete=True)])
        self.assertEqual(self.applier.applied_seq, 8)

    def test_grants_follow_the_log_order(self):
        self.applier.apply([device_change(1, dev("cam", 1)),
                            grant_change(2, "group:ops", "cam", int(Action.VIEW), 1),
                            grant_change(3, "group:ops", "cam", ALL, 2),
                            grant_change(4, "group:ops", "cam", delete=True, version=3),
                            grant_change(5, "group:ops", "cam", int(Action.PTZ), 1)])
        self.assertEqual([(g.principal, g.actions) for g in self.store.grants()],
                         [("group:ops", int(Action.PTZ))])

    def test_a_device_homed_here_keeps_its_verifier(self):
        self.applier.apply([device_change(1, dev("cam", 1))])
        key = self.store.get_device("cam").verifier.stored_key
        # A rename reaching this node through a path without the secret keeps it.
        self.applier.apply([device_change(2, dev("cam", 2, name="renamed", secret=False))])
        self.assertEqual(self.store.get_device("cam").verifier.stored_key, key)
        # A move away drops it.
        self.applier.apply([device_change(3, dev("cam", 3, home="node-b", secret=False))])
        self.assertEqual(self.store.get_device("cam").verifier.stored_key, b"")

    def test_with_a_clock_the_file_is_written_once_per_delay_and_on_close(self):
        clock = task.Clock()
        directory = self.mktemp_dir()
        applier = SyncApplier(self.store, "node-a", directory, clock=clock)
        path = os.path.join(directory, "sync.json")
        for seq in range(1, 50):
            applier.apply([device_change(seq, dev("cam", seq))])
        self.assertEqual(self.store.get_meta("applied_seq"), 49)  # memory: at once
        self.assertFalse(os.path.exists(path))
        clock.advance(SAVE_DELAY)
        with open(path) as f:
            self.assertEqual(json.load(f)["applied_seq"], 49)
        applier.apply([device_change(50, dev("cam", 50))])
        applier.close()
        with open(path) as f:
            self.assertEqual(json.load(f)["applied_seq"], 50)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_restore_takes_the_lower_of_memory_and_file(self):
        self.applier.apply([device_change(1, dev("cam", 1)), device_change(2, dev("cam", 2))])
        self.store.set_meta("applied_seq", 5)  # a store ahead of the file: trust the file
        fresh = SyncApplier(self.store, "node-a", os.path.dirname(self.applier.path))
        self.assertEqual(fresh.restore(), 2)
        self.assertIsNone(SyncApplier(MemoryStore(), "node-a").restore())


class OutboxTests(unittest.TestCase):
    """The outbox journal keeps the base version a change was first sent with."""

    def change(self, change_id, base=7):
        return SyncChange(node_id="node-a", change_id=change_id, device_id="cam", channel=0,
                          change=int(ChangeKind.NAME), timestamp=1,
                          items=[KV(key="name", value=f"n{change_id}")], base_version=base)

    def test_the_sent_stamp_survives_a_restart_and_unsent_changes_have_none(self):
        path = os.path.join(self.mktemp() + ".jsonl")
        box = Outbox(path)
        for _ in range(3):
            box.add(self.change(box.next_id()))
        box.sent(self.change(1, base=41))
        box.ack(1)
        box.sent(self.change(2, base=42))
        box.close()  # a crash would leave the same journal: every write was flushed
        again = Outbox(path)
        self.assertEqual(list(again.pending), [2, 3])
        self.assertEqual(again.sent_ids, {2})
        self.assertEqual(again.pending[2].base_version, 42)
        self.assertEqual(again.pending[3].base_version, 7)
        self.assertEqual(again.next_id(), 4)
        again.close()
        # The compacted file written on load keeps the stamp too.
        third = Outbox(path)
        self.assertEqual((third.sent_ids, third.pending[2].base_version), ({2}, 42))
        third.close()


# -- the randomised platform run --------------------------------------------------------


def seed_of_run():
    text = os.environ.get("VSS_SYNC_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


class AckRecorder:
    """Every SyncAck CMS answers (S605), with the change it answers."""

    def __init__(self):
        self.acks = []  # (node_id, SyncChange, SyncAck)

    def wrap(self, handler):
        def on_sync_change(cms, s, body):
            d = handler(cms, s, body)
            d.addCallback(self.record, s.node_id, body)
            return d

        return on_sync_change

    def record(self, ack, node_id, body):
        self.acks.append((node_id, body, ack))
        return ack


class RandomisedSyncTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.seed = seed_of_run()
        self.rng = random.Random(self.seed)
        self.steps = int(os.environ.get("VSS_SYNC_STEPS", "160"))
        log.info("randomised sync run: VSS_SYNC_SEED={seed} steps={steps}", seed=self.seed,
                 steps=self.steps)
        print(f"\nrandomised sync run: VSS_SYNC_SEED={self.seed} steps={self.steps}")
        self.recorder = AckRecorder()
        self.patch(CMSService, "REGISTERED", {
            **CMSService.REGISTERED,
            MsgType.SYNC_CHANGE: self.recorder.wrap(CMSService.REGISTERED[MsgType.SYNC_CHANGE]),
        })
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        self.secrets = {}
        self.names = {}  # device_id -> [(seq, name)] of every accepted rename
        self.counter = 0
        self.pus = {}  # device_id -> (node_id, client)
        self.stats = {}
        for i in range(6):
            yield self.add_device(NODES[i % 3])
        for name in ("alice", "bob"):
            yield self.change(self.store.upsert_user(name, records.verifier(name, iterations=1),
                                                     ["ops"]))
        for node_id in NODES:
            yield self.p.start_node(node_id)

    @property
    def cms(self):
        return self.p.cms.cms

    @property
    def store(self):
        return self.p.cms.store

    def fail_with_seed(self, message):
        self.fail(f"{message}\n(replay with VSS_SYNC_SEED={self.seed} "
                  f"VSS_SYNC_STEPS={self.steps})")

    @defer.inlineCallbacks
    def change(self, d):
        """An MMS-style change: one transaction, then S501."""
        changes = yield d
        self.cms.publish(changes)
        for c in changes:
            if c.entity == Entity.DEVICE and c.device is not None:
                self.names.setdefault(c.key, []).append((c.seq, c.device.name))
        return changes

    def new_id(self, prefix):
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def add_device(self, home):
        device_id = self.new_id("cam")
        self.secrets[device_id] = "secret-" + device_id
        return self.change(self.store.upsert_device(
            device_id, f"Camera {device_id}", 1, 1, home,
            records.verifier(self.secrets[device_id], iterations=1)))

    # -- the random steps

    @defer.inlineCallbacks
    def admin_step(self):
        rng = self.rng
        devices, _ = yield self.store.list_devices(limit=1000)
        users, _ = yield self.store.list_users(limit=1000)
        grants, _ = yield self.store.list_grants(limit=1000)
        choice = rng.choice(["add", "rename", "rename", "move", "remove", "user", "user-rm",
                             "grant", "grant", "grant-rm", "batch"])
        self.count("admin-" + choice)
        if choice == "add" or not devices:
            yield self.add_device(rng.choice(NODES))
        elif choice == "rename":
            d = rng.choice(devices)
            yield self.change(self.store.update_device_fields(
                d.device_id, name=f"admin name {self.new_id('n')}"))
        elif choice == "move":
            d = rng.choice(devices)
            yield self.change(self.store.update_device_fields(
                d.device_id, home_node=rng.choice([n for n in NODES if n != d.home_node])))
        elif choice == "remove" and len(devices) > 3:
            yield self.change(self.store.remove_device(rng.choice(devices).device_id))
        elif choice == "user":
            name = rng.choice([u.username for u in users] + [self.new_id("user")])
            yield self.change(self.store.upsert_user(
                name, records.verifier(name, iterations=1),
                rng.sample(["ops", "night", "admins"], rng.randint(0, 2)),
                enabled=rng.random() > 0.2))
        elif choice == "user-rm" and users:
            yield self.change(self.store.remove_user(rng.choice(users).username))
        elif choice == "grant":
            principal = rng.choice([f"user:{u.username}" for u in users] + ["group:ops"])
            yield self.change(self.store.set_grant(principal, rng.choice(devices).device_id,
                                                   rng.choice([1, 3, ALL])))
        elif choice == "grant-rm" and grants:
            g = rng.choice(grants)
            yield self.change(self.store.remove_grant(g.principal, g.device_id))
        elif choice == "batch":
            # Many devices in one transaction: one notify, several changes.
            recs = [records.device(self.new_id("bulk"), "x", home_node=rng.choice(NODES),
                                   iterations=1) for _ in range(rng.randint(2, 6))]
            for r in recs:
                self.secrets[r.device_id] = "x"
            yield self.change(self.store.bulk_upsert_devices(recs))

    @defer.inlineCallbacks
    def pu_step(self):
        """A PU logged in at its home node renames itself or changes its configuration
        (S601); the node sends it to CMS (S603)."""
        rng = self.rng
        node_id = rng.choice(list(self.p.nodes))
        node = self.p.nodes[node_id]
        homed = [d.device_id for d in node.store.devices()
                 if d.home_node == node_id and d.verifier.stored_key
                 and d.device_id in self.secrets]
        if not homed:
            return
        device_id = rng.choice(homed)
        held = self.pus.get(device_id)
        if held is None or held[0] != node_id or held[1].link is None:
            try:
                client = yield self.p.login(node_id, Role.PU, device_id,
                                            self.secrets[device_id])
            except Exception as e:
                self.count("pu-login-failed")
                log.info("PU {device} login at {node} failed: {e}", device=device_id,
                         node=node_id, e=e)
                return
            self.pus[device_id] = held = (node_id, client)
        client = held[1]
        if client.link is None:
            return
        if rng.random() < 0.7:
            self.count("pu-rename")
            items = [KV(key="name", value=f"pu name {self.new_id('p')}")]
            kind = ChangeKind.NAME
        else:
            self.count("pu-config")
            items = [KV(key=self.new_id("k"), value=str(rng.randint(0, 99)))]
            kind = ChangeKind.CONFIG
        client.link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id=device_id, channel=0, change=int(kind), timestamp=1, items=items))

    @defer.inlineCallbacks
    def cu_step(self):
        """A user logs in at a node (the first time there, the node holds the user and
        the devices the user may see from then on)."""
        users, _ = yield self.store.list_users(limit=1000)
        users = [u for u in users if u.enabled]
        if not users:
            return
        user = self.rng.choice(users)
        node_id = self.rng.choice(list(self.p.nodes))
        # a first login there needs CMS: wait for the node's link (after a CMS restart)
        yield wait_until(reactor, lambda: self.p.nodes[node_id].central.link is not None,
                         timeout=30, what=f"{node_id}'s link to CMS (VSS_SYNC_SEED={self.seed})")
        try:
            client = yield self.p.login(node_id, Role.CU, user.username, user.username)
        except Exception as e:
            self.count("cu-login-failed")
            log.info("CU {user} login at {node} failed: {e}", user=user.username,
                     node=node_id, e=e)
            return
        self.count("cu-login")
        client.link.transport.loseConnection()

    def link_drop(self):
        node = self.p.nodes[self.rng.choice(list(self.p.nodes))]
        if node.central.link is not None:
            self.count("link-drop")
            node.central.link.transport.abortConnection()

    @defer.inlineCallbacks
    def node_restart(self):
        node_id = self.rng.choice(list(self.p.nodes))
        self.count("node-restart")
        yield self.p.stop_node(node_id)
        if self.rng.random() < 0.5:
            yield self.admin_step()  # a change while the node is away
        yield self.p.start_node(node_id)

    @defer.inlineCallbacks
    def cms_restart(self):
        self.count("cms-restart")
        port = self.p.cms_port
        yield self.p.stop_cms()
        for _ in range(self.rng.randint(0, 3)):
            yield self.pu_step()  # they wait in the outbox
        yield self.pause()
        yield self.p.start_cms(port=port)

    def pause(self):
        return task.deferLater(reactor, self.rng.choice([0, 0, 0.001, 0.005, 0.02]),
                               lambda: None)

    def count(self, what):
        self.stats[what] = self.stats.get(what, 0) + 1

    # -- the final check

    @defer.inlineCallbacks
    def expected(self):
        """The DB: every device, user and grant, what each node follows and the users
        registered on each (``node_devices``, ``node_users``), plus the head sequence."""
        devices, users, grants = [], [], []
        for lister, out in ((self.store.list_devices, devices), (self.store.list_users, users),
                            (self.store.list_grants, grants)):
            cursor = ""
            while True:
                page, cursor = yield lister(cursor=cursor, limit=1000)
                out.extend(page)
                if not cursor:
                    break
        follows, registered = yield self.store.interest()
        head = yield self.store.head_seq()
        return devices, users, grants, (set(follows), set(registered)), head

    def differences(self, node_id, node, devices, users, grants, interest, head):
        """How a node differs from the records it should hold (docs/consistency.md,
        "What each node holds"): the devices homed on it and those it follows, the
        grants on them, the users registered on it."""
        follows, registered = interest
        devices = [d for d in devices
                   if d.home_node == node_id or (node_id, d.device_id) in follows]
        kept = {d.device_id for d in devices}
        users = [u for u in users if (node_id, u.username) in registered]
        grants = [g for g in grants if g.device_id in kept]
        problems = []
        held = {d.device_id: d for d in node.store.devices()}
        for d in devices:
            h = held.pop(d.device_id, None)
            if h is None:
                problems.append(f"{node_id}: missing device {d.device_id}")
                continue
            for field in ("name", "kind", "channels", "home_node", "enabled", "version"):
                if getattr(h, field) != getattr(d, field):
                    problems.append(f"{node_id}: {d.device_id}.{field} {getattr(h, field)!r}"
                                    f" != DB {getattr(d, field)!r}")
            want = d.verifier.stored_key if d.home_node == node_id else b""
            if bytes(h.verifier.stored_key) != bytes(want):
                problems.append(f"{node_id}: {d.device_id} verifier "
                                f"{'held' if h.verifier.stored_key else 'missing'} "
                                f"(home {d.home_node})")
        problems += [f"{node_id}: extra device {k}" for k in held]
        held_users = {u.username: (list(u.groups), bool(u.enabled), u.version)
                      for u in node.store.users()}
        db_users = {u.username: (list(u.groups), bool(u.enabled), u.version) for u in users}
        if held_users != db_users:
            problems.append(f"{node_id}: users {held_users} != DB {db_users}")
        held_grants = {(g.principal, g.device_id): int(g.actions) for g in node.store.grants()}
        db_grants = {(g.principal, g.device_id): int(g.actions) for g in grants}
        if held_grants != db_grants:
            problems.append(f"{node_id}: grants differ: node only "
                            f"{sorted(set(held_grants.items()) - set(db_grants.items()))},"
                            f" DB only {sorted(set(db_grants.items()) - set(held_grants.items()))}")
        if node.central.applier.applied_seq != head:
            problems.append(f"{node_id}: applied {node.central.applier.applied_seq}"
                            f" != head {head}")
        if node.central.outbox.pending:
            problems.append(f"{node_id}: outbox holds {list(node.central.outbox.pending)}")
        if node_id not in self.cms.sessions:
            problems.append(f"{node_id}: not registered at CMS")
        return problems

    @defer.inlineCallbacks
    def wait_for_quiescence(self, timeout=30.0):
        started = time.monotonic()
        while True:
            devices, users, grants, interest, head = yield self.expected()
            problems = []
            for node_id, node in sorted(self.p.nodes.items()):
                problems += self.differences(node_id, node, devices, users, grants, interest,
                                             head)
            if not problems:
                return devices
            if time.monotonic() - started > timeout:
                self.fail_with_seed("nodes differ from the DB after the run:\n  "
                                    + "\n  ".join(problems[:30]))
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def check_acknowledged_pu_changes(self, devices):
        """Every PU change CMS acknowledged as applied is in the DB: the change log
        entry it names is the node's write of that device, and the device's final name
        is the one of the latest accepted rename, whoever made it."""
        db = {d.device_id: d for d in devices}
        applied = [(n, b, a) for n, b, a in self.recorder.acks if a.applied]
        self.assertEqual(len({a.seq for _, _, a in applied}), len(applied))
        for node_id, body, ack in applied:
            self.assertGreater(ack.seq, 0)
            (entry,), _ = yield self.store.changes_after(ack.seq - 1, 1)
            if (entry.seq, entry.key, entry.origin) != (ack.seq, body.device_id, node_id):
                self.fail_with_seed(f"acknowledged change of {body.device_id} by {node_id} "
                                    f"is not log entry {ack.seq}: {entry}")
            if body.change == ChangeKind.NAME:
                name = {kv.key: kv.value for kv in body.items}["name"]
                self.names.setdefault(body.device_id, []).append((ack.seq, name))
            elif body.device_id in db:
                settings = yield self.store.get_record_settings(body.device_id, 0)
                config = (settings or {}).get("reported", {}).get("config", {})
                for kv in body.items:
                    if config.get(kv.key) != kv.value:
                        self.fail_with_seed(f"acknowledged config {kv.key}={kv.value} of "
                                            f"{body.device_id} (seq {ack.seq}) not in the DB")
        for device_id, d in db.items():
            writes = sorted(self.names.get(device_id, []))
            if writes and writes[-1][1] != d.name:
                self.fail_with_seed(f"{device_id} is named {d.name!r} in the DB; the last "
                                    f"accepted rename was {writes[-1]}")
        return applied

    # -- the test

    @defer.inlineCallbacks
    def test_random_interleaving_loses_no_change(self):
        rng = self.rng
        steps = [(self.admin_step, 40), (self.pu_step, 35), (self.cu_step, 8),
                 (self.link_drop, 8),
                 (self.node_restart, 3), (self.cms_restart, 2), (self.pause, 12)]
        actions, weights = zip(*steps, strict=True)
        for i in range(self.steps):
            action = rng.choices(actions, weights)[0]
            try:
                yield action()
            except Exception as e:
                self.fail_with_seed(f"step {i} ({action.__name__}) failed: {e!r}")
            if rng.random() < 0.3:
                yield self.pause()
        # Quiet: the nodes reconnect, the outboxes drain, every node reaches the head.
        yield wait_until(reactor, lambda: set(self.cms.sessions) == set(NODES), timeout=30,
                         what=f"the nodes to reconnect (VSS_SYNC_SEED={self.seed})")
        devices = yield self.wait_for_quiescence()
        applied = yield self.check_acknowledged_pu_changes(devices)
        print(f"steps: {sorted(self.stats.items())}; PU changes acknowledged "
              f"{len(self.recorder.acks)}, applied {len(applied)}")
        # The run did exercise what it is meant to.
        self.assertGreater(self.stats.get("admin-rename", 0) + self.stats.get("admin-add", 0), 0)
        self.assertGreater(self.stats.get("cu-login", 0), 0)


class SyncRulesTests(unittest.TestCase):
    """The conflict rule (a PU change based on an older version of the device than the
    DB holds crossed a central change in flight: CMS refuses it, applied False, and
    passive sync corrects the node), and the failure cases one by one: a lost ack, a
    missed notify, a dead link, a node left behind, a compacted log."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        self.work = self.p.workdir
        self.cms = self.p.cms.cms
        self.store = self.p.cms.store
        self.cms.publish((yield self.store.upsert_device(
            "cam", "Gate", 1, 1, "node-a", records.verifier("cam-secret", iterations=1))))
        self.node = yield self.p.start_node("node-a")
        self.other = yield self.p.start_node("node-b")
        # node-b follows cam (a user registered there may see it)
        self.cms.publish((yield self.store.follow_devices("node-b", ["cam"])))
        yield wait_until(reactor, lambda: self.other.store.get_device("cam") is not None,
                         what="node-b to hold cam")

    def sync_change(self, base_version, name):
        return SyncChange(node_id="node-a", change_id=0, device_id="cam", channel=0,
                          change=int(ChangeKind.NAME), timestamp=1,
                          items=[KV(key="name", value=name)], base_version=base_version)

    @defer.inlineCallbacks
    def test_a_change_that_crossed_a_central_change_is_refused(self):
        held = self.node.store.get_device("cam")
        # The central rename is committed but the node has not applied it yet.
        changes = yield self.store.update_device_fields("cam", name="Central name")
        ack = (yield self.node.central._request(
            MsgType.SYNC_CHANGE, self.sync_change(held.version, "PU name"))).body
        self.assertFalse(ack.applied)
        self.assertEqual(ack.seq, 0)
        self.assertEqual(self.cms.counters["stale_changes"], 1)
        self.assertEqual((yield self.store.get_device("cam")).name, "Central name")
        self.cms.publish(changes)
        for node in (self.node, self.other):
            yield wait_until(reactor, lambda n=node: n.store.get_device("cam").name
                             == "Central name", what="passive sync to correct the node")

    @defer.inlineCallbacks
    def test_a_change_based_on_the_current_version_is_applied_in_commit_order(self):
        held = self.node.store.get_device("cam")
        ack = (yield self.node.central._request(
            MsgType.SYNC_CHANGE, self.sync_change(held.version, "PU name"))).body
        self.assertTrue(ack.applied)
        record = yield self.store.get_device("cam")
        self.assertEqual((record.name, record.version), ("PU name", held.version + 1))
        yield wait_until(reactor, lambda: self.other.store.get_device("cam").name == "PU name")
        # A central change after it wins, being committed later.
        self.cms.publish((yield self.store.update_device_fields("cam", name="Later")))
        yield wait_until(reactor, lambda: self.node.store.get_device("cam").name == "Later")

    @defer.inlineCallbacks
    def test_successive_pu_changes_of_one_device_are_all_applied(self):
        """The outbox sends a device's changes one after another; each is based on the
        version the previous one produced, so none is refused as stale."""
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        for i in range(20):
            pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                device_id="cam", channel=0, change=int(ChangeKind.NAME), timestamp=i,
                items=[KV(key="name", value=f"name {i}")]))
        yield wait_until(reactor, lambda: self.cms.counters["sync_changes"] >= 20
                         and not self.node.central.outbox.pending, what="the outbox to drain")
        self.assertEqual(self.cms.counters["stale_changes"], 0)
        self.assertEqual((yield self.store.get_device("cam")).name, "name 19")
        yield wait_until(reactor, lambda: self.other.store.get_device("cam").name == "name 19")

    @defer.inlineCallbacks
    def test_successive_pu_changes_after_a_missed_notify_are_all_applied(self):
        """The node missed a notify (a central change written but its notify lost): the
        next notify shows a gap and the node fetches. The ack of a PU change may then
        arrive before the node holds the version that change produced; the next change
        waits for it instead of going out with a stale base and being refused."""
        self.cms.publish((yield self.store.upsert_device(
            "cam-2", "Other", 1, 1, "node-b", records.verifier("x", iterations=1))))
        self.cms.publish((yield self.store.follow_devices("node-a", ["cam-2"])))
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        for i in range(10):
            # A change whose notify never reaches the nodes: each next notify has a gap.
            yield self.store.update_device_fields("cam-2", name=f"unpublished {i}")
            for j in range(2):
                pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                    device_id="cam", channel=0, change=int(ChangeKind.NAME), timestamp=i,
                    items=[KV(key="name", value=f"name {i}.{j}")]))
            yield wait_until(reactor, lambda n=i: self.cms.counters["sync_changes"] >= 2 * n + 2
                             and not self.node.central.outbox.pending)
        self.assertEqual(self.cms.counters["stale_changes"], 0)
        self.assertEqual((yield self.store.get_device("cam")).name, "name 9.1")
        head = yield self.store.head_seq()
        yield wait_until(reactor, lambda: self.node.central.applier.applied_seq == head)
        self.assertEqual(self.node.store.get_device("cam-2").name, "unpublished 9")

    @defer.inlineCallbacks
    def test_a_change_whose_ack_was_lost_is_not_applied_twice(self):
        """CMS applied a PU change but the link dropped before its ack arrived; an admin
        renames the device meanwhile. The node resends the change when it reconnects:
        it carries the base version of its first sending, so CMS refuses it and the
        admin's later name stays."""
        link = self.node.central
        request = link._request
        dropped = []

        def lose_the_ack(type, body, timeout=None):
            d = request(type, body, timeout)
            if type == MsgType.SYNC_CHANGE and not dropped:
                dropped.append(body)

                def lost(msg):
                    link.link.transport.abortConnection()
                    raise VssError(ResultCode.SESSION_CLOSED, "link lost")

                d.addCallback(lost)
            return d

        link._request = lose_the_ack
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id="cam", channel=0, change=int(ChangeKind.NAME), timestamp=1,
            items=[KV(key="name", value="PU name")]))
        yield wait_until(reactor, lambda: dropped and "node-a" not in self.cms.sessions,
                         what="the ack to be lost")
        self.assertEqual((yield self.store.get_device("cam")).name, "PU name")
        self.assertEqual(len(link.outbox.pending), 1)
        self.cms.publish((yield self.store.update_device_fields("cam", name="Admin name")))
        yield wait_until(reactor, lambda: not link.outbox.pending and "node-a" in self.cms.sessions,
                         timeout=20, what="the resend")
        self.assertEqual(self.cms.counters["sync_changes"], 2)
        self.assertEqual(self.cms.counters["stale_changes"], 1)
        self.assertEqual((yield self.store.get_device("cam")).name, "Admin name")
        for node in (self.node, self.other):
            yield wait_until(reactor, lambda n=node: n.store.get_device("cam").name
                             == "Admin name")

    def failing_writes(self, failures, write_first=False):
        """The next ``failures`` renames CMS writes fail as a database failure does
        (DB_UNAVAILABLE; with ``write_first`` the write commits and the answer is lost,
        as when the server dies during the commit)."""
        update = self.store.update_device_fields
        left = [failures]

        @defer.inlineCallbacks
        def failing(*args, **kw):
            if left[0] > 0:
                left[0] -= 1
                if write_first:
                    yield update(*args, **kw)
                raise VssError(ResultCode.DB_UNAVAILABLE, "the CMS database failed (test)")
            return (yield update(*args, **kw))

        self.patch(self.store, "update_device_fields", failing)
        self.node.central._retry_delay = 0.05
        self.patch(cmslink, "RETRY_FIRST", 0.05)
        return left

    def rename_by_pu(self, pu, *names):
        for name in names:
            pu.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                device_id="cam", channel=0, change=int(ChangeKind.NAME), timestamp=1,
                items=[KV(key="name", value=name)]))

    @defer.inlineCallbacks
    def test_a_database_failure_keeps_the_change_until_it_is_written(self):
        """CMS answers DB_UNAVAILABLE (the outside test: PostgreSQL stopped, SQLite
        locked): the change stays in the outbox and is sent again until written."""
        left = self.failing_writes(3)
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        self.rename_by_pu(pu, "first", "second")
        link = self.node.central
        yield wait_until(reactor, lambda: self.cms.counters["sync_changes"] >= 5
                         and not link.outbox.pending, what="the outbox to drain")
        self.assertEqual(left[0], 0)
        self.assertEqual(link.counters["change_retries"], 3)
        self.assertEqual(link.counters["refused_changes"], 0)
        # one log entry each (a fetched entry carries the current record)
        log, _ = yield self.store.changes_after(0, 1000)
        self.assertEqual(len([c for c in log if c.origin == "node-a" and c.key == "cam"]), 2)
        self.assertEqual((yield self.store.get_device("cam")).name, "second")

    @defer.inlineCallbacks
    def test_a_change_written_while_its_answer_was_lost_is_not_lost_nor_doubled(self):
        """The database wrote the change but CMS answered DB_UNAVAILABLE: the resend is
        refused as stale (it is in the DB already), and the node, knowing its copy is
        behind, fetches before it bases the next change on it."""
        self.failing_writes(1, write_first=True)
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        self.rename_by_pu(pu, "first", "second", "third")
        link = self.node.central
        yield wait_until(reactor, lambda: self.cms.counters["sync_changes"] >= 4
                         and not link.outbox.pending, what="the outbox to drain")
        self.assertEqual(link.counters["refused_changes"], 1)
        log, _ = yield self.store.changes_after(0, 1000)
        self.assertEqual(len([c for c in log if c.origin == "node-a" and c.key == "cam"]), 3)
        self.assertEqual((yield self.store.get_device("cam")).name, "third")

    @defer.inlineCallbacks
    def test_an_internal_error_keeps_the_change(self):
        update = self.store.update_device_fields
        calls = []

        def broken_once(*args, **kw):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return update(*args, **kw)

        self.patch(self.store, "update_device_fields", broken_once)
        self.node.central._retry_delay = 0.05
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        self.rename_by_pu(pu, "kept")
        yield wait_until(reactor, lambda: self.cms.counters["sync_changes"] >= 2
                         and not self.node.central.outbox.pending)
        self.assertEqual((yield self.store.get_device("cam")).name, "kept")
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_a_refusal_for_good_drops_the_change_and_says_why(self):
        events = []
        self.patch(self.node.central, "log", Logger(observer=events.append))
        pu = yield self.p.login("node-a", Role.PU, "cam", "cam-secret")
        yield self.store.remove_device("cam")  # removed centrally, not yet published
        self.rename_by_pu(pu, "too late")
        link = self.node.central
        yield wait_until(reactor, lambda: self.cms.counters["sync_changes"] >= 1
                         and not link.outbox.pending)
        self.assertEqual(link.counters["refused_changes"], 1)
        self.assertEqual(link.counters["change_retries"], 0)
        refused = [e for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(refused), 1)
        self.assertIn("removed centrally", refused[0]["reason"])

    @defer.inlineCallbacks
    def test_a_node_sees_its_link_to_cms_go_down(self):
        """CMS's side of the link is cut (as when CMS is killed): the node notices, says
        it is not connected, and reconnects."""
        for link in list(self.cms.links):
            link.transport.abortConnection()
        yield wait_until(reactor, lambda: self.node.central.link is None,
                         what="the node to see its link go down")
        self.assertFalse(self.node.central.status()["connected"])
        yield wait_until(reactor, lambda: self.node.central.link is not None
                         and "node-a" in self.cms.sessions, what="the node to reconnect")
        self.assertTrue(self.node.central.status()["connected"])

    @defer.inlineCallbacks
    def test_a_node_behind_with_its_link_up_catches_up_by_heartbeat(self):
        """A change written without its notify reaching the nodes (the process that
        wrote it did not publish), and nothing after it: the heartbeat answers name the
        head, and a node still short of it a heartbeat later fetches."""
        yield self.store.update_device_fields("cam", name="Written, not published")
        head = yield self.store.head_seq()
        for node in (self.node, self.other):
            yield wait_until(reactor, lambda n=node: n.central.applier.applied_seq == head,
                             timeout=10, what="the heartbeat to trigger a fetch")
            self.assertEqual(node.store.get_device("cam").name, "Written, not published")

    @defer.inlineCallbacks
    def test_a_node_the_log_was_compacted_past_reloads(self):
        """The change log no longer reaches back to what a node applied: its fetch is
        answered reload_required and it reloads everything, then goes on by fetch."""
        reloads = self.node.central.counters["reloads"]
        yield self.store.update_device_fields("cam", name="Compacted away")
        yield self.store.upsert_user("carol", records.verifier("pw", iterations=1), [])
        yield self.store.register_user("node-a", "carol")
        head = yield self.store.head_seq()
        yield self.store.compact(head + 1)
        yield wait_until(reactor, lambda: self.node.central.applier.applied_seq == head,
                         timeout=10, what="the node to catch up")
        self.assertEqual(self.node.central.counters["reloads"], reloads + 1)
        self.assertEqual(self.node.store.get_device("cam").name, "Compacted away")
        self.assertIsNotNone(self.node.store.get_user("carol"))
        self.cms.publish((yield self.store.update_device_fields("cam", name="After")))
        yield wait_until(reactor, lambda: self.node.store.get_device("cam").name == "After")
        self.assertEqual(self.node.central.counters["reloads"], reloads + 1)
