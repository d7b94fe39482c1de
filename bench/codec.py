"""
Signalling codec throughput, one core, frames per second (docs/performance.md,
"Signalling codec").

    .venv/bin/python bench/codec.py [--frames N] [--repeat R] [--pages P]

Each figure is the best of R runs over N frames. "header decode" is what a relay needs:
``FrameDecoder.feed`` returning each frame's header fields and raw body. "full decode" is
``MessageDecoder.feed`` (typed bodies). Decoders are fed the N frames in 64 KiB chunks,
as Twisted's ``dataReceived`` delivers them, and also as one single buffer (one huge
result list, where the garbage collector's passes over it show). "construct only"
encodes or decodes the PTZ body through the construct definition alone, without the
struct fast path, for comparison.

The second table is the data synchronisation bodies (docs/performance.md, "Data
synchronisation"): a STATIC_PAGE of 5,000 DeviceRecords (what a node's reload pulls) and
a SYNC_NOTIFY of 500 Changes, encoded (``encode_body``) and decoded (``decode_body``),
best of R runs over P bodies, through the generated fast paths and through construct
alone (what every body with records cost before they had fast paths).
"""

import argparse
import platform
import sys
import time

from vss.protocols import codec
from vss.protocols.codec import (
    Frame,
    FrameDecoder,
    MessageDecoder,
    encode_body,
    encode_request,
)
from vss.protocols.messages import (
    Change,
    DeviceRecord,
    Empty,
    Entity,
    GrantRecord,
    MsgType,
    PtzControl,
    PtzOp,
    StaticPage,
    SyncNotify,
    UserRecord,
    Verifier,
)

PTZ = PtzControl(
    device_id="cam-0001", channel=1, op=PtzOp.CONTINUOUS, pan=0.5, tilt=-0.25, zoom=0.0,
    speed=0.75, timeout_ms=500,
)
EMPTY = Empty()
VERIFIER = Verifier(salt=bytes(range(16)), iterations=2000, stored_key=bytes(32),
                    server_key=bytes(range(32)))


def static_page(n=5000):
    """A reload page as CMS sends it: n devices (verifiers included)."""
    devices = [DeviceRecord(f"dev-{i:06d}", f"Device {i}", 1, 1, f"node-{i % 4}", VERIFIER,
                            "", True, i + 1) for i in range(n)]
    return StaticPage(int(Entity.DEVICE), devices, [], [], devices[-1].device_id, n)


def sync_notify(n=500):
    """A notify of n changes: mostly device renames, some users and grants."""
    changes = []
    for i in range(n):
        dev = user = grant = None
        if i % 10 == 8:
            entity, user = Entity.USER, UserRecord(f"user-{i}", VERIFIER, ["ops"], True, i)
        elif i % 10 == 9:
            entity, grant = Entity.GRANT, GrantRecord(f"user-{i}", f"dev-{i:06d}", 1, i)
        else:
            entity = Entity.DEVICE
            dev = DeviceRecord(f"dev-{i:06d}", f"name {i}", 1, 1, "node-0", VERIFIER, "",
                               True, i)
        changes.append(Change(i + 1, int(entity), 1, f"k-{i}", i, "cms", dev, user, grant))
    return SyncNotify(n, changes)


