"""
Retention per device: each (device, channel) keeps its segments for its own
``retention_days`` (a channel without settings: the node's default), the node's quota
applies to its whole archive, oldest first across devices, and a segment in use is never
deleted. A real catalogue (SQLite and files in a temporary directory), a ``task.Clock``,
and the settings as the node holds them from CMS (``RecordSettingsSync``); a change of
settings applies at the next retention pass.
"""

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from vss.protocols.messages import RecordMode, RecordSettings, Stream
from vss.recording.archive import RetentionService
from vss.recording.catalogue import CatalogueDB, Retention, Segment, segment_name
from vss.recording.settings import RecordSettingsSync
from vss.rgm.localcentral import MemoryCentral

DAY = 86_400_000
NOW = 1_800_000_000_000


def seg(device, age_days, channel=0, size=100, stream=None):
    """A one-minute segment that ended ``age_days`` ago."""
    end = NOW - int(age_days * DAY)
    stream = stream or (f"ch{channel}-main" if channel else "main")
    return Segment(device, channel, stream, end - 60_000, end, size,
                   f"recordings/{device}/{stream}/{segment_name(end - 60_000)}.mp4")


def settings(device_id, channel=0, days=7, quota=0):
    return RecordSettings(device_id=device_id, channel=channel, mode=int(RecordMode.OFF),
                          stream=int(Stream.MAIN), segment_seconds=60, retention_days=days,
                          quota_mb=quota, pre_event_seconds=5, post_event_seconds=10,
                          schedule=[])


