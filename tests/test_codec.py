"""
The signalling codec (vss/protocols/codec.py) and SCRAM helpers (scram.py): property
round trips for every body, stream splitting, the header's two definitions, the fast
paths against construct, malformed input, and authentication.

Byte-exact conformance lives in test_protocol_vectors.py.
"""

import struct

import construct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vss.protocols import codec, scram
from vss.protocols import messages as M
from vss.protocols.codec import (
    FLAG_ERROR,
    FLAG_NOTIFY,
    FLAG_RESPONSE,
    HEADER,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAX_BODY,
    Frame,
    FrameDecoder,
    Message,
    MessageDecoder,
    ProtocolError,
    decode_body,
    decode_header,
    encode_body,
    encode_error,
    encode_frame,
    encode_message,
    encode_notify,
    encode_request,
    encode_response,
)
from vss.protocols.codes import ResultCode
from vss.protocols.messages import CATALOGUE, Empty, Error, MsgType

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
DAMAGE = settings(FAST, max_examples=60)

# ---------------------------------------------------------------------------
# Strategies derived from the construct field types of messages.py

_FIXED = {
    id(construct.Int8ub): st.integers(0, 0xFF),
    id(construct.Int16ub): st.integers(0, 0xFFFF),
    id(construct.Int32ub): st.integers(0, 0xFFFF_FFFF),
    id(construct.Int64ub): st.integers(0, 0xFFFF_FFFF_FFFF_FFFF),
    id(construct.Float32b): st.floats(width=32, allow_nan=False, allow_infinity=False),
    id(construct.Flag): st.booleans(),
}
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_PREFIXED = {
    id(M.Str): _TEXT,
    id(M.Bytes): st.binary(max_size=40),
    id(M.Blob): st.binary(max_size=64),
}
EXT = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=6)), max_size=2).map(tuple)


def strategy_for(con):
    """A hypothesis strategy of the Python values a construct field holds."""
    if isinstance(con, construct.Renamed):
        return strategy_for(con.subcon)
    if id(con) in _FIXED:
        return _FIXED[id(con)]
    if id(con) in _PREFIXED:
        return _PREFIXED[id(con)]
    if isinstance(con, M._Record):
        return record_strategy(con.cls)
    if isinstance(con, M._Optional):
        return st.none() | strategy_for(con.subcon.subcons[1].subcon.thensubcon)
    if isinstance(con, construct.FocusedSeq):  # List(...): PrefixedArray
        return st.lists(strategy_for(con.subcons[1].subcon.subcon), max_size=2)
    raise TypeError(f"no strategy for {con!r}")


def _field_strategies(struct_):
    return {
        sc.name: strategy_for(sc)
        for sc in struct_.subcons
        if sc.name is not None and sc.name != "ext"
    }


def record_strategy(cls):
    return st.builds(cls, **_field_strategies(cls.con.subcon))


def body_strategy(cls):
    return st.builds(cls, **_field_strategies(cls.struct), ext=EXT)


BODIES = sorted(
    {cls for pair in CATALOGUE.values() for cls in pair if cls is not None} | {Error},
    key=lambda c: c.__name__,
)


def _frame(type, body, flags=0, txid=1, status=0, version=1):
    return Frame(version, flags, type, status, txid, body)


def _type_for(cls):
    """(type, flags) of a frame carrying a body of class ``cls``."""
    if cls is Error:
        return MsgType.PTZ_CONTROL, FLAG_RESPONSE | FLAG_ERROR
    for t, (req, resp) in CATALOGUE.items():
        if req is cls:
            return t, 0
        if resp is cls:
            return t, FLAG_RESPONSE
    raise LookupError(cls)


def _construct_build(obj):
    return obj.compiled.build({n: getattr(obj, n) for n in obj.__slots__})


class RoundTripTests(SynchronousTestCase):
    """encode then decode gives back the same body, for every body type; the fast paths
    produce exactly what construct produces."""

    def test_strategies_cover_every_body(self):
        self.assertIn(M.PtzControl, BODIES)
        self.assertIn(M.SyncBatch, BODIES)
        self.assertEqual(len(BODIES), len({c.__name__ for c in BODIES}))

    def test_every_body_has_fast_paths(self):
        """Every body type of the catalogue, nested records, optionals and lists of
        records included, has a generated decoder and encoder."""
        for cls in BODIES:
            self.assertIsNotNone(codec.fast_plan(cls), cls.__name__)
            self.assertIsNotNone(codec._fast_decoder(cls), cls.__name__)
            self.assertIsNotNone(codec._fast_encoder(cls), cls.__name__)
        plan = codec.fast_plan(M.StaticPage)
        self.assertEqual(plan[0].format, ">B")
        self.assertIsInstance(plan[1], codec.ListPlan)
        (device,) = plan[1].item
        self.assertIsInstance(device, codec.RecordPlan)
        self.assertIs(device.cls, M.DeviceRecord)
        self.assertIs(device.fields[4].cls, M.Verifier)  # after name, kind+channels, home
        change = codec.fast_plan(M.SyncNotify)[1].item[0]
        self.assertIsInstance(change.fields[-1], codec.OptionalPlan)
        self.assertIs(change.fields[-2].value[0].cls, M.GrantRecord)
        self.assertIs(change.fields[-1].value[0].cls, M.StreamCredential)
        # flat bodies keep their flat plan (vss/rgm/relay.py reads PtzControl's)
        self.assertEqual(codec.fast_plan(M.PtzControl)[0], (2, True))

    def test_unsupported_field_has_no_fast_path(self):
        """A field the generator does not know leaves the body to construct."""

        class Odd:
            struct = construct.Struct(
                "a" / M.List(construct.Int24ub), "ext" / M.Extensions, construct.Terminated)
            _fields = ("a",)

        class OddRecord:
            struct = construct.Struct(
                "r" / M.Optional(construct.Int24ub), "ext" / M.Extensions,
                construct.Terminated)
            _fields = ("r",)

        for cls in (Odd, OddRecord):
            self.assertIsNone(codec.fast_plan(cls))
            self.assertIsNone(codec._fast_decoder(cls))
            self.assertIsNone(codec._fast_encoder(cls))


