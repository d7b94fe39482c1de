"""
The browser client in real headless Chromium (Debian's chromium, ``vss.testing.browser``)
against a real ``twistd vss-node`` (``--static``) and a real ``vss-pu`` camera (H.264
640x360, 25 fps, GOP 2 s) on loopback:

- time to first frame, live: from the click on a camera (MEDIA_OPEN over the page's CU
  link, the media WebSocket, MSE) to the first picture Chromium presents
  (``requestVideoFrameCallback``): once cold (the camera's encoder is not running yet:
  the simulated PU starts a process), then over ``--opens`` opens of the flowing
  stream, then ``--fresh`` opens after the node's packager closed (the first browser of
  a stream that flows for others: it starts from the SS's last GOP); p50/p99;
- time to first frame, playback: ``--playbacks`` playbacks (MEDIA_OPEN with purpose
  PLAYBACK, the node's playback child, the page's PLAY) of 60 s of recorded footage
  (``bench/playback.py``'s), each from a random time; p50/p99;
- live latency: for every presented picture, Chromium's presentation time minus the
  time the picture reached the node's SS (carried in each fragment); p50/p99;
- CPU of the node per Gbit sent, browser viewers (media WebSocket clients, no browser:
  each reads the stream as fast as it comes) side by side with RTSP viewers (interleaved
  TCP), in one run.

    .venv/bin/python bench/browser.py [--opens 50] [--fresh 5] [--playbacks 20] [--viewers 40] [--seconds 15]

Prints one line per figure. The machine is shared: read the ratios, measured side by
side, rather than the absolute numbers.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import proc_cpu  # noqa: E402
from playback import make_footage  # noqa: E402

from vss.protocols.messages import Action  # noqa: E402
from vss.rgm.localcentral import MemoryCentral  # noqa: E402
from vss.testing import browser as harness  # noqa: E402
from vss.testing import records  # noqa: E402
from vss.web.media import PACKAGER_LINGER  # noqa: E402

BIN = os.path.dirname(sys.executable)
ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def start(work):
    static = os.path.join(work, "static.json")
    c = MemoryCentral()
    c.add_device(records.device("cam1", "cam1-secret", home_node="n1", channels=1))
    c.add_user(records.user("alice", "alice-pw"))
    c.add_grant(records.grant("user:alice", "cam1", ALL))
    # recorded footage to play back (bench/playback.py's: 60 s, 1280x720, GOP 2 s)
    c.add_device(records.device("bench0", "bench0-secret", home_node="n1", channels=1))
    c.add_grant(records.grant("user:alice", "bench0", ALL))
    c.save(static)
    data = os.path.join(work, "n1")
    os.makedirs(data)
    footage_at = (int(time.time()) - 3600) * 1000
    make_footage(data, footage_at)
    log = open(os.path.join(work, "node.log"), "wb")  # noqa: SIM115 - lives with the node
    node = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "vss-node",
                             "--node-id", "n1", "--data-dir", data, "--static", static,
                             *[a for n in ("pu", "cu", "rtsp", "node", "http")
                               for a in (f"--{n}-listen", "tcp:0:interface=127.0.0.1")]],
                            stdout=log, stderr=log, cwd=work)
    ports_file = os.path.join(data, "ports.json")
    deadline = time.monotonic() + 30
    while not os.path.exists(ports_file):
        if time.monotonic() > deadline or node.poll() is not None:
            raise SystemExit("the node did not start: see " + os.path.join(work, "node.log"))
        time.sleep(0.05)
    with open(ports_file) as f:
        ports = json.load(f)
    env = {**os.environ, "VSS_PU_SECRET": "cam1-secret"}
    pu = subprocess.Popen([os.path.join(BIN, "vss-pu"), "--node", f"tcp:127.0.0.1:{ports['pu']}",
                           "--id", "cam1"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    return node, pu, ports, footage_at


STEPS = ("sourceopen", "wsopen", "fragment", "append", "frame")


def first_frames(b, opens, playback_at=None, steps=None, device="cam1"):
    """Seconds from the open to the first presented picture, ``opens`` times; the
    player's marks of each open (ms from the open) appended to ``steps``."""
    out = []
    for _ in range(opens):
        ms = b.js_async("""
            const done = arguments[arguments.length - 1];
            const at = arguments[0];
            const tile = document.querySelector('.tile');
            const t0 = performance.now();
            window.vss.watch(arguments[1], at ? {at} : {});
            const check = () => {
              if (Number(tile.dataset.frames) >= 1) {
                const marks = {}, p = window.vss.tiles[0].player;
                for (const [k, v] of Object.entries(p ? p.marks : {})) marks[k] = v - t0;
                done([performance.now() - t0, marks]);
              }
              else if (performance.now() - t0 > 20000) done(null);
              else setTimeout(check, 2);
            };
            setTimeout(check, 0);""", playback_at, device)
        if ms is not None:
            out.append(ms[0] / 1000)
            if steps is not None:
                steps.append(ms[1])
    return out


