"""
The RGM signalling core over in-memory transports with a task.Clock: login, throttling,
keepalive, grants, relay to the PU (S401, S404-S405, S407), routing to CMS (S402),
bad input, state changes (S601-S603).
"""

from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from vss.client import SignallingClient
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    AuthProof,
    AuthStart,
    Bye,
    ChangeKind,
    ConfigGet,
    DeviceList,
    Empty,
    Hello,
    MsgType,
    PtzControl,
    PtzStatus,
    Register,
    Role,
    StateChange,
)
from vss.rgm.auth import Throttle
from vss.testing.harness import ALL, NodeHarness


def ptz(device_id="cam1", pan=0.5, channel=0):
    return PtzControl(device_id=device_id, channel=channel, op=1, pan=pan, tilt=0.0, zoom=0.0,
                      speed=0.5, timeout_ms=0)


class Recorder:
    """A PU request handler that answers PTZ with the asked pan, or holds answers."""

    def __init__(self, hold=False):
        self.seen = []
        self.hold = hold
        self.held = []

    def __call__(self, frame, msg):
        from twisted.internet import defer

        self.seen.append(msg.body)
        if self.hold:
            d = defer.Deferred()
            self.held.append((d, msg.body))
            return d
        return PtzStatus(pan=msg.body.pan, tilt=0.0, zoom=0.0, moving=False)


def error_code(d):
    """The result code a fired Deferred failed with."""
    failures = []
    d.addErrback(failures.append)
    assert failures, "the request did not fail"
    failures[0].trap(VssError)
    return failures[0].value.code


def result(d):
    out = []
    d.addCallback(out.append)
    assert out, "the request has not completed"
    return out[0]


class Base(unittest.TestCase):
    def setUp(self):
        self.h = NodeHarness(keepalive_interval=30, request_timeout=5.0)
        self.h.add_device("cam1", channels=2)
        self.h.add_user("alice", grants=[("cam1", ALL)])
        self.h.add_user("bob", grants=[("cam1", Action.VIEW)])
        self.addCleanup(self.h.stop)

    def online_pu(self, handler=None):
        handler = handler or Recorder()
        client, (d, link, server) = self.h.pu("cam1", on_request=handler, channels=2)
        result(d)
        return client, handler, link

    def logged_cu(self, name="alice", **kw):
        client, (d, link, server) = self.h.cu(name, **kw)
        result(d)
        return client, link


