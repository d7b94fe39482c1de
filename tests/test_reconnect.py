"""Reconnector: backoff, preparation on every connection, clean stop at any moment."""

from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from vss.protocols.reconnect import Reconnector


class Proto:
    def __init__(self):
        self.transport = StringTransport()


class FakeEndpoint:
    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append(d)
        return d


class ReconnectorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.endpoint = FakeEndpoint()
        self.prepared = []
        self.prepare_result = None
        self.r = Reconnector(self.endpoint, None, self.prepare, self.clock, initial=1.0,
                             max_delay=8.0, jitter=0.0)

    def prepare(self, proto):
        self.prepared.append(proto)
        return self.prepare_result

    def test_failed_connections_back_off_exponentially_up_to_the_maximum(self):
        self.r.start()
        delays = []
        for _ in range(6):
            self.endpoint.attempts[-1].errback(error.ConnectionRefusedError())
            call = self.clock.getDelayedCalls()[0]
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
        self.assertEqual(len(self.endpoint.attempts), 7)

    def test_every_connection_is_prepared_and_a_loss_reconnects(self):
        self.r.start()
        p1 = Proto()
        self.endpoint.attempts[-1].callback(p1)
        self.assertEqual(self.prepared, [p1])
        self.r.lost(p1)
        self.clock.advance(1.0)
        p2 = Proto()
        self.endpoint.attempts[-1].callback(p2)
        self.assertEqual(self.prepared, [p1, p2])

    def test_a_failed_preparation_aborts_the_connection(self):
        self.prepare_result = defer.fail(ValueError("login refused"))
        self.r.start()
        p = Proto()
        self.endpoint.attempts[-1].callback(p)
        self.assertTrue(p.transport.disconnecting)
        self.r.lost(p)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stop_while_preparing_closes_the_connection_and_waits_for_it(self):
        self.prepare_result = defer.Deferred()  # a login still in progress
        self.r.start()
        p = Proto()
        self.endpoint.attempts[-1].callback(p)
        stopped = self.r.stop()
        self.assertTrue(p.transport.disconnecting)
        self.assertFalse(stopped.called)
        self.r.lost(p)
        self.assertTrue(stopped.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_connecting_or_waiting(self):
        self.r.start()
        attempt = self.endpoint.attempts[-1]
        attempt.addErrback(lambda f: f.trap(defer.CancelledError))
        self.r.stop()
        self.assertTrue(attempt.called)
        self.r.start()
        self.endpoint.attempts[-1].errback(error.ConnectionRefusedError())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.r.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
