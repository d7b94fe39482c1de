"""
Conformance tests of the RGM's in-memory database (``IMemoryStore``).

``MemoryStoreConformanceMixin`` holds every behaviour the interface promises and runs
against each backend: ``MemoryStore`` always, ``RedisStore`` when
``VSS_TEST_REDIS_URL`` names a Redis database to use (CI: redis://127.0.0.1:6379/15).
The Redis write queue (one batch per reactor turn, retries, close) is also tested
without a server, on a ``task.Clock`` and a fake connection, and so are the link's
settings and start-up handshake; ``tests.test_store_tls`` runs the Redis tests over TLS
against a redis-server of its own.
"""

import importlib.util
import json
import os
import uuid

from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vss.interfaces import IMemoryStore
from vss.protocols.messages import (
    Action,
    DeviceRecord,
    GrantRecord,
    StreamCredential,
    UserRecord,
    Verifier,
)
from vss.store import MemoryStore, make_store

REDIS_URL = os.environ.get("VSS_TEST_REDIS_URL")
HAVE_TXREDISAPI = importlib.util.find_spec("txredisapi") is not None

VIEW, PTZ, CONFIG, RECORD = (
    int(a) for a in (Action.VIEW, Action.PTZ, Action.CONFIG, Action.RECORD)
)


def verifier(tag=b"v"):
    # not valid UTF-8 on purpose: bytes must survive a JSON backend
    return Verifier(
        salt=b"\xff\x00salt" + tag,
        iterations=4096,
        stored_key=bytes(range(32)),
        server_key=b"\x80" * 31 + tag,
    )


def device(device_id, name=None, home_node="node-a", version=1, **fields):
    values = dict(
        device_id=device_id,
        name=name or f"camera {device_id}",
        kind=1,
        channels=1,
        home_node=home_node,
        verifier=verifier(device_id.encode()),
        source_url=f"rtsp://10.0.0.1/{device_id}",
        enabled=True,
        version=version,
    )
    values.update(fields)
    return DeviceRecord(**values)


def user(username, groups=(), version=1, enabled=True):
    return UserRecord(
        username=username,
        verifier=verifier(username.encode()),
        groups=list(groups),
        enabled=enabled,
        version=version,
    )


def grant(principal, device_id, actions, version=1, expires=0):
    return GrantRecord(principal=principal, device_id=device_id, actions=actions, version=version,
                       expires=expires)


def credential(cred_id, username="alice", device_id="cam-1", revoked=0, version=1):
    # the sealed form is opaque bytes: not valid UTF-8 either
    return StreamCredential(cred_id=cred_id, username=username, device_id=device_id,
                            name="vlc \u00e9", created=1_700_000_000_000, expires=0,
                            revoked=revoked, sealed=b"\xff\x00" + cred_id.encode(),
                            version=version)


def grant_keys(store):
    return sorted((g.principal, g.device_id) for g in store.grants())