def _check_decoders_agree(self, body_cls, t, flags, data):
    """On ``data``, the fast decoder either declines or gives what construct gives, and
    decode_body's answer (object or error code and message) is construct's."""
    frame = _frame(t, data, flags)
    expected = codec._construct_decode(body_cls, frame)
    fast = codec._fast_decoder(body_cls)
    try:
        got = fast(data)
    except Exception:
        got = None
    if got is not None:
        self.assertNotIsInstance(expected, ProtocolError)
        _assert_same_body(self, got, expected)
    msg = decode_body(frame)
    if isinstance(expected, ProtocolError):
        self.assertEqual(msg, expected)
    else:
        _assert_same_body(self, msg.body, expected)


def _assert_same_body(self, got, expected):
    """Equal bodies; a NaN float (never equal to itself) compares by its bytes."""
    self.assertIs(type(got), type(expected))
    if got != expected or expected != got:
        self.assertIn("nan", repr(expected))
        self.assertEqual(_construct_build(got), _construct_build(expected))


def _round_trip_tests(body_cls):
    t, flags = _type_for(body_cls)

    @FAST
    @given(obj=body_strategy(body_cls))
    def test_round_trip(self, obj):
        data = encode_body(obj)
        self.assertEqual(data, _construct_build(obj))
        msg = decode_body(_frame(t, data, flags))
        self.assertIsInstance(msg, Message)
        self.assertEqual(msg.body, obj)
        # the same through a whole frame and the streaming decoder
        wire = encode_message(Message(t, flags, 0, 9, obj))
        self.assertEqual(MessageDecoder().feed(wire), [Message(t, flags, 0, 9, obj)])

    @FAST
    @given(data=st.binary(max_size=48))
    def test_fast_decoder_agrees(self, data):
        _check_decoders_agree(self, body_cls, t, flags, data)

    @DAMAGE
    @given(obj=body_strategy(body_cls), edit=st.data())
    def test_fast_decoder_agrees_on_damaged_bodies(self, obj, edit):
        """Valid bodies cut short, with a byte changed, or with bytes inserted: the damage
        lands inside lists, records and optionals that random bytes rarely reach."""
        data = _construct_build(obj)
        i = edit.draw(st.integers(0, len(data)))
        how = edit.draw(st.sampled_from(["cut", "set", "insert"]))
        if how == "cut":
            data = data[:i]
        elif how == "set" and i < len(data):
            byte = edit.draw(st.sampled_from([0, 1, 2, 0x80, 0xFF]) | st.integers(0, 255))
            data = data[:i] + bytes([byte]) + data[i + 1:]
        else:
            data = data[:i] + edit.draw(st.binary(min_size=1, max_size=3)) + data[i:]
        _check_decoders_agree(self, body_cls, t, flags, data)

    @FAST
    @given(obj=body_strategy(body_cls))
    def test_fast_paths_take_valid_bodies(self, obj):
        """Well-formed bodies with no extension: the fast encoder and decoder take them
        themselves and give exactly construct's bytes and object."""
        obj = type(obj)(**{n: getattr(obj, n) for n in obj._fields})
        data = _construct_build(obj)
        self.assertEqual(codec._fast_encoder(body_cls)(obj), data)
        got = codec._fast_decoder(body_cls)(data)
        self.assertIs(type(got), body_cls)
        self.assertEqual(got, obj)
        self.assertEqual(got, codec._construct_decode(body_cls, _frame(t, data, flags)))

    return (test_round_trip, test_fast_decoder_agrees,
            test_fast_decoder_agrees_on_damaged_bodies, test_fast_paths_take_valid_bodies)


def _add_round_trips(cls):
    for body_cls in BODIES:
        for test in _round_trip_tests(body_cls):
            test.__name__ = f"{test.__name__}_{body_cls.__name__}"
            setattr(cls, test.__name__, test)
    return cls