class LoginTests(Base):
    def test_pu_and_cu_login(self):
        pu, _, _ = self.online_pu()
        cu, _ = self.logged_cu()
        self.assertEqual(pu.registered.keepalive_interval, 30)
        self.assertEqual(cu.node_id, "node-a")
        self.assertTrue(self.h.store.get_state("cam1")["online"])
        self.assertEqual(len(self.h.store.sessions()), 2)

    def test_wrong_password_fails_without_leaking_the_secret(self):
        with capturedLogs() as events:
            client, (d, link, server) = self.h.cu("alice", password="not-the-password")
        self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)
        text = repr(events)
        self.assertNotIn("not-the-password", text)
        self.assertTrue(any("authentication failed" in e.get("log_format", "") for e in events))
        self.assertEqual(self.h.rgm.counters["auth_failures"], 1)

    def test_unknown_identity_fails_like_a_wrong_password(self):
        client, (d, link, server) = self.h.cu("mallory")
        self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)

    def test_pu_unknown_to_node_is_fetched_from_central_on_first_registration(self):
        self.h.add_device("cam9")
        self.assertIsNone(self.h.store.get_device("cam9"))
        client, (d, link, server) = self.h.pu("cam9")
        result(d)
        self.assertIsNotNone(self.h.store.get_device("cam9"))
        self.assertIn("cam9", self.h.rgm.pu_links)

    def test_pu_homed_elsewhere_is_refused(self):
        self.h.add_device("cam2", home="node-b")
        client, (d, link, server) = self.h.pu("cam2")
        self.assertEqual(error_code(d), ResultCode.FORBIDDEN)

    def test_repeated_failures_from_one_source_are_throttled_with_growing_delay(self):
        for _ in range(3):
            client, (d, link, server) = self.h.cu("alice", password="wrong")
            self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)
        # The third failure starts a delay of 1 s, the fourth 2 s (docs/protocol.md 8.2).
        client, (d, link, server) = self.h.cu("alice")
        self.assertEqual(error_code(d), ResultCode.AUTH_THROTTLED)
        self.h.clock.advance(1.1)
        client, (d, link, server) = self.h.cu("alice", password="wrong")
        self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)
        client, (d, link, server) = self.h.cu("alice")
        self.assertEqual(error_code(d), ResultCode.AUTH_THROTTLED)
        self.h.clock.advance(1.1)
        client, (d, link, server) = self.h.cu("alice")
        self.assertEqual(error_code(d), ResultCode.AUTH_THROTTLED)
        self.h.clock.advance(1.0)
        client, (d, link, server) = self.h.cu("alice")
        result(d)

    def test_a_link_is_closed_after_five_failures(self):
        client = SignallingClient(Role.CU, "alice", "wrong")
        link, server, pump = self.h.connect(client, Role.CU)
        link.request(MsgType.HELLO, Hello(min_version=1, max_version=1, role=Role.CU,
                                          agent="t", features=[]))
        self.h.pump()
        login = _relogin(client)
        for attempt in range(5):
            self.assertFalse(server.closed, f"closed before attempt {attempt + 1}")
            # A fresh throttle each time: this test is about the per-link limit.
            self.h.rgm.throttle = Throttle(self.h.clock)
            d = login(link)
            self.h.pump()
            self.assertEqual(error_code(d), ResultCode.AUTH_FAILED)
        self.assertTrue(server.closed)

    def test_messages_before_login_are_refused(self):
        client = SignallingClient(Role.CU, "alice", "cu-password")
        link, server, pump = self.h.connect(client, Role.CU)
        d = link.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=10))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.UNEXPECTED_MESSAGE)
        self.assertFalse(server.closed, "a refused request leaves the link up (8)")
        d = link.request(MsgType.HELLO, Hello(min_version=1, max_version=1, role=Role.CU,
                                              agent="t", features=[]))
        self.h.pump()
        result(d)
        d = link.request(MsgType.DEVICE_LIST, DeviceList(cursor="", limit=10))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.NOT_AUTHENTICATED)
        self.assertFalse(server.closed)

    def test_a_duplicate_txid_in_flight_is_refused(self):
        _, handler, _ = self.online_pu(Recorder(hold=True))
        cu, cu_link = self.logged_cu()
        frames = capture_frames(cu_link)
        for _ in range(2):
            cu_link.transport.write(codec.encode_request(MsgType.CONFIG_GET, ConfigGet(
                device_id="cam1", channel=0, keys=[]), txid=4242))
        self.h.pump()
        self.assertEqual([(f.txid, f.status) for f in frames],
                         [(4242, ResultCode.DUPLICATE_TXID)])
        self.assertEqual(len(handler.held), 1)

    def test_hello_with_no_common_version_closes(self):
        client = SignallingClient(Role.CU, "alice", "cu-password")
        link, server, pump = self.h.connect(client, Role.CU)
        d = link.request(MsgType.HELLO, Hello(min_version=2, max_version=9, role=Role.CU,
                                              agent="t", features=[]))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.NO_COMMON_VERSION)
        self.assertTrue(server.closed)

    def test_role_must_match_the_listener(self):
        client = SignallingClient(Role.PU, "cam1", "pu-secret")
        link, server, pump = self.h.connect(client, Role.CU)
        d = client.login(link)
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.UNEXPECTED_MESSAGE)

    def test_a_second_login_of_a_pu_replaces_the_first(self):
        pu1, _, link1 = self.online_pu()
        pu2, (d, link2, server2) = self.h.pu("cam1", on_request=Recorder())
        result(d)
        self.assertTrue(link1.closed)
        self.assertIs(self.h.rgm.pu_links["cam1"], server2)
        self.assertTrue(self.h.store.get_state("cam1")["online"])


def _relogin(client):
    """A login that skips HELLO (already done on this link)."""
    from twisted.internet import defer

    from vss.protocols import scram
    from vss.protocols.messages import AuthProof, AuthStart

    @defer.inlineCallbacks
    def login(link):
        nonce = scram.nonce()
        ch = (yield link.request(MsgType.AUTH_START, AuthStart(
            identity=client.identity, mechanism=scram.MECHANISM, client_nonce=nonce))).body
        message = scram.auth_message(client.identity, nonce, ch.server_nonce, ch.salt,
                                     ch.iterations)
        yield link.request(MsgType.AUTH_PROOF, AuthProof(
            client_proof=scram.client_proof(client._secret, ch.salt, ch.iterations, message)))

    return login


