"""
Files with secrets or verifiers and the data directories are 0600/0700 whatever the
umask: ``vss.private`` on its own, then real ``twistd vss-cms`` and ``twistd vss-node``
processes started with the umask 022 over a data directory and a database an older
version left readable by everyone (they are fixed at start, one log line each), and
everything the daemons write afterwards.
"""

import os
import stat

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest

from vss import private
from vss.testing import records
from vss.testing.processes import (
    cms_db_path,
    cms_secret_file,
    poll,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
)

FAST = 2000


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def open_to_others(root):
    """Every path under ``root`` (itself included) that the group or others may use."""
    found = [root] if mode(root) & 0o077 else []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full) and mode(full) & 0o077:
                found.append(full)
    return found


class Umask:
    """Run with ``value`` as the process umask; the old one comes back at cleanup."""

    def __init__(self, testcase, value):
        old = os.umask(value)
        testcase.addCleanup(os.umask, old)


def write(path, data, file_mode):
    with open(path, "w") as f:
        f.write(data)
    os.chmod(path, file_mode)


class PrivateTests(unittest.SynchronousTestCase):
    def setUp(self):
        Umask(self, 0o022)
        self.root = os.path.abspath(self.mktemp())
        self.events = []
        self.log = Logger(observer=self.events.append)

    def test_a_new_data_directory_and_database_are_private(self):
        data = os.path.join(self.root, "a", "data")
        private.private_dir(data, self.log)
        db = os.path.join(data, "db.sqlite3")
        private.private_file(db, self.log)
        self.assertEqual((mode(data), mode(db)), (0o700, 0o600))
        self.assertEqual(os.path.getsize(db), 0)
        import sqlite3

        c = sqlite3.connect(db)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t (x)")
        c.execute("INSERT INTO t VALUES (1)")
        c.commit()
        self.assertEqual({mode(db + s) for s in ("", "-wal", "-shm")}, {0o600})
        c.close()
        self.assertEqual(self.events, [])

    def test_what_is_open_is_tightened_with_a_line_each(self):
        os.makedirs(os.path.join(self.root, "exports"))
        os.makedirs(os.path.join(self.root, "recordings", "cam", "main"))
        os.chmod(self.root, 0o755)
        write(os.path.join(self.root, "node.secret"), "s" * 64, 0o644)  # a data directory
        write(os.path.join(self.root, "sync.json"), "{}", 0o664)
        write(os.path.join(self.root, "exports", "x.mp4"), "x", 0o640)
        write(os.path.join(self.root, "fine.json"), "{}", 0o600)
        footage = os.path.join(self.root, "recordings", "cam", "main", "a.mp4")
        write(footage, "x", 0o644)
        os.symlink("/etc/passwd", os.path.join(self.root, "link"))
        fixed = private.private_dir(self.root, self.log)
        self.assertEqual(sorted(fixed), sorted(
            [self.root] + [os.path.join(self.root, p) for p in (
                "exports", "recordings", "node.secret", "sync.json", "exports/x.mp4")]))
        self.assertEqual(mode(os.path.join(self.root, "sync.json")), 0o600)
        self.assertEqual(mode(os.path.join(self.root, "exports", "x.mp4")), 0o600)
        self.assertEqual(mode(self.root), 0o700)
        self.assertEqual(mode(footage), 0o644)  # not walked: behind recordings/, 0700
        self.assertEqual(mode(os.path.join(self.root, "recordings")), 0o700)
        self.assertEqual(mode("/etc/passwd") & 0o044, 0o044)  # a link is not followed
        lines = [e["log_format"].format(**e) for e in self.events]
        self.assertEqual(len(lines), len(fixed))
        self.assertIn(f"{os.path.join(self.root, 'node.secret')} was open to other users "
                      "(mode 0644): now 0600", lines)
        self.assertEqual(private.private_dir(self.root, self.log), [])  # once is enough

    def test_a_directory_of_other_programs_is_left_alone(self):
        os.makedirs(os.path.join(self.root, "lib"))
        os.chmod(self.root, 0o755)
        write(os.path.join(self.root, "passwd"), "x", 0o644)
        self.assertEqual(private.private_dir(self.root, self.log), [])
        self.assertEqual((mode(self.root), mode(os.path.join(self.root, "passwd"))),
                         (0o755, 0o644))
        [event] = self.events
        self.assertIn("not this daemon's", event["log_format"])

    def test_an_existing_database_and_its_side_files_are_tightened(self):
        os.makedirs(self.root)
        db = os.path.join(self.root, "vss-cms.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            write(db + suffix, "", 0o644)
        self.assertEqual(sorted(private.private_file(db, self.log)),
                         sorted([db, db + "-wal", db + "-shm"]))
        self.assertEqual({mode(db + s) for s in ("", "-wal", "-shm")}, {0o600})

    def test_key_files_named_by_endpoints(self):
        f = private.endpoint_key_files
        self.assertEqual(f("ssl:7001:privateKey=/k/key.pem:certKey=/k/cert.pem"),
                         ["/k/key.pem"])
        self.assertEqual(f("ssl:7001:certKey=/k/both.pem"), ["/k/both.pem"])
        self.assertEqual(f(r"ssl:7001:privateKey=C\:\\k.pem"), [r"C:\k.pem"])
        self.assertEqual(f("tcp:7001:interface=127.0.0.1"), [])
        self.assertEqual(f(""), [])
        self.assertEqual(f(None), [])


class DaemonFileModeTests(unittest.TestCase):
    """Real daemons under the umask 022."""

    timeout = 120

    @defer.inlineCallbacks
    def test_daemons_started_with_umask_022_keep_their_files_private(self):
        Umask(self, 0o022)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        # what an older version left: a database, a cluster secret and a node's data
        # directory, all readable by everyone
        yield seed_cms_db(reactor, cms_db_path(work), users=[
            records.user("alice", "alice-pw", iterations=FAST)])
        cms_dir = os.path.dirname(cms_db_path(work))
        write(cms_secret_file(work), "c" * 64, 0o644)
        node_dir = os.path.join(work, "node-m")
        os.makedirs(node_dir)
        write(os.path.join(node_dir, "node.secret"), "n" * 64, 0o644)
        write(os.path.join(node_dir, "sync.json"), '{"applied_seq": 0}', 0o644)
        for path in (cms_dir, node_dir, *(cms_db_path(work) + s for s in ("", "-wal", "-shm"))):
            if os.path.exists(path):
                os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        old = open_to_others(cms_dir) + open_to_others(node_dir)

        cms, ports = yield start_cms(reactor, work, ["--heartbeat", "1"])
        self.addCleanup(cms.stop)
        node, _ = yield start_cms_node(reactor, work, "node-m", ports)
        self.addCleanup(node.stop)
        yield poll("the node to synchronise", lambda: (
            (read_status(work, "node-m") or {}).get("central", {}).get("connected")))
        # the node wrote its files (status, ports, sync state, catalogue) meanwhile
        yield poll("sync.json rewritten", lambda: "node_id" in open(
            os.path.join(node_dir, "sync.json")).read())

        self.assertEqual(open_to_others(cms_dir), [])
        self.assertEqual(open_to_others(node_dir), [])
        for path in (cms_db_path(work) + "-wal", cms_db_path(work) + "-shm",
                     os.path.join(node_dir, "catalogue.sqlite3"),
                     os.path.join(node_dir, "ports.json")):
            self.assertEqual(mode(path), 0o600, path)
        logs = cms.output() + node.output()
        for path in old:
            self.assertIn(f"{path} was open to other users", logs)
