"""
The relay's fast path (vss.rgm.relay.fast_cu_request) and the link's request table:
the struct parser of PTZ_CONTROL and the size check of PtzStatus agree with the construct
definitions on valid and invalid input; the fast path is taken only when every check
passes and the general path gives every error; one timer per link still times out each
request at its own deadline.
"""

import random
import struct

from twisted.internet import defer, protocol, task
from twisted.test import proto_helpers
from twisted.trial import unittest

from vss.errors import VssError
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.link import LinkFactory, SignallingLink
from vss.protocols.messages import Action, MsgType, PtzControl, PtzStatus, Role
from vss.rgm import relay
from vss.testing.harness import ALL, NodeHarness

FIELDS = ("device_id", "channel", "op", "pan", "tilt", "zoom", "speed", "timeout_ms")


def construct_ptz(body):
    """The construct reading of a PTZ_CONTROL body: a tuple of fields and the extension
    block, or None when construct refuses it."""
    try:
        c = PtzControl.compiled.parse(body)
    except Exception:
        return None
    return tuple(c[n] for n in FIELDS), tuple(c.ext)


def ptz_body(device_id="cam1", channel=0, op=1, pan=0.5, tilt=0.0, zoom=0.0, speed=0.5,
             timeout_ms=0, ext=()):
    return codec.encode_body(PtzControl(device_id=device_id, channel=channel, op=op, pan=pan,
                                        tilt=tilt, zoom=zoom, speed=speed,
                                        timeout_ms=timeout_ms, ext=ext))


