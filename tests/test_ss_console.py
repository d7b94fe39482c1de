"""
MDP's view of the streaming servers where operators look: a node running two SS workers
(real ``twistd vss-ss`` children) in a platform in this process; the console's nodes page
in a real headless Chromium and ``vss-admin status``'s rendering list the node's own SS
and both workers, with MDP's choice for the next stream marked. Skipped where no
Chromium is installed.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.cli.admin import render_status
from vss.cms.operators import hash_password
from vss.cms.store.operators import ADMINISTRATOR
from vss.testing import browser as harness
from vss.testing.platform import start_platform, wait_until

ANN_PW = "ann-console-password"


class StreamingServersPage(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        harness.require()
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))
        self.p = yield start_platform(self)
        yield self.p.cms.store.add_operator("ann", hash_password(ANN_PW, n=2**12),
                                            ADMINISTRATOR)
        self.node = yield self.p.start_node("node-a", ss_workers=2)
        self.base = f"http://127.0.0.1:{self.p.cms.listeners()['admin']}"

    @defer.inlineCallbacks
    def test_the_nodes_page_and_vss_admin_status_show_mdps_view(self):
        mdp = self.p.cms.cms.mdp

        def reported():
            return {s["ss_id"]: s["state"] for s in mdp.view("node-a")} == {
                "ss0": "up", "ss1": "up", "ss2": "up"}

        yield wait_until(reactor, reported, timeout=60,
                         what="the node to report its SS and both workers")
        status = yield self.p.cms.status()
        text = render_status(status)
        self.assertIn("SS", text)
        for ss in ("ss0", "ss1", "ss2"):
            self.assertIn(ss, text)
        chosen = [s["ss_id"] for n in status["nodes"] for s in n["servers"] if s["chosen"]]
        self.assertEqual(len(chosen), 1)
        self.assertIn(chosen[0], ("ss1", "ss2"))  # a worker: the node's own SS takes in

        b = yield harness.start_browser(self)
        yield b.viewport(1280, 800)
        yield b.open(self.base + "/")
        yield b.wait_for("the sign-in page", "return document.body.dataset.state === 'login'")
        yield b.js("""
            document.getElementById('login-user').value = arguments[0];
            document.getElementById('login-password').value = arguments[1];
            document.getElementById('login-form').requestSubmit();""", "ann", ANN_PW)
        yield b.wait_for("the console", "return document.body.dataset.state === 'ready'")
        yield b.js("location.hash = '#/nodes'")
        yield b.wait_for("the nodes page", "return document.body.dataset.loaded === 'nodes'")
        rows = yield b.js("""
            return [...document.querySelectorAll('#servers-table tr[data-server]')]
              .map((tr) => [tr.dataset.server, tr.textContent])""")
        self.assertEqual(sorted(r[0] for r in rows), ["node-a/ss0", "node-a/ss1", "node-a/ss2"])
        marked = [r[0] for r in rows if "next stream" in r[1]]
        self.assertEqual(len(marked), 1)
        self.assertIn(marked[0], ("node-a/ss1", "node-a/ss2"))
        yield b.screenshot("console-nodes-streaming-servers")
