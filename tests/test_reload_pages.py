"""
A node's reload of its share (``CmsLink.reload``): every entity's STATIC_PULL pages are
asked for at once, each next page as soon as the one before it arrives, and stored in
entity order; a page that fails fails the reload and leaves no failure unhandled. CMS
is a fake answering the requests when the test says so (``task.Clock``, no sockets).
"""

import gc
import os
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    DeviceRecord,
    Entity,
    GrantRecord,
    MsgType,
    PuKind,
    StaticPage,
    UserRecord,
    Verifier,
)
from vss.rgm.cmslink import CmsLink
from vss.store.memory import MemoryStore

V = Verifier(b"salt", 4096, b"stored", b"server")


def device(i):
    return DeviceRecord(f"cam-{i}", f"Camera {i}", PuKind.IPC, 1, "node-a", V, "", True, 1)


def page(entity, cursor="", devices=(), users=(), grants=()):
    return SimpleNamespace(body=StaticPage(entity=entity, devices=list(devices),
                                           users=list(users), grants=list(grants),
                                           next_cursor=cursor, seq=9, credentials=[]))


class ReloadPagesTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore()
        data = self.mktemp()
        os.makedirs(data)
        self.link = CmsLink("node-a", "tcp:127.0.0.1:9", b"s", self.store, self.clock,
                            data_dir=data)
        self.asked = []  # (entity, cursor, Deferred)
        self.link._request = self.request

    def request(self, type, body, timeout=None):
        self.assertEqual(type, MsgType.STATIC_PULL)
        d = defer.Deferred()
        self.asked.append((body.entity, body.cursor, d))
        return d

    def answer(self, entity, cursor, result):
        for i, (e, c, d) in enumerate(self.asked):
            if (e, c) == (entity, cursor):
                del self.asked[i]
                if isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)
                return
        self.fail(f"no request for {entity} at {cursor!r}")

    def asked_for(self):
        return sorted((int(e), c) for e, c, _ in self.asked)

    def test_every_entity_at_once_and_each_next_page_on_arrival(self):
        done = self.link.reload(7)
        # the first page of every entity, at once
        self.assertEqual(self.asked_for(), [(int(Entity.DEVICE), ""), (int(Entity.USER), ""),
                                            (int(Entity.GRANT), ""),
                                            (int(Entity.CREDENTIAL), "")])
        # the grants come first: they wait for the devices, and their next page is asked
        self.answer(Entity.GRANT, "", page(Entity.GRANT, "g1", grants=[
            GrantRecord("user:ann", "cam-1", 1, 1, 0)]))
        self.assertIn((int(Entity.GRANT), "g1"), self.asked_for())
        self.assertEqual(self.store.grants(), [])
        self.answer(Entity.DEVICE, "", page(Entity.DEVICE, "d1", devices=[device(1)]))
        self.assertIn((int(Entity.DEVICE), "d1"), self.asked_for())
        self.assertEqual([d.device_id for d in self.store.devices()], ["cam-1"])
        self.answer(Entity.USER, "", page(Entity.USER, users=[
            UserRecord("ann", V, ["ops"], True, 1)]))
        self.answer(Entity.CREDENTIAL, "", page(Entity.CREDENTIAL))
        self.answer(Entity.GRANT, "g1", page(Entity.GRANT, grants=[
            GrantRecord("user:ann", "cam-2", 1, 1, 0)]))
        self.assertNoResult(done)
        self.answer(Entity.DEVICE, "d1", page(Entity.DEVICE, devices=[device(2)]))
        self.successResultOf(done)
        self.assertEqual(self.asked, [])
        self.assertEqual(sorted(d.device_id for d in self.store.devices()), ["cam-1", "cam-2"])
        self.assertEqual([u.username for u in self.store.users()], ["ann"])
        self.assertEqual(sorted(g.device_id for g in self.store.grants()), ["cam-1", "cam-2"])
        self.assertEqual(self.link.applier.applied_seq, 7)

    def test_a_page_that_fails_fails_the_reload(self):
        done = self.link.reload(7)
        self.answer(Entity.DEVICE, "", page(Entity.DEVICE, devices=[device(1)]))
        self.answer(Entity.USER, "", page(Entity.USER))
        self.answer(Entity.GRANT, "", VssError(ResultCode.DB_UNAVAILABLE, "lost"))
        self.answer(Entity.CREDENTIAL, "", page(Entity.CREDENTIAL))
        failure = self.failureResultOf(done, VssError)
        self.assertEqual(failure.value.code, ResultCode.DB_UNAVAILABLE)
        self.assertEqual(self.link.applier.applied_seq, 0)

    def test_a_later_entity_failing_first_is_not_left_unhandled(self):
        """The grants fail while the devices are still awaited, then the devices fail:
        the reload fails with the devices' failure and the grants' one is consumed (an
        unhandled one would be logged and fail this test)."""
        done = self.link.reload(7)
        self.answer(Entity.GRANT, "", VssError(ResultCode.DB_UNAVAILABLE, "grants"))
        self.answer(Entity.DEVICE, "", VssError(ResultCode.CENTRAL_UNAVAILABLE, "devices"))
        failure = self.failureResultOf(done, VssError)
        self.assertEqual(failure.value.code, ResultCode.CENTRAL_UNAVAILABLE)
        # the requests still out fail later, with nobody waiting: consumed too
        self.answer(Entity.USER, "", VssError(ResultCode.CENTRAL_UNAVAILABLE, "link lost"))
        self.answer(Entity.CREDENTIAL, "", VssError(ResultCode.CENTRAL_UNAVAILABLE, "lost"))
        del done, failure
        gc.collect()  # a Deferred left with a failure logs it when collected
        self.assertEqual(self.flushLoggedErrors(), [])
