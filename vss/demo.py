"""
``make run`` (``python -m vss.demo``): a whole platform on one machine, on embedded
defaults (SQLite, in-process stores, data under ./run):

- the central platform (``twistd vss-cms``), admin API on 127.0.0.1:7280;
- two nodes (``twistd vss-node``) node-a and node-b;
- simulated cameras (``vss-pu``): two IPCs on each node and a 4-channel encoder;
- a user ``alice`` granted every camera, an admin token, and an operator ``admin`` of
  the console (the central platform's web page, on the admin API's address);
- a TV wall account ``wall1`` (its screen: the page ``/wall`` of a node) and a set-top
  decoder ``dec1`` (``vss-decoder``, logged in to node-b), which alice may drive from
  either node.

Passwords, device secrets and the admin token are random, made on the first run and
kept in ./run/credentials.json (mode 0600). Stopping it (Ctrl-C) stops everything it
started.
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time

from twisted.internet import defer, task

from vss.cms.operators import hash_password
from vss.cms.store import hash_token, make_static_store
from vss.cms.store.operators import ADMINISTRATOR
from vss.protocols.messages import Action
from vss.testing.records import verifier

BIN = os.path.dirname(sys.executable)
DEVICES = [
    # device id, kind, channels, home node
    ("cam-a1", 1, 1, "node-a"),
    ("cam-a2", 1, 1, "node-a"),
    ("dvs-a3", 2, 4, "node-a"),
    ("cam-b1", 1, 1, "node-b"),
    ("cam-b2", 1, 1, "node-b"),
]


#: the demo camera that raises simulated motion (vss-pu --events)
EVENT_CAMERA = "cam-b1"
#: the demo's TV wall (a page) and decoder (vss-decoder on node-b): CU accounts
WALLS = ("wall1", "dec1")


def _week():
    """Every day of the week, whole days: a schedule that always records."""
    return ",".join(f"{d} 00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat",
                                                   "sun"))


def credentials(run_dir):
    path = os.path.join(run_dir, "credentials.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f), False
    creds = {
        "alice_password": secrets.token_urlsafe(12),
        "wall_password": secrets.token_urlsafe(12),
        "pu_secret_template": "{id}." + secrets.token_urlsafe(16),
        "admin_token": secrets.token_urlsafe(32),
        "operator": "admin",
        "operator_password": secrets.token_urlsafe(12),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=1)
    return creds, True


def add_operator(run_dir, db_path, creds):
    """A run directory made before the console had operators gets one (kept in its
    credentials.json, still 0600)."""
    if "operator_password" in creds:
        return False
    creds["operator"] = "admin"
    creds["operator_password"] = secrets.token_urlsafe(12)
    path = os.path.join(run_dir, "credentials.json")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=1)
    os.replace(tmp, path)
    _run_on_store(db_path, lambda store: _operator(store, creds))
    return True


def _operator(store, creds):
    return store.add_operator(creds["operator"], hash_password(creds["operator_password"]),
                              ADMINISTRATOR)


def _run_on_store(db_path, work):
    """Open the CMS database, run ``work(store)`` (a Deferred), close it."""

    @defer.inlineCallbacks
    def run(reactor):
        store = make_static_store("sqlite:" + db_path, reactor=reactor)
        yield store.open()
        try:
            yield work(store)
        finally:
            yield store.close()

    try:
        task.react(lambda reactor: run(reactor))
    except SystemExit as e:  # react always exits; only a failure matters here
        if e.code:
            raise


def seed(db_path, creds):
    """Create the demo's users, devices, grants and admin token in the CMS database."""

    @defer.inlineCallbacks
    def run(reactor):
        store = make_static_store("sqlite:" + db_path, reactor=reactor)
        yield store.open()
        try:
            yield store.upsert_user("alice", verifier(creds["alice_password"]), ["operators"])
            for device_id, kind, channels, home in DEVICES:
                secret = creds["pu_secret_template"].replace("{id}", device_id)
                yield store.upsert_device(device_id, device_id.upper(), kind, channels, home,
                                          verifier(secret))
                yield store.set_grant("group:operators", device_id,
                                      int(Action.VIEW | Action.PTZ | Action.CONFIG
                                          | Action.RECORD))
            # the wall and the decoder show every camera; alice's operators drive them
            for wall in WALLS:
                yield store.upsert_user(wall, verifier(creds["wall_password"]), ["walls"])
                yield store.set_grant("group:operators", f"cu:{wall}", int(Action.WALL))
            for device_id, *_ in DEVICES:
                yield store.set_grant("group:walls", device_id, int(Action.VIEW))
            yield store.add_admin_token("demo-admin", hash_token(creds["admin_token"]))
            yield _operator(store, creds)
        finally:
            yield store.close()

    try:
        task.react(lambda reactor: run(reactor))
    except SystemExit as e:  # react always exits; only a failure matters here
        if e.code:
            raise


