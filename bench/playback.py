"""
Playback benchmark: time from a PLAY with a Range (a seek) to the first frame.

    .venv/bin/python bench/playback.py [--seeks 20] [--no-spare] [--devices 100 --days 30]
    .venv/bin/python bench/playback.py --relay    # also through a second node, side by side

One process runs the SS (``RTSPServerFactory`` on loopback), the CDN module and its
playback service (``vss.recording.playback``) on the epoll reactor; the playback children are
real ``python -m vss.recording.playback`` processes.

The footage: 60 s of 1280x720 25 fps H.264 at 4 Mb/s, GOP 2 s (libx264 via PyAV), written
as six 10-second fragmented MP4 segments the way the recorder writes them
(``frag_keyframe+empty_moov+default_base_moof``) and catalogued with their keyframe
offsets. The catalogue also holds ``--devices`` x ``--days`` of 5-minute segment rows of
other devices (rows only), so the look-ups run on a catalogue of realistic size.

A raw RTSP client (a thread, blocking sockets, RTP over TCP) opens the playback, then for
each seek: watches 0.3 s, sends PAUSE, then PLAY with ``Range: npt=X-`` (X random in the
footage) and times from sending the PLAY to the last RTP packet (marker bit) of the first
complete picture after the reply. It prints p50, p90, p99 and max over the seeks, and the
time from MEDIA_OPEN to the first frame.

``--relay`` measures, in the same run and alternating, the same seeks through a second
node: a second SS and CDN module in the process relay the playback
(``vss.recording.remote.relay``: the RTSP pull of the holding node's playback, PLAY with Range
and PAUSE forwarded upstream), as a CU on a node that does not hold the footage gets it.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SECRET = b"bench-secret-0123456789abcdef"
FPS = 25
SEGMENT_S = 10
SEGMENTS = 6


def make_footage(data_dir, start_ms):
    """Encode and catalogue SEGMENTS x SEGMENT_S seconds for device bench0."""
    import av

    from vss.recording.catalogue import CatalogueDB, Segment, scan_fmp4, segment_name

    out_dir = os.path.join(data_dir, "recordings", "bench0", "main")
    os.makedirs(out_dir, exist_ok=True)
    src = av.open(f"testsrc2=size=1280x720:rate={FPS}", format="lavfi")
    frames = src.decode(video=0)
    db = CatalogueDB(data_dir)
    for i in range(SEGMENTS):
        seg_start = start_ms + i * SEGMENT_S * 1000
        rel = os.path.join("recordings", "bench0", "main", segment_name(seg_start) + ".mp4")
        path = os.path.join(data_dir, rel)
        with av.open(path, "w", format="mp4",
                     options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
            st = out.add_stream("libx264", rate=FPS)
            st.width, st.height, st.pix_fmt = 1280, 720, "yuv420p"
            st.bit_rate = 4_000_000
            st.codec_context.time_base = Fraction(1, FPS)
            st.options = {"preset": "ultrafast", "g": str(2 * FPS), "keyint_min": str(2 * FPS),
                          "sc_threshold": "0", "bf": "0"}
            for n in range(SEGMENT_S * FPS):
                frame = next(frames).reformat(format="yuv420p")
                frame.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every one I
                frame.pts = n
                frame.time_base = Fraction(1, FPS)
                for packet in st.encode(frame):
                    out.mux(packet)
            for packet in st.encode(None):
                out.mux(packet)
        with open(path, "rb") as f:
            info = scan_fmp4(f)
        db.add(Segment("bench0", 0, "main", seg_start, seg_start + SEGMENT_S * 1000,
                       info["size"], rel, info["fragments"]))
    src.close()
    keys = sum(len(db.get(s.path).keyframes) for s in db.list("bench0", "main", 0, 2**62)[
        "segments"])
    db.close()
    return keys


def fill_catalogue(data_dir, devices, days, end_ms):
    """Rows (no files) for devices x days of 5-minute segments of other devices."""
    from vss.recording.catalogue import CatalogueDB

    db = CatalogueDB(data_dir)
    per_day = 288
    with db.db:
        db.db.execute("BEGIN")
        for d in range(1, devices):
            rows = []
            for k in range(days * per_day):
                s = end_ms - (k + 1) * 300_000
                rows.append((f"other{d}", 0, "main", s, s + 300_000, 150_000_000,
                             f"recordings/other{d}/main/{k}.mp4"))
            db.db.executemany("INSERT INTO segments (device, channel, stream, start_ms, "
                              "end_ms, bytes, path) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    count = db.count()
    db.close()
    return count


def client(url, seeks, footage_s, rng):
    from vss.testing.rawrtsp import RawRTSP

    c = RawRTSP(url)
    t0 = time.perf_counter()
    c.start()
    c.request("PLAY", url, [("Range", "npt=0.000-")])
    c.first_frame()
    first = time.perf_counter() - t0
    times = []
    for _ in range(seeks):
        c.watch(0.3)
        c.request("PAUSE", url)
        at = rng.uniform(0, footage_s - 3)
        t0 = time.perf_counter()
        status, _, _ = c.request("PLAY", url, [("Range", f"npt={at:.3f}-")])
        assert status == 200, status
        c.first_frame()
        times.append(time.perf_counter() - t0)
    c.request("TEARDOWN", url)
    c.close()
    return first, times


def pct(values, p):
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeks", type=int, default=20)
    ap.add_argument("--no-spare", action="store_true")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--relay", action="store_true",
                    help="also seek through a second node relaying the playback")
    args = ap.parse_args()

    from twisted.internet import epollreactor

    epollreactor.install()
    from types import SimpleNamespace

    from twisted.internet import defer, reactor, threads

    from vss.cdn.service import CDNModule
    from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
    from vss.protocols.messages import MediaOpen, Purpose
    from vss.recording.playback import PlaybackService
    from vss.recording.recorder import Catalogue
    from vss.rtsp.server import RTSPServerFactory

    work = tempfile.mkdtemp(prefix="vss-bench-playback-")
    start_ms = (int(time.time()) - 3600) * 1000
    t = time.perf_counter()
    keys = make_footage(work, start_ms)
    rows = fill_catalogue(work, args.devices, args.days, start_ms)
    print(f"footage: {SEGMENTS} x {SEGMENT_S} s 1280x720 4 Mb/s, {keys} keyframes (GOP 2 s); "
          f"catalogue {rows} segments ({time.perf_counter() - t:.1f} s to make)")

    issuer = TokenIssuer(SECRET, clock=reactor)
    rtsp = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor)
    port = reactor.listenTCP(0, rtsp, interface="127.0.0.1")
    base = f"rtsp://127.0.0.1:{port.getHost().port}"
    cdn = CDNModule(SimpleNamespace(store=None, node_id="bench"), rtsp, issuer, base,
                    clock=reactor, reactor=reactor)
    catalogue = Catalogue(work, reactor=reactor)
    service = PlaybackService(cdn, catalogue, work, reactor)
    cdn.playback = service
    service.spare = not args.no_spare
    relay_cdn = None
    if args.relay:  # a second node: its own SS and CDN module, relaying from the first
        rtsp_b = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor)
        port_b = reactor.listenTCP(0, rtsp_b, interface="127.0.0.1")
        relay_cdn = CDNModule(SimpleNamespace(store=None, node_id="bench-b"), rtsp_b, issuer,
                              f"rtsp://127.0.0.1:{port_b.getHost().port}", clock=reactor,
                              reactor=reactor)
    result = {}

    @defer.inlineCallbacks
    def one(how, rng):
        from vss.recording import remote

        t0 = time.perf_counter()
        body = MediaOpen(device_id="bench0", channel=0, stream=0, purpose=Purpose.PLAYBACK,
                         start_time=start_ms + 5000, transport=1)
        url = yield service.open(body)
        if how == "relayed":
            url = yield remote.relay(relay_cdn, body, url, "bench")
        opened = time.perf_counter() - t0
        first, times = yield threads.deferToThread(
            client, url.url, args.seeks, SEGMENTS * SEGMENT_S - 5, rng)
        r = result.setdefault(how, {"opened": [], "first": [], "times": []})
        r["opened"].append(opened)
        r["first"].append(first)
        r["times"].extend(times)

    @defer.inlineCallbacks
    def run():
        yield catalogue.open()
        rng = random.Random(args.seed)
        rounds = ["local", "relayed"] * 2 if args.relay else ["local"]
        for how in rounds:
            yield one(how, rng)
        yield service.close_all()
        yield catalogue.close()

    def done(r):
        reactor.stop()
        return r

    reactor.callWhenRunning(lambda: run().addBoth(done))
    reactor.run()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    if not result:
        print("the benchmark failed")
        return 1
    for how, r in result.items():
        times = [x * 1000 for x in r["times"]]
        opened = ", ".join(f"{x * 1000:.0f}" for x in r["opened"])
        first = ", ".join(f"{x * 1000:.0f}" for x in r["first"])
        print(f"{how}: MEDIA_OPEN answered in {opened} ms; first frame {first} ms after "
              "DESCRIBE")
        print(f"{how}: seek (PLAY with Range -> first complete frame), {len(times)} seeks, "
              f"spare child {'off' if args.no_spare else 'on'}: p50 "
              f"{statistics.median(times):.0f} ms, p90 {pct(times, 90):.0f} ms, p99 "
              f"{pct(times, 99):.0f} ms, max {max(times):.0f} ms")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