class KeepaliveTests(Base):
    def test_silent_pu_is_dropped_after_three_intervals_and_marked_offline(self):
        pu, _, link = self.online_pu()
        pu._keepalive.stop()  # the PU goes quiet
        notes = []
        cu, _ = self.logged_cu(on_notify=notes.append)
        for _ in range(6):
            self.h.clock.advance(15)
            cu.request(MsgType.KEEPALIVE, Empty())
            self.h.pump()
        self.assertIn("cam1", self.h.rgm.pu_links)
        for _ in range(2):
            self.h.clock.advance(15)
            cu.request(MsgType.KEEPALIVE, Empty())
            self.h.pump()
        self.assertNotIn("cam1", self.h.rgm.pu_links)
        self.assertFalse(self.h.store.get_state("cam1")["online"])
        self.assertEqual(self.h.rgm.counters["dropped_silent"], 1)
        self.assertTrue(link.closed)
        changes = [n.body.change for n in notes if n.type == MsgType.STATE_CHANGE]
        self.assertIn(ChangeKind.OFFLINE, changes)
        self.assertEqual(len(self.h.rgm.cu_links), 1)

    def test_keepalives_keep_a_pu_online_and_update_last_seen(self):
        pu, _, link = self.online_pu()
        for _ in range(20):
            self.h.clock.advance(15)
            self.h.pump()
        self.assertIn("cam1", self.h.rgm.pu_links)
        self.assertGreaterEqual(self.h.store.get_state("cam1")["last_seen"], 250_000)

    def test_a_link_that_never_logs_in_is_dropped(self):
        client = SignallingClient(Role.CU, "alice", "cu-password")
        link, server, pump = self.h.connect(client, Role.CU)
        self.h.clock.advance(31)
        self.h.clock.advance(15)
        self.h.pump()
        self.assertTrue(server.closed)


