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

        from vss.testing.central import MemoryCentral

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
