"""
The relay's fast path (vss.rgm.relay.fast_cu_request) and the link's request table:
the struct parser of PTZ_CONTROL and the size check of PtzStatus agree with the construct
definitions on valid and invalid input; the fast path is taken only when every check
passes and the general path gives every error; one timer per link still times out each
request at its own deadline.
"""

import random
import struct

from twisted.internet import defer, protocol, reactor, task
from twisted.test import proto_helpers
from twisted.trial import unittest

from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory, SignallingLink
from vss.protocols.messages import (
    Action,
    MsgType,
    PtzControl,
    PtzStatus,
    Role,
    RouteRequest,
    RouteResponse,
    Str,
)
from vss.rgm import relay
from vss.testing.harness import ALL, NodeHarness
from vss.testing.platform import start_platform, verifier, wait_until

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
        # KEEPALIVE is accepted in every state, before HELLO too (docs/protocol.md 8).
        self.assertEqual(self.taken, [True])
        self.assertEqual(written, [codec.encode_response(MsgType.KEEPALIVE, codec.Empty(), 5)])
        self.assertEqual(self.h.store.get_state("cam1"), {})
        self.assertFalse(server.closed)


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


class RouteCodecTests(unittest.TestCase):
    """The struct packing and parsing of RouteRequest / RouteResponse agree with construct."""

    IDS = ["node-a", "", "n" * 300, "nœud-7", "节点", "\U0001f4f7"]

    def random_request(self, rnd):
        return RouteRequest(origin_node=rnd.choice(self.IDS), device_id=rnd.choice(self.IDS),
                            hops=rnd.randrange(256), inner_type=rnd.randrange(65536),
                            inner_body=bytes(rnd.randrange(256) for _ in range(rnd.randrange(40))))

    def random_response(self, rnd):
        return RouteResponse(home_node=rnd.choice(self.IDS), inner_status=rnd.randrange(65536),
                             inner_body=bytes(rnd.randrange(256)
                                              for _ in range(rnd.randrange(40))))

    def test_str_field_is_constructs(self):
        for text in self.IDS:
            self.assertEqual(relay.str_field(text), Str.build(text))

    def test_packed_bodies_are_constructs(self):
        rnd = random.Random(5)
        for _ in range(2000):
            r = self.random_request(rnd)
            packed = relay.pack_route_request(relay.str_field(r.origin_node),
                                              relay.str_field(r.device_id), r.hops,
                                              r.inner_type, r.inner_body)
            self.assertEqual(packed, codec.encode_body(r))
            self.assertEqual(relay.parse_route_request(packed),
                             (r.origin_node, r.device_id, r.hops, r.inner_type, r.inner_body))
            a = self.random_response(rnd)
            packed = relay.pack_route_response(relay.str_field(a.home_node), a.inner_status,
                                               a.inner_body)
            self.assertEqual(packed, codec.encode_body(a))
            self.assertEqual(relay.parse_route_response(packed),
                             (a.home_node, a.inner_status, a.inner_body))

    def test_extensions_are_left_to_construct(self):
        r = codec.encode_body(RouteRequest(origin_node="a", device_id="b", hops=1,
                                           inner_type=1, inner_body=b"x", ext=((7, b"abc"),)))
        self.assertIsNone(relay.parse_route_request(r))
        a = codec.encode_body(RouteResponse(home_node="a", inner_status=0, inner_body=b"x",
                                            ext=((7, b"abc"),)))
        self.assertIsNone(relay.parse_route_response(a))

    def check_against_construct(self, cls, parse, body, fields):
        try:
            c = cls.compiled.parse(body)
            valid = (tuple(c[n] for n in fields), tuple(c.ext))
        except Exception:
            valid = None
        got = parse(body)
        if got is not None:
            self.assertIsNotNone(valid, body)
            self.assertEqual((got, ()), valid, body)
        elif valid is not None:
            self.assertNotEqual(valid[1], (), body)  # extensions: construct reads those

    def test_invalid_and_random_bodies_never_read_differently(self):
        rnd = random.Random(6)
        req_fields = ("origin_node", "device_id", "hops", "inner_type", "inner_body")
        resp_fields = ("home_node", "inner_status", "inner_body")
        for _ in range(4000):
            good_req = codec.encode_body(self.random_request(rnd))
            good_resp = codec.encode_body(self.random_response(rnd))
            for good, cls, parse, fields in (
                    (good_req, RouteRequest, relay.parse_route_request, req_fields),
                    (good_resp, RouteResponse, relay.parse_route_response, resp_fields)):
                body = bytearray(good)
                how = rnd.randrange(6)
                if how == 0 and body:
                    body[rnd.randrange(len(body))] = rnd.randrange(256)
                elif how == 1:
                    body = body[:rnd.randrange(len(body) + 1)]
                elif how == 2:
                    body += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
                elif how == 3:
                    body = bytearray(rnd.randrange(256) for _ in range(rnd.randrange(30)))
                elif how == 4 and len(body) > 4:
                    body[rnd.randrange(len(body) - 2)] = rnd.choice([0x80, 0xed, 0xff])
                self.check_against_construct(cls, parse, bytes(body), fields)