class RelayTests(Base):
    def test_s401_s407_cu_request_reaches_the_pu_and_the_answer_comes_back(self):
        _, handler, _ = self.online_pu()
        cu, _ = self.logged_cu()
        d = cu.request(MsgType.PTZ_CONTROL, ptz(pan=0.25))
        self.h.pump()
        self.assertEqual(result(d).body.pan, 0.25)
        self.assertEqual(handler.seen[0].pan, 0.25)
        self.assertEqual(self.h.rgm.counters["relayed"], 1)

    def test_grants_are_checked_per_action(self):
        _, handler, _ = self.online_pu()
        cu, _ = self.logged_cu("bob")
        d = cu.request(MsgType.PTZ_CONTROL, ptz())
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.FORBIDDEN)
        d = cu.request(MsgType.CONFIG_GET, ConfigGet(device_id="cam1", channel=0, keys=[]))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.FORBIDDEN)
        self.assertEqual(handler.seen, [])

    def test_offline_pu_gives_an_immediate_error(self):
        cu, _ = self.logged_cu()
        d = cu.request(MsgType.PTZ_CONTROL, ptz())
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.DEVICE_OFFLINE)

    def test_a_pu_that_does_not_answer_gives_a_timeout(self):
        _, handler, _ = self.online_pu(Recorder(hold=True))
        cu, _ = self.logged_cu()
        d = cu.request(MsgType.PTZ_CONTROL, ptz(), timeout=60)
        self.h.pump()
        self.assertFalse(d.called)
        self.h.clock.advance(5.1)
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.TIMEOUT)

    def test_many_requests_in_flight_are_correlated(self):
        _, handler, _ = self.online_pu(Recorder(hold=True))
        cu, _ = self.logged_cu()
        ds = [cu.request(MsgType.PTZ_CONTROL, ptz(pan=i / 200.0)) for i in range(200)]
        self.h.pump()
        self.assertEqual(len(handler.held), 200)
        # The PU answers in reverse order; each CU request still gets its own answer.
        for hd, body in reversed(handler.held):
            hd.callback(PtzStatus(pan=body.pan, tilt=0.0, zoom=0.0, moving=False))
        self.h.pump()
        self.assertEqual([result(d).body.pan for d in ds], [ds_pan(i) for i in range(200)])

    def test_out_of_range_arguments_never_reach_the_pu(self):
        _, handler, _ = self.online_pu()
        cu, _ = self.logged_cu()
        for body in (ptz(pan=3.0), ptz(channel=5), ptz(pan=float("nan"))):
            d = cu.request(MsgType.PTZ_CONTROL, body)
            self.h.pump()
            self.assertEqual(error_code(d), ResultCode.INVALID_ARGUMENT)
        self.assertEqual(handler.seen, [])

    def test_s402_unknown_device_goes_to_central(self):
        self.h.add_user("carol", grants=[("cam-x", ALL)])
        cu, _ = self.logged_cu("carol")
        d = cu.request(MsgType.PTZ_CONTROL, ptz("cam-x"))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.UNKNOWN_DEVICE)
        self.assertEqual(self.h.central.routed, [("cam-x", MsgType.PTZ_CONTROL)])

    def test_s402_s406_request_for_a_pu_on_another_node(self):
        other = NodeHarness("node-b", central=self.h.central, clock=self.h.clock)
        self.addCleanup(other.stop)
        self.h.central.nodes["node-b"] = other.rgm
        other.add_device("cam-b")
        self.h.add_user("dave", grants=[("cam-b", ALL)])
        handler = Recorder()
        pu, (d, _, _) = other.pu("cam-b", on_request=handler)
        result(d)
        cu, _ = self.logged_cu("dave")
        d = cu.request(MsgType.PTZ_CONTROL, ptz("cam-b", pan=-0.5))
        self.h.pump()
        other.pump()
        self.h.pump()
        self.assertEqual(result(d).body.pan, -0.5)
        self.assertEqual(handler.seen[0].device_id, "cam-b")
        self.assertEqual(self.h.rgm.counters["routed"], 1)
        self.assertEqual(other.rgm.counters["relayed"], 1)

    def test_home_node_down(self):
        self.h.add_device("cam-c", home="node-c")
        self.h.add_user("erin", grants=[("cam-c", ALL)])
        self.h.store.put_device(self.h.central.devices["cam-c"])
        cu, _ = self.logged_cu("erin")
        d = cu.request(MsgType.PTZ_CONTROL, ptz("cam-c"))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.HOME_NODE_DOWN)

    def test_device_list_is_paged_and_shows_online_state(self):
        for i in range(5):
            self.h.add_device(f"dev{i}")
            self.h.store.put_device(self.h.central.devices[f"dev{i}"])
            self.h.store.put_grant(type(self.h.store.grants()[0])(
                principal="user:alice", device_id=f"dev{i}", actions=1, version=1))
        self.online_pu()
        cu, _ = self.logged_cu()
        seen, cursor = [], ""
        while True:
            d = cu.request(MsgType.DEVICE_LIST, DeviceList(cursor=cursor, limit=2))
            self.h.pump()
            page = result(d).body
            seen.extend(page.devices)
            cursor = page.next_cursor
            if not cursor:
                break
        self.assertEqual([x.device_id for x in seen], ["cam1"] + [f"dev{i}" for i in range(5)])
        self.assertTrue(seen[0].online)
        self.assertFalse(seen[1].online)


def ds_pan(i):
    import struct

    return struct.unpack(">f", struct.pack(">f", i / 200.0))[0]


