"""
A recording node killed with SIGKILL in the middle of a segment: real ``twistd vss-cms``
and ``twistd vss-node`` processes on loopback, a simulated camera (``vss-pu``) publishing
real H.264, recording in 6-second segments (a fragment at every key frame, every 2 s)
started by the recording settings (``vss-admin record-settings set --mode continuous``).

Mid-segment (closed segments on disk and one ``.part`` that holds a fragment), the node
process AND every process it started (found in /proc before the kill: a SIGKILL of the
parent does not reach its children) are SIGKILLed. While it is down the operator turns
recording off, so that after the restart the files hold still. At its restart the node
repairs its catalogue; then:

- no ``.part`` is left: the open one was cut after its last complete fragment and kept
  as a segment (when it held one, as read from a copy taken right after the kill) or
  deleted;
- the catalogue rows equal the files on disk (paths and bytes), and ``vssctl
  recordings`` lists the same segments;
- every segment decodes with PyAV from its first to its last frame;
- the salvaged segment starts, to the millisecond, where the segment before it ended, and
  an export of both over HTTP (``vssctl`` lists, the URL is fetched) is one file PyAV
  decodes with increasing timestamps; the same URL a second time is refused (403) and the
  node's log shows no token (``token=REDACTED`` in its access log).
"""

import functools
import json
import os
import re
import shutil
import signal
import sqlite3
import urllib.error
import urllib.request

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.recording.catalogue import DB_NAME, scan_fmp4
from vss.testing import processes, records
from vss.testing.processes import (
    child_env,
    cms_db_path,
    read_status,
    run_tool,
    seed_cms_db,
    start_cms,
    start_cms_node,
    start_pu,
    vssctl,
)

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
TOKEN = "recording-kill-admin-token-0123456789"
FAST = 2000
NODE, DEVICE = "node-k", "cam-k"


poll = functools.partial(processes.poll, timeout=60.0, interval=0.2)


