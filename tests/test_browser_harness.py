"""
The headless Chromium harness (``vss.testing.browser``) itself: a page served by a
Twisted site in this process is opened, its script runs, a wait comes true or fails with
what the page logged, and a phone-sized screenshot is a PNG of exactly that size.
Skipped, with the reason, where no Chromium is installed.
"""

import os
import struct

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from vss.testing import browser as harness

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>harness</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="margin:0;background:#123456"><p id="t">ready</p>
<script>window.counter = 0; setInterval(() => { window.counter += 1; }, 20);
console.log("page started");</script></body></html>"""


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head[:8]
    return struct.unpack(">II", head[16:24])


class HarnessTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        harness.require()
        self.port = reactor.listenTCP(0, server.Site(Page()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/"
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))

    def test_unavailable_names_what_is_missing(self):
        old = os.environ.get("VSS_CHROMIUM")
        os.environ["VSS_CHROMIUM"] = "/nonexistent/chromium"
        try:
            reason = harness.unavailable()
        finally:
            if old is None:
                del os.environ["VSS_CHROMIUM"]
            else:
                os.environ["VSS_CHROMIUM"] = old
        self.assertIn("/nonexistent/chromium", reason)
        self.assertIn("apt-get install chromium", reason)

    @defer.inlineCallbacks
    def test_page_runs_waits_and_screenshots(self):
        b = yield harness.start_browser(self)
        yield b.open(self.url)
        text = yield b.js("return document.getElementById('t').textContent")
        self.assertEqual(text, "ready")
        count = yield b.wait_for("the page's timer", "return window.counter > 5 && window.counter")
        self.assertGreater(count, 5)
        with self.assertRaises(harness.BrowserError) as caught:
            yield b.wait_for("something that never happens", "return window.nothing",
                             timeout=0.5)
        self.assertIn("something that never happens", str(caught.exception))
        self.assertIn("page started", str(caught.exception))  # the console is quoted
        yield b.viewport(390, 844, mobile=True)
        inner = yield b.js("return [window.innerWidth, window.innerHeight]")
        self.assertEqual(inner, [390, 844])
        path = yield b.screenshot("harness-phone")
        self.assertEqual(png_size(path), (390, 844))
