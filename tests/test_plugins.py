"""
The twistd plugins' option handling and start-up failures, run with the development
venv's twistd. That the plugins are installed at all is tests/test_wheel.py's to show:
here the checkout is on ``sys.path`` (compat editable install), which would hide a
plugin file the wheel leaves out.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from vss.testing.processes import child_env, run_tool


class PluginTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_bad_node_options_name_every_bad_key(self):
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        out, err, code = yield run_tool(
            "twistd", ["-n", "vss-node", "--keepalive", "x", "--store", "nosuch"],
            env=child_env(), cwd=elsewhere)
        self.assertNotEqual(code, 0)
        for key in ("--node-id", "--keepalive", "--store", "--cms"):
            self.assertIn(key, err + out)

    def test_plugins_folder_is_not_a_package(self):
        import twisted.plugins

        for path in twisted.plugins.__path__:
            if os.path.exists(os.path.join(path, "vss_plugins.py")):
                self.assertFalse(os.path.exists(os.path.join(path, "__init__.py")))

    @defer.inlineCallbacks
    def test_a_node_that_cannot_start_says_why_in_one_line_and_exits_non_zero(self):
        """A port already taken is the operator's to fix: the log names it without a
        traceback, and the process status is not 0 (systemd and scripts see it)."""
        import socket

        from vss.rgm.localcentral import MemoryCentral

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        out, err, code = yield run_tool(
            "twistd", ["-n", "--pidfile=", "vss-node", "--node-id", "n1", "--static", static,
                       "--data-dir", os.path.join(work, "data"),
                       "--pu-listen", "tcp:0:interface=127.0.0.1",
                       "--cu-listen", f"tcp:{port}:interface=127.0.0.1",
                       "--rtsp-listen", "tcp:0:interface=127.0.0.1", "--http-listen", "off"],
            env=child_env(), cwd=work)
        self.assertNotEqual(code, 0)
        self.assertIn("cannot start", out + err)
        self.assertIn(f"cu cannot listen on tcp:{port}", out + err)
        self.assertNotIn("Traceback", out + err)


class OneLineErrorTests(unittest.TestCase):
    """What a newcomer sees when a daemon's option or file is wrong: one line on stderr
    naming it, a non-zero status, no traceback and no page of help."""

    @defer.inlineCallbacks
    def twistd(self, *args):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.work = work
        out, err, code = yield run_tool("twistd", ["-n", "--pidfile=", *args],
                                        env=child_env(), cwd=work)
        return out, err, code

    def assertOneLine(self, out, err, code, *words):
        self.assertNotEqual(code, 0)
        self.assertEqual(out.strip(), "")
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Usage:", err)
        for word in words:
            self.assertIn(word, lines[0])

    def static_file(self, text):
        path = os.path.join(os.path.abspath(self.mktemp()))
        with open(path, "w") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def test_a_bad_listen_endpoint_names_the_option(self):
        static = self.static_file("{}")
        out, err, code = yield self.twistd("vss-node", "--node-id", "n1", "--static", static,
                                           "--pu-listen", "tcp:notaport")
        self.assertOneLine(out, err, code, "twistd vss-node:", "--pu-listen", "tcp:notaport",
                           "'notaport' is not a number")

    @defer.inlineCallbacks
    def test_a_malformed_static_file_names_the_file(self):
        static = self.static_file('{"devices": [')
        out, err, code = yield self.twistd("vss-node", "--node-id", "n1", "--static", static)
        self.assertOneLine(out, err, code, "--static", static, "not a static-data file")

    @defer.inlineCallbacks
    def test_a_misspelt_option_is_one_line_with_the_near_option(self):
        out, err, code = yield self.twistd("vss-node", "--nodeid", "n1")
        self.assertOneLine(out, err, code, "unknown option --nodeid",
                           "did you mean --node-id?")

    @defer.inlineCallbacks
    def test_the_central_platform_names_a_bad_endpoint_too(self):
        out, err, code = yield self.twistd("vss-cms", "--admin-listen", "tcp:x",
                                           "--data-dir", "cms")
        self.assertOneLine(out, err, code, "twistd vss-cms:", "--admin-listen")
        self.assertFalse(os.path.exists(os.path.join(self.work, "cms")))
