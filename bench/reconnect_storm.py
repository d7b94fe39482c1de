"""
Reconnect storm benchmark (docs/performance.md, "Reconnect storm"): how long the PUs
of a node take to be all online again after the node is SIGKILLed and restarted with the
memory store, and whether any of them was refused or throttled meanwhile.

Real processes: ``twistd vss-cms`` (SQLite, seeded with the store API before it starts),
one ``twistd vss-node`` (memory store) and one ``vss-pu --count N`` process behind one
address (as behind one NAT). Once every PU is online the node is SIGKILLed and started
again on the same PU and CU ports; the figure is the time from that start to every PU
online again, read from the node's ``status.json`` (pus_online, auth_failures and, where
the code has it, not_ready). Scenarios:

- ``restart``: CMS up all along;
- ``cms-down``: CMS is SIGKILLed before the node, and stays down while the node comes
  back (the node must serve from what it held);
- ``fresh``: CMS up, the node's data directory emptied before it comes back (no copy to
  serve from: it loads everything from CMS while the PUs knock);
- ``fresh-cms-late``: the node's data directory emptied and CMS down when the node comes
  back; CMS is started again ``--cms-late`` seconds later (the figure is then also
  counted from CMS's return).

Several code trees run side by side in one invocation (``--trees label=PATH,...``; the
daemons and vss-pu of a tree run with ``PYTHONPATH=PATH``: a ``git archive`` copy of
another commit is measured the same way as this checkout).

    .venv/bin/python bench/reconnect_storm.py                                # 5,000 PUs
    git archive main | (mkdir -p /tmp/vss-main && tar -x -C /tmp/vss-main)
    .venv/bin/python bench/reconnect_storm.py --trees before=/tmp/vss-main,after=.

Bounded in time (``--deadline`` per wait); always stops its processes.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _common import seed_cms  # noqa: E402
from signalling import SALT, SECRET  # noqa: E402

from vss.protocols.messages import Action, DeviceRecord, GrantRecord, UserRecord  # noqa: E402
from vss.testing import records  # noqa: E402
from vss.testing.processes import other_listeners_on_port_0  # noqa: E402

BIN = os.path.dirname(sys.executable)


def seed(db_path, pus):
    v = records.verifier(SECRET, salt=SALT)  # one PBKDF2 for every bench identity
    devices = [DeviceRecord(device_id=f"st{i:05d}", name=f"st{i:05d}", kind=1, channels=1,
                            home_node="node-a", verifier=v, source_url="", enabled=True,
                            version=1) for i in range(pus)]
    users = [UserRecord(username="ops", verifier=v, groups=["ops"], enabled=True, version=1)]
    grants = [GrantRecord(principal="group:ops", device_id=d.device_id,
                          actions=int(Action.VIEW), version=1) for d in devices]
    seed_cms(db_path, devices, users, grants)


class Run:
    def __init__(self, tree, work, deadline):
        self.tree = os.path.abspath(tree)
        self.work = work
        self.deadline = deadline
        self.procs = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VSS_")}
        self.env["PYTHONPATH"] = self.tree

    def spawn(self, name, argv, **env):
        log = open(os.path.join(self.work, f"{name}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                env={**self.env, **env}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait(self, what, check, interval=0.1):
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            result = check()
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {self.deadline:.0f} s")

    def ports(self, name, proc):
        path = os.path.join(self.work, name, "ports.json")

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} ended; see {self.work}/{name}.log")
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f)
            return None

        return self.wait(f"{name} to start", ready, 0.05)

    def status(self):
        try:
            with open(os.path.join(self.work, "node-a", "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def start_cms(self, port=0):
        data = os.path.join(self.work, "cms")
        proc = self.spawn("cms", [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vss-cms",
                                  "--data-dir", data, "--db",
                                  "sqlite:" + os.path.join(data, "vss-cms.sqlite3"),
                                  "--node-listen", f"tcp:{port}:interface=127.0.0.1",
                                  "--admin-listen", "tcp:0:interface=127.0.0.1",
                                  "--heartbeat", "1"])
        self.cms = proc
        self.cms_ports = self.ports("cms", proc)

    def start_node(self, pu=0, cu=0):
        data = os.path.join(self.work, "node-a")
        for name in ("ports.json", "status.json"):
            if os.path.exists(os.path.join(data, name)):
                os.remove(os.path.join(data, name))
        proc = self.spawn("node-a", [
            os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vss-node", "--node-id", "node-a",
            "--data-dir", data, "--cms", f"tcp:127.0.0.1:{self.cms_ports['node']}",
            "--cluster-secret-file", os.path.join(self.work, "cms", "cluster.secret"),
            "--pu-listen", f"tcp:{pu}:interface=127.0.0.1",
            "--cu-listen", f"tcp:{cu}:interface=127.0.0.1",
            "--rtsp-listen", "tcp:0:interface=127.0.0.1", *other_listeners_on_port_0()])
        self.node = proc
        self.node_ports = self.ports("node-a", proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def one(label, tree, scenario, pus, deadline, keep, seeded, cms_late=10.0):
    work = tempfile.mkdtemp(prefix=f"vss-storm-{label}-")
    os.makedirs(os.path.join(work, "cms"))
    shutil.copy(seeded, os.path.join(work, "cms", "vss-cms.sqlite3"))
    run = Run(tree, work, deadline)
    out = {"tree": label, "scenario": scenario, "pus": pus}
    try:
        run.start_cms()
        run.start_node()
        run.wait("node-a to synchronise", lambda: ((run.status() or {}).get("central") or {})
                 .get("applied_seq", 0) > 0)
        pu = run.spawn("pus", [os.path.join(BIN, "vss-pu"), "--node",
                               f"tcp:127.0.0.1:{run.node_ports['pu']}", "--count", str(pus),
                               "--id-format", "st{:05d}", "--start", "0", "--ramp", "1000",
                               "--quiet"], VSS_PU_SECRET=SECRET)
        started = time.monotonic()
        run.wait("every PU online", lambda: ((run.status() or {}).get("rgm") or {})
                 .get("pus_online") == pus, 0.2)
        out["first_login_s"] = round(time.monotonic() - started, 1)
        if scenario in ("cms-down", "fresh-cms-late"):
            run.cms.send_signal(signal.SIGKILL)
            run.cms.wait()
        run.node.send_signal(signal.SIGKILL)
        run.node.wait()
        if scenario in ("fresh", "fresh-cms-late"):
            data = os.path.join(work, "node-a")
            for name in os.listdir(data):
                path = os.path.join(data, name)
                if os.path.isfile(path) and name not in ("node.secret",):
                    os.remove(path)
        log_at = os.path.getsize(os.path.join(work, "pus.log"))
        restarted = time.monotonic()
        run.start_node(run.node_ports["pu"], run.node_ports["cu"])
        if scenario == "fresh-cms-late":
            time.sleep(max(0.0, cms_late - (time.monotonic() - restarted)))
            cms_back = time.monotonic()
            run.start_cms(run.cms_ports["node"])
        timeline = {}
        marks = [5, 10, 20, 30, 60, 90, 120]

        def all_back():
            rgm = (run.status() or {}).get("rgm") or {}
            online = rgm.get("pus_online", 0)
            elapsed = time.monotonic() - restarted
            while marks and elapsed >= marks[0]:
                timeline[marks.pop(0)] = online
            return online == pus and rgm

        try:
            rgm = run.wait("every PU online again", all_back, 0.2)
            out["back_s"] = round(time.monotonic() - restarted, 1)
            if scenario == "fresh-cms-late":
                out["after_cms_s"] = round(time.monotonic() - cms_back, 1)
        except TimeoutError:
            rgm = (run.status() or {}).get("rgm") or {}
            out["back_s"] = None
        out["online_at"] = timeline
        out["online_end"] = rgm.get("pus_online")
        out["auth_failures"] = rgm.get("auth_failures")
        out["not_ready"] = rgm.get("not_ready", "-")
        with open(os.path.join(work, "pus.log"), "rb") as f:
            f.seek(log_at)
            text = f.read().decode("utf-8", "replace")
        out["throttled_lines"] = text.count("AUTH_THROTTLED") + text.count("too many failed")
        out["auth_failed_lines"] = text.count("wrong identity or credentials")
        pu.poll()
    finally:
        run.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            out["work"] = work
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pus", type=int, default=5000)
    p.add_argument("--trees", default=f"this={ROOT}",
                   help="label=PATH,... code trees to measure side by side")
    p.add_argument("--scenarios", default="restart,cms-down,fresh,fresh-cms-late")
    p.add_argument("--deadline", type=float, default=240.0, help="seconds per wait")
    p.add_argument("--cms-late", type=float, default=10.0,
                   help="fresh-cms-late: seconds CMS stays down after the node restarts")
    p.add_argument("--keep", action="store_true", help="keep the work directories")
    args = p.parse_args()
    trees = [t.split("=", 1) for t in args.trees.split(",") if t]
    results = []
    template = tempfile.mkdtemp(prefix="vss-storm-db-")
    seeded = os.path.join(template, "vss-cms.sqlite3")
    seed(seeded, args.pus)  # once (the reactor runs once per process), copied for each run
    try:
        for scenario in [s for s in args.scenarios.split(",") if s]:
            for label, tree in trees:
                print(f"-- {label} ({tree}), {scenario}, {args.pus} PUs", flush=True)
                r = one(label, tree, scenario, args.pus, args.deadline, args.keep, seeded,
                        args.cms_late)
                print(json.dumps(r), flush=True)
                results.append(r)
    finally:
        shutil.rmtree(template, ignore_errors=True)
    print()
    print(f"{'tree':<10} {'scenario':<9} {'PUs':>5} {'all back after':>15} {'auth fail':>9} "
          f"{'not ready':>9} {'throttled':>9}  online at 5/10/20/30/60 s")
    for r in results:
        back = f"{r['back_s']} s" if r["back_s"] is not None else f">{args.deadline:.0f} s"
        if "after_cms_s" in r:
            back = f"{r['after_cms_s']} s*"
        at = "/".join(str(r["online_at"].get(m, "-")) for m in (5, 10, 20, 30, 60))
        print(f"{r['tree']:<10} {r['scenario']:<9} {r['pus']:>5} {back:>15} "
              f"{r['auth_failures']!s:>9} {r['not_ready']!s:>9} {r['throttled_lines']:>9}  {at}")
    if any("after_cms_s" in r for r in results):
        print("* counted from CMS's return")


if __name__ == "__main__":
    main()
