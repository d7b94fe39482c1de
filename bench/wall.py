"""
TV wall benchmark (docs/performance.md, "TV walls and decoders"): operators on one node
change what the tiles of decoders on two other nodes show; the time from the command to
the first decoded frame on the new tile (p50, p99) and the commands lost.

Real processes: ``twistd vss-cms`` (SQLite, seeded before it starts), three ``twistd
vss-node`` (node-a: the operators; node-b and node-c: the decoders and the cameras),
``vss-pu`` cameras (``--cameras``, half homed on node-b, half on node-c, publishing
640x360 H.264 at 25 fps with a GOP of 2 s, the simulated camera's default) and
``vss-decoder`` processes (``--decoders`` decoders of 4 tiles, half logged in to node-b,
half to node-c, ``--per-process`` per process), each pulling its tiles with RTSP and
decoding them with PyAV. The operators are this process: ``--rate`` WALL_ASSIGN commands
per second on node-a, round-robin over the tiles, each a camera the tile does not show
(half of them homed on the other node than the decoder's); a command is sent at ``t0``
and answered with the wall state's version; the decoder writes when the first frame of
that tile change was decoded (``--events`` of vss-decoder), on the same clock.

A command is *lost* when it was refused or unanswered, or when its tile change never
showed a frame within ``--patience`` s (the tiles are changed seldom enough, every
``4 * decoders / rate`` s, for a change to be shown before the next).

    .venv/bin/python bench/wall.py                                  # 8 decoders, 2/s
    .venv/bin/python bench/wall.py --decoders 20 --rate 5 --seconds 60

Bounded in time (``--deadline``); always stops its processes.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _common import seed_cms, stop_and_clean, wait_json  # noqa: E402
from signalling import SALT, SECRET  # noqa: E402

from vss.client import SignallingClient, connect  # noqa: E402
from vss.protocols.messages import (  # noqa: E402
    Action,
    CuKind,
    DeviceRecord,
    GrantRecord,
    MsgType,
    Role,
    Stream,
    UserRecord,
    WallAssign,
    WallQuery,
)
from vss.testing import records  # noqa: E402
from vss.testing.processes import other_listeners_on_port_0  # noqa: E402

BIN = os.path.dirname(sys.executable)
NODES = ("node-a", "node-b", "node-c")
WALL_NODES = ("node-b", "node-c")
TILES = 4


def seed(db_path, cameras, decoders, operators):
    v = records.verifier(SECRET, salt=SALT)  # one PBKDF2 for every bench identity
    devices = [DeviceRecord(device_id=f"cam{i:03d}", name=f"cam{i:03d}", kind=1, channels=1,
                            home_node=WALL_NODES[i % 2], verifier=v, source_url="",
                            enabled=True, version=1) for i in range(cameras)]
    users = [UserRecord(username=f"dec{j:03d}", verifier=v, groups=["walls"], enabled=True,
                        version=1) for j in range(decoders)]
    users += [UserRecord(username=f"op{k:02d}", verifier=v, groups=["ops"], enabled=True,
                         version=1) for k in range(operators)]
    grants = [GrantRecord(principal="group:walls", device_id=d.device_id,
                          actions=int(Action.VIEW), version=1) for d in devices]
    grants += [GrantRecord(principal="group:ops", device_id=f"cu:dec{j:03d}",
                           actions=int(Action.WALL), version=1) for j in range(decoders)]
    seed_cms(db_path, devices, users, grants)



def status(work, node):
    try:
        with open(os.path.join(work, node, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def first_frames(work):
    """{(wall, tile, version): first frame time} from every decoder's events file."""
    out = {}
    for name in os.listdir(work):
        if name.startswith("frames-") and name.endswith(".jsonl"):
            with open(os.path.join(work, name)) as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue  # a line being written
                    out.setdefault((e["wall"], e["tile"], e["version"]), e["first_frame"])
    return out