class MemoryStoreConformanceMixin:
    """What every ``IMemoryStore`` does. Subclasses define ``makeStore()``.

    Reads are synchronous in every backend, so the tests read right after writing;
    tests about write acknowledgements return the write Deferreds to trial.
    """

    def makeStore(self):
        raise NotImplementedError

    def setUp(self):
        self.store = self.makeStore()

    def test_provides_interface(self):
        self.assertTrue(verifyObject(IMemoryStore, self.store))
        self.assertIsInstance(self.store.name, str)

    def test_writes_fire_with_none(self):
        s = self.store
        writes = [
            s.put_device(device("cam-1")),
            s.put_user(user("alice")),
            s.put_grant(grant("user:alice", "cam-1", VIEW)),
            s.set_state("cam-1", online=True),
            s.put_session("s1", {"role": 2}),
            s.set_meta("applied_seq", 1),
            s.remove_grant("user:alice", "cam-1"),
            s.put_credential(credential("sc-000000000001")),
            s.remove_credential("sc-000000000001"),
            s.remove_session("s1"),
            s.remove_user("alice"),
            s.remove_device("cam-1"),
            s.flush(),
        ]
        for d in writes:
            self.assertIsInstance(d, defer.Deferred)
        d = defer.gatherResults(writes)
        d.addCallback(self.assertEqual, [None] * len(writes))
        return d

    def test_ping_answers(self):
        """The node's readiness asks the backend whether it answers now."""
        d = self.store.ping()
        self.assertIsInstance(d, defer.Deferred)
        return d.addCallback(self.assertIsNone)

    # -- devices ---------------------------------------------------------------------

    def test_device_put_get_replace(self):
        s = self.store
        self.assertIsNone(s.get_device("cam-1"))
        s.put_device(device("cam-1", name="gate"))
        self.assertEqual(s.get_device("cam-1"), device("cam-1", name="gate"))
        s.put_device(device("cam-1", name="gate east", version=2))
        self.assertEqual(s.get_device("cam-1").name, "gate east")
        self.assertEqual(s.get_device("cam-1").version, 2)
        self.assertEqual(len(s.devices()), 1)

    def test_devices_lists_all(self):
        s = self.store
        self.assertEqual(s.devices(), [])
        for i in range(5):
            s.put_device(device(f"cam-{i}"))
        self.assertEqual(sorted(d.device_id for d in s.devices()), [f"cam-{i}" for i in range(5)])

    def test_remove_device_drops_state_and_grants(self):
        s = self.store
        s.put_device(device("cam-1"))
        s.put_device(device("cam-2"))
        s.put_user(user("alice", groups=["guards"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("group:guards", "cam-1", PTZ))
        s.put_grant(grant("user:alice", "cam-2", VIEW))
        s.set_state("cam-1", online=True, last_seen=100)
        s.set_state("cam-2", online=True)
        s.remove_device("cam-1")
        self.assertIsNone(s.get_device("cam-1"))
        self.assertEqual(s.get_state("cam-1"), {})
        self.assertEqual(grant_keys(s), [("user:alice", "cam-2")])
        self.assertEqual(s.actions_for("alice", "cam-1"), 0)
        self.assertEqual(s.granted_devices("alice"), {"cam-2": VIEW})
        # the other device is untouched
        self.assertEqual(s.get_state("cam-2"), {"online": True})
        self.assertIsNotNone(s.get_device("cam-2"))

    def test_remove_unknown_device(self):
        s = self.store
        s.put_device(device("cam-1"))
        d = s.remove_device("nope")
        self.assertEqual([x.device_id for x in s.devices()], ["cam-1"])
        return d

    def test_state_survives_device_replace(self):
        s = self.store
        s.put_device(device("cam-1"))
        s.set_state("cam-1", online=True)
        s.put_device(device("cam-1", version=2))
        self.assertEqual(s.get_state("cam-1"), {"online": True})

    # -- users -----------------------------------------------------------------------

    def test_user_put_get_replace_list(self):
        s = self.store
        self.assertIsNone(s.get_user("alice"))
        s.put_user(user("alice", groups=["guards"]))
        s.put_user(user("bob"))
        self.assertEqual(s.get_user("alice"), user("alice", groups=["guards"]))
        s.put_user(user("alice", groups=["admins"], version=2))
        self.assertEqual(list(s.get_user("alice").groups), ["admins"])
        self.assertEqual(sorted(u.username for u in s.users()), ["alice", "bob"])

    def test_remove_user_drops_own_grants_only(self):
        s = self.store
        s.put_user(user("alice", groups=["guards"]))
        s.put_user(user("bob", groups=["guards"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("user:alice", "cam-2", PTZ))
        s.put_grant(grant("group:guards", "cam-1", CONFIG))
        s.put_grant(grant("user:bob", "cam-1", RECORD))
        s.remove_user("alice")
        self.assertIsNone(s.get_user("alice"))
        self.assertEqual(grant_keys(s), [("group:guards", "cam-1"), ("user:bob", "cam-1")])
        self.assertEqual(s.actions_for("bob", "cam-1"), CONFIG | RECORD)
        self.assertEqual(s.granted_devices("alice"), {})

    def test_remove_unknown_user(self):
        s = self.store
        s.put_user(user("alice"))
        s.remove_user("nobody")
        self.assertEqual([u.username for u in s.users()], ["alice"])

    # -- stream credentials ----------------------------------------------------------

    def test_credential_put_get_replace_remove(self):
        s = self.store
        self.assertIsNone(s.get_credential("sc-000000000001"))
        s.put_credential(credential("sc-000000000001"))
        s.put_credential(credential("sc-000000000002", username="bob"))
        self.assertEqual(s.get_credential("sc-000000000001"), credential("sc-000000000001"))
        revoked = credential("sc-000000000001", revoked=1_700_000_060_000, version=2)
        s.put_credential(revoked)
        self.assertEqual(s.get_credential("sc-000000000001"), revoked)
        self.assertEqual(sorted(c.cred_id for c in s.credentials()),
                         ["sc-000000000001", "sc-000000000002"])
        s.remove_credential("sc-000000000002")
        s.remove_credential("sc-00000000000f")  # not held: nothing happens
        self.assertEqual(s.credentials(), [revoked])

    # -- grants ----------------------------------------------------------------------

    def test_grant_replaced_by_principal_and_device(self):
        s = self.store
        s.put_user(user("alice"))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("user:alice", "cam-1", VIEW | PTZ, version=2))
        self.assertEqual(s.grants(), [grant("user:alice", "cam-1", VIEW | PTZ, version=2)])
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW | PTZ)
        # narrowing a grant narrows the answer
        s.put_grant(grant("user:alice", "cam-1", VIEW, version=3))
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW)

    def test_remove_grant(self):
        s = self.store
        s.put_user(user("alice"))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("user:alice", "cam-2", VIEW))
        s.remove_grant("user:alice", "cam-1")
        s.remove_grant("user:alice", "cam-9")  # not held: nothing happens
        self.assertEqual(grant_keys(s), [("user:alice", "cam-2")])
        self.assertEqual(s.actions_for("alice", "cam-1"), 0)
        self.assertEqual(s.actions_for("alice", "cam-2"), VIEW)

    def test_actions_union_of_user_and_groups(self):
        s = self.store
        s.put_user(user("alice", groups=["guards", "night"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("group:guards", "cam-1", PTZ))
        s.put_grant(grant("group:night", "cam-1", CONFIG))
        s.put_grant(grant("group:admins", "cam-1", RECORD))  # not alice's group
        s.put_grant(grant("user:bob", "cam-1", RECORD))
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW | PTZ | CONFIG)
        self.assertEqual(s.actions_for("alice", "cam-2"), 0)
        self.assertEqual(s.actions_for("nobody", "cam-1"), 0)

    def test_actions_follow_group_membership(self):
        s = self.store
        s.put_user(user("alice"))
        s.put_grant(grant("group:guards", "cam-1", PTZ))
        self.assertEqual(s.actions_for("alice", "cam-1"), 0)
        s.put_user(user("alice", groups=["guards"], version=2))
        self.assertEqual(s.actions_for("alice", "cam-1"), PTZ)
        s.put_user(user("alice", groups=[], version=3))
        self.assertEqual(s.actions_for("alice", "cam-1"), 0)

    def test_group_grant_shared_by_members(self):
        s = self.store
        s.put_user(user("alice", groups=["guards"]))
        s.put_user(user("bob", groups=["guards"]))
        s.put_grant(grant("group:guards", "cam-1", VIEW))
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW)
        self.assertEqual(s.actions_for("bob", "cam-1"), VIEW)
        s.remove_grant("group:guards", "cam-1")
        self.assertEqual(s.actions_for("bob", "cam-1"), 0)

    def test_grant_expiry(self):
        """A grant in force until its expiry, then held but out of force; one expired
        when it arrives never comes into force; renewing it keeps it in force."""
        s = self.store
        clock = task.Clock()
        clock.advance(1000)  # now: 1,000,000 ms
        s.clock = clock
        s.put_user(user("alice", groups=["ops"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW, expires=1_000_500))
        s.put_grant(grant("group:ops", "cam-1", PTZ, expires=1_000_900))
        s.put_grant(grant("user:alice", "cam-2", VIEW, expires=999_000))
        s.put_grant(grant("user:alice", "cam-3", VIEW))
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW | PTZ)
        self.assertEqual(s.actions_for("alice", "cam-2"), 0)
        self.assertEqual(s.granted_devices("alice"), {"cam-1": VIEW | PTZ, "cam-3": VIEW})
        self.assertEqual(s.next_grant_expiry(), 1_000_500)
        self.assertEqual(s.expire_grants(), [])
        self.assertEqual(s.expire_grants(1_000_499), [])
        clock.advance(0.5)
        self.assertEqual(s.expire_grants(), [("user:alice", "cam-1")])
        self.assertEqual(s.actions_for("alice", "cam-1"), PTZ)
        self.assertEqual(s.next_grant_expiry(), 1_000_900)
        # renewed before it expires: the old expiry does not take it out of force
        s.put_grant(grant("group:ops", "cam-1", PTZ, version=2, expires=2_000_000))
        clock.advance(0.5)
        self.assertEqual(s.expire_grants(), [])
        self.assertEqual(s.actions_for("alice", "cam-1"), PTZ)
        # an expired grant given again without an expiry is in force again
        s.put_grant(grant("user:alice", "cam-1", VIEW, version=2))
        self.assertEqual(s.actions_for("alice", "cam-1"), VIEW | PTZ)
        self.assertEqual(grant_keys(s), [("group:ops", "cam-1"), ("user:alice", "cam-1"),
                                         ("user:alice", "cam-2"), ("user:alice", "cam-3")])
        # the user's expired grants go with the user
        s.remove_user("alice")
        self.assertEqual(grant_keys(s), [("group:ops", "cam-1")])
        s.remove_device("cam-1")
        self.assertEqual(grant_keys(s), [])
        self.assertEqual(s.expire_grants(3_000_000), [])

    def test_granted_devices(self):
        s = self.store
        s.put_user(user("alice", groups=["guards"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("group:guards", "cam-1", PTZ))
        s.put_grant(grant("group:guards", "cam-2", VIEW))
        s.put_grant(grant("user:bob", "cam-3", VIEW))
        self.assertEqual(s.granted_devices("alice"), {"cam-1": VIEW | PTZ, "cam-2": VIEW})
        self.assertEqual(s.granted_devices("nobody"), {})

    # -- dynamic state ---------------------------------------------------------------

    def test_set_state_merges(self):
        s = self.store
        self.assertEqual(s.get_state("cam-1"), {})
        s.set_state("cam-1", online=True, node_id="node-a", last_seen=1000)
        s.set_state("cam-1", last_seen=2000)
        s.set_state("cam-1", pan=0.5, tilt=-0.25, zoom=1.0)
        self.assertEqual(
            s.get_state("cam-1"),
            {
                "online": True,
                "node_id": "node-a",
                "last_seen": 2000,
                "pan": 0.5,
                "tilt": -0.25,
                "zoom": 1.0,
            },
        )
        s.set_state("cam-1", online=False)
        self.assertIs(s.get_state("cam-1")["online"], False)

    def test_set_state_replaces_whole_values(self):
        s = self.store
        s.set_state("cam-1", config={"bitrate": "2048", "fps": "25"}, config_version=1)
        s.set_state("cam-1", config={"fps": "15"}, config_version=2)
        self.assertEqual(s.get_state("cam-1")["config"], {"fps": "15"})

    def test_get_state_returns_copy(self):
        s = self.store
        presets = [{"preset": 1, "name": "door"}]
        s.set_state("cam-1", online=True, config={"fps": "25"}, presets=presets)
        presets.append({"preset": 2, "name": "after the call"})
        got = s.get_state("cam-1")
        got["online"] = False
        got["config"]["fps"] = "1"
        got["presets"].clear()
        self.assertEqual(
            s.get_state("cam-1"),
            {"online": True, "config": {"fps": "25"}, "presets": [{"preset": 1, "name": "door"}]},
        )

    def test_state_for_unknown_device(self):
        # a device's state may arrive before or without its static record
        s = self.store
        s.set_state("remote-7", online=True)
        self.assertEqual(s.get_state("remote-7"), {"online": True})
        self.assertIsNone(s.get_device("remote-7"))

    # -- sessions --------------------------------------------------------------------

    def test_sessions(self):
        s = self.store
        self.assertEqual(s.sessions(), {})
        s.put_session("s1", {"role": 2, "identity": "alice", "peer": "10.0.0.9:5123"})
        s.put_session("s2", {"role": 1, "identity": "cam-1"})
        s.put_session("s1", {"role": 2, "identity": "alice", "peer": "10.0.0.9:6000"})
        self.assertEqual(
            s.sessions(),
            {
                "s1": {"role": 2, "identity": "alice", "peer": "10.0.0.9:6000"},
                "s2": {"role": 1, "identity": "cam-1"},
            },
        )
        s.remove_session("s2")
        s.remove_session("never")
        self.assertEqual(list(s.sessions()), ["s1"])

    def test_sessions_returns_copies(self):
        s = self.store
        info = {"role": 2, "identity": "alice"}
        s.put_session("s1", info)
        info["identity"] = "mallory"
        s.sessions()["s1"]["role"] = 1
        self.assertEqual(s.sessions(), {"s1": {"role": 2, "identity": "alice"}})

    # -- meta ------------------------------------------------------------------------

    def test_meta(self):
        s = self.store
        self.assertIsNone(s.get_meta("applied_seq"))
        self.assertEqual(s.get_meta("applied_seq", 0), 0)
        s.set_meta("applied_seq", 41)
        s.set_meta("applied_seq", 42)
        s.set_meta("cms", {"id": "cms-1", "nodes": ["a", "b"]})
        self.assertEqual(s.get_meta("applied_seq", 0), 42)
        self.assertEqual(s.get_meta("cms"), {"id": "cms-1", "nodes": ["a", "b"]})
        s.get_meta("cms")["nodes"].append("c")
        self.assertEqual(s.get_meta("cms")["nodes"], ["a", "b"])
        s.set_meta("nothing", None)
        self.assertIsNone(s.get_meta("nothing", "default"))


class MemoryStoreTests(MemoryStoreConformanceMixin, unittest.SynchronousTestCase):
    def makeStore(self):
        return MemoryStore()

    def test_writes_already_fired(self):
        s = self.store
        self.assertIsNone(self.successResultOf(s.set_state("cam-1", last_seen=1)))
        self.assertIsNone(self.successResultOf(s.flush()))
        self.assertIsNone(self.successResultOf(s.load()))
        self.assertIsNone(self.successResultOf(s.close()))


class MakeStoreTests(unittest.SynchronousTestCase):
    def test_memory(self):
        store = make_store("memory", "node-a")
        self.assertIsInstance(store, MemoryStore)
        self.assertEqual(store.name, "memory")

    def test_unknown(self):
        e = self.assertRaises(ValueError, make_store, "mysql://x", "node-a")
        self.assertIn("mysql://x", str(e))

    def test_redis(self):
        if not HAVE_TXREDISAPI:
            raise unittest.SkipTest("txredisapi is not installed")
        clock = task.Clock()
        store = make_store("redis://10.1.2.3:6380/4", "node-a", reactor=clock)
        self.assertEqual(store.name, "redis")
        self.assertEqual(store.key("device", "cam-1"), "vss:node-a:device:cam-1")
        self.assertIsNone(store.redis)  # nothing is opened before the first use
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_redis_bad_spec(self):
        if not HAVE_TXREDISAPI:
            raise unittest.SkipTest("txredisapi is not installed")
        self.assertRaises(ValueError, make_store, "redis://h:port/0", "node-a")
        self.assertRaises(ValueError, make_store, "redis://h/zero", "node-a")
        # "vss:a:*" would cover the keys of a node "a:b"
        e = self.assertRaises(ValueError, make_store, "redis://h/0", "a:b")
        self.assertIn("'a:b'", str(e))


# ---------------------------------------------------------------------------
# Redis, against a real server


class RedisStoreTests(MemoryStoreConformanceMixin, unittest.TestCase):
    if not REDIS_URL:
        skip = "set VSS_TEST_REDIS_URL to run the Redis store tests"
    elif not HAVE_TXREDISAPI:
        skip = "txredisapi is not installed"

    def setUp(self):
        self.node_id = f"test-{uuid.uuid4().hex[:12]}"
        # registered first, so it runs last: after every store of the test is closed
        self.addCleanup(self._wipe)
        super().setUp()

    def openStore(self, node_id):
        """A RedisStore on the server under test (subclasses: over another link)."""
        from vss.store.redis import RedisStore

        return RedisStore(REDIS_URL, node_id)

    def newStore(self):
        store = self.openStore(self.node_id)
        self.addCleanup(store.close)
        return store

    def makeStore(self):
        return self.newStore()

    @defer.inlineCallbacks
    def _wipe(self):
        store = self.openStore(self.node_id)
        try:
            yield store.wipe()
            keys = yield store.namespace_keys()
            self.assertEqual(keys, [])
        finally:
            yield store.close()

    @defer.inlineCallbacks
    def reloaded(self):
        """A second store on the same namespace, loaded from Redis."""
        yield self.store.flush()
        other = self.newStore()
        yield other.load()
        return other

    @defer.inlineCallbacks
    def test_restart_restores_everything(self):
        s = self.store
        s.put_device(device("cam-1"))
        s.put_device(device("cam-2", name="lobby, 2nd floor \u00e9"))
        s.put_device(device("cam-gone"))
        s.put_user(user("alice", groups=["guards", "night"]))
        s.put_user(user("bob"))
        s.put_user(user("carol"))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("group:guards", "cam-1", PTZ))
        s.put_grant(grant("group:night", "cam-2", VIEW | CONFIG))
        s.put_grant(grant("user:bob", "cam-2", VIEW))
        s.put_grant(grant("user:carol", "cam-1", VIEW))
        s.put_grant(grant("user:bob", "cam-gone", VIEW))
        s.set_state("cam-1", online=True, last_seen=1000, node_id="node-a")
        s.set_state("cam-1", last_seen=2000, config={"fps": "25"}, presets=[1, 2])
        s.set_state("cam-gone", online=True)
        s.put_session("s1", {"role": 2, "identity": "alice", "since": 1.5})
        s.put_session("s2", {"role": 1, "identity": "cam-1"})
        s.set_meta("applied_seq", 42)
        s.set_meta("cms", {"id": "cms-1"})
        s.put_credential(credential("sc-000000000001"))
        s.put_credential(credential("sc-000000000002"))
        s.remove_device("cam-gone")
        s.remove_user("carol")
        s.remove_session("s2")
        s.remove_credential("sc-000000000002")

        other = yield self.reloaded()
        self.assertEqual(other.credentials(), [credential("sc-000000000001")])
        key = lambda r: r.device_id  # noqa: E731
        self.assertEqual(sorted(other.devices(), key=key), sorted(s.devices(), key=key))
        self.assertEqual(other.get_device("cam-1").verifier, verifier(b"cam-1"))
        self.assertEqual(
            sorted(other.users(), key=lambda r: r.username),
            sorted(s.users(), key=lambda r: r.username),
        )
        self.assertEqual(grant_keys(other), grant_keys(s))
        self.assertEqual(len(grant_keys(other)), 4)
        self.assertEqual(other.actions_for("alice", "cam-1"), VIEW | PTZ)
        self.assertEqual(other.actions_for("alice", "cam-2"), VIEW | CONFIG)
        self.assertEqual(
            other.get_state("cam-1"),
            {
                "online": True,
                "last_seen": 2000,
                "node_id": "node-a",
                "config": {"fps": "25"},
                "presets": [1, 2],
            },
        )
        self.assertEqual(other.get_state("cam-gone"), {})
        self.assertEqual(other.sessions(), {"s1": {"role": 2, "identity": "alice", "since": 1.5}})
        self.assertEqual(other.get_meta("applied_seq"), 42)
        self.assertEqual(other.get_meta("cms"), {"id": "cms-1"})

    @defer.inlineCallbacks
    def test_session_keys_expire_in_redis(self):
        s = self.store
        s.sessionTTL = 120
        yield s.put_session("s1", {"role": 2})
        yield s.put_device(device("cam-1"))
        ttl = yield s._connection().execute_command("TTL", s.key("session", "s1"))
        self.assertTrue(0 < int(ttl) <= 120, ttl)
        ttl = yield s._connection().execute_command("TTL", s.key("device", "cam-1"))
        self.assertEqual(int(ttl), -1)  # static copies do not expire

    @defer.inlineCallbacks
    def test_write_fires_after_redis_holds_it(self):
        d = self.store.set_state("cam-1", last_seen=7)
        self.assertFalse(d.called)  # queued for this reactor turn's batch
        yield d
        other = self.newStore()
        yield other.load()
        self.assertEqual(other.get_state("cam-1"), {"last_seen": 7})

    @defer.inlineCallbacks
    def test_state_of_removed_device_starts_afresh(self):
        s = self.store
        s.set_state("cam-1", online=True, pan=0.5)
        yield s.flush()
        s.remove_device("cam-1")
        s.set_state("cam-1", online=False)
        other = yield self.reloaded()
        self.assertEqual(other.get_state("cam-1"), {"online": False})

    @defer.inlineCallbacks
    def test_many_writes_coalesce(self):
        s = self.store
        writes = []
        for i in range(2000):
            writes.append(s.set_state(f"cam-{i % 200}", last_seen=i, online=True))
        yield defer.gatherResults(writes)
        other = yield self.reloaded()
        self.assertEqual(other.get_state("cam-0"), {"last_seen": 1800, "online": True})
        self.assertEqual(other.get_state("cam-199"), {"last_seen": 1999, "online": True})

    @defer.inlineCallbacks
    def test_keys_readable_with_redis_cli(self):
        s = self.store
        s.put_device(device("cam-1"))
        s.put_grant(grant("group:guards", "cam-1", VIEW))
        s.set_state("cam-1", last_seen=123, config={"fps": "25"})
        s.set_meta("applied_seq", 9)
        yield s.flush()
        prefix = f"vss:{self.node_id}:"
        text = yield s.redis.execute_command("GET", prefix + "device:cam-1")
        obj = json.loads(text)
        self.assertEqual(obj["device_id"], "cam-1")
        self.assertEqual(obj["verifier"]["iterations"], 4096)
        text = yield s.redis.execute_command("GET", prefix + "grant:group:guards|cam-1")
        self.assertEqual(json.loads(text)["actions"], VIEW)
        flat = yield s.redis.execute_command("HGETALL", prefix + "state:cam-1")
        state = dict(zip(flat[::2], flat[1::2], strict=True))
        self.assertEqual(state, {"last_seen": "123", "config": '{"fps":"25"}'})
        flat = yield s.redis.execute_command("HGETALL", prefix + "meta")
        self.assertEqual(flat, ["applied_seq", "9"])

    @defer.inlineCallbacks
    def test_writes_survive_a_dropped_connection(self):
        s = self.store
        s.set_state("cam-1", online=True)
        yield s.flush()
        client_id = yield s.redis.execute_command("CLIENT", "ID")
        try:
            yield s.redis.execute_command("CLIENT", "KILL", "ID", client_id, "SKIPME", "no")
        except Exception:
            pass  # the reply may be lost with the connection
        # the next batch either fails on the dead connection and is retried, or
        # waits for txredisapi to reconnect (about a second)
        written = s.set_state("cam-1", last_seen=5)
        self.assertEqual(s.get_state("cam-1"), {"online": True, "last_seen": 5})
        yield written
        other = yield self.reloaded()
        self.assertEqual(other.get_state("cam-1"), {"online": True, "last_seen": 5})

    @defer.inlineCallbacks
    def test_refused_write_does_not_block_the_rest(self):
        s = self.store
        # someone else's string where this node keeps a hash
        yield s._connection().execute_command("SET", s.key("state", "cam-1"), "x")
        with capturedLogs() as events:
            yield s.set_state("cam-1", online=True)
            yield s.set_state("cam-2", online=True)
        self.assertIn("WRONGTYPE", events[0]["first"])
        self.assertEqual(s._call, None)  # no retry scheduled
        other = yield self.reloaded()
        self.assertEqual(other.get_state("cam-2"), {"online": True})

    @defer.inlineCallbacks
    def test_load_skips_unreadable_keys(self):
        s = self.store
        s.put_device(device("cam-1"))
        yield s.flush()
        yield s.redis.execute_command("SET", s.key("device", "broken"), "{not json")
        other = self.newStore()
        with capturedLogs() as events:
            yield other.load()
        self.assertEqual([d.device_id for d in other.devices()], ["cam-1"])
        self.assertIn("broken", "".join(e.get("key", "") for e in events))
        self.assertEqual(events[-1]["bad"], 1)

    @defer.inlineCallbacks
    def test_namespaces_are_separate(self):
        self.store.set_state("cam-1", online=True)
        yield self.store.flush()
        stranger = self.openStore(self.node_id + "-other")
        try:
            yield stranger.load()
            self.assertEqual(stranger.get_state("cam-1"), {})
        finally:
            yield stranger.close()


# ---------------------------------------------------------------------------
# Redis write queue, without a server


class FakePipeline:
    def __init__(self, redis):
        self.redis = redis
        self.commands = []

    def execute_command(self, *args):
        self.commands.append(args)
        return defer.Deferred()

    def execute_pipeline(self):
        d = defer.Deferred()
        self.redis.batches.append((self.commands, d))
        return d


class FakeRedis:
    """Just what RedisStore uses of a txredisapi handler; batches are acknowledged
    (or failed) by the test."""

    def __init__(self):
        self.batches = []
        self.disconnected = False

    def pipeline(self):
        return defer.succeed(FakePipeline(self))

    def disconnect(self):
        self.disconnected = True
        return defer.succeed(None)

    def ack(self, index=-1, errors=()):
        commands, d = self.batches[index]
        d.callback([list(errors)] + [[] for _ in commands[1:]])

    def writes(self, index=-1):
        """The Redis commands of a batch (the store sends them as JSON to a script)."""
        calls = self.batches[index][0]
        return [tuple(c) for (_, _, _, program) in calls for c in json.loads(program)]


class RedisWriteQueueTests(unittest.SynchronousTestCase):
    if not HAVE_TXREDISAPI:
        skip = "txredisapi is not installed"

    def setUp(self):
        from vss.store.redis import RedisStore

        self.clock = task.Clock()
        self.redis = FakeRedis()
        self.store = RedisStore(
            "redis://127.0.0.1:6379/15", "n1", reactor=self.clock, connection=self.redis
        )

    def test_one_batch_per_turn(self):
        s = self.store
        writes = [s.set_state(f"cam-{i % 100}", last_seen=i) for i in range(1000)]
        s.set_meta("applied_seq", 5)
        self.assertEqual(self.redis.batches, [])  # nothing sent inside the turn
        self.clock.advance(0)
        self.assertEqual(len(self.redis.batches), 1)
        (call,) = self.redis.batches[0][0]
        self.assertEqual(call[0], "EVAL")
        writes_sent = self.redis.writes()
        self.assertEqual(len(writes_sent), 101)  # one HSET per device, one for meta
        self.assertIn(("HSET", "vss:n1:state:cam-7", "last_seen", "907"), writes_sent)
        self.assertIn(("HSET", "vss:n1:meta", "applied_seq", "5"), writes_sent)
        self.assertFalse(any(d.called for d in writes))
        self.redis.ack()
        self.assertTrue(all(d.called for d in writes))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_next_batch_waits_for_acknowledgement(self):
        s = self.store
        first = s.put_device(device("cam-1"))
        self.clock.advance(0)
        second = s.set_state("cam-1", online=True)
        third = s.set_state("cam-1", online=False)
        flushed = s.flush()
        self.clock.advance(0)
        self.assertEqual(len(self.redis.batches), 1)  # one batch in flight at a time
        self.redis.ack(0)
        self.assertIsNone(self.successResultOf(first))
        self.assertNoResult(second)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.batches), 2)
        self.assertEqual(self.redis.writes(1), [("HSET", "vss:n1:state:cam-1", "online", "false")])
        self.redis.ack(1)
        for d in (second, third, flushed):
            self.assertIsNone(self.successResultOf(d))

    def test_failed_batch_retried_with_newest_values(self):
        s = self.store
        first = s.set_state("cam-1", online=True, last_seen=1)
        s.put_session("s1", {"role": 2})
        self.clock.advance(0)
        with capturedLogs() as events:
            self.redis.batches[0][1].errback(ConnectionError("Lost connection"))
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertIn("Lost connection", events[0]["error"])
        newer = s.set_state("cam-1", last_seen=2)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.batches), 1)  # waiting for the retry delay
        self.assertEqual(s.get_state("cam-1"), {"online": True, "last_seen": 2})
        self.clock.advance(s.retryInitial)
        self.assertEqual(len(self.redis.batches), 2)
        self.assertEqual(
            sorted(self.redis.writes()),
            [
                ("HSET", "vss:n1:state:cam-1", "online", "true", "last_seen", "2"),
                ("SET", "vss:n1:session:s1", '{"role":2}', s.sessionTTL),
            ],
        )
        self.assertNoResult(first)
        self.redis.ack()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(newer))

    def test_session_keys_live_for_a_while_and_are_written_again(self):
        s = self.store
        s.put_session("s1", {"role": 2})
        s.put_session("s2", {"role": 1})
        self.clock.advance(0)
        self.assertEqual(sorted(self.redis.writes()), [
            ("SET", "vss:n1:session:s1", '{"role":2}', s.sessionTTL),
            ("SET", "vss:n1:session:s2", '{"role":1}', s.sessionTTL)])
        self.redis.ack()
        s.remove_session("s2")
        self.clock.advance(0)
        self.redis.ack()
        # Before the keys expire, the sessions still held are written again.
        self.clock.advance(s.sessionTTL / 3)
        self.clock.advance(0)
        self.assertEqual(self.redis.writes(),
                         [("SET", "vss:n1:session:s1", '{"role":2}', s.sessionTTL)])
        self.redis.ack()
        closing = s.close()
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(closing))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_delay_grows(self):
        s = self.store
        s.set_state("cam-1", online=True)
        delays = []
        self.clock.advance(0)
        with capturedLogs() as events:
            for _ in range(4):
                self.redis.batches[-1][1].errback(ConnectionError("refused"))
                (call,) = self.clock.getDelayedCalls()
                delays.append(call.getTime() - self.clock.seconds())
                self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0])
        self.assertEqual([e["delay"] for e in events], delays)
        self.redis.ack()
        s.set_state("cam-1", online=False)
        self.clock.advance(0)
        self.redis.batches[-1][1].errback(ConnectionError("again"))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 0.5)  # reset on success

    def test_outage_keeps_queue_bounded(self):
        # Redis never answers the first batch; 50,000 keepalives come in meanwhile.
        s = self.store
        s.set_state("cam-0", online=True)
        self.clock.advance(0)
        held = s.set_state("cam-1", last_seen=-1)
        fired = []
        s.set_state("cam-2", last_seen=-1).addCallback(fired.append)
        for i in range(50000):
            s.set_state(f"cam-{i % 1000}", last_seen=i)  # Deferred dropped
        self.assertLess(len(s._waiters), 2 * s.compactAfter)
        self.assertEqual(len(s._state_q), 1000)
        self.redis.ack()
        self.clock.advance(0)
        self.assertEqual(len(self.redis.writes()), 1000)
        self.assertNoResult(held)
        self.assertEqual(fired, [])
        self.redis.ack()
        self.assertIsNone(self.successResultOf(held))
        self.assertEqual(fired, [None])

    def test_remove_device_then_state_in_one_turn(self):
        s = self.store
        s.put_device(device("cam-1"))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.set_state("cam-1", online=True, pan=0.5)
        self.clock.advance(0)
        self.redis.ack()
        s.remove_device("cam-1")
        s.set_state("cam-1", online=False)
        self.clock.advance(0)
        self.assertEqual(
            self.redis.writes(),
            [
                ("DEL", "vss:n1:device:cam-1"),
                ("DEL", "vss:n1:grant:user:alice|cam-1"),
                ("DEL", "vss:n1:state:cam-1"),
                ("HSET", "vss:n1:state:cam-1", "online", "false"),
            ],
        )

    def test_remove_user_deletes_their_grant_keys(self):
        s = self.store
        s.put_user(user("alice", groups=["guards"]))
        s.put_grant(grant("user:alice", "cam-1", VIEW))
        s.put_grant(grant("group:guards", "cam-1", VIEW))
        self.clock.advance(0)
        self.redis.ack()
        s.remove_user("alice")
        self.clock.advance(0)
        self.assertEqual(
            self.redis.writes(),
            [("DEL", "vss:n1:user:alice"), ("DEL", "vss:n1:grant:user:alice|cam-1")],
        )

    def test_large_batch_split_into_script_calls(self):
        s = self.store
        s.scriptSize = 10
        for i in range(25):
            s.set_state(f"cam-{i}", online=True)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.batches), 1)  # one pipeline
        calls = self.redis.batches[0][0]
        self.assertEqual([len(json.loads(c[3])) for c in calls], [10, 10, 5])
        self.assertEqual(len(set(self.redis.writes())), 25)

    def test_refused_writes_logged_not_retried(self):
        s = self.store
        d = s.set_state("cam-1", online=True)
        self.clock.advance(0)
        with capturedLogs() as events:
            self.redis.ack(errors=["vss:n1:state:cam-1: WRONGTYPE Operation against a key"])
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        self.assertIn("WRONGTYPE", events[0]["first"])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_json_able_changes_nothing(self):
        s = self.store
        s.set_state("cam-1", online=True)
        self.assertRaises(TypeError, s.set_state, "cam-1", online=False, blob=object())
        self.assertRaises(TypeError, s.put_session, "s1", {"peer": object()})
        self.assertRaises(TypeError, s.set_meta, "k", {1, 2})
        self.assertEqual(s.get_state("cam-1"), {"online": True})
        self.assertEqual(s.sessions(), {})
        self.assertIsNone(s.get_meta("k"))

    def test_slow_redis_logged_once_then_recovery(self):
        s = self.store
        d = s.set_state("cam-1", online=True)
        self.clock.advance(0)
        with capturedLogs() as events:
            self.clock.advance(s.slowAfter)
            self.clock.advance(s.slowAfter * 10)
            self.assertEqual(len(events), 1)
            self.assertEqual(events[0]["log_level"], LogLevel.warn)
            self.assertEqual(events[0]["keys"], 1)
            self.redis.ack()
        self.assertEqual(events[-1]["log_level"], LogLevel.info)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_flushes_then_disconnects(self):
        s = self.store
        s.set_state("cam-1", online=True)
        closing = s.close()
        self.clock.advance(0)
        self.assertNoResult(closing)
        self.redis.ack()
        self.assertIsNone(self.successResultOf(closing))
        self.assertTrue(self.redis.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(s.set_state("cam-1", online=False))

    def test_load_waiting_for_redis(self):
        s = self.store
        self.redis.execute_command = lambda *args: defer.Deferred()  # never answers
        loading = s.load()
        with capturedLogs() as events:
            self.clock.advance(s.slowAfter)
        self.assertIn("Waiting for Redis", events[0]["log_format"])
        self.assertNoResult(loading)
        self.successResultOf(s.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_gives_up_on_absent_redis(self):
        s = self.store
        s.set_state("cam-1", online=True)
        self.clock.advance(0)
        closing = s.close()
        with capturedLogs() as events:
            self.clock.advance(s.closeTimeout)
        self.assertIsNone(self.successResultOf(closing))
        self.assertTrue(self.redis.disconnected)
        self.assertIn("not saved", events[-1]["log_format"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # memory is still readable
        self.assertEqual(s.get_state("cam-1"), {"online": True})


class RedisUnreachableTests(unittest.TestCase):
    """A node whose Redis is down keeps serving from memory and shuts down cleanly."""

    if not HAVE_TXREDISAPI:
        skip = "txredisapi is not installed"

    @defer.inlineCallbacks
    def test_memory_stays_authoritative(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        from vss.store.redis import RedisStore

        # a loopback port nobody listens on any more
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()

        store = RedisStore(f"redis://127.0.0.1:{number}/15", "down", reactor=reactor)
        store.closeTimeout = 0.2
        written = store.set_state("cam-1", online=True)
        store.put_device(device("cam-1"))
        self.assertEqual(store.get_state("cam-1"), {"online": True})
        self.assertEqual(store.get_device("cam-1"), device("cam-1"))
        with capturedLogs() as events:
            yield store.close()
        self.assertNoResult(written)
        self.assertTrue(any("not saved" in e.get("log_format", "") for e in events))

    @defer.inlineCallbacks
    def test_ping_says_why_it_cannot(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory

        from vss.store.redis import RedisStore
        from vss.store.redislink import StoreUnavailable

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        store = RedisStore(f"redis://127.0.0.1:{number}/15", "down", reactor=reactor)
        try:
            yield store.ping()
        except StoreUnavailable as e:
            self.assertIn("refused", str(e).lower())
        else:
            self.fail("ping answered with nothing listening")
        finally:
            yield store.close()


# ---------------------------------------------------------------------------
# The link's settings and start-up handshake, without a server (the real thing, over
# TLS against redis-server, is in tests.test_store_tls)


class RedisLinkSettingsTests(unittest.SynchronousTestCase):
    if not HAVE_TXREDISAPI:
        skip = "txredisapi is not installed"

    def file(self, data):
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_password_in_url_refused(self):
        for url in ("redis://:hunter2@127.0.0.1/0", "rediss://vss:hunter2@redis.example/0",
                    "rediss://vss:@redis.example/0"):
            e = self.assertRaises(ValueError, make_store, url, "node-a")
            self.assertIn("--store-password-file", str(e))
            self.assertNotIn("hunter2", str(e))

    def test_user_name_in_url_and_password_from_file(self):
        pw = self.file(b"  s3cret with spaces\n")
        store = make_store("rediss://vss%40site@redis.example:6380/2", "node-a",
                           password_file=pw)
        self.assertEqual(store._password, "s3cret with spaces")
        self.assertEqual(store._params["username"], "vss@site")
        self.assertEqual((store._params["port"], store._params["dbid"]), (6380, 2))
        self.assertEqual(store.where, "rediss://redis.example:6380")
        self.assertIsNotNone(store._tls)  # the system's trust roots
        self.assertIsNone(store.redis)

    def test_password_files_that_cannot_be_used(self):
        e = self.assertRaises(ValueError, make_store, "redis://127.0.0.1/0", "node-a",
                              password_file=self.file(b"\n"))
        self.assertIn("is empty", str(e))
        e = self.assertRaises(ValueError, make_store, "redis://127.0.0.1/0", "node-a",
                              password_file="/nonexistent/pw")
        self.assertIn("--store-password-file: cannot read /nonexistent/pw", str(e))

    def test_password_in_clear_only_to_loopback(self):
        pw = self.file(b"s3cret\n")
        for host in ("127.0.0.1", "localhost", "[::1]"):
            make_store(f"redis://{host}:6379/0", "node-a", password_file=pw)
        e = self.assertRaises(ValueError, make_store, "redis://10.0.0.5/0", "node-a",
                              password_file=pw)
        self.assertIn("in clear", str(e))
        self.assertIn("rediss://", str(e))

    def test_tls_files_need_rediss(self):
        ca = self.file(b"")
        e = self.assertRaises(ValueError, make_store, "redis://127.0.0.1/0", "node-a", ca_file=ca)
        self.assertIn("rediss://", str(e))
        e = self.assertRaises(ValueError, make_store, "memory", "node-a", ca_file=ca)
        self.assertIn("Redis store only", str(e))

    def test_bad_tls_files(self):
        e = self.assertRaises(ValueError, make_store, "rediss://h/0", "node-a",
                              ca_file=self.file(b"not a certificate"))
        self.assertIn("holds no PEM certificate", str(e))
        e = self.assertRaises(ValueError, make_store, "rediss://h/0", "node-a",
                              ca_file="/nonexistent/ca.pem")
        self.assertIn("--store-ca: cannot read", str(e))
        e = self.assertRaises(ValueError, make_store, "rediss://h/0", "node-a",
                              cert_file=self.file(b"x"))
        self.assertIn("go together", str(e))

    def test_tls_files_loaded(self):
        from vss.tls import make_ca_and_cert

        directory = os.path.abspath(self.mktemp())
        cert, key, _ = make_ca_and_cert(directory, ["localhost"])
        store = make_store("rediss://localhost/0", "node-a",
                           ca_file=os.path.join(directory, "ca.pem"), cert_file=cert,
                           key_file=key)
        self.assertIsNotNone(store._tls)
        e = self.assertRaises(ValueError, make_store, "rediss://localhost/0", "node-a",
                              cert_file=cert, key_file=self.file(b"garbage"))
        self.assertIn("cannot load", str(e))


class RedisHandshakeTests(unittest.SynchronousTestCase):
    """The start-up handshake as bytes on a StringTransport, and how outcomes read."""

    if not HAVE_TXREDISAPI:
        skip = "txredisapi is not installed"

    def handshake(self, *commands):
        from twisted.internet.testing import StringTransport

        from vss.store.redislink import Handshake

        self.clock = task.Clock()
        proto = Handshake(list(commands), self.clock, 10.0)
        proto.makeConnection(StringTransport())
        return proto

    def lost(self, proto):
        from twisted.internet import error
        from twisted.python.failure import Failure

        proto.connectionLost(Failure(error.ConnectionDone()))

    def test_commands_written_at_once(self):
        proto = self.handshake(("AUTH", "vss", "p w"), ("SELECT", 15), ("PING",))
        self.assertEqual(
            proto.transport.value(),
            b"*3\r\n$4\r\nAUTH\r\n$3\r\nvss\r\n$3\r\np w\r\n"
            b"*2\r\n$6\r\nSELECT\r\n$2\r\n15\r\n*1\r\n$4\r\nPING\r\n",
        )

    def test_answered(self):
        proto = self.handshake(("SELECT", 0), ("PING",))
        proto.dataReceived(b"+OK\r\n+PO")
        self.assertFalse(proto.transport.disconnecting)
        proto.dataReceived(b"NG\r\n")
        self.assertTrue(proto.transport.disconnecting)
        self.assertNoResult(proto.done)  # fires once the connection is closed
        self.lost(proto)
        self.assertIsNone(self.successResultOf(proto.done))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_error_reply(self):
        from vss.store.redislink import Refused

        proto = self.handshake(("AUTH", "x"), ("SELECT", 0), ("PING",))
        proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n-NOAUTH x\r\n")
        self.lost(proto)
        refused = self.failureResultOf(proto.done, Refused).value
        self.assertEqual((refused.command, refused.message),
                         ("AUTH", "WRONGPASS invalid username-password pair"))

    def test_no_answer(self):
        proto = self.handshake(("PING",))
        self.clock.advance(10)
        self.assertTrue(proto.transport.disconnecting)
        self.lost(proto)
        self.failureResultOf(proto.done, defer.TimeoutError)

    def test_closed_without_answer(self):
        from twisted.internet import error

        proto = self.handshake(("PING",))
        self.lost(proto)
        self.failureResultOf(proto.done, error.ConnectionDone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def judge(self, url, exception):
        from twisted.python.failure import Failure

        from vss.store.redis import RedisStore

        return RedisStore(url, "node-a", reactor=task.Clock())._probe().judge(Failure(exception))

    def test_judgements(self):
        from OpenSSL import SSL
        from twisted.internet import error

        from vss.store.redislink import Refused

        tls, plain = "rediss://r.example:6380/0", "redis://127.0.0.1/0"
        cases = [
            (tls, Refused("AUTH", "WRONGPASS bad"), True, "refused the password"),
            (tls, Refused("SELECT", "NOAUTH Authentication required."), True,
             "wants a password"),
            (tls, Refused("SELECT", "ERR DB index is out of range"), True, "database 0"),
            (tls, Refused("PING", "LOADING Redis is loading"), False, "LOADING"),
            (tls, SSL.Error([("SSL routines", "", "certificate verify failed")]), True,
             "--store-ca"),
            (tls, SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]), True,
             "--store-cert"),
            (tls, SSL.Error([("SSL routines", "", "wrong version number")]), True,
             "TLS port"),
            (plain, error.ConnectionDone(), True, "rediss://"),
            (plain, error.ConnectionLost(), True, "without answering"),
        ]
        for url, exception, final, fragment in cases:
            got_final, why = self.judge(url, exception)
            self.assertEqual(got_final, final, why)
            self.assertIn(fragment, why)


class CertificateAuthorityNameTests(unittest.TestCase):
    def test_each_ca_has_a_name_of_its_own(self):
        """Two CAs from ``vss.tls`` in one trust bundle: a peer finds the right one by
        name, so the names differ (and the certificate names its own CA)."""
        from cryptography import x509

        from vss.tls import make_ca_and_cert

        subjects = []
        for _ in range(2):
            directory = self.mktemp()
            cert_path, _, trust = make_ca_and_cert(directory, ["localhost"])
            with open(os.path.join(trust, "ca.pem"), "rb") as f:
                ca = x509.load_pem_x509_certificate(f.read())
            with open(cert_path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            self.assertEqual(cert.issuer, ca.subject)
            subjects.append(ca.subject)
        self.assertNotEqual(subjects[0], subjects[1])