class Supervisor:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.children = []

    def spawn(self, name, argv, env=None):
        log = open(os.path.join(self.run_dir, f"{name}.log"), "ab")  # noqa: SIM115
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir,
                             env={**os.environ, **(env or {})}, start_new_session=True)
        self.children.append((name, p))
        return p

    def wait_file(self, path, proc, timeout=30):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[0]} stopped; see its log in {self.run_dir}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{path} did not appear; see the logs in {self.run_dir}")
            time.sleep(0.1)
        with open(path) as f:
            return json.load(f)

    def stop(self):
        for _name, p in reversed(self.children):
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for _name, p in self.children:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="run")
    ap.add_argument("--base-port", type=int, default=7100,
                    help="node-a uses BASE..BASE+4, node-b BASE+10..BASE+14, CMS BASE+100 "
                         "and the admin API BASE+180")
    args = ap.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    creds, fresh = credentials(run_dir)
    db = os.path.join(run_dir, "cms", "vss-cms.sqlite3")
    os.makedirs(os.path.dirname(db), exist_ok=True)
    if fresh:
        seed(db, creds)
    else:
        add_operator(run_dir, db, creds)
    for path in [os.path.join(run_dir, d, "ports.json") for d in ("cms", "node-a", "node-b")]:
        if os.path.exists(path):
            os.remove(path)

    b = args.base_port
    sup = Supervisor(run_dir)

    def stop(*_):
        sup.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    twistd = os.path.join(BIN, "twistd")
    pids = {}
    try:
        cms = sup.spawn("cms", [twistd, "-n", "--pidfile=", "vss-cms", "--data-dir",
                                os.path.join(run_dir, "cms"),
                                "--node-listen", f"tcp:{b + 100}:interface=127.0.0.1",
                                "--admin-listen", f"tcp:{b + 180}:interface=127.0.0.1"])
        sup.wait_file(os.path.join(run_dir, "cms", "ports.json"), cms)
        secret_file = os.path.join(run_dir, "cms", "cluster.secret")
        for i, node in enumerate(("node-a", "node-b")):
            p = b + 10 * i
            proc = sup.spawn(node, [
                twistd, "-n", "--pidfile=", "vss-node", "--node-id", node,
                "--data-dir", os.path.join(run_dir, node),
                "--cms", f"tcp:127.0.0.1:{b + 100}", "--cluster-secret-file", secret_file,
                "--pu-listen", f"tcp:{p}:interface=127.0.0.1",
                "--cu-listen", f"tcp:{p + 1}:interface=127.0.0.1",
                "--node-listen", f"tcp:{p + 2}:interface=127.0.0.1",
                "--rtsp-listen", f"tcp:{p + 3}:interface=127.0.0.1",
                "--http-listen", f"tcp:{p + 4}:interface=127.0.0.1",
                # two streaming server workers each (MDP chooses between them)
                "--ss-workers", "2", "--ss-first-port", str(p + 6)])
            sup.wait_file(os.path.join(run_dir, node, "ports.json"), proc)
            pids[node] = proc.pid
        env = {"VSS_PU_SECRET": creds["pu_secret_template"]}
        for device_id, kind, channels, home in DEVICES:
            port = b if home == "node-a" else b + 10
            sup.spawn(f"pu-{device_id}", [
                os.path.join(BIN, "vss-pu"), "--node", f"tcp:127.0.0.1:{port}", "--id",
                device_id, "--kind", {1: "ipc", 2: "dvs", 3: "dvr"}[kind],
                "--channels", str(channels),
                # cam-b1 sees simulated motion about every 30 s (events and alarms)
                *(["--events", "30"] if device_id == EVENT_CAMERA else [])], env=env)
        if "wall_password" in creds:  # a run directory made before walls existed: none
            sup.spawn("decoder-dec1", [
                os.path.join(BIN, "vss-decoder"), "--node", f"tcp:127.0.0.1:{b + 11}",
                "--id", "dec1", "--layout", "4"], env={"VSS_PASSWORD": creds["wall_password"]})
    except BaseException:
        sup.stop()
        raise

    ctl = os.path.join(BIN, "vssctl")
    admin = os.path.join(BIN, "vss-admin")
    walls = "" if "wall_password" not in creds else f"""TV walls: open node-b's wall page on a screen and sign in as wall1 with the password
{creds['wall_password']}; the decoder dec1 runs on node-b. Drive both from node-a as alice:
  http://127.0.0.1:{b + 14}/wall
  {ctl} wall wall1 assign 0 cam-a1
  {ctl} wall dec1 tour 0 cam-a1,cam-b1 --dwell 10
  {ctl} wall dec1 show

"""
    print(f"""
vss is running: CMS, node-a, node-b and {len(DEVICES)} simulated cameras (logs in {run_dir}).

Manage the platform in a browser (the operator console: devices, users, grants,
recording schedules, nodes, the audit log), signed in as {creds['operator']} with the
password {creds['operator_password']}:
  http://127.0.0.1:{b + 180}/

Open the web client of either node in a browser (live video, PTZ, recordings) and sign in
as alice with the password below:
  node-a: http://127.0.0.1:{b + 4}/
  node-b: http://127.0.0.1:{b + 14}/

Log in as a user on either node:
  export VSS_NODE=tcp:127.0.0.1:{b + 1} VSS_USER=alice VSS_PASSWORD='{creds['alice_password']}'
  {ctl} devices
  {ctl} ptz cam-b1 goto --pan 0.5 --tilt 0.2        # cam-b1 lives on node-b: routed
  {ctl} config cam-a1 get
  (node-b's CU port is {b + 11})

Administer the platform:
  export VSS_API=http://127.0.0.1:{b + 180} VSS_ADMIN_TOKEN='{creds['admin_token']}'
  {admin} status
  {admin} user list

Record cam-a1 on a weekly schedule, then list, play back and export on either node:
  {admin} record-settings set cam-a1 --mode schedule --segment 60 --schedule '{_week()}'
  {ctl} recordings cam-a1 --from -1h
  {ctl} export cam-a1 --from -10m --to now -o clip.mp4      (once a segment has closed)
  {ctl} playback cam-a1 --at -90s --play

Events and alarms: {EVENT_CAMERA} (on node-b) sees simulated motion about every 30 s; watch it
live on node-a, list, acknowledge, record on motion and play an event back:
  {ctl} events --follow
  {ctl} events --device {EVENT_CAMERA} --type motion
  {ctl} ack NODE/SEQ {EVENT_CAMERA} --comment 'checked'     (the id in [...] of a line)
  {admin} events --device {EVENT_CAMERA}
  {admin} record-settings set {EVENT_CAMERA} --mode event --pre-event 5 --post-event 10 --event-types motion
  {ctl} playback {EVENT_CAMERA} --event NODE/SEQ --play      (a motion after the line above)

A node dies, its cameras move: kill node-a and watch them come online on node-b within
seconds (CMS moves them, the cameras ask node-b where they live now):
  export VSS_NODE=tcp:127.0.0.1:{b + 11}          # node-b's CU port
  {ctl} devices                                   # cam-a1, cam-a2, dvs-a3 on node-a
  kill -9 {pids.get("node-a", "PID")}                                  # node-a's process
  {ctl} devices                                   # a few seconds later: all on node-b

{walls}Credentials are kept in {run_dir}/credentials.json. Ctrl-C stops everything.
""", flush=True)
    gone = set()
    while True:
        for name, p in sup.children:
            if p.poll() is not None and name in pids and name not in gone:
                gone.add(name)  # a node that died: its cameras move, the rest goes on
                print(f"{name} stopped (exit {p.returncode}); its cameras move to the other "
                      f"node. See {run_dir}/{name}.log", file=sys.stderr)
            elif p.poll() is not None and not name.startswith("pu-") and name not in pids:
                print(f"{name} stopped (exit {p.returncode}); see {run_dir}/{name}.log",
                      file=sys.stderr)
                sup.stop()
                return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