def run_load(args, work, ports):
    """The operators in this process; returns the commands sent and their answers."""
    from twisted.internet import defer, reactor, task  # the reactor: in this process only

    cameras = [f"cam{i:03d}" for i in range(args.cameras)]
    walls = [f"dec{j:03d}" for j in range(args.decoders)]
    shown = {}  # (wall, tile) -> camera
    sent = []  # [wall, tile, camera, t0, version or None, error or None]
    rng = random.Random(7)

    @defer.inlineCallbacks
    def main():
        ops = []
        for k in range(args.operators):
            c = SignallingClient(Role.CU, f"op{k:02d}", SECRET, kind=CuKind.MOC)
            yield connect(reactor, f"tcp:127.0.0.1:{ports['node-a']['cu']}", c)
            ops.append(c)
        # every decoder reachable from node-a with its 4 tiles (routes learnt through CMS)
        end = time.monotonic() + 120
        for wall in walls:
            while True:
                try:
                    s = (yield ops[0].request(MsgType.WALL_STATE, WallQuery(wall_id=wall))).body
                    if len(s.tiles) == TILES:
                        break
                except Exception:  # noqa: BLE001 - not logged in yet
                    pass
                if time.monotonic() > end:
                    raise RuntimeError(f"decoder {wall} is not reachable from node-a")
                yield task.deferLater(reactor, 0.5, lambda: None)
        print(f"{len(walls)} decoders of {TILES} tiles reachable from node-a", file=sys.stderr)
        order = [(w, t) for t in range(TILES) for w in walls]
        state = {"next": 0, "credit": 0.0, "last": time.monotonic(), "n": 0}

        def fire():
            now = time.monotonic()
            state["credit"] += args.rate * (now - state["last"])
            state["last"] = now
            while state["credit"] >= 1:
                state["credit"] -= 1
                wall, tile = order[state["next"] % len(order)]
                state["next"] += 1
                choices = [c for c in cameras if c != shown.get((wall, tile))]
                camera = rng.choice(choices)
                shown[(wall, tile)] = camera
                op = ops[state["n"] % len(ops)]
                state["n"] += 1
                entry = [wall, tile, camera, time.time(), None, None]
                sent.append(entry)
                d = op.request(MsgType.WALL_ASSIGN, WallAssign(
                    wall_id=wall, tile=tile, device_id=camera, channel=0,
                    stream=Stream.MAIN))
                d.addCallbacks(lambda msg, e=entry: e.__setitem__(4, msg.body.version),
                               lambda f, e=entry: e.__setitem__(5, f.getErrorMessage()))

        loop = task.LoopingCall(fire)
        loop.start(0.02)
        yield task.deferLater(reactor, args.seconds, lambda: None)
        loop.stop()
        yield task.deferLater(reactor, args.patience, lambda: None)
        for c in ops:
            if c.link is not None:
                c.link.transport.abortConnection()

    def run(_reactor):
        return main()

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return sent


