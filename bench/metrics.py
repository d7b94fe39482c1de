"""
What metrics cost, in process (docs/performance.md, "Metrics"):

1. the PTZ fast path's answer (``vss.rgm.relay._relayed``, the real function) with the
   latency histogram off (``rgm.ptz_local`` None, as with ``--metrics off``) and on:
   nanoseconds per answer, best of ``--repeat`` runs of ``--number`` calls each;
2. one scrape of a node's ``/metrics`` (``NodeCollector`` over a real ``NodeService``,
   rendered by ``MetricsResource``) with ``--links`` logged-in links and ``--viewers``
   TCP viewers of one source: milliseconds per scrape and the size of the answer.

    .venv/bin/python bench/metrics.py [--number 200000] [--links 20000] [--viewers 1000]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vss.ops.histogram import Histogram  # noqa: E402
from vss.protocols import codec  # noqa: E402
from vss.protocols.messages import MsgType, PtzStatus, Role  # noqa: E402
from vss.rgm import relay  # noqa: E402


class _Session:
    def __init__(self):
        self.inflight = set()


class _Link:
    """Just what ``_relayed`` touches on a CU link and a PU link."""

    def __init__(self):
        self.session = _Session()
        self.last_rx = 1000.0
        self.sent = 0

    def send_raw_response(self, type, txid, status, body):
        self.sent += 1


class _Rgm:
    def __init__(self, metrics):
        self.counters = {"timeouts": 0}
        self.ptz_local = Histogram().cells if metrics else None


def hot_path(number, repeat):
    body = codec.encode_body(PtzStatus(pan=0.1, tilt=0.0, zoom=0.0, moving=False))
    answer = codec.Frame(codec.VERSION, codec.FLAG_RESPONSE, int(MsgType.PTZ_CONTROL), 0, 7,
                         body)
    out = {}
    for metrics in (False, True, False, True):
        cu, pu = _Link(), _Link()
        pu.last_rx = 1000.004
        rgm = _Rgm(metrics)
        frame = codec.Frame(codec.VERSION, 0, int(MsgType.PTZ_CONTROL), 0, 7, b"")
        context = (cu, frame, "cam-1", rgm, pu, cu.last_rx)
        fn = relay._relayed
        best = min(timeit.repeat(lambda fn=fn, context=context: fn(context, answer),
                                 number=number, repeat=repeat))
        ns = best / number * 1e9
        key = "on" if metrics else "off"
        out[key] = min(out.get(key, ns), ns)
        assert cu.sent == number * repeat
    return out


def scrape(links, viewers):
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.test.requesthelper import DummyRequest

    from vss.config import NodeSettings
    from vss.node import NodeService
    from vss.rgm.localcentral import MemoryCentral
    from vss.rgm.service import Session
    from vss.rtsp.fanout import TCPReader

    work = tempfile.mkdtemp(prefix="vss-metrics-bench-")
    static = os.path.join(work, "static.json")
    MemoryCentral().save(static)
    settings = NodeSettings(
        node_id="bench", pu_listen="tcp:0", cu_listen="tcp:0", rtsp_listen="tcp:0",
        media_host="127.0.0.1", cms="", cluster_secret_file="", node_listen="tcp:0",
        advertise_host="127.0.0.1", static=static, store="memory",
        data_dir=os.path.join(work, "node"), keepalive=30, request_timeout=10.0, manhole="",
        manhole_keys="", http_listen="tcp:0")
    node = NodeService(settings, MemoryReactorClock())

    class FakeLink:
        pass

    for i in range(links):
        link = FakeLink()
        link.session = Session(link, Role.PU if i % 10 else Role.CU)
        link.session.state = "registered"
        node.rgm.links.add(link)
    sdp = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
           "a=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n")
    source = node.rtsp.attach_source("/live/cam/main", sdp)

    class Transport:
        def registerProducer(self, p, streaming):
            pass

        def write(self, data):
            pass

    for _ in range(viewers):
        source.add_reader(TCPReader(Transport(), [0]))

    def once():
        req = DummyRequest([b"metrics"])
        req.client = None
        node.metrics.access.allowed_address = lambda a: True
        body = node.metrics.render_GET(req)
        return len(body)

    try:
        size = once()
        n = 20
        t = time.perf_counter()
        for _ in range(n):
            once()
        return (time.perf_counter() - t) / n * 1000, size
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--links", type=int, default=20_000)
    ap.add_argument("--viewers", type=int, default=1000)
    args = ap.parse_args()
    ns = hot_path(args.number, args.repeat)
    print(f"PTZ fast-path answer (relay._relayed): {ns['off']:.0f} ns with metrics off, "
          f"{ns['on']:.0f} ns on: +{ns['on'] - ns['off']:.0f} ns per relayed request")
    ms, size = scrape(args.links, args.viewers)
    print(f"one scrape of a node with {args.links} links and {args.viewers} viewers: "
          f"{ms:.2f} ms on the reactor thread, {size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