def print_steps(what, steps):
    """The median and the slowest open's time of each step (ms from the click)."""
    if not steps:
        return
    slowest = max(steps, key=lambda m: m.get("frame", 0))
    parts = [f"{k} {pct([m[k] for m in steps if k in m], 50):.0f}/{slowest.get(k, 0):.0f}"
             for k in ("start", *STEPS)]
    print(f"  {what}, ms from the click, median/slowest open: " + ", ".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--opens", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0, help="latency sample")
    ap.add_argument("--viewers", type=int, default=40)
    ap.add_argument("--playbacks", type=int, default=20,
                    help="playbacks opened from a random time of 60 s of recorded footage")
    ap.add_argument("--fresh", type=int, default=5,
                    help="opens after the node's packager closed (11.5 s apart)")
    args = ap.parse_args(argv)
    if harness.unavailable():
        raise SystemExit(f"no headless Chromium: {harness.unavailable()}")
    work = tempfile.mkdtemp(prefix="vss-bench-browser-")
    node, pu, ports, footage_at = start(work)
    b = None
    try:
        time.sleep(3)  # the PU logs in
        b = harness.Browser()
        b.open(f"http://127.0.0.1:{ports['http']}/")
        b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        b.js("document.getElementById('user').value = 'alice';"
             "document.getElementById('password').value = 'alice-pw';"
             "document.getElementById('login-form').requestSubmit()")
        b.wait_for("the app", "return document.body.dataset.state === 'ready'")
        cold = first_frames(b, 1)
        print(f"live first frame, cold (the camera's encoder not running: the PU starts "
              f"it): {cold[0] * 1000:.0f} ms" if cold else "cold open: no picture")
        steps = []
        live = first_frames(b, args.opens, steps=steps)
        print(f"live first frame over {len(live)} opens: p50 {pct(live, 50) * 1000:.0f} ms, "
              f"p99 {pct(live, 99) * 1000:.0f} ms")
        print_steps("live", steps)
        # the same with the node's packager gone (a camera no browser watched for a
        # while, whose stream flows for a recording or an RTSP viewer): the SS's GOP
        b.js("window.vss.tiles[0].player && window.vss.tiles[0].player.close()")
        fresh, steps = [], []
        for _ in range(args.fresh):
            time.sleep(PACKAGER_LINGER + 1.5)  # the node's packager closes, the SS's
            fresh += first_frames(b, 1, steps=steps)
            b.js("window.vss.tiles[0].player && window.vss.tiles[0].player.close()")
        print(f"live first frame, no packager yet, over {len(fresh)} opens: "
              f"p50 {pct(fresh, 50) * 1000:.0f} ms, p99 {pct(fresh, 99) * 1000:.0f} ms")
        print_steps("no packager yet", steps)
        first_frames(b, 1)
        b.js("const t = window.vss.tiles[0]; t.player.latency = [];")
        time.sleep(args.seconds)
        lat = b.js("return window.vss.tiles[0].player.latency")
        print(f"live latency over {len(lat)} pictures: p50 {pct(lat, 50):.0f} ms, "
              f"p99 {pct(lat, 99):.0f} ms")
        cpu = cpu_per_gbit(ports, node.pid, args.viewers, args.seconds)
        for kind, (gbit, cpu_s, per) in cpu.items():
            print(f"{kind}: {args.viewers} viewers, {gbit * 8:.3f} Gbit sent in "
                  f"{args.seconds:.0f} s, node CPU {cpu_s:.2f} s, {per:.2f} CPU s per Gbit")
        ratio = cpu["browser"][2] / cpu["rtsp"][2] if cpu["rtsp"][2] else float("nan")
        print(f"browser / RTSP CPU per Gbit: {ratio:.2f}")
        # last: each playback's children (Python and PyAV) load the machine a while
        steps = []
        rng = random.Random(7)
        played = []
        for _ in range(args.playbacks):
            at = footage_at + rng.randrange(0, 50_000)
            played += first_frames(b, 1, playback_at=at, steps=steps, device="bench0")
        print(f"playback first frame over {len(played)} opens (a new playback each, from a "
              f"random time): p50 {pct(played, 50) * 1000:.0f} ms, "
              f"p99 {pct(played, 99) * 1000:.0f} ms")
        print_steps("playback", steps)
        b.js("window.vss.tiles[0].player && window.vss.tiles[0].player.close()")
    finally:
        if b is not None:
            b.close()
        for p in (pu, node):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def media_url(ports):
    """An rtsp:// URL of cam1's live stream (MEDIA_OPEN as alice)."""
    out = subprocess.run([os.path.join(BIN, "vssctl"), "live", "cam1"], capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "VSS_NODE": f"tcp:127.0.0.1:{ports['cu']}",
                              "VSS_USER": "alice", "VSS_PASSWORD": "alice-pw"})
    for word in out.stdout.split():
        if word.startswith("rtsp://"):
            return word
    raise SystemExit(f"no URL from vssctl: {out.stdout} {out.stderr}")


