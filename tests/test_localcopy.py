"""
The memory store's copy of the static data in the node's data directory
(``vss.rgm.localcopy``, through ``SyncApplier``): what a restarted node serves from
before (or without) CMS.
"""

import os
import stat

from twisted.internet import task
from twisted.trial import unittest

from vss.protocols.messages import Change, StreamCredential
from vss.rgm import localcopy
from vss.rgm.sync import SAVE_DELAY, SyncApplier
from vss.store.memory import MemoryStore

from .test_sync_random import dev, device_change, grant_change, user_change


def held(store):
    """Everything a store holds of the static data, comparable."""
    return ({d.device_id: d for d in store.devices()}, {u.username: u for u in store.users()},
            {(g.principal, g.device_id): g for g in store.grants()},
            {c.cred_id: c for c in store.credentials()})


def credential_change(seq, cred_id, version=1, revoked=0):
    from vss.protocols.messages import ChangeOp, Entity

    c = StreamCredential(cred_id=cred_id, username="alice", device_id="cam1", name="vlc",
                         created=1, expires=0, revoked=revoked, sealed=b"\x01sealed",
                         version=version)
    return Change(seq, int(Entity.CREDENTIAL), int(ChangeOp.UPSERT), cred_id, version,
                  "cms", None, None, None, c)


class LocalCopyTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clock = task.Clock()
        self.store = MemoryStore()
        self.applier = self.applier_on(self.store)

    def applier_on(self, store):
        return SyncApplier(store, "node-a", self.dir, clock=self.clock, local_copy=True)

    def restart(self):
        """The process dies (nothing written after the last flush survives) and a new
        one starts with an empty memory store."""
        store = MemoryStore()
        applier = self.applier_on(store)
        return store, applier, applier.restore()

    def reload(self, seq, devices=(), users=(), grants=(), credentials=()):
        """What CmsLink.reload does: put everything, then snapshot at the head."""
        for r in credentials:
            self.store.put_credential(r)
        for r in devices:
            self.store.put_device(r)
        for r in users:
            self.store.put_user(r)
        for r in grants:
            self.store.put_grant(r)
        self.applier.applied_seq = seq
        self.applier.save()
        self.applier.snapshot()

    def test_nothing_saved_means_reload(self):
        store, applier, seq = self.restart()
        self.assertIsNone(seq)
        self.assertIsNone(store.get_meta("applied_seq"))

    def test_snapshot_and_journal_come_back_after_a_restart(self):
        self.reload(10, devices=[dev("cam1", 1), dev("cam2", 3, home="node-b", secret=False)],
                    users=[user_change(0, "alice", 1).user],
                    grants=[grant_change(0, "user:alice", "cam1").grant],
                    credentials=[credential_change(0, "c1").credential])
        self.applier.apply([device_change(11, dev("cam1", 2, name="renamed")),
                            user_change(12, "bob", 1),
                            grant_change(13, "user:bob", "cam2"),
                            device_change(14, key="cam2", version=4, delete=True),
                            grant_change(15, "user:alice", "cam1", delete=True),
                            credential_change(16, "c1", version=2, revoked=5),
                            credential_change(17, "c2")])
        self.clock.advance(SAVE_DELAY)
        store, applier, seq = self.restart()
        self.assertEqual(seq, 17)
        self.assertEqual(store.get_credential("c1").revoked, 5)
        self.assertEqual(len(store.credentials()), 2)
        self.assertEqual(held(store), held(self.store))
        self.assertEqual(store.get_device("cam1").name, "renamed")
        self.assertTrue(store.get_device("cam1").verifier.stored_key)
        self.assertEqual(store.get_meta("applied_seq"), 17)

    def test_changes_not_flushed_yet_are_fetched_again(self):
        # sync.json and the journal are written together: a crash before the flush
        # loses both, and the node fetches from the older sequence (harmless).
        self.reload(10, devices=[dev("cam1", 1)])
        self.applier.apply([device_change(11, dev("cam1", 2, name="late"))])
        store, applier, seq = self.restart()  # before SAVE_DELAY: nothing written
        self.assertEqual(seq, 10)
        self.assertEqual(store.get_device("cam1").version, 1)

    def test_a_torn_journal_tail_is_ignored(self):
        self.reload(10, devices=[dev("cam1", 1)])
        self.applier.apply([device_change(11, dev("cam1", 2, name="kept"))])
        self.clock.advance(SAVE_DELAY)
        self.applier.apply([device_change(12, dev("cam1", 3, name="torn"))])
        self.applier.local.flush()
        with open(os.path.join(self.dir, localcopy.JOURNAL), "r+b") as f:
            f.truncate(os.path.getsize(f.name) - 7)
        store, applier, seq = self.restart()
        self.assertEqual(seq, 11)  # sync.json says 11: nothing past it is trusted
        self.assertEqual(store.get_device("cam1").name, "kept")

    def test_an_unreadable_snapshot_means_reload(self):
        self.reload(10, devices=[dev("cam1", 1)])
        with open(os.path.join(self.dir, localcopy.SNAPSHOT), "r+b") as f:
            f.truncate(20)
        store, applier, seq = self.restart()
        self.assertIsNone(seq)
        self.assertEqual(store.devices(), [])

    def test_files_are_private_whatever_the_umask(self):
        old = os.umask(0o022)
        try:
            self.reload(1, devices=[dev("cam1", 1)])
            self.applier.apply([device_change(2, dev("cam1", 2))])
            self.clock.advance(SAVE_DELAY)
        finally:
            os.umask(old)
        for name in (localcopy.SNAPSHOT, localcopy.JOURNAL):
            mode = stat.S_IMODE(os.stat(os.path.join(self.dir, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    def test_the_journal_is_folded_into_a_snapshot_at_a_bounded_cost(self):
        self.patch(localcopy, "MIN_COMPACT", 50)
        self.patch(__import__("vss.rgm.sync", fromlist=["x"]), "MIN_COMPACT", 50)
        self.reload(0, devices=[dev(f"cam{i}", 1) for i in range(100)])
        writes = []
        original = self.applier.local.write_snapshot
        self.applier.local.write_snapshot = lambda *a: writes.append(1) or original(*a)
        seq = 0
        for _ in range(100):
            batch = []
            for _i in range(10):
                seq += 1
                batch.append(device_change(seq, dev(f"cam{(seq * 7) % 100}", 1 + seq)))
            self.applier.apply(batch)
            self.clock.advance(SAVE_DELAY)
        # 1,000 changes over a copy of 100 records: a snapshot every 100 changes or so,
        # never one per change.
        self.assertGreaterEqual(len(writes), 5)
        self.assertLessEqual(len(writes), 12)
        self.assertLess(os.path.getsize(os.path.join(self.dir, localcopy.JOURNAL)),
                        120 * 200)
        store, applier, restored = self.restart()
        self.assertEqual(restored, 1000)
        self.assertEqual(held(store), held(self.store))

    def test_replaying_calls_no_listener(self):
        self.reload(1, devices=[dev("cam1", 1)])
        self.applier.apply([device_change(2, dev("cam1", 2)), user_change(3, "alice", 1)])
        self.clock.advance(SAVE_DELAY)
        seen = []
        store = MemoryStore()
        applier = SyncApplier(store, "node-a", self.dir, clock=self.clock, local_copy=True,
                              on_device_change=lambda *a: seen.append(a),
                              on_user_change=lambda *a: seen.append(a))
        self.assertEqual(applier.restore(), 3)
        self.assertEqual(seen, [])
        applier.apply([device_change(4, dev("cam1", 3))])
        self.assertEqual(len(seen), 1)

    def test_the_configuration_and_presets_of_own_pus_come_back(self):
        from vss.protocols.messages import ChangeKind
        from vss.rgm import settings

        self.reload(1, devices=[dev("cam1", 1), dev("cam2", 1, home="node-b", secret=False)])
        for device_id, channel, kind, items in (
                ("cam1", 0, ChangeKind.CONFIG, {"video.fps": "15", "_version": "2"}),
                ("cam1", 0, ChangeKind.CONFIG, {"osd.text": "gate", "_version": "3"}),
                ("cam1", 0, ChangeKind.PRESET, {"1": "door", "2": "yard"}),
                ("cam1", 2, ChangeKind.PRESET, {"7": "lane"})):
            settings.apply(self.store, device_id, channel, kind, items)
            self.applier.note_setting(device_id, channel, kind, items)
        self.clock.advance(SAVE_DELAY)
        expected = {"config": {"video.fps": "15", "osd.text": "gate"}, "config_version": 3,
                    "presets": {"1": "door", "2": "yard"}, "presets@2": {"7": "lane"}}
        store, applier, seq = self.restart()
        self.assertEqual(store.get_state("cam1"), expected)
        # ...and through a snapshot too (only the node's own PUs are kept)
        self.store.set_state("cam2", config={"x": "1"})
        self.applier.snapshot()
        store, applier, seq = self.restart()
        self.assertEqual(store.get_state("cam1"), expected)
        self.assertEqual(store.get_state("cam2"), {})