def best_rate(fn, n, repeat):
    """Best frames/s of ``repeat`` runs of ``fn``, which handles ``n`` frames."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
    return best


def encode_loop(type, body, n):
    def run():
        for i in range(1, n + 1):
            encode_request(type, body, i)

    return run


def chunked(decoder_cls, stream, size=65536):
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]

    def run():
        feed = decoder_cls().feed
        for c in chunks:
            feed(c)

    return run


def check(result, n):
    assert len(result) == n and not any(isinstance(x, codec.ProtocolError) for x in result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args(argv)
    n, r = args.frames, args.repeat

    keepalive = encode_request(MsgType.KEEPALIVE, EMPTY, 1)
    ptz = encode_request(MsgType.PTZ_CONTROL, PTZ, 1)
    ka_stream = keepalive * n
    ptz_stream = ptz * n
    ptz_body = encode_body(PTZ)
    ptz_frame = Frame(1, 0, MsgType.PTZ_CONTROL, 0, 1, ptz_body)
    n_slow = max(n // 10, 1)

    check(FrameDecoder().feed(ka_stream), n)
    check(MessageDecoder().feed(ptz_stream), n)

    rows = [
        ("encode KEEPALIVE", best_rate(encode_loop(MsgType.KEEPALIVE, EMPTY, n), n, r)),
        ("encode PTZ_CONTROL", best_rate(encode_loop(MsgType.PTZ_CONTROL, PTZ, n), n, r)),
        ("encode PTZ_CONTROL body, construct only",
         best_rate(lambda: [PTZ.compiled.build(
             {k: getattr(PTZ, k) for k in PTZ.__slots__}) for _ in range(n_slow)],
             n_slow, r)),
        ("header decode KEEPALIVE, 64 KiB feeds",
         best_rate(chunked(FrameDecoder, ka_stream), n, r)),
        ("header decode PTZ_CONTROL, 64 KiB feeds",
         best_rate(chunked(FrameDecoder, ptz_stream), n, r)),
        ("header decode KEEPALIVE, one buffer",
         best_rate(lambda: FrameDecoder().feed(ka_stream), n, r)),
        ("full decode KEEPALIVE, 64 KiB feeds",
         best_rate(chunked(MessageDecoder, ka_stream), n, r)),
        ("full decode PTZ_CONTROL, 64 KiB feeds",
         best_rate(chunked(MessageDecoder, ptz_stream), n, r)),
        ("full decode KEEPALIVE, one buffer",
         best_rate(lambda: MessageDecoder().feed(ka_stream), n, r)),
        ("decode PTZ_CONTROL body, construct only",
         best_rate(lambda: [codec._construct_decode(PtzControl, ptz_frame)
                            for _ in range(n_slow)], n_slow, r)),
    ]

    print(f"python {platform.python_implementation()} {platform.python_version()} "
          f"on {platform.machine()}; {n} frames, best of {r}")
    print(f"KEEPALIVE frame {len(keepalive)} bytes, PTZ_CONTROL frame {len(ptz)} bytes")
    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>12,.0f} frames/s")
    print()
    sync_rows(args.pages, r)
    return 0


def sync_rows(p, r):
    """Encode and decode of the record-carrying sync bodies, fast path and construct."""
    page, notify = static_page(), sync_notify()
    cases = [("STATIC_PAGE, 5,000 DeviceRecords", page, MsgType.STATIC_PULL,
              codec.FLAG_RESPONSE, len(page.devices)),
             ("SYNC_NOTIFY, 500 Changes", notify, MsgType.SYNC_NOTIFY, codec.FLAG_NOTIFY,
              len(notify.changes))]
    out = []
    for case in cases:
        out += sync_case(*case, p, r)
    width = max(len(row[0]) for row in out)
    print(f"sync bodies: best of {r} runs of {p} bodies ({max(1, p // 10)} through construct)")
    for name, size, records, rate in out:
        print(f"{name:<{width}}  {rate:>9,.1f} bodies/s  {1000 / rate:>8.2f} ms/body  "
              f"{1e6 / rate / records:>7.2f} us/record  ({size:,} bytes)")



def sync_case(name, obj, t, flags, records, p, r):
    body = encode_body(obj)
    frame = Frame(1, flags, t, 0, 1, body)
    assert codec._fast_encoder(type(obj))(obj) == body
    assert codec.decode_body(frame).body == obj
    build = obj.compiled.build
    fields = {k: getattr(obj, k) for k in obj.__slots__}
    slow = max(1, p // 10)
    return [
        (f"encode {name}", len(body), records,
         best_rate(lambda: [encode_body(obj) for _ in range(p)], p, r)),
        (f"encode {name}, construct only", len(body), records,
         best_rate(lambda: [build(fields) for _ in range(slow)], slow, r)),
        (f"decode {name}", len(body), records,
         best_rate(lambda: [codec.decode_body(frame) for _ in range(p)], p, r)),
        (f"decode {name}, construct only", len(body), records,
         best_rate(lambda: [codec._construct_decode(type(obj), frame) for _ in range(slow)],
                   slow, r)),
    ]


if __name__ == "__main__":
    sys.exit(main())
