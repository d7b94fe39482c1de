"""The recording walk-through of the README on ``make run`` (``python -m vss.demo``): an
operator sets a weekly schedule on a simulated camera with ``vss-admin``; a user on
EITHER node lists its recordings with ``vssctl``, plays them back from a chosen minute
(PyAV, the way ffplay or VLC would open the printed URL) and exports a clip."""

import datetime
import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.test_demo import pick_base, start_demo
from vss.testing.processes import child_env, run_tool

SEGMENT = 10  # seconds


def _schedule_now():
    """Slots covering today and tomorrow (UTC), whatever the time of day."""
    today = datetime.datetime.now(datetime.UTC)
    days = [(today + datetime.timedelta(days=d)).strftime("%a").lower() for d in (0, 1)]
    return ",".join(f"{day} 00:00-24:00" for day in days)


def _read_rtsp(url, frames=10, timeout=20):
    """Decode ``frames`` pictures of an RTSP URL with PyAV over TCP (blocking: call in a
    thread). Returns (decoded, width, height, length in seconds the player was told)."""
    import av

    n, size = 0, (0, 0)
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=timeout) as c:
        seconds = (c.duration or 0) / 1_000_000  # from the SDP's a=range
        for frame in c.decode(video=0):
            n += 1
            size = (frame.width, frame.height)
            if n >= frames:
                break
    return n, size[0], size[1], seconds


def _probe_mp4(path):
    import av

    with av.open(path) as c:
        pts = [p.pts for p in c.demux(video=0) if p.size]
        seconds = float(c.duration or 0) / 1_000_000
    return len(pts), pts == sorted(pts), seconds


class DemoRecordingTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_schedule_list_play_back_and_export_from_either_node(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        base = pick_base(26000, 32000)
        yield start_demo(self, work, base, timeout=90)
        with open(os.path.join(work, "run", "credentials.json")) as f:
            creds = json.load(f)

        # the operator: a weekly schedule on cam-a1 (homed on node-a), 10 s segments
        admin = child_env(VSS_API=f"http://127.0.0.1:{base + 180}",
                          VSS_ADMIN_TOKEN=creds["admin_token"])
        out, err, code = yield run_tool("vss-admin", [
            "record-settings", "set", "cam-a1", "--mode", "schedule", "--segment",
            str(SEGMENT), "--schedule", _schedule_now()], env=admin)
        self.assertEqual(code, 0, out + err)

        def user(node_port):
            return child_env(VSS_NODE=f"tcp:127.0.0.1:{node_port}", VSS_USER="alice",
                             VSS_PASSWORD=creds["alice_password"])

        on_a, on_b = user(base + 1), user(base + 11)

        # before anything is recorded at that time: said so, no URL
        out, err, code = yield run_tool("vssctl", ["playback", "cam-a1", "--at", "-9m"],
                                        env=on_b)
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn("nothing was recorded of cam-a1 main at", err)

        # the segment being written is listed as recording, not as a gap
        recording = None
        for _ in range(120):
            out, err, code = yield run_tool(
                "vssctl", ["--json", "recordings", "cam-a1", "--from", "-1m"], env=on_b)
            self.assertEqual(code, 0, err)
            recording = json.loads(out)
            if any(s["recording"] for s in recording["segments"]):
                break
            yield task.deferLater(reactor, 0.5, lambda: None)
        last = recording["segments"][-1]
        self.assertTrue(last["recording"], recording)
        if all(seg["recording"] for seg in recording["segments"]):
            self.assertEqual(recording["exports"], [])  # nothing closed to export yet
        self.assertEqual([g for g in recording["gaps"] if g["end"] > last["start"]], [])
        out, err, code = yield run_tool("vssctl", ["recordings", "cam-a1", "--from", "-1m"],
                                        env=on_b)
        self.assertIn("recording", out.splitlines()[-2])

        # the user on node-b lists cam-a1's recordings: segments appear as they close
        listing = None
        for _ in range(300):
            out, err, code = yield run_tool(
                "vssctl", ["--json", "recordings", "cam-a1", "--from", "-10m"], env=on_b)
            if code == 0:
                listing = json.loads(out)
                listing["segments"] = [s for s in listing["segments"] if not s["recording"]]
                if len(listing["segments"]) >= 2:
                    break
            yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertIsNotNone(listing, err)
        self.assertGreaterEqual(len(listing["segments"]), 2, listing)
        self.assertEqual({s["node_id"] for s in listing["segments"]}, {"node-a"})
        self.assertEqual(listing["missing"], [])
        # the same listing on node-a
        out, err, code = yield run_tool(
            "vssctl", ["--json", "recordings", "cam-a1", "--from", "-10m"], env=on_a)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["segments"][:2], listing["segments"][:2])
        first = listing["segments"][0]

        # play back from the middle of the first segment, through either node
        at = (first["start"] + first["end"]) // 2
        for env in (on_a, on_b):
            out, err, code = yield run_tool(
                "vssctl", ["--json", "playback", "cam-a1", "--at", str(at)], env=env)
            self.assertEqual(code, 0, out + err)
            url = json.loads(out)["url"]
            self.assertTrue(url.startswith("rtsp://127.0.0.1:"), url)
            decoded, width, height, length = yield _threads(_read_rtsp, url)
            self.assertEqual(decoded, 10)
            self.assertGreater(width, 0)
            # the player knows the footage's length (a seek bar): from there to the end
            self.assertGreater(length, (listing["segments"][1]["end"] - at) / 1000 - 1)

        # the README's export, as copied: the last ten minutes up to now
        out, err, code = yield run_tool(
            "vssctl", ["export", "cam-a1", "--from", "-10m", "--to", "now", "-o",
                       os.path.join(work, "readme.mp4")], env=on_a)
        self.assertEqual(code, 0, out + err)
        self.assertIn("bytes from node-a", out)

        # export a clip of the two first segments, from node-b
        clip = os.path.join(work, "clip.mp4")
        second = listing["segments"][1]
        out, err, code = yield run_tool(
            "vssctl", ["--json", "export", "cam-a1", "--from", str(first["start"]),
                       "--to", str(second["end"]), "-o", clip], env=on_b)
        self.assertEqual(code, 0, out + err)
        frames, ordered, seconds = yield _threads(_probe_mp4, clip)
        self.assertTrue(ordered)
        self.assertGreater(frames, 10)
        self.assertGreater(seconds, 0.5 * (second["end"] - first["start"]) / 1000)


def _threads(fn, *args):
    from twisted.internet import threads

    return threads.deferToThread(fn, *args)
