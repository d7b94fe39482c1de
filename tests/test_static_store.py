"""
Conformance tests of ``IStaticStore``: one mixin, run against every backend.

SQLite runs always (a file in a temporary directory). PostgreSQL runs when
``VSS_TEST_POSTGRES_DSN`` is set (e.g. ``host=127.0.0.1 port=5432 dbname=test
user=postgres``); each test then works in a freshly created schema that is dropped
afterwards, so concurrent runs never collide.
"""

import os
import secrets

from twisted.internet import task
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vss.cms.store import grant_key, hash_token, make_static_store, split_grant_key
from vss.cms.store.schema import CURRENT_VERSION, MIGRATIONS
from vss.cms.store.tokens import (
    ACTIVE,
    EXPIRED,
    REVOKED,
    AdminToken,
    IAdminTokenStore,
    LastTokenError,
)
from vss.interfaces import IStaticStore
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    ChangeOp,
    DeviceRecord,
    Entity,
    PuKind,
    StreamCredential,
    Verifier,
)

PG_DSN = os.environ.get("VSS_TEST_POSTGRES_DSN")

V1 = Verifier(b"salt-1", 4096, b"stored-1", b"server-1")
V2 = Verifier(b"salt-2", 8192, b"stored-2", b"server-2")
NOW = 1_700_000_000.25

#: The schema every migration path must arrive at: tables and their columns in order,
#: and the secondary indexes.
CURRENT_SCHEMA = {
    "tables": {
        "admin_tokens": [
            "id", "token_hash", "name", "created", "expires", "last_used", "revoked",
        ],
        "change_log": ["seq", "entity", "op", "key", "version", "origin", "at"],
        "devices": [
            "device_id", "name", "kind", "channels", "home_node", "salt", "iterations",
            "stored_key", "server_key", "source_url", "enabled", "version",
        ],
        "audit_log": [
            "id", "at", "kind", "actor", "source", "node_id", "action", "target", "status",
            "detail_json",
        ],
        "failover_moves": ["device_id", "from_node", "moved_at"],
        "event_acks": ["node_id", "seq", "device_id", "acked_by", "acked_at", "comment"],
        "events": [
            "node_id", "seq", "device_id", "channel", "type", "phase", "severity", "pu_time",
            "node_time", "items_json",
        ],
        "grants": ["principal", "device_id", "actions", "version", "expires"],
        "meta": ["key", "value"],
        "node_devices": ["node_id", "device_id"],
        "node_users": ["node_id", "username"],
        "operators": [
            "username", "verifier", "role", "enabled", "created", "changed", "last_login",
            "version",
        ],
        "nodes": [
            "node_id", "signalling", "media", "capacity", "state", "load_json",
            "applied_seq", "last_seen", "version",
        ],
        "record_settings": ["device_id", "channel", "settings_json"],
        "schema_version": ["version", "name", "applied_at"],
        "stream_credentials": [
            "cred_id", "username", "device_id", "name", "created", "expires", "revoked",
            "sealed", "version",
        ],
        "users": [
            "username", "salt", "iterations", "stored_key", "server_key", "groups_json",
            "enabled", "version",
        ],
    },
    "indexes": [
        "admin_tokens_hash", "admin_tokens_name", "audit_log_actor", "audit_log_kind",
        "audit_log_target", "devices_home_node", "events_device", "events_time",
        "failover_moves_node", "grants_device", "node_devices_device", "node_users_user",
        "stream_credentials_device", "stream_credentials_user",
    ],
    # a grant may name a wall (cu:ACCOUNT) as well as a device: no reference (migration 9)
    "references": [
        "record_settings.device_id -> devices.device_id",
        "stream_credentials.device_id -> devices.device_id",
    ],
}


def device(i, home="node-a"):
    return DeviceRecord(
        f"cam-{i:05d}", f"Camera {i}", PuKind.IPC, 1, home, V1, "", True, 0
    )