class BadInputTests(Base):
    def test_malformed_frame_from_a_cu_is_answered_and_only_that_link_closes(self):
        _, handler, pu_link = self.online_pu()
        cu, cu_link = self.logged_cu()
        errors = capture_frames(cu_link)
        cu_link.transport.write(codec.encode_frame(MsgType.PTZ_CONTROL, b"\x00\x09abc", txid=77))
        self.h.pump()
        self.assertEqual([(e.status, e.txid) for e in errors],
                         [(ResultCode.TRUNCATED_BODY, 77)])
        self.assertTrue(cu_link.transport.disconnecting or cu_link.closed)
        self.assertIn("cam1", self.h.rgm.pu_links)
        cu2, _ = self.logged_cu()
        d = cu2.request(MsgType.PTZ_CONTROL, ptz())
        self.h.pump()
        result(d)

    def test_bad_magic_is_answered_with_type_error_and_closes(self):
        cu, cu_link = self.logged_cu()
        frames = capture_frames(cu_link)
        cu_link.transport.write(b"XX" + bytes(14))
        self.h.pump()
        self.assertEqual([(f.type, f.status, f.txid) for f in frames],
                         [(MsgType.ERROR, ResultCode.BAD_MAGIC, 0)])

    def test_unknown_message_type_is_not_fatal(self):
        cu, cu_link = self.logged_cu()
        d = cu_link.request_raw(0x7F00, b"\x00\x00")
        self.h.pump()
        self.assertEqual(result(d).status, ResultCode.UNKNOWN_MESSAGE)
        d = cu.request(MsgType.KEEPALIVE, Empty())
        self.h.pump()
        result(d)

    def test_a_pu_answer_that_does_not_decode_ends_the_pu_link(self):
        """CONFIG_GET takes the general path: the CU gets INTERNAL_ERROR, the PU is told
        TRUNCATED_BODY (type and txid of its answer) and its link is closed (6, rule 1)."""
        def truncated(frame, msg):
            from twisted.internet import defer

            self.pu_link.send_raw(codec.encode_frame(frame.type, b"\x00\x05ab", frame.txid,
                                                     codec.FLAG_RESPONSE))
            asked.append(frame.txid)
            return defer.Deferred()

        asked = []
        client, handler, self.pu_link = self.online_pu(truncated)
        told = capture_frames(self.pu_link)
        cu, cu_link = self.logged_cu()
        d = cu.request(MsgType.CONFIG_GET, ConfigGet(device_id="cam1", channel=0, keys=["a"]))
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.INTERNAL_ERROR)
        self.assertEqual([(f.type, f.flags, f.status, f.txid) for f in told],
                         [(MsgType.CONFIG_GET, 0, 0, asked[0]),  # the request
                          (MsgType.CONFIG_GET, codec.FLAG_RESPONSE | codec.FLAG_ERROR,
                           ResultCode.TRUNCATED_BODY, asked[0])])
        self.assertTrue(self.pu_link.closed)
        self.assertNotIn("cam1", self.h.rgm.pu_links)
        self.assertFalse(cu_link.closed)

    def test_a_pu_answering_garbage_does_not_hurt_the_cu_link(self):
        def garbage(frame, msg):
            from twisted.internet import defer

            pu_server = self.h.rgm.pu_links["cam1"]
            # Answer by hand with a body that does not decode as PtzStatus.
            self.pu_link.send_raw(codec.encode_frame(
                frame.type, b"\x01", frame.txid, codec.FLAG_RESPONSE))
            self.assertIsNotNone(pu_server)
            return defer.Deferred()  # never answers through the normal path

        client, handler, self.pu_link = self.online_pu(garbage)
        cu, cu_link = self.logged_cu()
        d = cu.request(MsgType.PTZ_CONTROL, ptz())
        self.h.pump()
        self.assertEqual(error_code(d), ResultCode.INTERNAL_ERROR)
        self.assertFalse(cu_link.closed)
        self.assertTrue(self.pu_link.closed, "a body error is fatal (docs/protocol.md 6)")


def capture_frames(link):
    """Every frame the client link receives from now on, responses included."""
    frames = []
    decoder = codec.FrameDecoder()
    original = link.dataReceived

    def dataReceived(data):
        frames.extend(decoder.feed(data))
        original(data)

    link.dataReceived = dataReceived
    return frames