def _ask(s, text):
    s.sendall(text.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    head = head.decode("latin-1")
    length = [int(ln.split(":", 1)[1]) for ln in head.splitlines()
              if ln.lower().startswith("content-length:")]
    while length and len(rest) < length[0]:
        rest += s.recv(65536)
    return head, rest.decode("latin-1")


def rtsp_play(s, base, query):
    """DESCRIBE, SETUP of the video track over TCP, PLAY (blocking)."""
    _, sdp = _ask(s, f"DESCRIBE {base}?{query} RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    control = [ln.split(":", 1)[1].strip() for ln in sdp.splitlines()
               if ln.startswith("a=control:") and ln.strip() != "a=control:*"][0]
    track = control if control.startswith("rtsp://") else f"{base}?{query}/{control}"
    head, _ = _ask(s, f"SETUP {track} RTSP/1.0\r\nCSeq: 2\r\nTransport: "
                      "RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n")
    session = [ln.split(":", 1)[1].split(";")[0].strip() for ln in head.splitlines()
               if ln.lower().startswith("session:")]
    if not session:
        raise SystemExit(f"SETUP {track} refused: {head.splitlines()[0]}")
    session = session[0]
    s.sendall(f"PLAY {base}?{query} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"
              .encode())


def cpu_per_gbit(ports, pid, viewers, seconds):
    """{kind: (GB read, node CPU s, CPU s per Gbit)} for RTSP and browser viewers."""
    from urllib.parse import urlsplit

    results = {}
    for kind in ("rtsp", "browser"):
        socks = []
        for _ in range(viewers):
            u = urlsplit(media_url(ports))
            s = socket.create_connection((u.hostname, u.port if kind == "rtsp"
                                          else ports["http"]), timeout=10)
            path = f"{u.path}?{u.query}"
            if kind == "rtsp":
                rtsp_play(s, f"rtsp://{u.hostname}:{u.port}{u.path}", u.query)
            else:
                key = "dGhlIHNhbXBsZSBub25jZQ=="
                s.sendall(f"GET /media{path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: vss.media.v1\r\n"
                          "\r\n".encode())
            s.setblocking(False)
            socks.append(s)
        time.sleep(2)  # all playing
        for s in socks:  # what came before the measure
            try:
                while s.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        got = 0
        c0 = proc_cpu(pid)
        end = time.monotonic() + seconds
        import select

        while time.monotonic() < end:
            ready, _, _ = select.select(socks, [], [], 0.2)
            for s in ready:
                try:
                    got += len(s.recv(1 << 20))
                except BlockingIOError:
                    pass
        cpu = proc_cpu(pid) - c0
        for s in socks:
            s.close()
        gbyte = got / 1e9
        results[kind] = (gbyte, cpu, cpu / (gbyte * 8) if got else float("nan"))
        time.sleep(3)
    return results


if __name__ == "__main__":
    main()