_add_round_trips(RoundTripTests)


class FastPathTests(SynchronousTestCase):
    """Edge cases where a fast path must decline and leave the answer to construct."""

    def test_fast_encoder_declines_extensions(self):
        obj = M.PtzStatus(pan=0.0, tilt=0.0, zoom=0.0, moving=False, ext=((7, b"x"),))
        self.assertIsNone(codec._fast_encoder(M.PtzStatus)(obj))
        self.assertEqual(encode_body(obj), _construct_build(obj))
        self.assertTrue(encode_body(obj).endswith(b"\x00\x01\x00\x07\x00\x01x"))

    def test_bad_values_raise_construct_errors(self):
        """Out-of-range values are refused the way construct refuses them."""
        for obj in (
            M.PtzStatus(pan=1e39, tilt=0.0, zoom=0.0, moving=False),
            M.Bye(reason=70000, message=""),
            M.Bye(reason=-1, message=""),
            M.Bye(reason=1, message=b"not text"),
            M.AuthProof(client_proof="not bytes"),
            M.AuthProof(client_proof=5),
            M.RouteLookup(device_id="x" * 70000),
            M.RouteLookup(device_id="\ud800"),
        ):
            self.assert_refused_as_construct_refuses(obj)

    def assert_refused_as_construct_refuses(self, obj):
        """``encode_body`` raises the error construct raises for ``obj``."""
        try:
            _construct_build(obj)
        except Exception as e:
            expected = type(e)
        else:
            self.fail(f"construct accepted {obj!r}")
        self.assertRaises(expected, encode_body, obj)

    def test_bad_nested_values_raise_construct_errors(self):
        """Odd values inside lists, records and optionals: construct's error, or, where
        construct accepts them, construct's bytes."""
        v = M.Verifier(salt=b"s", iterations=1, stored_key=b"k", server_key=b"k")
        dev = M.DeviceRecord("d", "n", 1, 1, "node", v, "", True, 0)
        kv = M.KV(key="a", value="b")
        bad = [
            M.Config(items=[kv] * 70000, version=1),
            M.Config(items=[kv, None], version=1),
            M.Config(items=[M.KV(key=b"a", value="b")], version=1),
            M.Config(items=kv, version=1),
            M.Hello(1, 1, 1, "a", [1]),
            M.Hello(1, 1, 1, "a", ["\ud800"]),
            M.StaticPage(1, [M.DeviceRecord("d", "n", 1, 1, "node",
                                            M.Verifier("salt", 1, b"k", b"k"), "", True, 0)],
                         [], [], "", 0),
            M.StaticPage(1, [M.DeviceRecord("d", "n", 256, 1, "node", v, "", True, 0)],
                         [], [], "", 0),
            M.StaticPage(1, [M.DeviceRecord("d", "n", 1, 1, "node", v, "", True, -1)],
                         [], [], "", 0),
            M.RegInfo("node", v, None, []),
            M.RegInfo("node", None, None, [dev]),
            M.SyncNotify(1, [M.Change(1, 1, 1, "k", 1, "o", dev, "not a user", None)]),
        ]
        for obj in bad:
            self.assert_refused_as_construct_refuses(obj)
        # accepted by construct, though odd: the same bytes
        odd = [
            M.Hello(1, 1, 1, "a", "xy"),  # a string is a list of one-character strings
            M.Hello(1, 1, 1, "a", ("x", "y")),
            M.Hello(1, 1, 1, "a", construct.ListContainer(["x"])),
            M.Config(items={kv: 1}, version=1),  # construct iterates: the keys
            M.StaticPage(1, [M.DeviceRecord("d", "n", True, 1, "node", v, "", 7, 0)],
                         [], [], "", 0),
            M.StaticPage(1, [], [M.UserRecord("u", M.Verifier(bytearray(b"s"), 1, b"k", b"k"),
                                              [], True, 0)], [], "", 0),
        ]
        for obj in odd:
            self.assertEqual(encode_body(obj), _construct_build(obj), repr(obj))

    def test_large_pages_agree(self):
        """A reload page and a notify with many records: both paths, both ways."""
        v = M.Verifier(salt=b"\x01" * 16, iterations=4096, stored_key=b"\x02" * 32,
                       server_key=b"\x03" * 32)
        devices = [M.DeviceRecord(f"dev-{i:06d}", f"Device {i} ✓", 1, 1 + i % 4, "node-1", v,
                                  f"rtsp://h/{i}" * (i % 2), bool(i % 3), i)
                   for i in range(5000)]
        page = M.StaticPage(M.Entity.DEVICE, devices, [], [], "dev-004999", 5000)
        user = M.UserRecord("alice", v, ["ops", "admins"], True, 3)
        grant = M.GrantRecord("alice", "dev-000001", 3, 4)
        changes = [M.Change(i, 1 + i % 3, 1 + i % 2, f"k{i}", i, "cms",
                            devices[i] if i % 3 == 0 else None,
                            user if i % 3 == 1 else None,
                            grant if i % 3 == 2 else None) for i in range(500)]
        for obj, t, flags in ((page, MsgType.STATIC_PULL, FLAG_RESPONSE),
                              (M.SyncNotify(500, changes), MsgType.SYNC_NOTIFY, FLAG_NOTIFY),
                              (M.SyncBatch(changes, 500, False), MsgType.SYNC_FETCH,
                               FLAG_RESPONSE)):
            data = _construct_build(obj)
            self.assertEqual(codec._fast_encoder(type(obj))(obj), data)
            fast = codec._fast_decoder(type(obj))(data)
            slow = codec._construct_decode(type(obj), _frame(t, data, flags))
            self.assertEqual(fast, obj)
            self.assertEqual(fast, slow)
            self.assertEqual(slow, fast)
            self.assertEqual(decode_body(_frame(t, data, flags)).body, obj)

    def test_non_zero_flag_byte(self):
        """A bool byte other than 0/1 reads as true on both paths."""
        frame = _frame(MsgType.PTZ_CONTROL, bytes(12) + b"\x02\x00\x00", FLAG_RESPONSE)
        self.assertIs(decode_body(frame).body.moving, True)
        self.assertIs(codec._construct_decode(M.PtzStatus, frame).moving, True)

    def test_long_bodies_pause_the_garbage_collector(self):
        """A long body with lists is decoded with the cyclic collector paused; it runs
        again after, also when the body is refused, and stays off if it was off."""
        import gc

        seen = []
        kv = M.KV(key="k" * 100, value="v" * 100)
        long_body = encode_body(M.Config(items=[kv] * 200, version=1))
        self.assertGreaterEqual(len(long_body), codec.GC_PAUSE_SIZE)
        inner = codec._fast_decoder(M.Config).__closure__[0].cell_contents

        def spy(data):
            seen.append(gc.isenabled())
            return inner(data)

        fast = codec._pausing_gc(spy)
        self.assertTrue(gc.isenabled())
        self.assertEqual(fast(long_body).items, [kv] * 200)
        self.assertEqual(fast(encode_body(M.Config(items=[kv], version=1))).items, [kv])
        self.assertIsNone(fast(long_body[:-1]))
        self.assertRaises(IndexError, fast, b"\xff\xff" + long_body[2:])  # count too big
        self.assertEqual(seen, [False, True, False, False])
        self.assertTrue(gc.isenabled())
        gc.disable()
        try:
            fast(long_body)
            self.assertFalse(gc.isenabled())
        finally:
            gc.enable()
        self.assertIsNone(codec._fast_decoder(M.PtzControl).__closure__)  # flat: no pause

    def test_non_zero_presence_byte(self):
        """An Optional's presence byte other than 0/1 means present on both paths."""
        v = M.Verifier(salt=b"s", iterations=1, stored_key=b"k", server_key=b"k")
        user = M.UserRecord("u", v, ["g"], True, 2)
        data = bytearray(encode_body(M.RegInfo("node", None, user, [])))
        self.assertEqual(data[6:8], b"\x00\x01")  # "node", device absent, user present
        data[7] = 0x02
        frame = _frame(MsgType.REG_INFO, bytes(data), FLAG_RESPONSE)
        got = codec._fast_decoder(M.RegInfo)(bytes(data))
        self.assertEqual(got, M.RegInfo("node", None, user, []))
        self.assertEqual(codec._construct_decode(M.RegInfo, frame), got)

    def test_body_with_extension_decodes(self):
        body = bytes.fromhex("0000 0001 0009 0002 abcd")  # message "", one ext record
        msg = decode_body(_frame(MsgType.ERROR, body, FLAG_RESPONSE | FLAG_ERROR))
        self.assertEqual(msg.body, Error(message="", ext=((9, b"\xab\xcd"),)))

    def test_memoryview_body(self):
        body = memoryview(encode_body(M.RouteLookup(device_id="cam")))
        msg = decode_body(_frame(MsgType.ROUTE_LOOKUP, body))
        self.assertEqual(msg.body, M.RouteLookup(device_id="cam"))