class LinkStateTests(Base):
    """docs/protocol.md 8: what each state of a link accepts, what it refuses and with
    which code and message, and when the link closes."""

    def raw(self, role=Role.CU, identity="alice", secret="cu-password"):
        client = SignallingClient(role, identity, secret)
        link, server, pump = self.h.connect(client, role)
        return client, link, server, capture_frames(link)

    def send(self, link, type, body=b"\x00\x00", txid=1, flags=0):
        raw = body if isinstance(body, bytes) else codec.encode_body(body)
        link.transport.write(codec.encode_frame(type, raw, txid, flags))
        self.h.pump()

    def seen(self, frames):
        """(type, flags, status, txid, message or None) of each frame, and forget them."""
        out = []
        for f in frames:
            msg = codec.decode_body(f)
            text = msg.body.message if f.flags & codec.FLAG_ERROR else None
            if f.type == MsgType.BYE and f.flags & codec.FLAG_NOTIFY:
                text = (msg.body.reason, msg.body.message)
            out.append((f.type, f.flags, f.status, f.txid, text))
        frames.clear()
        return out

    def hello(self, link, lo=1, hi=1, role=Role.CU, txid=1):
        self.send(link, MsgType.HELLO, Hello(min_version=lo, max_version=hi, role=role,
                                             agent="t", features=[]), txid)

    def test_before_hello_keepalive_is_answered_and_refusals_leave_the_link_up(self):
        _, link, server, frames = self.raw()
        self.send(link, MsgType.KEEPALIVE, txid=5)
        self.send(link, MsgType.DEVICE_LIST, DeviceList(cursor="", limit=1), txid=6)
        self.send(link, MsgType.REGISTER, b"\x00" * 9 + b"\x00\x00", txid=7)
        self.send(link, MsgType.STATE_CHANGE, StateChange(device_id="cam1", channel=0, change=1,
                                                          timestamp=0, items=[]),
                  txid=0, flags=codec.FLAG_NOTIFY)
        err = codec.FLAG_RESPONSE | codec.FLAG_ERROR
        refused = ResultCode.UNEXPECTED_MESSAGE
        self.assertEqual(self.seen(frames), [
            (MsgType.KEEPALIVE, codec.FLAG_RESPONSE, 0, 5, None),
            (MsgType.DEVICE_LIST, err, refused, 6, "HELLO first"),
            (MsgType.REGISTER, err, refused, 7, "HELLO first"),
        ])
        self.assertFalse(server.closed)
        self.hello(link, txid=8)
        self.assertEqual(self.seen(frames)[0][:4], (MsgType.HELLO, codec.FLAG_RESPONSE, 0, 8))

    def test_bye_before_hello_closes_without_an_answer(self):
        _, link, server, frames = self.raw()
        self.send(link, MsgType.BYE, codec.encode_body(Bye(reason=0, message="bye")), 0,
                  codec.FLAG_NOTIFY)
        self.assertTrue(server.closed)
        self.assertEqual(frames, [])

    def test_after_hello_requests_get_not_authenticated_and_handshake_steps_out_of_order(self):
        _, link, server, frames = self.raw()
        self.hello(link)
        frames.clear()
        self.send(link, MsgType.DEVICE_LIST, DeviceList(cursor="", limit=1), txid=2)
        self.send(link, MsgType.REGISTER, Register(kind=1, model="", firmware="", channels=0,
                                                   attributes=[]), txid=3)
        self.hello(link, txid=4)
        self.send(link, MsgType.AUTH_PROOF, AuthProof(client_proof=bytes(32)), txid=5)
        err = codec.FLAG_RESPONSE | codec.FLAG_ERROR
        self.assertEqual(self.seen(frames), [
            (MsgType.DEVICE_LIST, err, ResultCode.NOT_AUTHENTICATED, 2, "log in first"),
            (MsgType.REGISTER, err, ResultCode.NOT_AUTHENTICATED, 3, "log in first"),
            (MsgType.HELLO, err, ResultCode.UNEXPECTED_MESSAGE, 4, "HELLO already done"),
            (MsgType.AUTH_PROOF, err, ResultCode.UNEXPECTED_MESSAGE, 5, "AUTH_START first"),
        ])
        self.assertFalse(server.closed)

    def test_authenticated_but_not_registered(self):
        client, link, server, frames = self.raw()
        self.hello(link)
        d = _relogin(client)(link)
        self.h.pump()
        result(d)
        frames.clear()
        self.send(link, MsgType.DEVICE_LIST, DeviceList(cursor="", limit=1), txid=2)
        self.send(link, MsgType.AUTH_START, AuthStart(identity="alice", mechanism="SCRAM-SHA-256",
                                                      client_nonce=bytes(24)), txid=3)
        err = codec.FLAG_RESPONSE | codec.FLAG_ERROR
        self.assertEqual(self.seen(frames), [
            (MsgType.DEVICE_LIST, err, ResultCode.NOT_AUTHENTICATED, 2, "REGISTER first"),
            (MsgType.AUTH_START, err, ResultCode.UNEXPECTED_MESSAGE, 3, "already logged in"),
        ])
        self.assertFalse(server.closed)

    def test_handshake_messages_once_ready_are_unexpected(self):
        cu, link = self.logged_cu()
        frames = capture_frames(link)
        self.hello(link, txid=2)
        self.send(link, MsgType.REGISTER, Register(kind=1, model="", firmware="", channels=0,
                                                   attributes=[]), txid=3)
        got = self.seen(frames)
        self.assertEqual([(t, s, x) for t, _f, s, x, _m in got],
                         [(MsgType.HELLO, ResultCode.UNEXPECTED_MESSAGE, 2),
                          (MsgType.REGISTER, ResultCode.UNEXPECTED_MESSAGE, 3)])
        self.assertTrue(all(m for *_, m in got), got)

    def test_no_common_version_is_answered_then_bye_then_close(self):
        for lo, hi in ((2, 9), (1, 0), (3, 2)):  # min above max: an empty range
            _, link, server, frames = self.raw()
            self.hello(link, lo, hi)
            got = self.seen(frames)
            self.assertEqual([(t, f, s, x) for t, f, s, x, _m in got], [
                (MsgType.HELLO, codec.FLAG_RESPONSE | codec.FLAG_ERROR,
                 ResultCode.NO_COMMON_VERSION, 1),
                (MsgType.BYE, codec.FLAG_NOTIFY, 0, 0)], (lo, hi))
            self.assertEqual(got[1][4][0], ResultCode.NO_COMMON_VERSION)
            self.assertIn(f"{lo}-{hi}", got[0][4])
            self.assertTrue(server.closed)

    def test_a_hello_for_another_role_is_answered_then_bye_then_close(self):
        _, link, server, frames = self.raw(role=Role.CU)
        self.hello(link, role=Role.PU)
        got = self.seen(frames)
        self.assertEqual([(t, s) for t, _f, s, _x, _m in got],
                         [(MsgType.HELLO, ResultCode.UNEXPECTED_MESSAGE), (MsgType.BYE, 0)])
        self.assertEqual(got[1][4], (ResultCode.UNEXPECTED_MESSAGE,
                                     "this endpoint serves role CU"))
        self.assertTrue(server.closed)

    def test_a_request_with_txid_0_is_refused_and_never_served(self):
        _, handler, _ = self.online_pu()
        cu, link = self.logged_cu()
        frames = capture_frames(link)
        self.send(link, MsgType.PTZ_CONTROL, ptz(), txid=0)
        self.send(link, MsgType.KEEPALIVE, txid=0)
        got = self.seen(frames)
        self.assertEqual(got, [
            (t, codec.FLAG_RESPONSE | codec.FLAG_ERROR, ResultCode.UNEXPECTED_MESSAGE, 0,
             "txid 0 is reserved for notifications")
            for t in (MsgType.PTZ_CONTROL, MsgType.KEEPALIVE)])
        self.assertEqual(handler.seen, [])
        self.assertFalse(link.closed)

    def test_a_frame_with_the_error_bit_is_never_served_as_a_request(self):
        _, handler, _ = self.online_pu()
        cu, link = self.logged_cu()
        frames = capture_frames(link)
        body = codec.encode_body(ptz())
        self.send(link, MsgType.PTZ_CONTROL, body, txid=3, flags=codec.FLAG_ERROR)
        self.send(link, MsgType.KEEPALIVE, txid=4)
        self.assertEqual([(t, x) for t, _f, _s, x, _m in self.seen(frames)],
                         [(MsgType.KEEPALIVE, 4)])
        self.assertEqual(handler.seen, [])

    def test_a_user_may_log_in_twice_and_both_sessions_work(self):
        self.online_pu()
        first, link1 = self.logged_cu()
        second, link2 = self.logged_cu()
        self.assertFalse(link1.closed)
        self.assertNotEqual(first.session_id, second.session_id)
        for client in (first, second):
            d = client.request(MsgType.PTZ_CONTROL, ptz(pan=0.125))
            self.h.pump()
            self.assertEqual(result(d).body.pan, 0.125)