def descendants(pid):
    """The pids of every live process below ``pid`` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def decode_all(path):
    """(decoded video frames, their pts in order?) of a whole file, decoding every packet
    (PyAV raises on a broken one)."""
    with av.open(path) as c:
        pts = [frame.pts for frame in c.decode(video=0)]
    return len(pts), pts == sorted(pts)


class KillRecordingNodeTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        if av is None:
            raise unittest.SkipTest("PyAV is not installed")
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        yield seed_cms_db(
            reactor, cms_db_path(self.work),
            devices=[records.device(DEVICE, "cam-k-secret", home_node=NODE, iterations=FAST)],
            users=[records.user("alice", "alice-pw", iterations=FAST)],
            grants=[records.grant("user:alice", DEVICE, ALL)],
            admin_tokens=[("kill", TOKEN)])
        self.daemons = []
        self.addCleanup(self.stop_all)
        self.cms, self.cms_ports = yield start_cms(reactor, self.work, ["--heartbeat", "1"])
        self.daemons.append(self.cms)
        yield self.start_node()
        self.data = os.path.join(self.work, NODE)
        self.recordings = os.path.join(self.data, "recordings", DEVICE)

    @defer.inlineCallbacks
    def stop_all(self):
        for d in reversed(self.daemons):
            yield d.stop()

    @defer.inlineCallbacks
    def start_node(self):
        self.node, self.ports = yield start_cms_node(reactor, self.work, NODE, self.cms_ports)
        self.daemons.append(self.node)
        yield poll("the node to synchronise", lambda: (
            (read_status(self.work, NODE) or {}).get("central", {}).get("connected")))

    def admin(self, *args):
        env = child_env(VSS_API=f"http://127.0.0.1:{self.cms_ports['admin']}",
                        VSS_ADMIN_TOKEN=TOKEN)
        return run_tool("vss-admin", list(args), env=env)

    def files(self):
        out = {}
        for d, _, names in os.walk(os.path.join(self.data, "recordings")):
            for n in names:
                full = os.path.join(d, n)
                out[os.path.relpath(full, self.data)] = os.path.getsize(full)
        return out

    def part_with_a_fragment(self):
        for path in self.files():
            if path.endswith(".mp4.part"):
                with open(os.path.join(self.data, path), "rb") as f:
                    # one fragment: 2 s after the segment opened, 4 s before it closes
                    if len(scan_fmp4(f)["fragments"]) == 1:
                        return path
        return None

    @defer.inlineCallbacks
    def test_kill_9_mid_segment_keeps_every_closed_segment_and_repairs_the_open_one(self):
        pu = start_pu(reactor, self.work, f"tcp:127.0.0.1:{self.ports['pu']}", DEVICE,
                      "cam-k-secret")
        self.addCleanup(pu.stop)
        yield poll("the camera to log in", lambda: "1/1 PUs online" in pu.output())
        out, err, code = yield self.admin("record-settings", "set", DEVICE, "--mode",
                                          "continuous", "--segment", "6")
        self.assertEqual(code, 0, out + err)
        yield poll("two closed segments",
                   lambda: len([p for p in self.files() if p.endswith(".mp4")]) >= 2,
                   timeout=90)
        # mid-segment: the open segment has a complete fragment (and is still growing)
        yield poll("a fragment in the open segment", self.part_with_a_fragment)

        # SIGKILL the node and everything it started, at once
        pids = [self.node.pid, *descendants(self.node.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = yield self.node.proto.ended
        self.assertNotEqual(code, 0)
        yield poll("the node's processes to be gone",
                   lambda: not any(os.path.exists(f"/proc/{p}") and not _zombie(p)
                                   for p in pids), timeout=30)
        before = self.files()
        parts = sorted(p for p in before if p.endswith(".part"))
        self.assertTrue(parts, before)
        copies = {}
        for p in parts:  # what the repair will see
            copies[p] = os.path.join(self.work, os.path.basename(p))
            shutil.copyfile(os.path.join(self.data, p), copies[p])

        # while it is down, the operator turns recording off; then it comes back
        out, err, code = yield self.admin("record-settings", "set", DEVICE, "--mode", "off")
        self.assertEqual(code, 0, out + err)
        repairs = self.node.output().count("catalogue repair:")  # the log goes on
        yield self.start_node()
        yield poll("the catalogue repair",
                   lambda: self.node.output().count("catalogue repair:") > repairs)

        after = self.files()
        self.assertEqual([p for p in after if p.endswith(".part")], [])
        for p in parts:
            with open(copies[p], "rb") as f:
                info = scan_fmp4(f)
            final = p[:-len(".part")]
            if info["moov"] and info["fragments"]:
                self.assertEqual(after.get(final), info["complete_end"], p)  # salvaged
            else:
                self.assertNotIn(final, after)  # discarded
        for p, size in before.items():  # closed segments are untouched
            if p.endswith(".mp4"):
                self.assertEqual(after[p], size, p)
        self.assertTrue(any(p[:-len(".part")] in after for p in parts),
                        "the open segment held a fragment: it is kept")

        # the catalogue rows equal the files on disk
        db = sqlite3.connect(f"file:{os.path.join(self.data, DB_NAME)}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT path, bytes, start_ms, end_ms FROM segments "
                              "ORDER BY start_ms").fetchall()
        finally:
            db.close()
        self.assertEqual({r[0]: r[1] for r in rows}, after)

        # a user's listing shows the same segments
        out, err, code = yield vssctl(f"tcp:127.0.0.1:{self.ports['cu']}",
                                      ["--json", "recordings", DEVICE, "--from", "-1h"],
                                      "alice", "alice-pw")
        self.assertEqual(code, 0, out + err)
        listing = json.loads(out)
        self.assertEqual([(s["start"], s["end"], s["bytes"], s["node_id"])
                          for s in listing["segments"]],
                         [(r[2], r[3], r[1], NODE) for r in rows])

        # every segment decodes from its first frame to its last
        for p in sorted(after):
            frames, ordered = yield threads.deferToThread(decode_all,
                                                          os.path.join(self.data, p))
            self.assertGreater(frames, 0, p)
            self.assertTrue(ordered, p)

        # the salvaged segment starts to the millisecond where the one before it ended
        salvaged = [r for r in rows if r[0] + ".part" in parts]
        self.assertEqual(len(salvaged), 1, rows)
        before_it = [r for r in rows if r[2] < salvaged[0][2]][-1]
        self.assertEqual(salvaged[0][2], before_it[3], (before_it, salvaged[0]))

        # an export across both, by a user, over HTTP: one file PyAV decodes, timestamps
        # increasing; the token is good once and the node's log never shows it
        out, err, code = yield vssctl(f"tcp:127.0.0.1:{self.ports['cu']}", [
            "--json", "recordings", DEVICE, "--from", str(before_it[2]),
            "--to", str(salvaged[0][3])], "alice", "alice-pw")
        self.assertEqual(code, 0, out + err)
        [export] = json.loads(out)["exports"]
        url, token = export["url"], export["url"].split("token=", 1)[1]
        clip = os.path.join(self.work, "across.mp4")
        status = yield threads.deferToThread(http_get, url, clip)
        self.assertEqual(status, 200)
        frames, increasing = yield threads.deferToThread(check_export, clip)
        self.assertTrue(increasing)
        self.assertGreater(frames, 25 * (salvaged[0][3] - before_it[2]) // 1000 - 25)
        status = yield threads.deferToThread(http_get, url, clip + ".again")
        self.assertEqual(status, 403)  # a copy of the URL (from a log, say) is worthless
        yield poll("the node's access log lines", lambda: self.node.output().count(
            '"GET /export?token=REDACTED HTTP/1.1"') == 2)
        logs = self.node.output()
        self.assertNotIn(token, logs)
        self.assertNotIn(token.split(".")[0], logs)
        self.assertEqual(re.findall(r"token=(?!REDACTED)[^\s\"&]+", logs), [])


def http_get(url, path):
    """Blocking: the status of ``GET url``, its body written to ``path``."""
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as f:  # noqa: S310
            shutil.copyfileobj(r, f)
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def check_export(path):
    """Blocking: (video frames decoded, True if every stream's dts increase)."""
    with av.open(path) as c:
        frames = sum(1 for _ in c.decode(video=0))
    dts = {}
    with av.open(path) as c:
        for p in c.demux():
            if p.dts is not None:
                dts.setdefault(p.stream.index, []).append(p.dts)
    return frames, all(a < b for v in dts.values() for a, b in zip(v, v[1:], strict=False))


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
