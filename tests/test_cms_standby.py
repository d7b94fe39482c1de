"""
A CMS standby takes over when the active CMS is killed (SIGKILL) during a stream of
admin changes, with real ``twistd vss-cms`` (two, on one PostgreSQL database) and
``twistd vss-node`` processes on loopback (``vss.testing.standby``): the standby
answers as a standby until then, takes over within seconds, the node moves to it, and
every change the admin API acknowledged is in the database and in the node's copy.

PostgreSQL: a fresh schema of ``VSS_TEST_POSTGRES_DSN``, else a server of the test's
own (``initdb``); skipped, saying so, when neither is there.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.cms.admin_cli import Client, HttpError
from vss.testing.processes import poll
from vss.testing.standby import TOKEN, NoPostgres, StandbyScenario, database

#: the issue's aim is 5 s; the bound here leaves room for a loaded test machine
TAKEOVER_BOUND = 10.0


class CmsStandbyTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        cleanups = []
        try:
            dsn = yield database(reactor, cleanups)
        except NoPostgres as e:
            raise unittest.SkipTest(str(e)) from None
        finally:
            for c in reversed(cleanups):
                self.addCleanup(c)
        self.s = StandbyScenario(reactor, self.work, dsn)
        self.addCleanup(self.s.stop_all)
        yield self.s.seed()

    @defer.inlineCallbacks
    def test_kill_of_the_active_cms_loses_no_admin_change(self):
        s = self.s
        yield s.start_cms("cms-a")
        yield poll("cms-a to be active", lambda: s.is_active("cms-a"))
        yield s.start_cms("cms-b")

        # cms-b stands by: /readyz says so, its admin API names the active one
        status, body = yield s.readyz("cms-b")
        self.assertEqual(status, 503, body)
        self.assertIn("standby", body)
        api_b = Client(reactor, s.admin_url("cms-b") + "/api/v1", TOKEN, timeout=5)

        @defer.inlineCallbacks
        def names_the_active():
            try:
                yield api_b.call("GET", "/devices")
            except HttpError as e:
                return e.status == 503 and e.not_active and s.admin_url("cms-a") in e.message
            raise AssertionError("a standby served the admin API")

        yield poll("cms-b to name cms-a as the active CMS", names_the_active)

        yield s.start_node()  # --cms names both; it ends on cms-a, the active one
        streaming = s.stream()
        yield task.deferLater(reactor, 2.0, lambda: None)
        before = len([1 for _, o in s.sent if o == "ok"])
        took, node_up = yield s.kill_active_and_time_takeover()
        yield task.deferLater(reactor, 2.0, lambda: None)
        s.streaming = False
        yield streaming
        after = len([1 for _, o in s.sent if o == "ok"]) - before

        count = yield s.count("cms-b")
        self.assertGreater(before, 10)
        self.assertGreater(after, 10, "no change acknowledged after the takeover")
        self.assertEqual(count["lost_db"], [], f"acknowledged changes lost: {count}")
        self.assertEqual(count["node_diff"], [], f"the node's copy differs: {count}")
        self.assertEqual(count["failed_but_written"], [], count)
        self.assertLess(took, TAKEOVER_BOUND)
        self.assertLess(node_up, TAKEOVER_BOUND)
        print(f"\ntakeover {took:.2f} s, node on the new CMS {node_up:.2f} s after the "
              f"kill; {count['acknowledged']} of {count['sent']} changes acknowledged, "
              "0 lost")
