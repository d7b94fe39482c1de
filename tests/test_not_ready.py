"""
NOT_READY (docs/protocol.md 8.2): a node that cannot check a login yet says so with its
own code, never AUTH_FAILED, and never counts it against the account or the address;
clients back off with a wide jitter.
"""

import random

from twisted.internet import defer, task
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.reconnect import NOT_READY_JITTER, NOT_READY_MAX_DELAY, Reconnector
from vss.testing.harness import ALL, NodeHarness

from .test_rgm import error_code, result


class NodeNotReadyTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.h = NodeHarness()
        self.addCleanup(self.h.stop)
        self.h.add_device("cam1")
        self.h.add_user("alice", grants=[("cam1", ALL)])

    def test_a_node_without_a_synchronised_copy_answers_not_ready(self):
        self.h.central.synced = False
        for _ in range(20):
            client, (d, link, server) = self.h.cu("alice")
            self.assertEqual(error_code(d), ResultCode.NOT_READY)
            client, (d, link, server) = self.h.pu("cam1")
            self.assertEqual(error_code(d), ResultCode.NOT_READY)
        self.assertEqual(self.h.rgm.counters["auth_failures"], 0)
        self.assertEqual(self.h.rgm.counters["not_ready"], 40)
        self.assertEqual(self.h.rgm.throttle.failures("alice"), 0)
        self.assertEqual(self.h.rgm.throttle.failures(source="?"), 0)
        self.h.central.synced = True
        client, (d, link, server) = self.h.cu("alice")
        result(d)
        client, (d, link, server) = self.h.pu("cam1")
        result(d)

    def test_a_first_registration_while_cms_is_down_is_not_ready(self):
        # The node does not hold cam1 (a first registration) and CMS cannot answer: the
        # outside test saw "wrong identity or credentials" and a throttled address.
        self.assertIsNone(self.h.store.get_device("cam1"))
        self.h.central.available = False
        codes = []
        for _ in range(10):
            client, (d, link, server) = self.h.pu("cam1")
            codes.append(error_code(d))
        self.assertEqual(set(codes), {ResultCode.NOT_READY})
        self.assertEqual(self.h.rgm.counters["auth_failures"], 0)
        self.h.central.available = True
        client, (d, link, server) = self.h.pu("cam1")
        result(d)
        self.assertIn("cam1", self.h.rgm.pu_links)

    def test_an_identity_cms_does_not_know_still_fails_like_a_wrong_secret(self):
        client, (d, link, server) = self.h.pu("nobody")
        self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)


class _Transport:
    aborted = 0

    def abortConnection(self):
        self.aborted += 1


class _Protocol:
    def __init__(self):
        self.transport = _Transport()


class _Endpoint:
    def __init__(self):
        self.protocols = []

    def connect(self, factory):
        self.protocols.append(_Protocol())
        return defer.succeed(self.protocols[-1])


class ReconnectJitterTests(unittest.SynchronousTestCase):
    """The delay after a refused preparation: NOT_READY spreads it wide."""

    def delays(self, code, samples=300):
        clock = task.Clock()
        endpoint = _Endpoint()
        r = Reconnector(endpoint, None, lambda p: defer.fail(VssError(code)), clock,
                        initial=1.0, max_delay=30.0)
        r.start()
        out = []
        for _ in range(samples):
            protocol = endpoint.protocols[-1]
            self.assertEqual(protocol.transport.aborted, 1)
            r.lost(protocol)
            out.append(r.last_delay)
            r.failures = 0  # every sample from the first step (1 s)
            clock.advance(r.last_delay)
        r.lost(endpoint.protocols[-1])
        r.stop()
        self.assertFalse(clock.getDelayedCalls())
        return out

    def test_not_ready_spreads_the_retries(self):
        random.seed(20)
        spread = self.delays(ResultCode.NOT_READY)
        self.assertGreaterEqual(min(spread), 1 - NOT_READY_JITTER)
        self.assertLessEqual(max(spread), 1 + NOT_READY_JITTER)
        self.assertLess(min(spread), 0.6)
        self.assertGreater(max(spread), 1.4)
        other = self.delays(ResultCode.AUTH_FAILED)
        self.assertGreaterEqual(min(other), 0.9)
        self.assertLessEqual(max(other), 1.1)

    def test_backoff_grows_while_not_ready(self):
        clock = task.Clock()
        endpoint = _Endpoint()
        r = Reconnector(endpoint, None, lambda p: defer.fail(VssError(ResultCode.NOT_READY)),
                        clock, initial=1.0, max_delay=30.0)
        r.start()
        steps = []
        for _ in range(7):
            r.lost(endpoint.protocols[-1])
            steps.append(r.last_delay)
            clock.advance(r.last_delay)
        r.lost(endpoint.protocols[-1])
        r.stop()
        for i, delay in enumerate(steps):
            step = min(NOT_READY_MAX_DELAY, 2.0 ** i)
            self.assertTrue(step * 0.5 <= delay <= step * 1.5, (i, delay))