# ---------------------------------------------------------------------------
# Streams

PTZ = M.PtzControl(
    device_id="cam-1", channel=1, op=M.PtzOp.CONTINUOUS, pan=0.5, tilt=-0.25, zoom=1.0,
    speed=0.75, timeout_ms=500,
)
STREAM_MESSAGES = [
    Message(MsgType.KEEPALIVE, 0, 0, 1, Empty()),
    Message(MsgType.PTZ_CONTROL, 0, 0, 2, PTZ),
    Message(MsgType.BYE, FLAG_NOTIFY, 0, 0, M.Bye(reason=0, message="bye ✓")),
    Message(MsgType.CONFIG_GET, FLAG_RESPONSE, 0, 3,
            M.Config(items=[M.KV(key="a", value="b")], version=4)),
    Message(MsgType.PTZ_CONTROL, FLAG_RESPONSE | FLAG_ERROR, int(ResultCode.FORBIDDEN), 2,
            Error(message="no")),
]
STREAM = b"".join(encode_message(m) for m in STREAM_MESSAGES)


class StreamTests(SynchronousTestCase):
    def test_coalesced(self):
        dec = MessageDecoder()
        self.assertEqual(dec.feed(STREAM), STREAM_MESSAGES)
        self.assertEqual(dec.buffered, 0)

    def test_split_at_every_position(self):
        for i in range(len(STREAM) + 1):
            dec = MessageDecoder()
            out = dec.feed(STREAM[:i])
            self.assertEqual(dec.buffered, i - sum(len(encode_message(m)) for m in out))
            out += dec.feed(STREAM[i:])
            self.assertEqual(out, STREAM_MESSAGES, f"split at {i}")
            self.assertEqual(dec.buffered, 0)

    def test_split_at_every_pair_of_positions(self):
        n = len(STREAM)
        for i in range(0, n + 1, 3):
            for j in range(i, n + 1, 5):
                dec = FrameDecoder()
                out = dec.feed(STREAM[:i]) + dec.feed(STREAM[i:j]) + dec.feed(STREAM[j:])
                self.assertEqual([f.txid for f in out], [m.txid for m in STREAM_MESSAGES])

    def test_byte_by_byte(self):
        dec = MessageDecoder()
        out = []
        for i in range(len(STREAM)):
            out += dec.feed(STREAM[i : i + 1])
        self.assertEqual(out, STREAM_MESSAGES)

    @FAST
    @given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=6))
    def test_random_chunks(self, cuts):
        cuts = sorted(cuts)
        dec = MessageDecoder()
        out = []
        prev = 0
        for c in cuts + [len(STREAM)]:
            out += dec.feed(STREAM[prev:c])
            prev = c
        self.assertEqual(out, STREAM_MESSAGES)

    def test_bytearray_and_memoryview_input(self):
        for wrap in (bytearray, memoryview):
            frames = FrameDecoder().feed(wrap(STREAM))
            self.assertEqual(len(frames), len(STREAM_MESSAGES))
            for f in frames:
                self.assertIs(type(f.body), bytes)

    def test_frames_carry_raw_body(self):
        (frame,) = FrameDecoder().feed(encode_request(MsgType.PTZ_CONTROL, PTZ, 77))
        self.assertEqual(frame, Frame(1, 0, MsgType.PTZ_CONTROL, 0, 77, encode_body(PTZ)))

    def test_encoders_set_flags(self):
        cases = [
            (encode_request(MsgType.KEEPALIVE, Empty(), 5), 0, 5, 0),
            (encode_notify(MsgType.BYE, M.Bye(reason=0, message="")), FLAG_NOTIFY, 0, 0),
            (encode_response(MsgType.KEEPALIVE, Empty(), 5), FLAG_RESPONSE, 5, 0),
            (encode_error(MsgType.PTZ_CONTROL, 6, ResultCode.TIMEOUT, "t"),
             FLAG_RESPONSE | FLAG_ERROR, 6, int(ResultCode.TIMEOUT)),
        ]
        for wire, flags, txid, status in cases:
            (frame,) = FrameDecoder().feed(wire)
            self.assertEqual((frame.flags, frame.txid, frame.status), (flags, txid, status))

    def test_encoder_refuses_large_body(self):
        self.assertRaises(ValueError, encode_frame, 3, b"\x00" * 11, max_body=10)
        self.assertEqual(len(encode_frame(3, b"\x00" * 10, max_body=10)), 26)