class HeldPtz:
    """A PU answering PTZ at once, or holding requests while ``hold`` is set, or answering
    with a body that is not a PtzStatus while ``bad`` is set."""

    def __init__(self):
        self.hold = self.bad = False
        self.held = []

    def __call__(self, frame, msg):
        answer = PtzStatus(pan=msg.body.pan, tilt=0.0, zoom=0.0, moving=False)
        if self.hold:
            d = defer.Deferred()
            self.held.append((d, answer))
            return d
        return answer

    def release(self):
        held, self.held = self.held, []
        for d, answer in held:
            d.callback(answer)


class RoutedFastPathTests(unittest.TestCase):
    """A PTZ_CONTROL for a PU homed on another node, over a cached route: the fast paths
    on both nodes give the general paths' answers, byte for byte, and leave every error,
    and a failed route, to them."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.p = yield start_platform(self)
        cms, store = self.p.cms.cms, self.p.cms.store
        cms.publish((yield store.upsert_device("cam-b", "cam-b", 1, 2, "node-b",
                                               verifier("cam-b-secret"))))
        cms.publish((yield store.set_grant("user:alice", "cam-b", ALL)))
        cms.publish((yield store.set_grant("user:bob", "cam-b", int(Action.VIEW))))
        for user in ("alice", "bob"):
            cms.publish((yield store.upsert_user(user, verifier(f"{user}-pw"), [])))
        self.node_b = yield self.p.start_node("node-b")
        self.node_a = yield self.p.start_node("node-a")
        self.pu = HeldPtz()
        self.pu_client = yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret",
                                            on_request=self.pu, channels=2)
        self.alice = yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        yield self.alice.request(MsgType.PTZ_CONTROL, ptz_control())  # through CMS
        yield wait_until(reactor, lambda: "cam-b" in self.node_a.central.route_cache,
                         what="the route to be cached")
        yield self.alice.request(MsgType.PTZ_CONTROL, ptz_control())  # makes the peer link
        self.assertEqual(len(self.node_a.central.peers.links), 1)
        self.taken = {"cu": [], "home": []}
        self.fast = True
        cu_fast, home_fast = relay._fast_routed_request, relay.fast_routed

        def cu_spy(*args):
            taken = self.fast and cu_fast(*args)
            self.taken["cu"].append(taken)
            return taken

        def home_spy(*args):
            taken = self.fast and home_fast(*args)
            self.taken["home"].append(taken)
            return taken

        self.patch(relay, "_fast_routed_request", cu_spy)
        self.patch(relay, "fast_routed", home_spy)

    def raw(self, cu, **fields):
        """The response Frame to a PTZ_CONTROL, or the VssError."""
        d = cu.link.request_raw(MsgType.PTZ_CONTROL, codec.encode_body(ptz_control(**fields)))
        return d.addErrback(lambda f: f.value)

    @defer.inlineCallbacks
    def both_ways(self, cu, **fields):
        """The answer by the fast paths, then by the general paths."""
        self.fast = True
        fast = yield self.raw(cu, **fields)
        self.fast = False
        general = yield self.raw(cu, **fields)
        self.fast = True
        return fast, general

    def same(self, fast, general):
        self.assertIs(type(fast), codec.Frame)
        self.assertEqual((fast.type, fast.flags, fast.status, fast.body),
                         (general.type, general.flags, general.status, general.body))

    def cu_session(self, name):
        (session,) = [lk.session for lk in self.node_a.rgm.cu_links.values()
                      if lk.session.identity == name]
        return session

    @defer.inlineCallbacks
    def test_a_valid_request_takes_both_fast_paths(self):
        a, b = self.node_a.central.counters, self.node_b.rgm.counters
        direct, relayed = a["routed_direct"], b["relayed"]
        fast, general = yield self.both_ways(self.alice, pan=0.25)
        self.same(fast, general)
        self.assertEqual(fast.status, 0)
        self.assertEqual(codec.decode_body(fast).body.pan, 0.25)
        self.assertEqual(self.taken, {"cu": [True, False], "home": [True, False]})
        self.assertEqual(a["routed_direct"] - direct, 2)
        self.assertEqual(b["relayed"] - relayed, 2)
        self.assertEqual(a["routed_via_cms"], 1)
        self.assertIn("cam-b", self.node_a.central.route_cache)

    @defer.inlineCallbacks
    def test_every_error_comes_from_the_general_path(self):
        bob = yield self.p.login("node-a", Role.CU, "bob", "bob-pw")
        out = yield self.raw(bob)
        self.assertEqual(out.status, ResultCode.FORBIDDEN)
        for fields in ({"pan": 7.0}, {"tilt": float("nan")}, {"speed": float("-inf")},
                       {"op": 9}, {"channel": 2}):
            out = yield self.raw(self.alice, **fields)
            self.assertEqual(out.status, ResultCode.INVALID_ARGUMENT, fields)
        self.assertEqual(self.taken, {"cu": [], "home": []})

    @defer.inlineCallbacks
    def bad_pu(self):
        """cam-b logged in again on a fresh link that answers PTZ_CONTROL with a body that
        is not a PtzStatus; fires with (link, frames the PU receives)."""
        client = yield self.p.login("node-b", Role.PU, "cam-b", "cam-b-secret",
                                    on_request=self.pu, channels=2)
        link = client.link
        received = codec.FrameDecoder()
        frames = []
        data_received = link.dataReceived

        def spy(data):
            frames.extend(received.feed(data))
            data_received(data)

        def send_response(type, txid, body):
            link.send_raw(codec.encode_frame(type, b"\x00\x01\x02", txid, codec.FLAG_RESPONSE))

        self.patch(link, "dataReceived", spy)
        self.patch(link, "send_response", send_response)
        yield wait_until(reactor, lambda: self.node_b.rgm.pu_links.get("cam-b") is not None
                         and not self.node_b.rgm.pu_links["cam-b"].closed)
        return link, frames

    @defer.inlineCallbacks
    def test_errors_on_the_home_node_are_the_general_paths(self):
        answers = []
        for fast in (True, False):
            # A PU answer that does not decode is a body error: the CU gets INTERNAL_ERROR,
            # the PU is told TRUNCATED_BODY and its link is closed (docs/protocol.md 6).
            link, frames = yield self.bad_pu()
            self.fast = fast
            answers.append((yield self.raw(self.alice)))
            self.fast = True
            yield wait_until(reactor, lambda link=link: link.closed,
                             what="the bad PU link to close")
            told = [f for f in frames if f.flags & codec.FLAG_ERROR]
            self.assertEqual([(f.type, f.status) for f in told],
                             [(MsgType.PTZ_CONTROL, ResultCode.TRUNCATED_BODY)])
        fast, general = answers
        self.same(fast, general)
        self.assertEqual(fast.status, ResultCode.INTERNAL_ERROR)
        self.assertIn(b"answered badly", fast.body)
        self.assertEqual(self.taken["home"], [True, False])
        # The PU is offline: the home node's general path answers, through the fast
        # path of the CU's node.
        yield wait_until(reactor, lambda: "cam-b" not in self.node_b.rgm.pu_links)
        fast, general = yield self.both_ways(self.alice)
        self.same(fast, general)
        self.assertEqual(fast.status, ResultCode.DEVICE_OFFLINE)
        self.assertEqual(self.taken["cu"], [True, False, True, False])
        self.assertEqual(self.taken["home"], [True, False, False, False])

    @defer.inlineCallbacks
    def test_a_failed_cached_route_is_dropped_and_cms_asked(self):
        central = self.node_a.central
        via_cms = central.counters["routed_via_cms"]

        def refuse(link, frame):
            link.send_error(frame.type, frame.txid, ResultCode.INTERNAL_ERROR, "broken")
            return True

        self.patch(self.node_b.peer_server, "received_frame", refuse)
        for link in list(self.node_b.peer_server.links):
            link._fast = refuse
        dropped = []
        original = central.route_missed

        def missed(device_id, *args):
            dropped.append(device_id)
            return original(device_id, *args)

        self.patch(central, "route_missed", missed)
        out = yield self.raw(self.alice, pan=0.5)
        self.assertEqual(out.status, 0)
        self.assertEqual(codec.decode_body(out).body.pan, 0.5)
        self.assertEqual(dropped, ["cam-b"])
        self.assertEqual(self.taken["cu"], [True])
        self.assertEqual(central.counters["routed_via_cms"] - via_cms, 1)
        self.assertEqual(self.cu_session("alice").inflight, set())

    @defer.inlineCallbacks
    def test_in_flight_txids_are_held_as_on_the_local_fast_path(self):
        self.pu.hold = True
        link = self.alice.link
        body = codec.encode_body(ptz_control(pan=0.75))
        answers = []
        txid = 4242

        def expect():
            link._pending[txid] = (lambda ctx, result: answers.append(result), None, None)

        expect()
        link.send_raw(codec.encode_frame(MsgType.PTZ_CONTROL, body, txid, 0, 0))
        yield wait_until(reactor, lambda: self.pu.held, what="the PU to hold it")
        session = self.cu_session("alice")
        self.assertEqual(session.inflight, {txid})
        expect()
        link.send_raw(codec.encode_frame(MsgType.PTZ_CONTROL, body, txid, 0, 0))
        yield wait_until(reactor, lambda: answers, what="the duplicate's answer")
        self.assertEqual(answers[0].status, ResultCode.DUPLICATE_TXID)
        self.assertEqual(self.taken["cu"], [True, False])
        expect()
        self.pu.release()
        yield wait_until(reactor, lambda: len(answers) == 2, what="the answer")
        self.assertEqual(answers[1].status, 0)
        self.assertEqual(codec.decode_body(answers[1]).body.pan, 0.75)
        self.assertEqual(session.inflight, set())
        # The txid is free again.
        self.pu.hold = False
        expect()
        link.send_raw(codec.encode_frame(MsgType.PTZ_CONTROL, body, txid, 0, 0))
        yield wait_until(reactor, lambda: len(answers) == 3, what="the reused txid's answer")
        self.assertEqual(answers[2].status, 0)
        self.assertEqual(self.taken["cu"], [True, False, True])
        self.assertEqual(session.inflight, set())


def ptz_control(**fields):
    return PtzControl(**{"device_id": "cam-b", "channel": 0, "op": 1, "pan": 0.5, "tilt": 0.0,
                         "zoom": 0.0, "speed": 0.5, "timeout_ms": 0, **fields})