class UnknownDeviceTests(Base):
    """docs/protocol.md 9.3: a user learns nothing about device ids it holds no grant
    for (FORBIDDEN, whether the device exists or not); UNKNOWN_DEVICE only about ids it
    was granted."""

    def test_existing_and_missing_devices_are_refused_alike_without_a_grant(self):
        self.online_pu()
        bob, _ = self.logged_cu("bob")  # VIEW on cam1 only
        answers = {}
        for device_id in ("cam1", "nope"):
            for type, body in ((MsgType.PTZ_CONTROL, ptz(device_id)),
                               (MsgType.CONFIG_GET, ConfigGet(device_id=device_id, channel=0,
                                                              keys=[]))):
                d = bob.request(type, body)
                self.h.pump()
                failures = []
                d.addErrback(failures.append)
                answers[device_id, type] = (failures[0].value.code, failures[0].value.message)
        for type, action in ((MsgType.PTZ_CONTROL, "ptz"), (MsgType.CONFIG_GET, "config")):
            self.assertEqual(answers["cam1", type],
                             (ResultCode.FORBIDDEN, f"bob may not {action} cam1"))
            self.assertEqual(answers["nope", type],
                             (ResultCode.FORBIDDEN, f"bob may not {action} nope"))
        self.assertEqual(self.h.central.routed, [])

    def test_the_example_of_section_5_2_byte_for_byte(self):
        """A PTZ_CONTROL, txid 9, for a device the user is granted but the platform no
        longer has: the error response of docs/protocol.md 5.2."""
        self.h.add_user("carol", grants=[("cam-1", ALL)])
        cu, link = self.logged_cu("carol")
        frames = []
        decoder = codec.FrameDecoder()
        original = link.dataReceived
        link.dataReceived = lambda data: (frames.append(data), original(data))
        link.transport.write(codec.encode_request(MsgType.PTZ_CONTROL, ptz("cam-1"), 9))
        self.h.pump()
        wire = bytes.fromhex(
            "56 53 01 03 01 00 03 01 00 00 00 09 00 00 00 13"
            "00 0f 6e 6f 20 64 65 76 69 63 65 20 63 61 6d 2d 31 00 00")
        self.assertEqual(b"".join(frames), wire)
        self.assertEqual(len(decoder.feed(wire)), 1)