# ---------------------------------------------------------------------------
# Header

header_fields = st.fixed_dictionaries({
    "version": st.integers(0, 0xFF),
    "flags": st.integers(0, 0xFF),
    "type": st.integers(0, 0xFFFF),
    "status": st.integers(0, 0xFFFF),
    "txid": st.integers(0, 0xFFFF_FFFF),
    "length": st.integers(0, 0xFFFF_FFFF),
})
ORDER = ("version", "flags", "type", "status", "txid", "length")


class HeaderTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(fields=header_fields)
    def test_construct_and_struct_agree(self, fields):
        built = HEADER.build(fields)
        packed = HEADER_STRUCT.pack(b"VS", *(fields[k] for k in ORDER))
        self.assertEqual(built, packed)
        self.assertEqual(len(built), HEADER_SIZE)
        self.assertEqual(decode_header(packed), fields)
        self.assertEqual(HEADER_STRUCT.unpack(built), (b"VS", *(fields[k] for k in ORDER)))
        self.assertEqual(codec._unpack_header_int(built, 0), (0x5653, *(fields[k] for k in ORDER)))

    @settings(max_examples=100, deadline=None)
    @given(fields=header_fields, body=st.binary(max_size=20))
    def test_frame_decoder_reads_construct_header(self, fields, body):
        fields = dict(fields, version=1, length=len(body))
        (frame,) = FrameDecoder().feed(HEADER.build(fields) + body)
        self.assertEqual(
            (frame.version, frame.flags, frame.type, frame.status, frame.txid, frame.body),
            (1, fields["flags"], fields["type"], fields["status"], fields["txid"], body),
        )

    def test_header_bytes(self):
        """Big-endian, fields in the documented order."""
        wire = encode_frame(0x0102, b"\x00\x00", txid=0x03040506, flags=0x01, status=0x0708)
        self.assertEqual(wire.hex(), "5653" "01" "01" "0102" "0708" "03040506" "00000002" "0000")