class StaticStoreConformance:
    """Every ``IStaticStore`` backend passes these. Subclasses define ``new_store()``:
    an unopened store on a fresh, empty database, cleaned up by the test."""

    def new_store(self):
        raise NotImplementedError

    @inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.store = self.new_store()
        yield self.store.open()
        self.seqs = []

    @inlineCallbacks
    def logged(self, d):
        """Await a mutating call, check its changes and remember their sequences."""
        changes = yield d
        self.assertIsInstance(changes, list)
        self.seqs.extend(c.seq for c in changes)
        return changes

    @inlineCallbacks
    def assertVssError(self, d, code):
        exc = yield self.assertFailure(d, VssError)
        self.assertEqual(exc.code, code)

    # -- lifecycle and schema ---------------------------------------------------

    def test_interface(self):
        self.assertTrue(verifyObject(IStaticStore, self.store))

    @inlineCallbacks
    def test_schema_is_current(self):
        self.assertEqual((yield self.store.schema_version()), CURRENT_VERSION)
        self.assertEqual((yield self.store.describe_schema()), CURRENT_SCHEMA)

    @inlineCallbacks
    def test_migrate_step_by_step(self):
        """An empty database migrated one step at a time reaches the current schema;
        each step records its version and changes the schema (tables added, columns of
        a table or its references changed) without dropping a table."""
        store = self.new_store()
        seen = {}
        for migration in MIGRATIONS:
            version = yield store.open(target_version=migration.version)
            self.assertEqual(version, migration.version)
            self.assertEqual((yield store.schema_version()), migration.version)
            schema = yield store.describe_schema()
            tables = schema["tables"]
            self.assertTrue(set(seen.get("tables", {})) <= set(tables),
                            (migration.version, seen, tables))
            self.assertNotEqual(seen, {"tables": tables, "references": schema["references"]},
                                migration.version)
            seen = {"tables": tables, "references": schema["references"]}
        self.assertEqual((yield store.describe_schema()), CURRENT_SCHEMA)
        yield store.close()

    @inlineCallbacks
    def test_open_twice_is_harmless(self):
        yield self.store.upsert_device("cam-1", "one", PuKind.IPC, 1, "node-a", V1)
        self.assertEqual((yield self.store.open()), CURRENT_VERSION)
        yield self.store.close()
        again = self.reopen()
        self.assertEqual((yield again.open()), CURRENT_VERSION)
        self.assertEqual((yield again.schema_version()), CURRENT_VERSION)
        self.assertEqual((yield again.describe_schema()), CURRENT_SCHEMA)
        rec = yield again.get_device("cam-1")
        self.assertEqual((rec.name, rec.version), ("one", 1))
        self.assertEqual((yield again.head_seq()), 1)
        self.store = again

    # -- users ------------------------------------------------------------------

    @inlineCallbacks
    def test_user_upsert_bumps_version(self):
        (c1,) = yield self.logged(self.store.upsert_user("alice", V1, ["ops"]))
        self.assertEqual((c1.entity, c1.op, c1.key, c1.version, c1.origin),
                         (Entity.USER, ChangeOp.UPSERT, "alice", 1, "mms"))
        self.assertEqual(c1.user.groups, ["ops"])
        self.assertIsNone(c1.device)
        self.assertIsNone(c1.grant)
        (c2,) = yield self.logged(
            self.store.upsert_user("alice", V2, ["ops", "night"], enabled=False, origin="admin")
        )
        self.assertEqual((c2.version, c2.origin, c2.user.version), (2, "admin", 2))
        user = yield self.store.get_user("alice")
        self.assertEqual(user, c2.user)
        self.assertEqual(user.verifier, V2)
        self.assertEqual(user.groups, ["ops", "night"])
        self.assertFalse(user.enabled)
        self.assertIsNone((yield self.store.get_user("bob")))

    @inlineCallbacks
    def test_remove_user_deletes_their_grants(self):
        yield self.logged(self.store.upsert_user("alice", V1, ["ops"]))
        for i in (1, 2):
            yield self.logged(
                self.store.upsert_device(f"cam-{i}", "c", PuKind.IPC, 1, "node-a", V1)
            )
            yield self.logged(self.store.set_grant("user:alice", f"cam-{i}", Action.VIEW))
        yield self.logged(self.store.set_grant("group:ops", "cam-1", Action.PTZ))
        changes = yield self.logged(self.store.remove_user("alice"))
        self.assertEqual(
            [(c.entity, c.op, c.key) for c in changes],
            [
                (Entity.GRANT, ChangeOp.DELETE, "user:alice|cam-1"),
                (Entity.GRANT, ChangeOp.DELETE, "user:alice|cam-2"),
                (Entity.USER, ChangeOp.DELETE, "alice"),
            ],
        )
        self.assertEqual([c.version for c in changes], [2, 2, 2])
        self.assertTrue(all(c.grant is None and c.user is None for c in changes))
        grants, _ = yield self.store.list_grants()
        self.assertEqual([(g.principal, g.device_id) for g in grants], [("group:ops", "cam-1")])
        self.assertEqual((yield self.store.remove_user("alice")), [])
        self.assertContiguous()

    # -- devices ----------------------------------------------------------------

    @inlineCallbacks
    def test_what_each_node_holds(self):
        """A node holds its own devices, the devices it follows and the grants on them,
        and the users registered there; following and registering log the records as
        they are, for that node only (origin follow:<node>); a move hands the new home
        the grants on the device and keeps the old home following it."""
        yield self.logged(self.store.bulk_upsert_devices(
            [device(1), device(2, "node-b"), device(3, "node-b")]))
        yield self.logged(self.store.upsert_user("ann", V1, ["ops"]))
        yield self.logged(self.store.set_grant("group:ops", "cam-00002", 3))
        yield self.logged(self.store.set_grant("user:bob", "cam-00003", 1))
        ids = lambda page: [r.device_id for r in page[0]]  # noqa: E731
        self.assertEqual(ids((yield self.store.list_devices(held_by="node-a"))), ["cam-00001"])
        changes = yield self.logged(self.store.register_user("node-a", "ann"))
        self.assertEqual([(c.entity, c.key, c.origin) for c in changes], [
            (Entity.USER, "ann", "follow:node-a"),
            (Entity.DEVICE, "cam-00002", "follow:node-a"),
            (Entity.GRANT, "group:ops|cam-00002", "follow:node-a")])
        self.assertEqual((yield self.logged(self.store.register_user("node-a", "ann"))), [])
        self.assertEqual(ids((yield self.store.list_devices(held_by="node-a"))),
                         ["cam-00001", "cam-00002"])
        users, _ = yield self.store.list_users(held_by="node-a")
        self.assertEqual([u.username for u in users], ["ann"])
        self.assertEqual((yield self.store.list_users(held_by="node-b")), ([], ""))
        grants, _ = yield self.store.list_grants(held_by="node-a")
        self.assertEqual([(g.principal, g.device_id) for g in grants],
                         [("group:ops", "cam-00002")])
        changes = yield self.logged(self.store.update_device_fields("cam-00003",
                                                                    home_node="node-a"))
        self.assertEqual([(c.entity, c.key, c.origin) for c in changes], [
            (Entity.DEVICE, "cam-00003", "mms"),
            (Entity.GRANT, "user:bob|cam-00003", "follow:node-a")])
        self.assertEqual(ids((yield self.store.list_devices(held_by="node-b"))),
                         ["cam-00002", "cam-00003"])
        yield self.logged(self.store.remove_device("cam-00002"))
        follows, registered = yield self.store.interest()
        self.assertEqual(sorted(follows), [("node-a", "cam-00002"), ("node-b", "cam-00002"),
                                           ("node-b", "cam-00003")])
        self.assertEqual(registered, [("node-a", "ann")])

    @inlineCallbacks
    def test_held_grants_page_through_devices_with_none_or_many(self):
        """The grants a node holds, paged at every size: devices without grants,
        devices with more grants than a page, own and followed devices, and grants on
        devices the node does not hold left out; no grant twice, none missed."""
        s = self.store
        yield s.bulk_upsert_devices([device(i, "node-a" if i % 3 else "node-b")
                                     for i in range(12)])
        yield s.follow_devices("node-a", ["cam-00003"])  # node-b's, followed
        expected = []
        for i in range(12):
            n = (0, 1, 3, 2)[i % 4]  # none, one, three or two grants
            for p in range(n):
                yield s.set_grant(f"user:u{p}", f"cam-{i:05d}", Action.VIEW)
                if i % 3 or i == 3:
                    expected.append((f"cam-{i:05d}", f"user:u{p}"))
        expected.sort()
        self.assertEqual(len(expected), 14)
        for limit in (1, 2, 3, 4, 5, 100):
            got, cursor, pages = [], "", 0
            while True:
                page, cursor = yield s.list_grants(cursor=cursor, limit=limit,
                                                   held_by="node-a")
                pages += 1
                self.assertLessEqual(len(page), limit)
                got += [(g.device_id, g.principal) for g in page]
                if not cursor:
                    break
                self.assertLess(pages, 100)
            self.assertEqual(got, expected, f"limit {limit}")

    @inlineCallbacks
    def test_device_upsert_and_update(self):
        (c1,) = yield self.logged(self.store.upsert_device(
            "cam-1", "Gate", PuKind.DVS, 4, "node-a", V1, source_url="rtsp://x/1"))
        self.assertEqual((c1.entity, c1.op, c1.key, c1.version), (Entity.DEVICE, ChangeOp.UPSERT,
                                                                  "cam-1", 1))
        self.assertEqual(c1.device, (yield self.store.get_device("cam-1")))
        (c2,) = yield self.logged(
            self.store.update_device_fields("cam-1", home_node="node-b", enabled=False)
        )
        rec = yield self.store.get_device("cam-1")
        self.assertEqual(rec, c2.device)
        self.assertEqual(
            (rec.name, rec.kind, rec.channels, rec.home_node, rec.enabled, rec.version,
             rec.source_url, rec.verifier),
            ("Gate", PuKind.DVS, 4, "node-b", False, 2, "rtsp://x/1", V1),
        )
        (c3,) = yield self.logged(self.store.upsert_device(
            "cam-1", "Gate 2", PuKind.DVS, 8, "node-b", V2, origin="node-b"))
        self.assertEqual((c3.version, c3.origin, c3.device.channels), (3, "node-b", 8))
        self.assertIsNone((yield self.store.get_device("cam-2")))
        self.assertContiguous()

    @inlineCallbacks
    def test_move_devices_in_one_transaction(self):
        """A dead node's PUs re-homed: each device's record with a higher version (the
        home epoch) and its grants announced to the new home; a device removed meanwhile
        is skipped."""
        for i in range(3):
            yield self.store.upsert_device(f"cam-{i}", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.store.set_grant("user:ann", "cam-1", Action.VIEW)
        changes = yield self.logged(self.store.move_devices(
            [("cam-0", "node-b"), ("cam-1", "node-c"), ("gone", "node-b")], origin="cms"))
        devices = [c for c in changes if c.entity == Entity.DEVICE]
        self.assertEqual([(c.key, c.device.home_node, c.device.version) for c in devices],
                         [("cam-0", "node-b", 2), ("cam-1", "node-c", 2)])
        self.assertEqual(devices[0].device.verifier, V1)  # the first-registration info
        grants = [c for c in changes if c.entity == Entity.GRANT]
        self.assertEqual([(c.key, c.origin) for c in grants],
                         [("user:ann|cam-1", "follow:node-c")])
        self.assertEqual((yield self.store.get_device("cam-2")).home_node, "node-a")
        self.assertContiguous()

    @inlineCallbacks
    def test_failover_moves_remember_the_first_home_that_died(self):
        """A move away from a node that is down is remembered (the first such home), in
        the database; an operator's move or the move back forgets it; so does removing
        the device."""
        for i in range(3):
            yield self.store.upsert_device(f"cam-{i}", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.logged(self.store.move_devices(
            [("cam-0", "node-b"), ("cam-1", "node-b"), ("cam-2", "node-c")],
            failed_node="node-a"))
        self.assertEqual((yield self.store.failover_moves()),
                         {"cam-0": "node-a", "cam-1": "node-a", "cam-2": "node-a"})
        # node-b dies too: cam-0 goes on to node-c, still to go back to node-a
        yield self.logged(self.store.move_devices([("cam-0", "node-c")], failed_node="node-b"))
        self.assertEqual((yield self.store.failover_moves("node-a"))["cam-0"], "node-a")
        self.assertEqual((yield self.store.failover_moves("node-b")), {})
        # an operator moves cam-1; cam-2 is given back; cam-0 is removed
        yield self.logged(self.store.update_device_fields("cam-1", home_node="node-d"))
        yield self.logged(self.store.move_devices([("cam-2", "node-a")]))
        self.assertEqual((yield self.store.failover_moves()), {"cam-0": "node-a"})
        yield self.logged(self.store.remove_device("cam-0"))
        self.assertEqual((yield self.store.failover_moves()), {})
        self.assertContiguous()

    @inlineCallbacks
    def test_update_device_errors(self):
        yield self.assertVssError(
            self.store.update_device_fields("nope", name="x"), ResultCode.UNKNOWN_DEVICE
        )
        yield self.store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.assertVssError(
            self.store.update_device_fields("cam-1", kind=2), ResultCode.INVALID_ARGUMENT
        )
        self.assertEqual((yield self.store.head_seq()), 1)

    @inlineCallbacks
    def test_remove_device_deletes_grants_and_settings(self):
        yield self.logged(self.store.upsert_device("cam-1", "c", PuKind.IPC, 2, "node-a", V1))
        yield self.logged(self.store.upsert_device("cam-2", "c", PuKind.IPC, 1, "node-a", V1))
        yield self.logged(self.store.set_grant("group:ops", "cam-1", Action.VIEW))
        yield self.logged(self.store.set_grant("user:bob", "cam-1", Action.VIEW | Action.PTZ))
        yield self.logged(self.store.set_grant("user:bob", "cam-2", Action.VIEW))
        yield self.logged(self.store.set_record_settings("cam-1", 0, {"mode": 1}))
        changes = yield self.logged(self.store.remove_device("cam-1"))
        self.assertEqual(
            [(c.entity, c.op, c.key, c.version) for c in changes],
            [
                (Entity.GRANT, ChangeOp.DELETE, "group:ops|cam-1", 2),
                (Entity.GRANT, ChangeOp.DELETE, "user:bob|cam-1", 2),
                (Entity.DEVICE, ChangeOp.DELETE, "cam-1", 3),
            ],
        )
        self.assertIsNone((yield self.store.get_device("cam-1")))
        self.assertIsNone((yield self.store.get_record_settings("cam-1", 0)))
        grants, _ = yield self.store.list_grants()
        self.assertEqual([(g.principal, g.device_id) for g in grants], [("user:bob", "cam-2")])
        self.assertEqual((yield self.store.remove_device("cam-1")), [])
        # a device created again starts a new life at version 1, with no settings
        (c,) = yield self.logged(
            self.store.upsert_device("cam-1", "c", PuKind.IPC, 2, "node-a", V1))
        self.assertEqual(c.version, 1)
        self.assertIsNone((yield self.store.get_record_settings("cam-1", 0)))
        self.assertContiguous()

    # -- grants -----------------------------------------------------------------

    @inlineCallbacks
    def test_grants(self):
        yield self.store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.store.upsert_device("cam-2", "c", PuKind.IPC, 1, "node-a", V1)
        (c1,) = yield self.logged(self.store.set_grant("user:alice", "cam-1", Action.VIEW))
        self.assertEqual((c1.entity, c1.key, c1.version), (Entity.GRANT, "user:alice|cam-1", 1))
        self.assertEqual(split_grant_key(c1.key), ("user:alice", "cam-1"))
        (c2,) = yield self.logged(self.store.set_grant("user:alice", "cam-1", 0x0F))
        self.assertEqual((c2.version, c2.grant.actions), (2, 0x0F))
        yield self.store.set_grant("group:ops", "cam-2", Action.PTZ)
        yield self.store.set_grant("user:alice", "cam-2", Action.RECORD)
        by_device, _ = yield self.store.list_grants(device_id="cam-2")
        self.assertEqual([g.principal for g in by_device], ["group:ops", "user:alice"])
        by_user, _ = yield self.store.list_grants(principal="user:alice")
        self.assertEqual([(g.device_id, g.actions, g.version) for g in by_user],
                         [("cam-1", 0x0F, 2), ("cam-2", Action.RECORD, 1)])
        (d,) = yield self.logged(self.store.remove_grant("user:alice", "cam-1"))
        self.assertEqual((d.op, d.key, d.version, d.grant), (ChangeOp.DELETE, c1.key, 3, None))
        self.assertEqual((yield self.store.remove_grant("user:alice", "cam-1")), [])
        yield self.assertVssError(
            self.store.set_grant("user:alice", "nope", Action.VIEW), ResultCode.UNKNOWN_DEVICE
        )
        for bad in ("alice", "role:x", "user:", "user:a|b"):
            yield self.assertVssError(
                self.store.set_grant(bad, "cam-1", Action.VIEW), ResultCode.INVALID_ARGUMENT
            )
        yield self.assertVssError(
            self.store.set_grant("user:alice", "cam-1", 256), ResultCode.INVALID_ARGUMENT
        )

    @inlineCallbacks
    def test_grants_on_a_wall(self):
        """A grant may name a wall or decoder, ``cu:ACCOUNT``, with the WALL action only;
        every node holds it; removing the account removes it."""
        yield self.store.upsert_user("wall1", V1, [])
        yield self.store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.store.set_grant("user:bob", "cam-1", Action.VIEW)
        (c,) = yield self.logged(self.store.set_grant("user:op", "cu:wall1", Action.WALL))
        self.assertEqual((c.key, c.grant.actions), ("user:op|cu:wall1", Action.WALL))
        yield self.assertVssError(self.store.set_grant("user:op", "cu:nobody", Action.WALL),
                                  ResultCode.NOT_FOUND)
        yield self.assertVssError(
            self.store.set_grant("user:op", "cu:wall1", Action.WALL | Action.VIEW),
            ResultCode.INVALID_ARGUMENT)
        for node in ("node-a", "node-z"):
            held, _ = yield self.store.list_grants(held_by=node)
            self.assertIn(("user:op", "cu:wall1"), [(g.principal, g.device_id) for g in held])
        held, _ = yield self.store.list_grants(held_by="node-z")
        self.assertEqual([g.device_id for g in held], ["cu:wall1"])
        removed = yield self.logged(self.store.remove_user("wall1"))
        self.assertIn("user:op|cu:wall1", [r.key for r in removed if r.entity == Entity.GRANT])
        self.assertEqual((yield self.store.list_grants(device_id="cu:wall1")), ([], ""))

    # -- paging -----------------------------------------------------------------

    @inlineCallbacks
    def test_device_paging(self):
        records = [device(i, "node-a" if i % 5 else "node-b") for i in range(2500)]
        changes = yield self.logged(self.store.bulk_upsert_devices(reversed(records)))
        self.assertEqual(len(changes), 2500)
        self.assertContiguous()
        pages, cursor = [], ""
        while True:
            page, cursor = yield self.store.list_devices(cursor, limit=1000)
            pages.append(page)
            if not cursor:
                break
        self.assertEqual([len(p) for p in pages], [1000, 1000, 500])
        ids = [r.device_id for p in pages for r in p]
        self.assertEqual(ids, sorted(r.device_id for r in records))
        got, cursor, homed = [], "", []
        while True:
            page, cursor = yield self.store.list_devices(cursor, limit=200, home_node="node-b")
            homed.append(len(page))
            got.extend(page)
            if not cursor:
                break
        self.assertEqual(homed, [200, 200, 100])
        self.assertEqual([r.device_id for r in got],
                         [f"cam-{i:05d}" for i in range(0, 2500, 5)])
        self.assertTrue(all(r.home_node == "node-b" and r.version == 1 for r in got))
        empty = yield self.store.list_devices(home_node="node-z")
        self.assertEqual(empty, ([], ""))
        # a bulk upsert of existing devices bumps each version once
        again = yield self.logged(self.store.bulk_upsert_devices(records[:3] + records[:1]))
        self.assertEqual([(c.key, c.version) for c in again],
                         [("cam-00001", 2), ("cam-00002", 2), ("cam-00000", 2)])
        self.assertContiguous()

    @inlineCallbacks
    def test_user_and_grant_paging(self):
        for i in range(25):
            yield self.store.upsert_user(f"user-{i:02d}", V1, [])
        yield self.store.bulk_upsert_devices([device(i) for i in range(3)])
        for i in range(4):
            for d in range(3):
                yield self.store.set_grant(f"user:user-{i:02d}", f"cam-{d:05d}", Action.VIEW)
        names, cursor = [], ""
        while True:
            page, cursor = yield self.store.list_users(cursor, limit=10)
            self.assertLessEqual(len(page), 10)
            names.extend(u.username for u in page)
            if not cursor:
                break
        self.assertEqual(names, [f"user-{i:02d}" for i in range(25)])
        keys, cursor, sizes = [], "", []
        while True:
            page, cursor = yield self.store.list_grants(cursor, limit=5)
            sizes.append(len(page))
            keys.extend(grant_key(g.principal, g.device_id) for g in page)
            if not cursor:
                break
        self.assertEqual(sizes, [5, 5, 2])
        self.assertEqual(keys, sorted(keys))
        self.assertEqual(len(set(keys)), 12)
        yield self.assertVssError(self.store.list_users(limit=0), ResultCode.INVALID_ARGUMENT)

    # -- stream credentials -----------------------------------------------------

    def credential(self, cred_id, username="alice", device_id="cam-1", expires=0):
        # the sealed form is opaque bytes, not text
        return StreamCredential(cred_id, username, device_id, "vlc", 0, expires, 0,
                                b"\x00\xff" + cred_id.encode(), 0)

    @inlineCallbacks
    def test_stream_credentials_are_bound_to_a_viewer_and_revoked_in_the_log(self):
        store = self.store
        yield store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield store.upsert_device("cam-2", "c", PuKind.IPC, 1, "node-a", V1)
        yield store.upsert_user("alice", V1, ["ops"])
        yield store.upsert_user("bob", V1, [], enabled=False)
        yield store.set_grant("group:ops", "cam-1", Action.VIEW)
        yield store.set_grant("user:alice", "cam-2", Action.PTZ)
        head = yield store.head_seq()
        (c,) = yield self.logged(store.add_credential(self.credential("sc-000000000001")))
        self.assertEqual((c.entity, c.op, c.key, c.version), (Entity.CREDENTIAL, ChangeOp.UPSERT,
                                                              "sc-000000000001", 1))
        stored = c.credential
        self.assertEqual((stored.created, stored.revoked, stored.version, stored.sealed),
                         (int(NOW * 1000), 0, 1, b"\x00\xffsc-000000000001"))
        self.assertEqual((yield store.get_credential("sc-000000000001")), stored)
        # no VIEW grant (PTZ only), a disabled or unknown user, an unknown device, an id
        # taken: refused, nothing logged
        for record, code in ((self.credential("sc-000000000002", device_id="cam-2"),
                              ResultCode.FORBIDDEN),
                             (self.credential("sc-000000000003", username="bob"),
                              ResultCode.FORBIDDEN),
                             (self.credential("sc-000000000004", username="carol"),
                              ResultCode.FORBIDDEN),
                             (self.credential("sc-000000000005", device_id="cam-9"),
                              ResultCode.UNKNOWN_DEVICE),
                             (self.credential("sc-000000000001"), ResultCode.CONFLICT)):
            yield self.assertVssError(store.add_credential(record), code)
        self.assertEqual((yield store.head_seq()), head + 1)
        yield self.logged(store.add_credential(self.credential("sc-000000000006",
                                                               expires=int(NOW * 1000) + 5)))
        # revoked by its user (another user's is not found); twice is a conflict
        yield self.assertVssError(store.revoke_credential("sc-000000000001", username="bob"),
                                  ResultCode.NOT_FOUND)
        self.clock.advance(60)
        (r,) = yield self.logged(store.revoke_credential("sc-000000000001", username="alice"))
        self.assertEqual((r.op, r.version, r.credential.revoked, r.credential.created),
                         (ChangeOp.UPSERT, 2, int((NOW + 60) * 1000), stored.created))
        yield self.assertVssError(store.revoke_credential("sc-000000000001"),
                                  ResultCode.CONFLICT)
        yield self.assertVssError(store.revoke_credential("sc-00000000000f"),
                                  ResultCode.NOT_FOUND)
        listed, cursor = yield store.list_credentials(limit=1)
        self.assertEqual(([x.cred_id for x in listed], cursor),
                         (["sc-000000000001"], "sc-000000000001"))
        listed, cursor = yield store.list_credentials(cursor=cursor, username="alice")
        self.assertEqual(([x.cred_id for x in listed], cursor), (["sc-000000000006"], ""))
        self.assertEqual((yield store.list_credentials(device_id="cam-2")), ([], ""))
        # the change log gives nodes the current record
        changes, _ = yield store.changes_after(head)
        self.assertEqual([(x.key, x.credential.version) for x in changes],
                         [("sc-000000000001", 2), ("sc-000000000006", 1),
                          ("sc-000000000001", 2)])
        # removing the user, or the device, deletes theirs, in the log
        changes = yield self.logged(store.remove_user("alice"))
        self.assertEqual([(x.entity, x.op, x.key, x.version) for x in changes], [
            (Entity.GRANT, ChangeOp.DELETE, "user:alice|cam-2", 2),
            (Entity.CREDENTIAL, ChangeOp.DELETE, "sc-000000000001", 3),
            (Entity.CREDENTIAL, ChangeOp.DELETE, "sc-000000000006", 2),
            (Entity.USER, ChangeOp.DELETE, "alice", 2)])
        yield store.upsert_user("alice", V1, ["ops"])
        yield self.logged(store.add_credential(self.credential("sc-000000000007")))
        changes = yield self.logged(store.remove_device("cam-1"))
        self.assertIn((Entity.CREDENTIAL, ChangeOp.DELETE, "sc-000000000007"),
                      [(x.entity, x.op, x.key) for x in changes])
        self.assertEqual((yield store.list_credentials()), ([], ""))

    # -- change log -------------------------------------------------------------

    def assertContiguous(self):
        """The sequences seen in this test are strictly increasing and gap-free."""
        self.assertTrue(self.seqs)
        self.assertEqual(self.seqs, list(range(self.seqs[0], self.seqs[0] + len(self.seqs))))

    @inlineCallbacks
    def test_change_log_is_gap_free_and_replays(self):
        s = self.store
        yield self.logged(s.upsert_user("alice", V1, ["ops"]))
        yield self.logged(s.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1))
        yield self.logged(s.set_grant("user:alice", "cam-1", Action.VIEW))
        yield self.logged(s.set_grant("group:ops", "cam-1", Action.VIEW))
        yield self.logged(s.update_device_fields("cam-1", name="renamed"))
        yield self.logged(s.upsert_node("node-a", "tcp:h:7000", "rtsp://h:8554", 100))
        yield self.logged(s.set_record_settings("cam-1", 0, {"mode": 1}))
        yield self.logged(s.remove_user("alice"))
        yield self.logged(s.remove_node("node-a"))
        self.assertEqual(self.seqs[0], 1)
        self.assertContiguous()
        self.assertEqual((yield s.head_seq()), self.seqs[-1])
        replay, reload_required = yield s.changes_after(0)
        self.assertFalse(reload_required)
        self.assertEqual([c.seq for c in replay], self.seqs)
        # every device entry carries the device as it is now
        current = yield s.get_device("cam-1")
        device_entries = [c for c in replay if c.entity == Entity.DEVICE]
        self.assertEqual([c.version for c in device_entries], [1, 2, 3])
        self.assertTrue(all(c.device == current for c in device_entries))
        # paging through the log
        first, _ = yield s.changes_after(0, limit=4)
        rest, _ = yield s.changes_after(first[-1].seq, limit=100)
        self.assertEqual([c.seq for c in first + rest], self.seqs)
        self.assertEqual((yield s.changes_after(self.seqs[-1])), ([], False))

    @inlineCallbacks
    def test_concurrent_writes_keep_versions_and_log_in_order(self):
        s = self.store
        yield s.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        results = yield gatherResults(
            [s.upsert_device("cam-1", f"n{i}", PuKind.IPC, 1, "node-a", V1) for i in range(20)]
            + [s.set_grant(f"user:u{i}", "cam-1", Action.VIEW) for i in range(20)]
        )
        seqs = sorted(c.seq for changes in results for c in changes)
        self.assertEqual(seqs, list(range(2, 42)))
        versions = sorted(c.version for changes in results[:20] for c in changes)
        self.assertEqual(versions, list(range(2, 22)))
        self.assertEqual((yield s.get_device("cam-1")).version, 21)
        replay, _ = yield s.changes_after(0)
        self.assertEqual([c.seq for c in replay], list(range(1, 42)))

    @inlineCallbacks
    def test_writes_that_wait_share_one_transaction(self):
        """Group commit: the writes issued while one is in flight go together into the
        next transaction; each still gets its own contiguous sequences and versions, in
        issue order."""
        s = self.store
        yield s.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield s.upsert_node("node-a", "tcp:a:1", "tcp:a:2", 10)
        yield s.get_device("cam-1")  # (a write issued from an answer would share its batch)
        before = s._commits.transactions
        liveness = [s.set_node_state("node-a", "up", {"cpu": 1}), s.set_node_applied("node-a", 7)]
        results = yield gatherResults(
            [s.update_device_fields("cam-1", name=f"n{i}") for i in range(30)]
            + [s.set_grant(f"user:u{i}", "cam-1", Action.VIEW) for i in range(10)]
        )
        self.assertEqual((yield gatherResults(liveness)), [None, None])
        # the first write alone, the 41 others (node liveness included) in one
        self.assertEqual(s._commits.transactions - before, 2)
        node, = yield s.list_nodes()
        self.assertEqual((node["state"], node["applied_seq"]), ("up", 7))
        self.assertEqual([[c.seq for c in changes] for changes in results],
                         [[i] for i in range(3, 43)])
        self.assertEqual([changes[0].version for changes in results[:30]], list(range(2, 32)))
        self.assertEqual([changes[0].device.name for changes in results[:30]],
                         [f"n{i}" for i in range(30)])
        replay, _ = yield s.changes_after(0)
        self.assertEqual([c.seq for c in replay], list(range(1, 43)))

    @inlineCallbacks
    def test_updates_in_a_batch_around_a_write_that_reads_them(self):
        """Plain device updates of a batch (on PostgreSQL read ahead and sent together)
        and a write among them that reads a device they changed: each sees the writes
        issued before it, and the database ends as one by one."""
        s = self.store
        yield s.bulk_upsert_devices([device(1), device(2)])
        yield s.upsert_node("node-a", "tcp:a:1", "tcp:a:2", 10)
        yield s.get_device("cam-00001")
        first = s.update_device_fields("cam-00002", enabled=False)  # in flight alone
        batch = [
            s.update_device_fields("cam-00001", name="x1"),
            s.set_node_applied("node-a", 3),  # (between them: does not stop them)
            s.update_device_fields("cam-00002", name="y1", channels=4),
            s.update_device_fields("cam-00001", home_node="node-b"),
            s.update_device_fields("cam-00001", name="x2"),
            s.update_device_fields("cam-00002", source_url="rtsp://y"),
        ]
        yield first
        results = yield gatherResults(batch)
        self.assertIsNone(results.pop(1))
        self.assertEqual((yield s.list_nodes())[0]["applied_seq"], 3)
        records = [changes[0].device for changes in results]
        self.assertEqual([(r.device_id, r.name, r.home_node, r.version) for r in records], [
            ("cam-00001", "x1", "node-a", 2), ("cam-00002", "y1", "node-a", 3),
            ("cam-00001", "x1", "node-b", 3), ("cam-00001", "x2", "node-b", 4),
            ("cam-00002", "y1", "node-a", 4)])
        self.assertEqual(records[4].source_url, "rtsp://y")
        self.assertEqual((records[4].channels, records[4].enabled), (4, False))
        for r in (records[3], records[4]):
            self.assertEqual((yield s.get_device(r.device_id)), r)
        replay, _ = yield s.changes_after(0)
        self.assertEqual([c.seq for c in replay], list(range(1, 10)))

    @inlineCallbacks
    def test_a_write_that_fails_in_a_shared_transaction_fails_alone(self):
        """In a batch, a refused write (an unknown device) and a write that fails half
        way (a row written, then a constraint the database refuses) leave nothing; the
        writes around them commit, the log stays gap free and in issue order."""
        s = self.store
        yield s.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)

        def half_way(cur, log):
            s._upsert_devices(cur, log, [device(7)])
            s._x(cur, "INSERT INTO meta (key, value) VALUES ('writer', 'twice')")

        yield s.get_device("cam-1")
        first = s.update_device_fields("cam-1", name="first")  # in flight alone
        batch = [
            s.update_device_fields("cam-1", name="a"),
            s.update_device_fields("cam-missing", name="x"),
            s._write(half_way),
            s.set_grant("user:ann", "cam-1", Action.VIEW),
            s.update_device_fields("cam-1", name="b"),
        ]
        yield first
        yield self.assertVssError(batch[1], ResultCode.UNKNOWN_DEVICE)
        yield self.assertFailure(batch[2], Exception)
        a, grant, b = yield gatherResults([batch[0], batch[3], batch[4]])
        self.assertEqual([a[0].seq, grant[0].seq, b[0].seq], [3, 4, 5])
        self.assertEqual((a[0].version, b[0].version), (3, 4))
        self.assertIsNone((yield s.get_device("cam-00007")))
        self.assertEqual((yield s.get_device("cam-1")).name, "b")
        replay, _ = yield s.changes_after(0)
        self.assertEqual([c.seq for c in replay], [1, 2, 3, 4, 5])
        # the log goes on without a gap after the rolled back attempt
        after = yield s.update_device_fields("cam-1", name="c")
        self.assertEqual(after[0].seq, 6)

    @inlineCallbacks
    def test_changes_after_turns_stale_upserts_into_deletes(self):
        yield self.store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield self.store.set_grant("user:alice", "cam-1", Action.VIEW)
        yield self.store.remove_device("cam-1")
        yield self.store.upsert_user("bob", V1, [])
        yield self.store.remove_user("bob")
        changes, _ = yield self.store.changes_after(0)
        self.assertEqual(
            [(c.entity, c.op, c.device, c.user, c.grant) for c in changes],
            [(Entity.DEVICE, ChangeOp.DELETE, None, None, None),
             (Entity.GRANT, ChangeOp.DELETE, None, None, None),
             (Entity.GRANT, ChangeOp.DELETE, None, None, None),
             (Entity.DEVICE, ChangeOp.DELETE, None, None, None),
             (Entity.USER, ChangeOp.DELETE, None, None, None),
             (Entity.USER, ChangeOp.DELETE, None, None, None)],
        )

    @inlineCallbacks
    def test_changes_carry_origin(self):
        (c,) = yield self.store.upsert_user("alice", V1, [], origin="node-7")
        replay, _ = yield self.store.changes_after(0)
        self.assertEqual(replay, [c])
        self.assertEqual(c.origin, "node-7")

    @inlineCallbacks
    def test_compact_and_reload_required(self):
        for i in range(10):
            yield self.logged(self.store.upsert_user(f"u{i}", V1, []))
        yield self.store.compact(6)
        self.assertEqual((yield self.store.changes_after(0)), ([], True))
        self.assertEqual((yield self.store.changes_after(4)), ([], True))
        kept, reload_required = yield self.store.changes_after(5)
        self.assertFalse(reload_required)
        self.assertEqual([c.seq for c in kept], [6, 7, 8, 9, 10])
        # compacting backwards does nothing
        yield self.store.compact(3)
        self.assertFalse((yield self.store.changes_after(5))[1])
        # compacting past the head empties the log but not the sequence
        yield self.store.compact(1000)
        self.assertEqual((yield self.store.head_seq()), 10)
        self.assertEqual((yield self.store.changes_after(10)), ([], False))
        self.assertTrue((yield self.store.changes_after(9))[1])
        (c,) = yield self.logged(self.store.upsert_user("late", V1, []))
        self.assertEqual(c.seq, 11)
        self.assertEqual((yield self.store.changes_after(10)), ([c], False))
        self.assertContiguous()

    # -- node registry ----------------------------------------------------------

    @inlineCallbacks
    def test_node_registry(self):
        s = self.store
        (c,) = yield self.logged(s.upsert_node("node-b", "tcp:b:7000", "rtsp://b:8554", 50))
        self.assertEqual((c.entity, c.op, c.key, c.version), (Entity.NODE, ChangeOp.UPSERT,
                                                              "node-b", 1))
        yield self.logged(s.upsert_node("node-a", "tcp:a:7000", "rtsp://a:8554", 10))
        self.assertEqual(
            (yield s.list_nodes())[0],
            {"node_id": "node-a", "signalling": "tcp:a:7000", "media": "rtsp://a:8554",
             "capacity": 10, "state": "down", "load": {}, "applied_seq": 0, "last_seen": 0},
        )
        yield s.set_node_state("node-a", "up", load={"sessions": 3, "cpu": 0.5})
        self.clock.advance(2)
        yield s.set_node_state("node-a", "up")
        yield s.set_node_applied("node-a", 42)
        (c2,) = yield self.logged(s.upsert_node("node-a", "tcp:a:7001", "rtsp://a:8554", 20))
        self.assertEqual(c2.version, 2)
        node_a, node_b = yield s.list_nodes()
        self.assertEqual(
            node_a,
            {"node_id": "node-a", "signalling": "tcp:a:7001", "media": "rtsp://a:8554",
             "capacity": 20, "state": "up", "load": {"sessions": 3, "cpu": 0.5},
             "applied_seq": 42, "last_seen": int(NOW * 1000) + 2000},
        )
        self.assertEqual(node_b["node_id"], "node-b")
        # state and acknowledgements are not changes
        self.assertEqual((yield s.head_seq()), self.seqs[-1])
        yield self.assertVssError(s.set_node_state("nope", "up"), ResultCode.UNKNOWN_NODE)
        yield self.assertVssError(s.set_node_applied("nope", 1), ResultCode.UNKNOWN_NODE)
        yield self.assertVssError(s.set_node_state("node-a", "sideways"),
                                  ResultCode.INVALID_ARGUMENT)
        (d,) = yield self.logged(s.remove_node("node-b"))
        self.assertEqual((d.op, d.key, d.version), (ChangeOp.DELETE, "node-b", 2))
        self.assertEqual([n["node_id"] for n in (yield s.list_nodes())], ["node-a"])
        self.assertEqual((yield s.remove_node("node-b")), [])
        self.assertContiguous()

    # -- recording settings -----------------------------------------------------

    @inlineCallbacks
    def test_record_settings(self):
        s = self.store
        yield s.upsert_device("cam-1", "c", PuKind.DVS, 2, "node-a", V1)
        self.assertIsNone((yield s.get_record_settings("cam-1", 0)))
        settings = {"mode": 2, "schedule": [{"day": 1, "start": 0, "end": 600}]}
        (c,) = yield s.set_record_settings("cam-1", 1, settings)
        self.assertEqual((c.entity, c.op, c.key, c.version, c.device.version),
                         (Entity.DEVICE, ChangeOp.UPSERT, "cam-1", 2, 2))
        self.assertEqual((yield s.get_record_settings("cam-1", 1)), settings)
        self.assertIsNone((yield s.get_record_settings("cam-1", 0)))
        yield s.set_record_settings("cam-1", 1, {"mode": 0})
        self.assertEqual((yield s.get_record_settings("cam-1", 1)), {"mode": 0})
        self.assertEqual((yield s.get_device("cam-1")).version, 3)
        yield self.assertVssError(s.set_record_settings("nope", 0, {}), ResultCode.UNKNOWN_DEVICE)

    # -- the static file of a standalone node -------------------------------------

    @inlineCallbacks
    def test_export_static(self):
        s = self.store
        yield s.bulk_upsert_devices([device(1, "node-a"), device(2, "node-b"), device(3, "")])
        yield s.upsert_user("bob", V2, ["ops"], enabled=False)
        yield s.upsert_user("alice", V1, [])
        for principal, dev in (("user:alice", "cam-00001"), ("group:ops", "cam-00002"),
                               ("group:ops", "cam-00003")):
            yield s.set_grant(principal, dev, Action.VIEW)
        devices, users, grants = yield s.export_static()
        self.assertEqual([d.device_id for d in devices], ["cam-00001", "cam-00002", "cam-00003"])
        self.assertEqual(devices[0], (yield s.get_device("cam-00001")))
        self.assertEqual([(u.username, u.verifier, u.groups, u.enabled) for u in users],
                         [("alice", V1, [], True), ("bob", V2, ["ops"], False)])
        self.assertEqual([(g.principal, g.device_id, g.actions) for g in grants],
                         [("group:ops", "cam-00002", int(Action.VIEW)),
                          ("group:ops", "cam-00003", int(Action.VIEW)),
                          ("user:alice", "cam-00001", int(Action.VIEW))])
        devices, users, grants = yield s.export_static(home_node="node-a")
        self.assertEqual([d.device_id for d in devices], ["cam-00001", "cam-00003"])
        self.assertEqual(len(users), 2)
        self.assertEqual([g.device_id for g in grants], ["cam-00003", "cam-00001"])

    # -- admin tokens -----------------------------------------------------------

    @inlineCallbacks
    def test_admin_tokens(self):
        s = self.store
        self.assertTrue(verifyObject(IAdminTokenStore, s))
        digest = hash_token("s3cret")
        self.assertIsNone((yield s.admin_for_token_hash(digest)))
        self.assertIsNone((yield s.authenticate_admin_token(digest)))
        self.assertEqual((yield s.count_admin_tokens()), 0)
        token_id = yield s.add_admin_token("root", digest)
        self.assertEqual((yield s.admin_for_token_hash(digest)), "root")
        self.assertEqual((yield s.admin_for_token_hash(bytes.fromhex(digest))), "root")
        self.assertEqual((yield s.admin_for_token_hash(digest.upper())), "root")
        self.assertIsNone((yield s.admin_for_token_hash(hash_token("other"))))
        # the same hash again keeps its id and takes the new name
        self.assertEqual((yield s.add_admin_token("boss", digest)), token_id)
        created = int(NOW * 1000)
        self.assertEqual((yield s.list_admin_tokens()),
                         [AdminToken(token_id, "boss", created, None, None, None, ACTIVE)])
        self.assertEqual((yield s.get_admin_token(token_id)).name, "boss")
        self.assertIsNone((yield s.get_admin_token(token_id + 100)))
        # tokens are no part of the static data: nothing logged
        self.assertEqual((yield s.head_seq()), 0)

    @inlineCallbacks
    def test_admin_token_expiry_and_last_use(self):
        s = self.store
        short = yield s.add_admin_token("temp", hash_token("short"), expires_in=90)
        forever = yield s.add_admin_token("root", hash_token("forever"))
        self.assertGreater(forever, short)
        start = int(NOW * 1000)
        token = yield s.get_admin_token(short)
        self.assertEqual((token.created, token.expires, token.state),
                         (start, start + 90_000, ACTIVE))
        self.assertEqual((yield s.count_admin_tokens()), 2)

        # the first use is recorded; later uses at most once a minute
        used = yield s.authenticate_admin_token(hash_token("short"))
        self.assertEqual((used.id, used.last_used, used.state), (short, start, ACTIVE))
        self.clock.advance(30)
        used = yield s.authenticate_admin_token(hash_token("short"))
        self.assertEqual(used.last_used, start)
        self.assertEqual((yield s.get_admin_token(short)).last_used, start)
        self.clock.advance(30)
        used = yield s.authenticate_admin_token(hash_token("short"))
        self.assertEqual(used.last_used, start + 60_000)
        self.assertEqual((yield s.get_admin_token(short)).last_used, start + 60_000)

        # expired at created + 90 s: refused, not touched, not counted
        self.clock.advance(30)
        used = yield s.authenticate_admin_token(hash_token("short"))
        self.assertEqual((used.state, used.last_used), (EXPIRED, start + 60_000))
        self.assertIsNone((yield s.admin_for_token_hash(hash_token("short"))))
        self.assertEqual((yield s.count_admin_tokens()), 1)
        self.assertEqual((yield s.count_admin_tokens(valid_only=False)), 2)
        self.assertEqual([t.state for t in (yield s.list_admin_tokens())], [EXPIRED, ACTIVE])

    @inlineCallbacks
    def test_admin_token_revocation(self):
        s = self.store
        first = yield s.add_admin_token("root", hash_token("one"))
        second = yield s.add_admin_token("ops", hash_token("two"))
        self.clock.advance(5)
        revoked = yield s.revoke_admin_token(first)
        at = int((NOW + 5) * 1000)
        self.assertEqual((revoked.id, revoked.revoked, revoked.state), (first, at, REVOKED))
        self.assertEqual((yield s.get_admin_token(first)), revoked)
        self.assertIsNone((yield s.admin_for_token_hash(hash_token("one"))))
        self.assertEqual((yield s.authenticate_admin_token(hash_token("one"))).state, REVOKED)
        self.assertEqual((yield s.admin_for_token_hash(hash_token("two"))), "ops")

        yield self.assertVssError(s.revoke_admin_token(first), ResultCode.CONFLICT)
        yield self.assertVssError(s.revoke_admin_token(second + 1), ResultCode.NOT_FOUND)
        # the last valid token stays unless forced
        exc = yield self.assertFailure(s.revoke_admin_token(second), LastTokenError)
        self.assertEqual((exc.code, exc.token_id), (ResultCode.CONFLICT, second))
        self.assertEqual((yield s.admin_for_token_hash(hash_token("two"))), "ops")
        # an expired token does not count as a way in
        temp = yield s.add_admin_token("temp", hash_token("three"), expires_in=1)
        self.clock.advance(2)
        yield self.assertFailure(s.revoke_admin_token(second), LastTokenError)
        self.assertEqual((yield s.revoke_admin_token(temp)).state, REVOKED)
        revoked = yield s.revoke_admin_token(second, force=True)
        self.assertEqual(revoked.state, REVOKED)
        self.assertEqual((yield s.count_admin_tokens()), 0)
        self.assertEqual([t.state for t in (yield s.list_admin_tokens())], [REVOKED] * 3)

    # -- grant expiry, operators, the audit log (migration 6) ---------------------

    @inlineCallbacks
    def test_grant_expiry(self):
        """A grant may carry an expiry: stored, changed, sent in the change log; a
        grant made before expiries existed never expires; an expired grant no longer
        lets a stream credential be made."""
        store = self.new_store()
        yield store.open(target_version=5)
        yield store.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)

        def old_insert(cur):
            store._x(cur, "INSERT INTO grants (principal, device_id, actions, version)"
                          " VALUES (?, ?, ?, ?)", ("user:alice", "cam-1", int(Action.VIEW), 1))

        yield store._wpool.runInteraction(old_insert)
        self.assertEqual((yield store.open()), CURRENT_VERSION)
        (old,), _ = yield store.list_grants()
        self.assertEqual((old.actions, old.version, old.expires), (Action.VIEW, 1, 0))
        yield store.close()
        s = self.store
        yield s.upsert_device("cam-1", "c", PuKind.IPC, 1, "node-a", V1)
        yield s.upsert_user("alice", V1, [])
        until = int(NOW * 1000) + 60_000
        (c1,) = yield self.logged(s.set_grant("user:alice", "cam-1", Action.VIEW, until))
        self.assertEqual((c1.grant.expires, c1.grant.version), (until, 1))
        (listed,), _ = yield s.list_grants(principal="user:alice")
        self.assertEqual(listed, c1.grant)
        changes, _ = yield s.changes_after(0)
        self.assertEqual(changes[-1].grant.expires, until)
        (c2,) = yield self.logged(s.set_grant("user:alice", "cam-1", Action.VIEW))
        self.assertEqual((c2.grant.expires, c2.grant.version), (0, 2))
        yield s.set_grant("user:alice", "cam-1", Action.VIEW, until)
        cred = StreamCredential("sc-000000000001", "alice", "cam-1", "", 0, 0, 0, b"x", 0)
        yield s.add_credential(cred)
        self.clock.advance(61)
        late = StreamCredential("sc-000000000002", "alice", "cam-1", "", 0, 0, 0, b"x", 0)
        yield self.assertVssError(s.add_credential(late), ResultCode.FORBIDDEN)
        yield self.assertVssError(s.set_grant("user:alice", "cam-1", 1, -1),
                                  ResultCode.INVALID_ARGUMENT)

    @inlineCallbacks
    def test_operators(self):
        from vss.cms.store.operators import (
            ADMINISTRATOR,
            AUDITOR,
            IOperatorStore,
            LastAdministratorError,
        )

        s = self.store
        self.assertTrue(verifyObject(IOperatorStore, s))
        now = int(NOW * 1000)
        ann = yield s.add_operator("ann", "scrypt$v1", ADMINISTRATOR)
        self.assertEqual(ann, (yield s.get_operator("ann")))
        self.assertEqual((ann.role, ann.enabled, ann.created, ann.changed, ann.last_login,
                          ann.version), (ADMINISTRATOR, True, now, now, None, 1))
        yield self.assertVssError(s.add_operator("ann", "v", AUDITOR), ResultCode.CONFLICT)
        yield self.assertVssError(s.add_operator("bob", "v", "root"),
                                  ResultCode.INVALID_ARGUMENT)
        yield s.add_operator("bob", "scrypt$v2", AUDITOR, enabled=False)
        self.assertEqual([o.username for o in (yield s.list_operators())], ["ann", "bob"])
        # the last enabled administrator is neither disabled, demoted nor removed
        for change in ({"enabled": False}, {"role": AUDITOR}):
            yield self.assertFailure(s.update_operator("ann", **change),
                                     LastAdministratorError)
        yield self.assertFailure(s.remove_operator("ann"), LastAdministratorError)
        self.clock.advance(10)
        bob = yield s.update_operator("bob", role=ADMINISTRATOR, enabled=True,
                                      expected_version=1)
        self.assertEqual((bob.role, bob.enabled, bob.version, bob.changed),
                         (ADMINISTRATOR, True, 2, now + 10_000))
        yield self.assertVssError(s.update_operator("bob", enabled=False, expected_version=1),
                                  ResultCode.CONFLICT)
        same = yield s.update_operator("bob", role=ADMINISTRATOR)
        self.assertEqual(same.version, 2)  # nothing changed: no new version
        ann = yield s.update_operator("ann", verifier="scrypt$v3", role=AUDITOR)
        self.assertEqual((ann.verifier, ann.role, ann.version), ("scrypt$v3", AUDITOR, 2))
        yield s.note_operator_login("ann")
        self.assertEqual((yield s.get_operator("ann")).last_login, now + 10_000)
        self.assertEqual((yield s.remove_operator("ann")).username, "ann")
        self.assertIsNone((yield s.get_operator("ann")))
        yield self.assertVssError(s.remove_operator("ann"), ResultCode.NOT_FOUND)
        yield self.assertVssError(s.update_operator("ann", enabled=True), ResultCode.NOT_FOUND)

    @inlineCallbacks
    def test_audit_log_is_append_only(self):
        from vss.cms.store.audit import IAuditStore, entry

        s = self.store
        self.assertTrue(verifyObject(IAuditStore, s))
        ids = yield s.append_audit([
            entry(1000, "change", "operator:ann", "127.0.0.1", action="POST /devices",
                  target="device:cam-1", status=201, detail={"after": {"name": "Gate"}}),
            entry(2000, "live", "user:bob", "10.0.0.9", "node-a", "live", "device:cam-1",
                  detail={"channel": 0}),
            entry(3000, "change", "token:root#1", "127.0.0.1", action="DELETE /users/x",
                  target="user:x_%", status=404),
        ])
        self.assertEqual(len(ids), 3)
        self.assertEqual(ids, sorted(ids))
        everything, cursor = yield s.list_audit()
        self.assertEqual(cursor, "")
        self.assertEqual([e.id for e in everything], ids[::-1])
        first = everything[-1]
        self.assertEqual((first.at, first.kind, first.actor, first.source, first.action,
                          first.target, first.status, first.detail),
                         (1000, "change", "operator:ann", "127.0.0.1", "POST /devices",
                          "device:cam-1", 201, {"after": {"name": "Gate"}}))
        page, cursor = yield s.list_audit(limit=2)
        self.assertEqual(([e.id for e in page], cursor), (ids[:0:-1], str(ids[1])))
        page, cursor = yield s.list_audit(cursor=cursor, limit=2)
        self.assertEqual(([e.id for e in page], cursor), ([ids[0]], ""))

        def found(result):
            return [e.id for e in result[0]]

        self.assertEqual(found((yield s.list_audit(kinds=["live"]))), [ids[1]])
        self.assertEqual(found((yield s.list_audit(actor="ANN"))), [ids[0]])
        self.assertEqual(found((yield s.list_audit(target="cam-1"))), [ids[1], ids[0]])
        self.assertEqual(found((yield s.list_audit(target="x_%"))), [ids[2]])
        self.assertEqual(found((yield s.list_audit(target="x__"))), [])  # no wildcards
        self.assertEqual(found((yield s.list_audit(text="gate"))), [ids[0]])
        self.assertEqual(found((yield s.list_audit(since=2000, until=3000))), [ids[1]])
        self.assertEqual(found((yield s.list_audit(node_id="node-a"))), [ids[1]])
        yield self.assertVssError(s.append_audit([entry(1, "edit", "x")]),
                                  ResultCode.INVALID_ARGUMENT)
        yield self.assertVssError(s.list_audit(cursor="x"), ResultCode.INVALID_ARGUMENT)

        # the database itself refuses to change or remove an entry
        def tamper(cur, statement):
            s.dialect.begin_write(cur)
            s._x(cur, statement)

        for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
            failure = yield self.assertFailure(s._wpool.runInteraction(tamper, statement),
                                               Exception)
            self.assertIn("audit entries cannot be", str(failure))
        self.assertEqual([e.actor for e in (yield s.list_audit())[0]],
                         ["token:root#1", "user:bob", "operator:ann"])

    @inlineCallbacks
    def test_admin_tokens_survive_the_migration_to_ids(self):
        """Tokens made before tokens had ids (schema 3) keep working, get ids in the
        order they were made, never expire and are not revoked."""
        store = self.new_store()
        yield store.open(target_version=3)

        def old_insert(cur, rows):
            for row in rows:
                store._x(cur, "INSERT INTO admin_tokens (token_hash, name, created)"
                              " VALUES (?, ?, ?)", row)

        yield store._wpool.runInteraction(old_insert, [
            (hash_token("later"), "ops", 2000), (hash_token("early"), "root", 1000)])
        self.assertEqual((yield store.open()), CURRENT_VERSION)
        self.assertEqual((yield store.describe_schema()), CURRENT_SCHEMA)
        tokens = yield store.list_admin_tokens()
        self.assertEqual([(t.name, t.created, t.expires, t.revoked, t.state) for t in tokens],
                         [("root", 1000, None, None, ACTIVE), ("ops", 2000, None, None, ACTIVE)])
        self.assertLess(tokens[0].id, tokens[1].id)
        self.assertEqual((yield store.admin_for_token_hash(hash_token("early"))), "root")
        newer = yield store.add_admin_token("new", hash_token("new"))
        self.assertGreater(newer, tokens[1].id)


