"""``make run`` (``python -m vss.demo``): the whole platform starts, a user logs in and
sees cameras online on both nodes, and stopping it stops everything it started; node-a
killed as the banner says, its cameras come online on node-b."""

import json
import os
import random
import re
import signal
import socket
import sys
import urllib.request

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from vss.testing.processes import Daemon, child_env, run_tool


def sign_in(base, username, password):
    """(status, session) of a console login (``POST /api/v1/session``)."""
    request = urllib.request.Request(
        base + "api/v1/session", method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - loopback
        return r.status, json.load(r)


def _offsets():
    return [*range(0, 5), 6, 7, *range(10, 15), 16, 17, 100, 180]  # 6, 7: SS workers


def _free(base):
    for off in _offsets():
        s = socket.socket()
        # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", base + off))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_base(low=20000, high=26000):
    """A free base port for the demo's fixed offsets, below the kernel's ephemeral range
    (32768 and up), where the port-0 listeners and client sockets of the tests running
    beside it are never placed. Each demo test picks from its own range."""
    for _ in range(50):
        base = random.randrange(low, high - 200, 10)
        if _free(base):
            return base
    raise unittest.SkipTest("no free range of ports for the demo")


@defer.inlineCallbacks
def start_demo(testcase, work, base, timeout):
    """``python -m vss.demo`` run in ``work`` on the ports from ``base``, stopped when the
    test ends; fires with its Daemon once it says it is running (or after ``timeout``
    seconds). The test fails at once if it ends before."""
    demo = Daemon(reactor, [sys.executable, "-m", "vss.demo", "--run-dir",
                            os.path.join(work, "run"), "--base-port", str(base)],
                  os.path.join(work, "demo.log"), env=child_env(), cwd=work)
    testcase.addCleanup(demo.stop)
    for _ in range(int(timeout * 10)):
        if "vss is running" in demo.output():
            break
        testcase.assertFalse(demo.proto.ended.called, demo.output())
        yield task.deferLater(reactor, 0.1, lambda: None)
    return demo


class DemoTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_make_run_starts_a_platform_and_stops_it(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        base = pick_base()
        demo = yield start_demo(self, work, base, timeout=60)
        self.assertIn("vss-admin status", demo.output())
        with open(os.path.join(work, "run", "credentials.json")) as f:
            creds = json.load(f)
        self.assertEqual(os.stat(os.path.join(work, "run", "credentials.json")).st_mode & 0o077, 0)
        # the console's address and the operator made for it are printed; they sign in
        console = f"http://127.0.0.1:{base + 180}/"
        self.assertIn(console, demo.output())
        self.assertIn(f"signed in as {creds['operator']} with the\npassword "
                      f"{creds['operator_password']}", demo.output())
        status, session = yield threads.deferToThread(
            sign_in, console, creds["operator"], creds["operator_password"])
        self.assertEqual((status, session["role"]), (200, "administrator"))
        env = child_env(VSS_NODE=f"tcp:127.0.0.1:{base + 11}", VSS_USER="alice",
                        VSS_PASSWORD=creds["alice_password"])
        online = {}
        for _ in range(100):
            out, err, code = yield run_tool("vssctl", ["--json", "devices"], env=env)
            if code == 0:
                online = {d["device_id"]: d["online"] for d in json.loads(out)["devices"]}
                if online and all(online.values()):
                    break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(set(online), {"cam-a1", "cam-a2", "dvs-a3", "cam-b1", "cam-b2"})
        self.assertTrue(all(online.values()), online)
        out, err, code = yield run_tool("vssctl", ["ptz", "cam-a1", "goto", "--pan", "0.5"],
                                        env=env)
        self.assertEqual(code, 0, err)
        # cam-b1 (on node-b) sees simulated motion: shown live on node-a
        self.assertIn("events --follow", demo.output())
        env_a = {**env, "VSS_NODE": f"tcp:127.0.0.1:{base + 1}"}
        out, err, code = yield run_tool("vssctl", ["events", "--follow", "--type", "motion",
                                                   "--count", "1"], env=env_a)
        self.assertEqual(code, 0, err)
        self.assertIn("cam-b1 ch0  motion START", out)
        self.assertIn("[node-b/", out)
        # MDP chooses among the two SS workers of each node (vss-admin status)
        admin_env = child_env(VSS_API=console.rstrip("/"), VSS_ADMIN_TOKEN=creds["admin_token"])
        seen = set()
        for _ in range(150):
            out, err, code = yield run_tool("vss-admin", ["status"], env=admin_env)
            seen = {tuple(line.split()[:3]) for line in out.splitlines()
                    if line.split()[1:2] in (["ss1"], ["ss2"])}
            if len(seen) == 4 and all(s[2] == "up" for s in seen):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual({s[:2] for s in seen}, {("node-a", "ss1"), ("node-a", "ss2"),
                                                 ("node-b", "ss1"), ("node-b", "ss2")}, out)
        self.assertEqual(sum(1 for line in out.splitlines() if line.rstrip().endswith("*")), 2)
        # the decoder dec1 (on node-b) is driven from node-a and decodes what it is given
        self.assertIn("/wall", demo.output())
        state = None
        for _ in range(100):
            out, err, code = yield run_tool("vssctl", ["wall", "dec1", "assign", "0",
                                                       "cam-a1"], env=env_a)
            if code == 0:
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(code, 0, err)
        for _ in range(150):
            out, err, code = yield run_tool("vssctl", ["--json", "wall", "dec1", "show"],
                                            env=env_a)
            state = json.loads(out) if code == 0 else None
            if state and any(a["frames"] > 0 for a in state["assignments"]):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(state["node_id"], "node-b")
        self.assertGreater(state["assignments"][0]["frames"], 0, state)
        yield demo.stop(signal.SIGTERM)
        for _ in range(50):
            if _free(base):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(_free(base), "the demo left a listener behind")


class DemoFailoverTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_kill_9_of_node_a_as_the_banner_says_moves_its_cameras_to_node_b(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        base = pick_base(10000, 20000)
        demo = yield start_demo(self, work, base, timeout=60)
        with open(os.path.join(work, "run", "credentials.json")) as f:
            creds = json.load(f)
        # what the banner says to type: node-b's CU port, then kill -9 node-a's pid
        self.assertIn(f"export VSS_NODE=tcp:127.0.0.1:{base + 11}", demo.output())
        pid = int(re.search(r"kill -9 (\d+) ", demo.output()).group(1))
        env = child_env(VSS_NODE=f"tcp:127.0.0.1:{base + 11}", VSS_USER="alice",
                        VSS_PASSWORD=creds["alice_password"])
        moved = {"cam-a1", "cam-a2", "dvs-a3"}

        @defer.inlineCallbacks
        def devices():
            out, err, code = yield run_tool("vssctl", ["--json", "devices"], env=env)
            if code != 0:
                return {}
            return {d["device_id"]: (d["online"], d["node_id"])
                    for d in json.loads(out)["devices"]}

        seen = {}
        for _ in range(150):
            seen = yield devices()
            if all(seen.get(d) == (True, "node-a") for d in moved):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual({d: seen.get(d) for d in moved}, dict.fromkeys(moved, (True, "node-a")))
        os.kill(pid, signal.SIGKILL)
        t0 = reactor.seconds()
        for _ in range(300):
            seen = yield devices()
            if all(seen.get(d) == (True, "node-b") for d in moved):
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual({d: seen.get(d) for d in moved}, dict.fromkeys(moved, (True, "node-b")))
        # "within seconds" (the bound leaves room for a loaded test machine)
        self.assertLess(reactor.seconds() - t0, 30.0)
        # the demo says what happened and goes on
        self.assertIn("node-a stopped (exit", demo.output())
        self.assertFalse(demo.proto.ended.called)