# ---------------------------------------------------------------------------
# Malformed input

KEEPALIVE = encode_request(MsgType.KEEPALIVE, Empty(), 1)


def _raw(type, body, flags=0, txid=5, version=1, magic=b"VS", length=None):
    n = len(body) if length is None else length
    return magic + struct.pack(">BBHHII", version, flags, type, 0, txid, n) + body


class MalformedTests(SynchronousTestCase):
    def assertOnlyError(self, out, code, fatal=True, txid=5, type=None):
        self.assertEqual(len(out), 1, out)
        (err,) = out
        self.assertIsInstance(err, ProtocolError)
        self.assertEqual(err.code, code)
        self.assertEqual(err.fatal, fatal)
        self.assertEqual(err.txid, txid)
        if type is not None:
            self.assertEqual(err.type, type)
        return err

    def test_bad_magic(self):
        dec = MessageDecoder()
        err = self.assertOnlyError(dec.feed(_raw(3, b"\x00\x00", magic=b"XS")),
                                   ResultCode.BAD_MAGIC, txid=None)
        self.assertIsNone(err.type)
        self.assertEqual(dec.buffered, 0)

    def test_bad_magic_is_known_from_the_first_two_bytes(self):
        """docs/protocol.md 6: a receiver does not wait for the rest of a header whose
        first two bytes are not 'VS'."""
        for chunks in ([b"GE"], [b"G", b"E"], [b"V", b"X"], [KEEPALIVE + b"XS"],
                       [KEEPALIVE[:5], KEEPALIVE[5:] + b"V", b"T"]):
            dec = MessageDecoder()
            out = [item for chunk in chunks for item in dec.feed(chunk)]
            self.assertEqual(out[-1].code, ResultCode.BAD_MAGIC, chunks)
            self.assertEqual(dec.buffered, 0)
        for start in (b"V", b"VS", b"VS\x01", KEEPALIVE + b"V"):
            dec = FrameDecoder()
            self.assertFalse([i for i in dec.feed(start) if isinstance(i, ProtocolError)])

    def test_unknown_version(self):
        dec = FrameDecoder()
        self.assertOnlyError(dec.feed(_raw(0x0100, b"\x00\x00", version=2)),
                             ResultCode.UNSUPPORTED_VERSION, type=0x0100)
        self.assertEqual(dec.buffered, 0)

    def test_configured_versions(self):
        dec = FrameDecoder(versions=frozenset({1, 2}))
        (frame,) = dec.feed(_raw(3, b"\x00\x00", version=2))
        self.assertEqual(frame.version, 2)

    def test_truncated_body(self):
        body = encode_body(PTZ)[:-5]
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.PTZ_CONTROL, body)),
                             ResultCode.TRUNCATED_BODY, type=MsgType.PTZ_CONTROL)
        # a string whose length runs past the body
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.ROUTE_LOOKUP, b"\x00\x09ab")),
                             ResultCode.TRUNCATED_BODY)
        # no extension block at all
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.KEEPALIVE, b"")),
                             ResultCode.TRUNCATED_BODY)

    def test_length_past_limit_is_not_buffered(self):
        """FRAME_TOO_LARGE is reported as soon as the header is read; the body is never
        held, however much of it arrives."""
        dec = MessageDecoder(max_body=100)
        header = _raw(MsgType.CONFIG_SET, b"", txid=8, length=101)
        self.assertEqual(dec.feed(header[:10]), [])
        self.assertEqual(dec.buffered, 10)
        err = self.assertOnlyError(dec.feed(header[10:]), ResultCode.FRAME_TOO_LARGE, txid=8,
                                   type=MsgType.CONFIG_SET)
        self.assertEqual(dec.buffered, 0)
        for _ in range(3):
            self.assertEqual(dec.feed(b"\x00" * 50_000), [err])
            self.assertEqual(dec.buffered, 0)

    def test_default_limit(self):
        self.assertEqual(MAX_BODY, 1_048_576)
        dec = FrameDecoder()
        self.assertEqual(dec.feed(_raw(3, b"", length=MAX_BODY)), [])
        self.assertEqual(dec.buffered, HEADER_SIZE)
        self.assertOnlyError(FrameDecoder().feed(_raw(3, b"", length=MAX_BODY + 1)),
                             ResultCode.FRAME_TOO_LARGE)

    def test_incomplete_frame_buffered_until_complete(self):
        wire = encode_request(MsgType.PTZ_CONTROL, PTZ, 2)
        dec = FrameDecoder()
        self.assertEqual(dec.feed(wire[:20]), [])
        self.assertEqual(dec.buffered, 20)
        self.assertEqual(dec.feed(wire[20:-1]), [])
        self.assertEqual(dec.buffered, len(wire) - 1)
        self.assertEqual(len(dec.feed(wire[-1:] + KEEPALIVE[:3])), 1)
        self.assertEqual(dec.buffered, 3)

    def test_unknown_message_type_is_not_fatal(self):
        dec = MessageDecoder()
        out = dec.feed(_raw(0x7777, b"\x01\x02\x03") + KEEPALIVE)
        self.assertEqual(len(out), 2)
        self.assertEqual(out[0], ProtocolError(ResultCode.UNKNOWN_MESSAGE,
                                               "unknown message type 0x7777", 5, 0x7777,
                                               fatal=False))
        self.assertEqual(out[1], Message(MsgType.KEEPALIVE, 0, 0, 1, Empty()))
        self.assertEqual(dec.feed(KEEPALIVE), [out[1]])

    def test_invalid_utf8(self):
        body = b"\x00\x02\xc3\x28" + b"\x00\x00"  # an invalid two-byte sequence
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.ROUTE_LOOKUP, body)),
                             ResultCode.BAD_UTF8, type=MsgType.ROUTE_LOOKUP)
        # inside a list (construct path, no fast path)
        body = b"\x00\x01\x00\x01\xff" + b"\x00\x00"
        self.assertOnlyError(
            MessageDecoder().feed(_raw(MsgType.CONFIG_GET, b"\x00\x00\x00\x00" + body)),
            ResultCode.BAD_UTF8)

    def test_bytes_left_over(self):
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.KEEPALIVE, b"\x00\x00\x00")),
                             ResultCode.TRAILING_BYTES)
        body = encode_body(PTZ) + b"\xff"
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.PTZ_CONTROL, body)),
                             ResultCode.TRAILING_BYTES)
        body = encode_body(M.Hello(1, 1, 1, "a", [])) + b"\x00"
        self.assertOnlyError(MessageDecoder().feed(_raw(MsgType.HELLO, body)),
                             ResultCode.TRAILING_BYTES)

    def test_response_to_notification_only_type(self):
        for t in (MsgType.BYE, MsgType.STATE_CHANGE, MsgType.ERROR):
            out = MessageDecoder().feed(_raw(t, b"\x00\x00", flags=FLAG_RESPONSE))
            self.assertOnlyError(out, ResultCode.UNKNOWN_MESSAGE, fatal=False, type=t)

    def test_error_flag_always_means_error_body(self):
        (msg,) = MessageDecoder().feed(_raw(MsgType.BYE, b"\x00\x01x\x00\x00", flags=FLAG_ERROR))
        self.assertEqual(msg.body, Error(message="x"))

    def test_reserved_flag_bits_ignored(self):
        (msg,) = MessageDecoder().feed(_raw(MsgType.KEEPALIVE, b"\x00\x00", flags=0xF8 | 1))
        self.assertEqual(msg.body, Empty())
        self.assertTrue(msg.is_response)
        self.assertFalse(msg.is_error)

    def test_garbage_after_framing_error(self):
        dec = MessageDecoder()
        out = dec.feed(KEEPALIVE + b"garbage that is long enough" + KEEPALIVE)
        self.assertEqual(out[0], Message(MsgType.KEEPALIVE, 0, 0, 1, Empty()))
        self.assertEqual(out[1].code, ResultCode.BAD_MAGIC)
        self.assertEqual(len(out), 2)
        self.assertEqual(dec.feed(KEEPALIVE), [out[1]])
        self.assertEqual(dec.buffered, 0)

    def test_garbage_after_body_error(self):
        """A body error is fatal: frames after it are not decoded, now or later."""
        dec = MessageDecoder()
        bad = _raw(MsgType.KEEPALIVE, b"\x00\x00\x00")
        out = dec.feed(KEEPALIVE + bad + KEEPALIVE + b"\xff" * 40)
        self.assertEqual(len(out), 2)
        self.assertEqual(out[1].code, ResultCode.TRAILING_BYTES)
        self.assertTrue(out[1].fatal)
        self.assertEqual(dec.feed(KEEPALIVE), [out[1]])
        self.assertEqual(dec.buffered, 0)

    def test_errors_carry_offending_header(self):
        err = MessageDecoder().feed(_raw(MsgType.REGISTER, b"\x01", txid=0xDEADBEEF))[0]
        self.assertEqual((err.txid, err.type, err.code),
                         (0xDEADBEEF, MsgType.REGISTER, ResultCode.TRUNCATED_BODY))

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=200), cut=st.integers(0, 200))
    def test_random_bytes_never_raise(self, data, cut):
        dec = MessageDecoder(max_body=64)
        out = dec.feed(data[:cut]) + dec.feed(data[cut:])
        for item in out:
            self.assertIsInstance(item, Message | ProtocolError)
        self.assertLessEqual(dec.buffered, HEADER_SIZE + 64)

    @settings(max_examples=400, deadline=None)
    @given(
        type=st.sampled_from(sorted(CATALOGUE)) | st.integers(0, 0xFFFF),
        flags=st.integers(0, 7),
        body=st.binary(max_size=60),
    )
    def test_random_bodies_never_raise(self, type, flags, body):
        """Valid headers with random bodies: every body decoder sees junk."""
        out = MessageDecoder().feed(_raw(type, body, flags=flags) + KEEPALIVE)
        self.assertIsInstance(out[0], Message | ProtocolError)
        if isinstance(out[0], ProtocolError):
            self.assertIn(out[0].code, {
                ResultCode.UNKNOWN_MESSAGE, ResultCode.TRUNCATED_BODY, ResultCode.BAD_UTF8,
                ResultCode.TRAILING_BYTES, ResultCode.MALFORMED_BODY,
            })
            self.assertEqual(out[0].fatal, out[0].code != ResultCode.UNKNOWN_MESSAGE)
            if out[0].fatal:
                self.assertEqual(len(out), 1)
                return
        self.assertEqual(out[1], Message(MsgType.KEEPALIVE, 0, 0, 1, Empty()))


