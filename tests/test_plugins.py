"""The twistd plugins are found by an installed twistd run outside the checkout."""

import os

from twisted.internet import defer
from twisted.trial import unittest

from vss.testing.processes import child_env, run_tool


class PluginTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_twistd_help_lists_both_plugins_outside_the_checkout(self):
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        out, err, code = yield run_tool("twistd", ["--help"], env=child_env(), cwd=elsewhere)
        self.assertEqual(code, 0, err)
        self.assertIn("vss-node", out)
        self.assertIn("vss-cms", out)

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
