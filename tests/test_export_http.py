"""
The export download's HTTP side (``vss.recording.export.ExportResource``) against bad input
and hostile clients, over real TCP: odd time ranges get 400, a client that never reads
the download is cut off and its temporary file deleted, and it does not hold up another
client.
"""

import os
import socket

from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from vss.recording import export
from vss.testing.platform import wait_until

DAY = 86400_000


class FakeExporter(export.Exporter):
    """The real HTTP side and counters; ``make`` answers a copy of a big file."""

    def __init__(self, data_dir, source, clock, stall_timeout):
        super().__init__(None, data_dir, reactor, clock=clock, stall_timeout=stall_timeout)
        self.source = source
        self.made = []

    def make(self, device, stream, from_ms, to_ms, gone=lambda: False):
        if stream == "none":
            return defer.succeed(None)
        out = os.path.join(self.data_dir, f"export-{len(self.made)}.mp4")
        os.link(self.source, out)
        self.made.append(out)
        return defer.succeed(out)


def get(port, target, read=True):
    """Blocking: (status, body length) of ``GET target``; with ``read`` False the
    socket is returned after the request is sent, nothing read."""
    s = socket.socket()
    if not read:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    if not read:
        return s
    chunks = []
    try:
        while True:  # Connection: close: the body ends with the connection
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        s.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), len(body)


class ExportHTTPTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.big = os.path.join(self.dir, "big.bin")
        with open(self.big, "wb") as f:
            f.write(os.urandom(1 << 20) * 24)  # more than any socket buffer
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = export.ExportTokens(b"secret", self.clock)
        self.exporter = FakeExporter(self.dir, self.big, reactor, stall_timeout=3.0)
        self.port = reactor.listenTCP(0, export.make_site(self.tokens, self.exporter),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def target(self, from_ms, to_ms, stream="main"):
        token, _ = self.tokens.issue("cam1", 0, stream, from_ms, to_ms)
        return f"/export?token={token}"

    @defer.inlineCallbacks
    def test_odd_time_ranges_are_400_an_empty_one_404(self):
        t = 1_700_000_000_000
        port = self.port.getHost().port
        for frm, to in ((t, t - 1000), (t, t), (t, t + 400 * DAY), (-5000, 1000)):
            status, _ = yield threads.deferToThread(get, port, self.target(frm, to))
            self.assertEqual(status, 400, (frm, to))
        status, _ = yield threads.deferToThread(get, port, self.target(t, t + 1000, "none"))
        self.assertEqual(status, 404)
        self.assertEqual(self.exporter.made, [])
        self.assertEqual(self.exporter.counters["refused"], 5)

    @defer.inlineCallbacks
    def test_a_client_that_never_reads_is_cut_off_and_does_not_hurt_another(self):
        t = 1_700_000_000_000
        port = self.port.getHost().port
        stuck = yield threads.deferToThread(get, port, self.target(t, t + 1000), False)
        self.addCleanup(stuck.close)
        yield wait_until(reactor, lambda: self.exporter.made, timeout=30,
                         what="the stuck download to start")
        # another client gets its whole download meanwhile
        status, size = yield threads.deferToThread(get, port, self.target(t, t + 2000))
        self.assertEqual((status, size), (200, os.path.getsize(self.big)))
        yield wait_until(reactor, lambda: self.exporter.counters["stalled"] == 1,
                         timeout=30, what="the stuck download to be cut off")
        yield wait_until(reactor, lambda: self.exporter.sending == 0, timeout=30,
                         what="the transfer to end")
        self.assertFalse([p for p in self.exporter.made if os.path.exists(p)])
        self.assertEqual(self.exporter.counters["exports"], 2)
        self.assertFalse([c for c in reactor.getDelayedCalls()
                          if getattr(c.func, "__self__", None).__class__.__name__ ==
                          "_StallWatch"])


class FakeCatalogue:
    def __init__(self, segments):
        self.segments = segments

    def list(self, device, stream, from_ms, to_ms):
        return defer.succeed({"segments": self.segments})


class ExportQueueTests(unittest.TestCase):
    """The real ``Exporter.make`` with a fake catalogue and remux: a bounded queue, and
    no remux for a client that left while it waited."""

    timeout = 60

    @defer.inlineCallbacks
    def test_a_full_queue_is_503_and_a_client_gone_is_not_remuxed(self):
        from vss.recording.catalogue import Segment

        data = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(data, "recordings", "cam1", "main"))
        t = 1_700_000_000_000
        seg = Segment("cam1", 0, "main", t, t + 60_000, 10, "recordings/cam1/main/a.mp4", [])
        remuxed = []

        def remux(paths, out, frm, to):
            remuxed.append(out)
            with open(out, "wb") as f:
                f.write(b"mp4")
            return 1000, 25

        self.patch(export, "remux", remux)
        gones = []

        class Exporter(export.Exporter):
            def make(self, *args, gone):
                gones.append(gone)
                return super().make(*args, gone=gone)

        exporter = Exporter(FakeCatalogue([seg]), data, reactor, max_concurrent=1)
        exporter.max_waiting = 2
        tokens = export.ExportTokens(b"secret", Clock())
        port = reactor.listenTCP(0, export.make_site(tokens, exporter),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        n = port.getHost().port
        def target():  # a token is good for one download: one each
            return f"/export?token={tokens.issue('cam1', 0, 'main', t, t + 1000)[0]}"

        yield exporter.limit.acquire()  # the one remux slot is taken
        held = []
        for _ in range(2):
            held.append((yield threads.deferToThread(get, n, target(), False)))
        yield wait_until(reactor, lambda: exporter.waiting == 2, timeout=30,
                         what="two exports waiting")
        busy = target()
        status, _ = yield threads.deferToThread(get, n, busy)
        self.assertEqual(status, 503)
        self.assertEqual(exporter.counters["busy"], 1)
        held[0].close()  # this client leaves while it waits
        yield wait_until(reactor, lambda: gones[0](), timeout=30,
                         what="the server to see the first client leave")
        exporter.limit.release()
        held[1].settimeout(30)

        def rest(s):
            chunks = []
            while True:
                c = s.recv(1 << 16)
                if not c:
                    return b"".join(chunks)
                chunks.append(c)

        body = yield threads.deferToThread(rest, held[1])
        held[1].close()
        self.assertTrue(body.startswith(b"HTTP/1.1 200"), body[:40])
        self.assertTrue(body.endswith(b"mp4"))
        self.assertEqual(exporter.counters["abandoned"], 1)
        self.assertEqual(len(remuxed), 1)
        self.assertEqual(os.listdir(os.path.join(data, export.EXPORTS)), [])
        # the 503 did not spend its token; the download that follows does
        status, _ = yield threads.deferToThread(get, n, busy)
        self.assertEqual(status, 200)
        status, _ = yield threads.deferToThread(get, n, busy)
        self.assertEqual(status, 403)
        self.assertEqual(len(remuxed), 2)