# ---------------------------------------------------------------------------
# SCRAM

ITER = 64  # small, to keep the suite fast; the algorithm does not depend on it


class ScramTests(SynchronousTestCase):
    def setUp(self):
        self.salt, self.iterations, self.stored, self.server_key = scram.make_verifier(
            "s3cret", salt=b"\x01" * 16, iterations=ITER)
        self.cnonce, self.snonce = scram.nonce(), scram.nonce()
        self.message = scram.auth_message("alice", self.cnonce, self.snonce, self.salt, ITER)

    def test_auth_message_layout(self):
        """Each part with its u16 length; iterations as a 4-byte big-endian value."""
        got = scram.auth_message("ab", b"\x01", b"\x02\x03", b"\x04", 4096)
        self.assertEqual(got.hex(), "0002 6162 0001 01 0002 0203 0001 04 0004 00001000"
                         .replace(" ", ""))

    def test_proof_verifies(self):
        proof = scram.client_proof("s3cret", self.salt, ITER, self.message)
        self.assertEqual(len(proof), 32)
        self.assertTrue(scram.verify_proof(self.stored, self.message, proof))
        salted = scram.salted_password("s3cret", self.salt, ITER)
        self.assertEqual(scram.client_proof_from_salted(salted, self.message), proof)

    def test_wrong_secret_fails(self):
        proof = scram.client_proof("wrong", self.salt, ITER, self.message)
        self.assertFalse(scram.verify_proof(self.stored, self.message, proof))

    def test_proof_bound_to_exchange(self):
        proof = scram.client_proof("s3cret", self.salt, ITER, self.message)
        other = scram.auth_message("alice", self.cnonce, scram.nonce(), self.salt, ITER)
        self.assertFalse(scram.verify_proof(self.stored, other, proof))
        self.assertFalse(scram.verify_proof(self.stored, self.message, proof[:31]))
        self.assertFalse(scram.verify_proof(self.stored, self.message, b""))

    def test_verifier_does_not_hold_secret(self):
        salted = scram.salted_password("s3cret", self.salt, ITER)
        self.assertNotIn(b"s3cret", self.stored + self.server_key)
        self.assertNotEqual(self.stored, scram.client_key(salted))
        self.assertEqual(len(self.stored), 32)
        self.assertEqual(len(self.server_key), 32)

    def test_server_signature_checks(self):
        sig = scram.server_signature(self.server_key, self.message)
        self.assertTrue(scram.check_server_signature("s3cret", self.salt, ITER, self.message, sig))
        salted = scram.salted_password("s3cret", self.salt, ITER)
        self.assertTrue(scram.check_server_signature(salted, self.salt, ITER, self.message, sig))
        self.assertFalse(scram.check_server_signature("wrong", self.salt, ITER, self.message, sig))
        forged = bytes([sig[0] ^ 1]) + sig[1:]
        self.assertFalse(
            scram.check_server_signature("s3cret", self.salt, ITER, self.message, forged))

    def test_fake_salt_stable(self):
        a = scram.fake_salt(b"node-secret", "nobody")
        self.assertEqual(a, scram.fake_salt(b"node-secret", "nobody"))
        self.assertEqual(len(a), 16)
        self.assertNotEqual(a, scram.fake_salt(b"node-secret", "somebody"))
        self.assertNotEqual(a, scram.fake_salt(b"other-secret", "nobody"))

    def test_random_salt_and_nonces(self):
        self.assertEqual(len(scram.nonce()), scram.NONCE_SIZE)
        self.assertNotEqual(scram.nonce(), scram.nonce())
        salt1 = scram.make_verifier("x", iterations=1)[0]
        self.assertEqual(len(salt1), 16)
        self.assertNotEqual(salt1, scram.make_verifier("x", iterations=1)[0])