class StateChangeTests(Base):
    def test_s601_s603_pu_change_updates_memory_reaches_cus_and_central(self):
        pu, _, pu_link = self.online_pu()
        notes = []
        self.logged_cu(on_notify=notes.append)
        pu_link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id="cam1", channel=0, change=ChangeKind.CONFIG, timestamp=1,
            items=[KV(key="bitrate", value="4000")]))
        self.h.pump()
        self.assertEqual(self.h.store.get_state("cam1")["config"], {"bitrate": "4000"})
        self.assertEqual([n.body.change for n in notes if n.type == MsgType.STATE_CHANGE][-1],
                         ChangeKind.CONFIG)
        self.assertEqual(len(self.h.central.changes), 1)
        self.assertEqual(self.h.central.changes[0].device_id, "cam1")

    def test_ptz_position_is_dynamic_and_not_sent_to_central(self):
        pu, _, pu_link = self.online_pu()
        pu_link.send_notify(MsgType.STATE_CHANGE, StateChange(
            device_id="cam1", channel=0, change=ChangeKind.PTZ, timestamp=1,
            items=[KV(key="pan", value="0.5")]))
        self.h.pump()
        self.assertEqual(self.h.store.get_state("cam1")["pan"], 0.5)
        self.assertEqual(self.h.central.changes, [])

    def test_a_pu_cannot_report_for_another_device(self):
        pu, _, pu_link = self.online_pu()
        with capturedLogs() as events:
            pu_link.send_notify(MsgType.STATE_CHANGE, StateChange(
                device_id="cam-other", channel=0, change=ChangeKind.NAME, timestamp=1,
                items=[KV(key="name", value="x")]))
            self.h.pump()
        self.assertEqual(self.h.central.changes, [])
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))


class StateChangeKindsTests(Base):
    def test_every_change_kind_is_applied_and_unknown_kinds_are_ignored(self):
        pu, _, pu_link = self.online_pu()
        for kind, items in [(ChangeKind.ALARM, {"motion": "1"}),
                            (ChangeKind.RECORDING, {"mode": "schedule"}),
                            (ChangeKind.NAME, {"name": "Gate"}),
                            (ChangeKind.PRESET, {"3": "gate"}),
                            (99, {"x": "y"})]:
            pu_link.send_notify(MsgType.STATE_CHANGE, StateChange(
                device_id="cam1", channel=0, change=int(kind), timestamp=1,
                items=[KV(key=k, value=v) for k, v in items.items()]))
        self.h.pump()
        state = self.h.store.get_state("cam1")
        self.assertEqual(state["alarm"], {"motion": "1"})
        self.assertEqual(state["recording"], {"mode": "schedule"})
        self.assertEqual(state["name"], "Gate")
        self.assertEqual(state["presets"], {"3": "gate"})
        self.assertIn("cam1", self.h.rgm.pu_links)
        self.assertEqual(len(self.h.central.changes), 3)


class UnknownNotificationTests(Base):
    def test_a_notification_of_unknown_type_is_dropped_silently(self):
        cu, cu_link = self.logged_cu()
        frames = capture_frames(cu_link)
        cu_link.transport.write(codec.encode_frame(0x7F01, b"\x00\x00", 0, codec.FLAG_NOTIFY))
        self.h.pump()
        self.assertEqual(frames, [])
        d = cu.request(MsgType.KEEPALIVE, Empty())
        self.h.pump()
        result(d)