def figures(sent, frames, warmup):
    t_first = sent[0][3] if sent else 0
    latencies, lost, refused, unanswered = [], [], 0, 0
    for wall, tile, camera, t0, version, error in sent:
        if t0 - t_first < warmup:
            continue  # the first pulls of each camera on each node
        if error is not None:
            refused += 1
            lost.append((wall, tile, camera, error))
            continue
        if version is None:
            unanswered += 1
            lost.append((wall, tile, camera, "unanswered"))
            continue
        at = frames.get((wall, tile, version))
        if at is None:
            lost.append((wall, tile, camera, "no frame"))
            continue
        latencies.append(at - t0)
    counted = len(latencies) + len(lost)
    return {"commands": counted, "shown": len(latencies), "lost": len(lost),
            "refused": refused, "unanswered": unanswered,
            "p50_ms": round(pct(latencies, 0.5) * 1000), "p90_ms": round(pct(latencies, 0.9) * 1000),
            "p99_ms": round(pct(latencies, 0.99) * 1000),
            "max_ms": round(max(latencies or [0]) * 1000), "lost_examples": lost[:5]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decoders", type=int, default=8)
    ap.add_argument("--per-process", type=int, default=4, help="decoders per vss-decoder")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--operators", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2.0, help="commands/s, all operators")
    ap.add_argument("--seconds", type=float, default=60.0, help="commands are sent so long")
    ap.add_argument("--warmup", type=float, default=10.0,
                    help="commands of the first seconds are not counted (first pulls)")
    ap.add_argument("--patience", type=float, default=10.0,
                    help="a tile change without a frame after the end plus this is lost")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--deadline", type=float, default=900.0, help="hard stop, seconds")
    ap.add_argument("--seed", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed:
        return seed(args.seed, args.cameras, args.decoders, args.operators)
    if args.cameras < 2 or args.decoders < 2:
        ap.error("--cameras and --decoders: at least 2")

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("deadline")))
    signal.alarm(int(args.deadline))
    work = tempfile.mkdtemp(prefix="vss-wallbench-")
    procs = {}
    logs = []
    ok = False
    try:
        db = os.path.join(work, "cms", "vss-cms.sqlite3")
        os.makedirs(os.path.dirname(db))
        subprocess.check_call([sys.executable, __file__, "--seed", db, "--cameras",
                               str(args.cameras), "--decoders", str(args.decoders),
                               "--operators", str(args.operators)])

        def log(name):
            f = open(os.path.join(work, f"{name}.log"), "wb")  # noqa: SIM115
            logs.append(f)
            return f

        env = {k: v for k, v in os.environ.items() if not k.startswith("VSS_")}
        twistd = os.path.join(BIN, "twistd")
        procs["cms"] = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "vss-cms", "--data-dir", os.path.join(work, "cms"),
             "--db", "sqlite:" + db, "--node-listen", "tcp:0:interface=127.0.0.1",
             "--admin-listen", "tcp:0:interface=127.0.0.1"],
            stdout=log("cms"), stderr=subprocess.STDOUT, cwd=work, env=env)
        ports = {"cms": wait_json(os.path.join(work, "cms", "ports.json"), procs["cms"], "cms")}
        for node in NODES:
            procs[node] = subprocess.Popen([
                twistd, "-n", "--pidfile=", "vss-node", "--node-id", node,
                "--data-dir", os.path.join(work, node),
                "--cms", f"tcp:127.0.0.1:{ports['cms']['node']}",
                "--cluster-secret-file", os.path.join(work, "cms", "cluster.secret"),
                *other_listeners_on_port_0(("pu-listen", "cu-listen", "rtsp-listen")),
                "--pu-listen", "tcp:0:interface=127.0.0.1",
                "--cu-listen", "tcp:0:interface=127.0.0.1",
                "--rtsp-listen", "tcp:0:interface=127.0.0.1"],
                stdout=log(node), stderr=subprocess.STDOUT, cwd=work, env=env)
        for node in NODES:
            ports[node] = wait_json(os.path.join(work, node, "ports.json"), procs[node], node)
            end = time.monotonic() + 60
            while not (status(work, node).get("central", {}).get("applied_seq") or 0) > 0:
                if time.monotonic() > end:
                    raise RuntimeError(f"{node} did not synchronise with CMS")
                time.sleep(0.1)
        for cam in range(args.cameras):
            node = WALL_NODES[cam % 2]
            procs[f"pu-cam{cam}"] = subprocess.Popen(
                [os.path.join(BIN, "vss-pu"), "--node", f"tcp:127.0.0.1:{ports[node]['pu']}",
                 "--id", f"cam{cam:03d}"],
                stdout=log(f"pu-cam{cam}"), stderr=subprocess.STDOUT, cwd=work,
                env={**env, "VSS_PU_SECRET": SECRET})
        accounts = [f"dec{j:03d}" for j in range(args.decoders)]
        for n, start in enumerate(range(0, args.decoders, args.per_process)):
            group = accounts[start:start + args.per_process]
            node = WALL_NODES[n % 2]
            name = f"decoders-{n}"
            argv = [os.path.join(BIN, "vss-decoder"), "--node",
                    f"tcp:127.0.0.1:{ports[node]['cu']}", "--layout", str(TILES),
                    "--events", os.path.join(work, f"frames-{n}.jsonl"), "-q"]
            if len(group) == 1:
                argv += ["--id", group[0]]
            else:
                argv += ["--count", str(len(group)), "--start", str(start),
                         "--id-format", "dec{:03d}"]
            procs[name] = subprocess.Popen(argv, stdout=log(name), stderr=subprocess.STDOUT,
                                           cwd=work, env={**env, "VSS_PASSWORD": SECRET})
        load0 = os.getloadavg()
        sent = run_load(args, work, ports)
        res = figures(sent, first_frames(work), args.warmup)
        res.update({"decoders": args.decoders, "tiles": args.decoders * TILES,
                    "cameras": args.cameras, "rate": args.rate, "seconds": args.seconds,
                    "load_before": [round(x, 2) for x in load0],
                    "load_after": [round(x, 2) for x in os.getloadavg()]})
        if args.json:
            print(json.dumps(res, indent=1, sort_keys=True))
        else:
            print(f"{res['decoders']} decoders ({res['tiles']} tiles) on node-b and node-c, "
                  f"{res['cameras']} cameras, {args.rate} commands/s from node-a for "
                  f"{args.seconds:.0f} s: {res['commands']} counted, {res['shown']} shown, "
                  f"{res['lost']} lost ({res['refused']} refused, {res['unanswered']} "
                  f"unanswered); command to first decoded frame p50 {res['p50_ms']} ms, "
                  f"p90 {res['p90_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms; "
                  f"load {res['load_before']} -> {res['load_after']}")
            if res["lost_examples"]:
                print(f"lost: {res['lost_examples']}")
        ok = True
    finally:
        signal.alarm(0)
        stop_and_clean(procs.values(), logs, work, args.keep or not ok)


if __name__ == "__main__":
    main()
