"""vss.gctune: the collector's thresholds of the daemons and the agent, and the
environment override that a comparison (or an operator) uses."""

import gc
import os
import sys

from twisted.internet import defer, utils
from twisted.trial import unittest

from vss import gctune


class ThresholdTests(unittest.SynchronousTestCase):
    def test_the_default_and_the_override(self):
        self.assertEqual(gctune.thresholds({}), gctune.THRESHOLDS)
        self.assertEqual(gctune.thresholds({"VSS_GC_THRESHOLD": "700,10,10"}), (700, 10, 10))

    def test_a_bad_override_is_a_clear_error(self):
        for bad in ("700", "a,b,c", "0,10,10", "700,-1,10", "1,2,3,4"):
            with self.assertRaises(ValueError) as e:
                gctune.thresholds({"VSS_GC_THRESHOLD": bad})
            self.assertIn("VSS_GC_THRESHOLD", str(e.exception))

    def test_tune_sets_them_and_freezes_what_exists(self):
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        self.assertEqual(gctune.tune_gc({"VSS_GC_THRESHOLD": "1234,5,6"}), (1234, 5, 6))
        self.assertEqual(gc.get_threshold(), (1234, 5, 6))
        self.assertGreater(gc.get_freeze_count(), 1000)


class DaemonTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_bad_override_stops_a_daemon_in_one_line(self):
        env = dict(os.environ, VSS_GC_THRESHOLD="lots")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out, err, code = yield utils.getProcessOutputAndValue(
            twistd, ["-n", "--pidfile=", "vss-cms", "--data-dir", self.mktemp()], env=env)
        self.assertEqual(code, 2, err)
        self.assertEqual(err.decode().strip().splitlines(),
                         ["twistd vss-cms: VSS_GC_THRESHOLD must be three integers (the first "
                          "above 0), as 700,10,10; got 'lots'"])