def same_floats(a, b):
    """Tuples equal, NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b, strict=True))


class PtzParserTests(unittest.TestCase):
    def test_valid_bodies_read_like_construct(self):
        rnd = random.Random(1)
        ids = ["cam1", "", "x" * 300, "caméra-7", "摄像机", "\U0001f4f7"]
        for _ in range(2000):
            body = ptz_body(device_id=rnd.choice(ids), channel=rnd.randrange(65536),
                            op=rnd.randrange(256), pan=rnd.uniform(-2, 2),
                            tilt=rnd.choice([0.0, -1.0, 1.0, float("inf"), float("nan")]),
                            zoom=rnd.uniform(-1, 1), speed=rnd.uniform(0, 1),
                            timeout_ms=rnd.randrange(2**32))
            fields, ext = construct_ptz(body)
            self.assertEqual(ext, ())
            got = relay.parse_ptz(body)
            self.assertIsNotNone(got)
            self.assertTrue(same_floats(got, fields), (got, fields))

    def test_extensions_are_left_to_construct(self):
        body = ptz_body(ext=((7, b"abc"),))
        self.assertEqual(construct_ptz(body)[1], ((7, b"abc"),))
        self.assertIsNone(relay.parse_ptz(body))

    def test_invalid_bodies_are_refused_like_construct(self):
        good = ptz_body()
        bad = [
            b"",
            good[:-1],  # truncated extension block
            good[:10],
            good + b"\x00",  # trailing byte
            b"\x00\x04\xff\xfe\xfd\xfc" + good[6:],  # invalid UTF-8 id
            b"\x00\x02\xed\xa0" + good[4 + 2:],  # wrong length prefix
            b"\xff\xff" + good[2:],  # id longer than the body
            good[:-2] + b"\x00\x01",  # one extension announced, none present
        ]
        for body in bad:
            self.assertIsNone(relay.parse_ptz(body), body)
            self.assertIsNone(construct_ptz(body), body)
        surrogate = b"\x00\x03\xed\xa0\x80" + good[6:]  # UTF-8 of a lone surrogate
        self.assertIsNone(relay.parse_ptz(surrogate))
        self.assertIsNone(construct_ptz(surrogate))

    def test_random_bytes_never_read_differently(self):
        rnd = random.Random(2)
        good = ptz_body(device_id="cam12")
        accepted = 0
        for _ in range(20000):
            body = bytearray(good)
            for _ in range(rnd.randrange(1, 4)):
                kind = rnd.randrange(3)
                if kind == 0 and body:
                    body[rnd.randrange(len(body))] = rnd.randrange(256)
                elif kind == 1:
                    del body[rnd.randrange(len(body) + 1):]
                else:
                    body += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
            body = bytes(body)
            got = relay.parse_ptz(body)
            want = construct_ptz(body)
            if got is not None:
                accepted += 1
                self.assertIsNotNone(want, body)
                self.assertEqual(want[1], ())
                self.assertTrue(same_floats(got, want[0]), (body, got, want))
            elif want is not None:
                self.assertNotEqual(want[1], (), body)  # only extensions go to construct
        self.assertGreater(accepted, 1000)


class PtzStatusCheckTests(unittest.TestCase):
    def test_agrees_with_construct(self):
        rnd = random.Random(3)
        good = codec.encode_body(PtzStatus(pan=0.1, tilt=0.2, zoom=0.3, moving=True))
        self.assertTrue(relay.ptz_status_ok(good))
        for _ in range(20000):
            n = rnd.choice([13, 14, 15, 15, 15, 16, 17, 19])
            body = bytes(rnd.randrange(256) for _ in range(n))
            if rnd.random() < 0.6:
                body = body[:-2] + b"\x00\x00"
            try:
                c = PtzStatus.compiled.parse(body)
                valid, ext = True, tuple(c.ext)
            except Exception:
                valid, ext = False, None
            if relay.ptz_status_ok(body):
                self.assertTrue(valid, body)
                self.assertEqual(ext, ())
            elif valid:
                self.assertNotEqual(ext, (), body)  # a checked-by-construct extension

    def test_the_size_is_the_constructs(self):
        self.assertEqual(relay._PTZ_STATUS_SIZE,
                         len(codec.encode_body(PtzStatus(pan=0, tilt=0, zoom=0, moving=False))))


class Answering:
    """A PU handler answering PTZ at once."""

    def __call__(self, frame, msg):
        return PtzStatus(pan=msg.body.pan, tilt=0.0, zoom=0.0, moving=False)


class FastPathTests(unittest.TestCase):
    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30, request_timeout=5.0)
        self.h.add_device("cam1", channels=2)
        self.h.add_user("alice", grants=[("cam1", ALL)])
        self.h.add_user("bob", grants=[("cam1", Action.VIEW)])
        self.addCleanup(self.h.stop)
        self.taken = []
        original = relay.fast_cu_request

        def spy(rgm, link, frame):
            taken = original(rgm, link, frame)
            if frame.type == MsgType.PTZ_CONTROL:
                self.taken.append(taken)
            return taken

        self.patch(relay, "fast_cu_request", spy)

    def online_pu(self, handler=None):
        client, (d, link, server) = self.h.pu("cam1", on_request=handler or Answering(),
                                              channels=2)
        self.h.pump()
        self.assertTrue(d.called)
        return client, server

    def cu(self, name="alice"):
        client, (d, link, server) = self.h.cu(name)
        self.h.pump()
        self.assertTrue(d.called)
        return client

    def ask(self, cu, **fields):
        d = cu.request(MsgType.PTZ_CONTROL, PtzControl(**{
            "device_id": "cam1", "channel": 0, "op": 1, "pan": 0.5, "tilt": 0.0, "zoom": 0.0,
            "speed": 0.5, "timeout_ms": 0, **fields}))
        self.h.pump()
        out = []
        d.addBoth(out.append)
        self.assertEqual(len(out), 1, "no answer")
        return out[0]

    def code(self, outcome):
        self.assertIsInstance(getattr(outcome, "value", None), VssError, outcome)
        return outcome.value.code

    def test_a_valid_request_takes_the_fast_path(self):
        self.online_pu()
        cu = self.cu()
        got = self.ask(cu, pan=0.25)
        self.assertEqual(got.body.pan, 0.25)
        self.assertEqual(self.taken, [True])
        self.assertEqual(self.h.rgm.counters["relayed"], 1)

    def test_every_error_comes_from_the_general_path(self):
        self.online_pu()
        bob = self.cu("bob")
        self.assertEqual(self.code(self.ask(bob)), ResultCode.FORBIDDEN)
        alice = self.cu("alice")
        for fields in ({"pan": 7.0}, {"tilt": float("nan")}, {"speed": float("-inf")},
                       {"op": 9}, {"channel": 2}):
            self.assertEqual(self.code(self.ask(alice, **fields)), ResultCode.INVALID_ARGUMENT,
                             fields)
        self.assertEqual(self.code(self.ask(alice, device_id="nope")), ResultCode.FORBIDDEN)
        self.assertEqual(self.taken, [False] * 7)

    def test_an_offline_pu_and_a_pu_that_drops(self):
        alice = self.cu()
        self.assertEqual(self.code(self.ask(alice)), ResultCode.DEVICE_OFFLINE)
        self.assertEqual(self.taken, [False])
        held = []

        def hold(frame, msg):
            from twisted.internet import defer

            d = defer.Deferred()
            held.append(d)
            return d

        pu, server = self.online_pu(hold)
        d = alice.request(MsgType.PTZ_CONTROL, PtzControl(
            device_id="cam1", channel=0, op=1, pan=0.0, tilt=0.0, zoom=0.0, speed=0.5,
            timeout_ms=0))
        self.h.pump()
        self.assertEqual(self.taken, [False, True])
        self.assertEqual(len(held), 1)
        server.transport.loseConnection()
        self.h.pump()
        out = []
        d.addErrback(out.append)
        self.assertEqual(out[0].value.code, ResultCode.DEVICE_OFFLINE)

    def test_a_bad_answer_from_the_pu_never_reaches_the_cu(self):
        pu, server = self.online_pu()
        alice = self.cu()
        pu_link = pu.link

        def send_response(type, txid, body):  # not a PtzStatus
            pu_link.send_raw(codec.encode_frame(type, b"\x00\x01\x02", txid,
                                                codec.FLAG_RESPONSE))

        self.patch(pu_link, "send_response", send_response)
        outcome = self.ask(alice)
        self.assertEqual(self.code(outcome), ResultCode.INTERNAL_ERROR)
        self.assertIn("answered badly", outcome.value.message)
        self.assertEqual(self.taken, [True])

    def test_a_pu_that_does_not_answer_times_out(self):
        held = []

        def hold(frame, msg):
            from twisted.internet import defer

            held.append(defer.Deferred())
            return held[-1]

        self.online_pu(hold)
        alice = self.cu()
        d = alice.request(MsgType.PTZ_CONTROL, PtzControl(
            device_id="cam1", channel=0, op=1, pan=0.0, tilt=0.0, zoom=0.0, speed=0.5,
            timeout_ms=0), timeout=60)
        self.h.pump()
        self.h.clock.advance(4.9)
        self.h.pump()
        self.assertFalse(d.called)
        self.h.clock.advance(0.2)
        self.h.pump()
        out = []
        d.addErrback(out.append)
        self.assertEqual(out[0].value.code, ResultCode.TIMEOUT)


class Handler:
    def __init__(self):
        self.up = self.down = 0

    def linkUp(self, link):
        self.up += 1

    def received(self, link, frame, msg):
        pass

    def linkDown(self, link, reason):
        self.down += 1


def response(txid, body=b"\x00\x00"):
    return codec.encode_frame(MsgType.KEEPALIVE, body, txid, codec.FLAG_RESPONSE)


class RequestTableTests(unittest.TestCase):
    """One timer per link, armed at the earliest deadline."""

    def setUp(self):
        self.clock = task.Clock()
        self.link = SignallingLink(Handler(), self.clock, request_timeout=10.0)
        self.transport = proto_helpers.StringTransport()
        self.link.makeConnection(self.transport)
        self.results = []

    def on_result(self, context, result):
        self.results.append((context, result if type(result) is codec.Frame else result.code))

    def sent_txids(self):
        data = self.transport.value()
        self.transport.clear()
        out, pos = [], 0
        while pos < len(data):
            fields = struct.unpack_from(">2sBBHHII", data, pos)
            out.append(fields[5])
            pos += 16 + fields[6]
        return out

    def test_each_request_times_out_at_its_own_deadline(self):
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", 10.0, self.on_result, "a")
        self.clock.advance(1)
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", 3.0, self.on_result, "b")
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", 20.0, self.on_result, "c")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2.9)
        self.assertEqual(self.results, [])
        self.clock.advance(0.1)  # t=4: b
        self.assertEqual(self.results, [("b", ResultCode.TIMEOUT)])
        self.clock.advance(5.9)
        self.assertEqual(len(self.results), 1)
        self.clock.advance(0.1)  # t=10: a
        self.assertEqual(self.results[1], ("a", ResultCode.TIMEOUT))
        self.clock.advance(10.9)
        self.assertEqual(len(self.results), 2)
        self.clock.advance(0.1)  # t=21: c
        self.assertEqual(self.results[2], ("c", ResultCode.TIMEOUT))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.link.in_flight, 0)

    def test_answers_and_the_timer(self):
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", None, self.on_result, "a")
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", None, self.on_result, "b")
        a, b = self.sent_txids()
        self.link.dataReceived(response(b))
        self.assertEqual(self.results[0][0], "b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.link.dataReceived(response(a))
        self.assertEqual([r[0] for r in self.results], ["b", "a"])
        # nothing in flight: no timer left behind
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.link.dataReceived(response(a))  # a late duplicate is ignored
        self.assertEqual(len(self.results), 2)

    def test_no_timeout_and_a_lost_link(self):
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", 0, self.on_result, "never")
        d = self.link.request_raw(MsgType.KEEPALIVE, b"\x00\x00", 5.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1000)
        self.assertEqual(self.results, [])
        failures = []
        d.addErrback(failures.append)
        self.assertEqual(failures[0].value.code, ResultCode.TIMEOUT)
        self.link.connectionLost(None)
        self.assertEqual(self.results, [("never", ResultCode.SESSION_CLOSED)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", None, self.on_result, "late")
        self.assertEqual(self.results[-1], ("late", ResultCode.SESSION_CLOSED))

    def test_a_cancelled_request_is_forgotten(self):
        d = self.link.request_raw(MsgType.KEEPALIVE, b"\x00\x00")
        (txid,) = self.sent_txids()
        d.addErrback(lambda f: None)
        d.cancel()
        self.assertEqual(self.link.in_flight, 0)
        self.link.dataReceived(response(txid))  # a late answer: ignored
        self.assertEqual(self.link.in_flight, 0)

    def test_the_in_flight_limit(self):
        self.link.max_in_flight = 2
        for name in "abc":
            self.link.request_cb(MsgType.KEEPALIVE, b"\x00\x00", None, self.on_result, name)
        self.assertEqual(self.results, [("c", ResultCode.TOO_MANY_IN_FLIGHT)])
        self.assertEqual(self.link.in_flight, 2)


class KeepaliveFastPathTests(unittest.TestCase):
    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30)
        self.h.add_device("cam1")
        self.addCleanup(self.h.stop)
        self.taken = []
        original = relay.fast_keepalive

        def spy(rgm, link, frame):
            taken = original(rgm, link, frame)
            self.taken.append(taken)
            return taken

        self.patch(relay, "fast_keepalive", spy)

    def test_answer_and_last_seen_are_the_general_paths(self):
        client, (d, link, server) = self.h.pu("cam1")
        self.h.pump()
        self.assertTrue(d.called)
        self.h.clock.advance(12.5)
        written = []
        self.patch(server, "send_raw", written.append)
        server.dataReceived(codec.encode_frame(MsgType.KEEPALIVE, b"\x00\x00", 77))
        self.assertEqual(self.taken, [True])
        self.assertEqual(written, [codec.encode_response(MsgType.KEEPALIVE, codec.Empty(), 77)])
        self.assertEqual(self.h.store.get_state("cam1")["last_seen"], 12500)
        # a body with an extension block, or a notification, takes the general path
        ext = codec.encode_body(codec.Empty(ext=((1, b"x"),)))
        server.dataReceived(codec.encode_frame(MsgType.KEEPALIVE, ext, 78))
        server.dataReceived(codec.encode_frame(MsgType.KEEPALIVE, b"\x00\x00", 0,
                                               codec.FLAG_NOTIFY))
        self.assertEqual(self.taken, [True, False, False])
        self.assertEqual(written[1], codec.encode_response(MsgType.KEEPALIVE, codec.Empty(), 78))
        self.assertEqual(len(written), 2)

    def test_before_login_the_answer_is_the_same_and_nothing_is_stored(self):
        link, server, pump = self.h.connect(Handler(), Role.PU)
        written = []
        self.patch(server, "send_raw", written.append)
        server.dataReceived(codec.encode_frame(MsgType.KEEPALIVE, b"\x00\x00", 5))
        # Before HELLO a KEEPALIVE is refused like anything else (docs/protocol.md 8.1).
        self.assertEqual(written, [codec.encode_error(MsgType.KEEPALIVE, 5,
                                                      ResultCode.UNEXPECTED_MESSAGE,
                                                      "HELLO first")])
        self.assertEqual(self.h.store.get_state("cam1"), {})


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.waiting = None

    def dataReceived(self, data):
        self.data += data
        if self.waiting is not None and len(self.data) >= self.waiting[1]:
            d, self.waiting = self.waiting[0], None
            d.callback(self.data)

    def wait_for(self, size):
        from twisted.internet import defer

        if len(self.data) >= size:
            return defer.succeed(self.data)
        d = defer.Deferred()
        self.waiting = (d, size)
        return d


class Replier:
    """Answers every request; with ``first`` set, writes it to the transport beforehand."""

    first = None

    def linkUp(self, link):
        self.link = link

    def received(self, link, frame, msg):
        if self.first is not None:
            link.transport.write(self.first)
        link.send_response(frame.type, frame.txid, codec.Empty())

    def linkDown(self, link, reason):
        pass


class WriteThroughTests(unittest.TestCase):
    """Replies to the peer leave in the same reactor pass, in order."""

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor

        self.replier = Replier()
        self.port = reactor.listenTCP(0, LinkFactory(self.replier, reactor),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = Collect()
        yield protocol.ClientCreator(reactor, lambda: self.client).connectTCP(
            "127.0.0.1", self.port.getHost().port)
        self.addCleanup(self.client.transport.loseConnection)
        self.writes = []

    def request(self, txid):
        return codec.encode_frame(MsgType.KEEPALIVE, b"\x00\x00", txid)

    def answer(self, txid):
        return codec.encode_response(MsgType.KEEPALIVE, codec.Empty(), txid)

    @defer.inlineCallbacks
    def test_answers_go_straight_to_the_socket(self):
        self.client.transport.write(self.request(1) + self.request(2))
        from twisted.internet import reactor

        while not getattr(self.replier, "link", None):
            yield task.deferLater(reactor, 0.01, lambda: None)
        transport = self.replier.link.transport
        original = transport.write
        self.patch(transport, "write", lambda data: (self.writes.append(data), original(data)))
        data = yield self.client.wait_for(2 * len(self.answer(1)))
        self.client.transport.write(self.request(3))
        data = yield self.client.wait_for(3 * len(self.answer(1)))
        self.assertEqual(data, self.answer(1) + self.answer(2) + self.answer(3))
        self.assertEqual(self.writes, [])  # never through the transport's buffer

    @defer.inlineCallbacks
    def test_a_buffered_transport_keeps_the_order(self):
        self.replier.first = b"FIRST"
        self.client.transport.write(self.request(1))
        data = yield self.client.wait_for(5 + len(self.answer(1)))
        self.assertEqual(data, b"FIRST" + self.answer(1))