class Catalogued(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.clock = task.Clock()
        self.clock.advance(NOW / 1000)
        self.db = CatalogueDB(self.dir, self.clock)
        self.addCleanup(self.db.close)

    def store(self, *segs):
        for s in segs:
            full = os.path.join(self.dir, s.path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(b"\0" * s.bytes)
        self.db.add_many(segs)
        return list(segs)

    def on_disk(self):
        return {os.path.relpath(os.path.join(d, n), self.dir)
                for d, _, names in os.walk(os.path.join(self.dir, "recordings")) for n in names}

    def assertKept(self, segs):
        paths = {s.path for s in segs}
        self.assertEqual(self.db.paths(), paths)
        self.assertEqual(self.on_disk(), paths)


class PerDeviceRetentionTests(Catalogued):
    def test_each_channel_keeps_its_own_days_and_the_others_the_node_default(self):
        short = self.store(seg("cam-a", 1), seg("cam-a", 2.5), seg("cam-a", 9))
        other_channel = self.store(seg("cam-a", 2.5, channel=1), seg("cam-a", 8, channel=1))
        forever = self.store(seg("cam-b", 1), seg("cam-b", 400))
        unset = self.store(seg("cam-c", 6.9), seg("cam-c", 7.1, stream="sub"))
        policy = Retention(7, {("cam-a", 0): 2, ("cam-b", 0): 0})
        deleted = self.db.enforce(policy, None)
        self.assertEqual(deleted, [short[2], other_channel[1], unset[1], short[1]])  # oldest first
        self.assertKept([short[0], other_channel[0], *forever, unset[0]])

    def test_no_default_keeps_channels_without_settings(self):
        kept = self.store(seg("cam-c", 30), seg("cam-a", 1))
        gone = self.store(seg("cam-a", 3))
        self.assertEqual(self.db.enforce(Retention(None, {("cam-a", 0): 2}), None), gone)
        self.assertKept(kept)

    def test_a_segment_in_use_outlives_its_days(self):
        playing, old = self.store(seg("cam-a", 10), seg("cam-a", 11))
        self.assertEqual(self.db.enforce(Retention(7, {("cam-a", 0): 3}), None,
                                         in_use={playing.path}), [old])
        self.assertKept([playing])

    def test_the_quota_is_the_node_s_oldest_first_across_devices(self):
        a = self.store(*(seg("cam-a", d, size=100) for d in (5, 3, 1)))
        b = self.store(*(seg("cam-b", d + 0.5, size=100) for d in (5, 3, 1)))
        # 600 bytes, quota 300: the oldest, whatever the device, until 300 remain;
        # cam-b's oldest is being exported, so it stays and the next one goes instead.
        deleted = self.db.enforce(Retention(30, {}), 300, in_use={b[0].path})
        self.assertEqual([s.path for s in deleted], [a[0].path, b[1].path, a[1].path])
        self.assertKept([b[0], b[2], a[2]])
        self.assertEqual(self.db.total_bytes(), 300)

    def test_days_first_then_the_quota_on_what_is_left(self):
        expired = self.store(seg("cam-a", 4, size=1000))
        rest = self.store(seg("cam-b", 20, size=100), seg("cam-a", 1, size=100))
        deleted = self.db.enforce(Retention(None, {("cam-a", 0): 3}), 100)
        self.assertEqual(deleted, [expired[0], rest[0]])
        self.assertKept([rest[1]])




class FakeManager:
    settings = {}

    def apply_settings(self, body):
        return defer.succeed(None)


class Store:
    class Rec:
        def __init__(self, device_id, version=1):
            self.device_id, self.home_node, self.version, self.channels = \
                device_id, "node-a", version, 1

    def __init__(self, *ids):
        self.records = {d: self.Rec(d) for d in ids}

    def devices(self):
        return list(self.records.values())

    def get_device(self, device_id):
        return self.records.get(device_id)


class Recorder:
    """The node recorder's ``enforce`` over the catalogue (as ``Recorder.enforce``)."""

    def __init__(self, db):
        self.db = db

    def enforce(self, days, quota, in_use=()):
        return defer.succeed(self.db.enforce(days, quota, in_use))


class SettingsChangeTests(Catalogued):
    """The pass reads the settings held now: a new retention applies at the next pass,
    with no restart."""

    def test_a_shorter_retention_applies_at_the_next_pass(self):
        central = MemoryCentral()
        central.set_record_settings(settings("cam-a", days=10))
        store = Store("cam-a", "cam-b")
        sync = RecordSettingsSync("node-a", store, central, FakeManager(), default_days=30)
        sync.refresh_all()
        segs = self.store(*(seg("cam-a", d) for d in (1, 4, 12)), seg("cam-b", 12))
        svc = RetentionService(Recorder(self.db), sync, self.clock, interval=60,
                               in_use=[lambda: set()])
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(60)
        self.assertKept(segs[:2] + segs[3:])
        central.set_record_settings(settings("cam-a", days=3))
        store.records["cam-a"] = Store.Rec("cam-a", version=2)
        sync.device_changed("cam-a", Store.Rec("cam-a"), store.records["cam-a"])
        self.assertKept(segs[:2] + segs[3:])  # not before the next pass
        self.clock.advance(60)
        self.assertKept([segs[0], segs[3]])
        self.assertEqual((svc.passes, svc.deleted), (2, 2))

    def test_a_node_quota_applies_across_devices_even_with_no_settings(self):
        sync = RecordSettingsSync("node-a", Store(), MemoryCentral(), FakeManager(),
                                  default_days=None, quota_bytes=150)
        segs = self.store(seg("cam-a", 3), seg("cam-b", 2), seg("cam-a", 1))
        svc = RetentionService(Recorder(self.db), sync, self.clock, interval=60)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(60)
        self.assertKept([segs[2]])


class NodeOptionsTests(unittest.TestCase):
    """``twistd vss-node`` options for recording: the queue's capacity, the default
    retention of channels without settings, the node's quota and where recordings are
    written reach the services."""

    def options(self, *extra):
        from vss.tap.node import Options

        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("x" * 40)
        o = Options()
        o.parseOptions(["--node-id", "n1", "--cms", "tcp:127.0.0.1:1", "--cluster-secret-file",
                        secret, "--data-dir", self.mktemp(), *extra])
        return o.settings

    def test_defaults(self):
        s = self.options()
        self.assertEqual((s.retention_days, s.quota_mb, s.record_max_streams,
                          s.record_max_write_mbps), (7.0, 0, 32, 400.0))

    def test_they_reach_the_queue_and_the_retention_pass(self):
        from twisted.internet import reactor

        from vss.node import NodeService

        s = self.options("--retention-days", "0", "--quota-mb", "2048",
                         "--record-max-streams", "3", "--record-max-write-mbps", "10")
        node = NodeService(s, reactor)  # built, not started: no listener, no timer
        self.assertEqual(node.recordings.queue.capacity.max_streams, 3)
        self.assertEqual(node.recordings.queue.capacity.max_write_mbps, 10.0)
        self.assertEqual(node.record_settings.quota_bytes, 2048 * 1024 * 1024)
        self.assertEqual(node.record_settings.default_days, 0)
        self.assertEqual(node.recorder.mode, "auto")
        s = self.options("--record-in", "process")
        self.assertEqual(NodeService(s, reactor).recorder.mode, "process")

    def test_bad_values_are_named(self):
        from vss.config import ConfigError

        with self.assertRaises(ConfigError) as e:
            self.options("--retention-days", "-1", "--quota-mb", "lots",
                         "--record-max-streams", "0", "--record-in", "elsewhere")
        for name in ("--retention-days", "--quota-mb", "--record-max-streams", "--record-in"):
            self.assertIn(name, str(e.exception))