class SQLiteStaticStoreTests(StaticStoreConformance, unittest.TestCase):
    def new_store(self):
        path = os.path.join(self.mktemp(), "cms.sqlite3")
        self._path = path
        store = make_static_store("sqlite:" + path, clock=self.clock)
        self.addCleanup(store.close)
        return store

    def reopen(self):
        store = make_static_store("sqlite:" + self._path, clock=self.clock)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def test_sqlite_settings(self):
        """WAL, foreign keys and one writer connection."""
        self.assertEqual(self.store.backend, "sqlite")
        self.assertEqual(self.store._wpool.max, 1)

        def pragmas(cur):
            return [cur.execute(f"PRAGMA {p}").fetchone()[0]
                    for p in ("journal_mode", "foreign_keys", "synchronous")]

        self.assertEqual((yield self.store._wpool.runInteraction(pragmas)), ["wal", 1, 1])

    @inlineCallbacks
    def test_a_locked_database_is_unavailable_not_a_refusal(self):
        """Another process holds the database (BEGIN EXCLUSIVE) past the busy timeout:
        the write fails with DB_UNAVAILABLE, a failure to retry; once the lock is
        gone the same write succeeds."""
        import sqlite3

        from vss.cms.store.sqlite import SQLiteStaticStore

        yield self.store.upsert_device("cam", "Gate", PuKind.IPC, 1, "", V1)
        store = SQLiteStaticStore(self._path, busy_timeout_ms=100)
        self.addCleanup(store.close)
        yield store.open()
        holder = sqlite3.connect(self._path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        failure = yield self.assertFailure(
            store.update_device_fields("cam", name="Locked"), VssError)
        self.assertEqual(failure.code, ResultCode.DB_UNAVAILABLE)
        self.assertIn("locked", failure.message)
        holder.execute("ROLLBACK")
        changes = yield store.update_device_fields("cam", name="Unlocked")
        self.assertEqual(changes[0].device.name, "Unlocked")

    @inlineCallbacks
    def test_a_closed_store_answers_unavailable(self):
        """A write that comes after close (a late node report while the CMS stops)
        fails with DB_UNAVAILABLE, a clear error, not an AttributeError."""
        yield self.store.close()
        failure = yield self.assertFailure(self.store.set_node_applied("node-a", 5), VssError)
        self.assertEqual(failure.code, ResultCode.DB_UNAVAILABLE)
        self.assertIn("closed", failure.message)

    @inlineCallbacks
    def test_a_stopped_cms_schedules_no_applied_write(self):
        """S506 completions that arrive while the CMS stops (its links close
        asynchronously) schedule no DB write for later: the store is closed by then."""
        from types import SimpleNamespace

        from vss.cms.service import CMSConfig, CMSService

        service = CMSService(CMSConfig("cms", b"s" * 32), self.store, self.clock)
        service.startService()
        yield service.stopService()
        s = SimpleNamespace(node_id="node-a", applied_seq=1)
        service.s506_completed(s, SimpleNamespace(applied_seq=7))
        self.assertEqual(s.applied_seq, 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spec_parsing(self):
        from vss.cms.store.sqlite import SQLiteStaticStore

        store = make_static_store("sqlite:/tmp/x.db")
        self.assertIsInstance(store, SQLiteStaticStore)
        self.assertEqual(store.path, "/tmp/x.db")
        self.assertRaises(ValueError, make_static_store, "sqlite:")


class PostgresStaticStoreTests(StaticStoreConformance, unittest.TestCase):
    if not PG_DSN:
        skip = ("PostgreSQL tests need VSS_TEST_POSTGRES_DSN, e.g. "
                "'host=127.0.0.1 port=5432 dbname=test user=postgres'")

    def new_store(self):
        from vss.cms.store.postgres import create_schema, drop_schema

        name = "vss_test_" + secrets.token_hex(6)
        create_schema(PG_DSN, name)
        self.addCleanup(drop_schema, PG_DSN, name)
        self._schema = name
        store = make_static_store(PG_DSN, clock=self.clock, schema=name)
        self.addCleanup(store.close)
        return store

    def reopen(self):
        store = make_static_store(PG_DSN, clock=self.clock,
                                  schema=self._schema)
        self.addCleanup(store.close)
        return store

    def test_backend(self):
        from vss.cms.store.postgres import PostgresStaticStore

        self.assertIsInstance(self.store, PostgresStaticStore)
        self.assertEqual(self.store.backend, "postgresql")
        url = make_static_store("postgresql://postgres@127.0.0.1:5432/test")
        self.assertIsInstance(url, PostgresStaticStore)
        self.assertEqual(url.dsn, "postgresql://postgres@127.0.0.1:5432/test")
