"""
The protocol conformance suite (``vss-conformance``): run against a real node started
with ``twistd vss-node --static ... --keepalive 1``, against deliberately broken servers
(to prove it can fail), and its helpers in isolation.
"""

import json
import os
import re

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from vss.conformance import checks, cli, probe, runner
from vss.events.hub import EventHub
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.link import SignallingLink
from vss.protocols.messages import Action, Hello, HelloAck, MsgType, Role
from vss.rgm import relay
from vss.rgm.localcentral import MemoryCentral
from vss.rgm.service import RGMConfig, RGMService, State
from vss.rgm.walls import WallRegistry
from vss.store.memory import MemoryStore
from vss.testing import records
from vss.testing.processes import child_env, run_tool, start_node
from vss.tls import make_ca_and_cert

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.M)

#: Checks the node of this tree fails today because the NODE departs from
#: docs/protocol.md (the suite is right); each entry names the place and the rule.
#: Remove an entry when the node is fixed: the test then demands that the check passes.
KNOWN_NODE_BUGS = {}


def write_static(path):
    c = MemoryCentral()
    c.add_device(records.device("cam1", "cam1-secret", home_node="n1", channels=1))
    c.add_user(records.user("alice", "alice-pw"))
    c.add_grant(records.grant("user:alice", "cam1", ALL))
    c.save(path)


def conformance(pu, cu, *args, secret="cam1-secret", password="alice-pw"):
    env = child_env(VSS_PU_SECRET=secret, VSS_PASSWORD=password)
    return run_tool("vss-conformance", ["--pu", pu, "--cu", cu, "--device", "cam1",
                                        "--user", "alice", *args], env=env)


def lines(out, status):
    return {line.split()[1] for line in out.splitlines() if line.startswith(status + " ")}


class AgainstARealNode(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_the_node_passes_every_check_but_its_known_bugs(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        write_static(static)
        node, ports = yield start_node(reactor, work, "n1", ["--static", static,
                                                             "--keepalive", "1"])
        self.addCleanup(node.stop)
        out, err, code = yield conformance(f"tcp:127.0.0.1:{ports['pu']}",
                                           f"tcp:127.0.0.1:{ports['cu']}", "--slow")
        failed = lines(out, "FAIL")
        self.assertEqual(failed, set(KNOWN_NODE_BUGS), f"{out}\n{err}")
        self.assertEqual(code, 1 if KNOWN_NODE_BUGS else 0, f"{out}\n{err}")
        self.assertEqual(lines(out, "SKIP"), set())
        passed = lines(out, "PASS")
        self.assertEqual(passed | failed, set(checks.names()))
        self.assertEqual(SUMMARY.findall(out),
                         [(str(len(passed)), str(len(failed)), "0")])
        self.assertNotIn("alice-pw", out + err + node.output())
        self.assertNotIn("cam1-secret", out + err + node.output())

    @defer.inlineCallbacks
    def test_over_the_websocket_transport_of_browsers(self):
        """Every check of the CU link, the slow ones too, over ``/ws/cu`` (the transport
        a browser page speaks, docs/protocol.md "Browser clients"): the same results."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        write_static(static)
        node, ports = yield start_node(reactor, work, "n1", ["--static", static,
                                                             "--keepalive", "1"])
        self.addCleanup(node.stop)
        out, err, code = yield conformance(f"tcp:127.0.0.1:{ports['pu']}",
                                           f"ws://127.0.0.1:{ports['http']}/ws/cu", "--slow")
        failed = lines(out, "FAIL")
        self.assertEqual(failed, set(KNOWN_NODE_BUGS), f"{out}\n{err}")
        self.assertEqual(code, 1 if KNOWN_NODE_BUGS else 0, f"{out}\n{err}")
        self.assertEqual(lines(out, "SKIP"), set())
        self.assertEqual(lines(out, "PASS") | failed, set(checks.names()))
        self.assertNotIn("alice-pw", out + err + node.output())

    @defer.inlineCallbacks
    def test_over_tls_with_tls_endpoint_strings(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        write_static(static)
        cert, key, trust = make_ca_and_cert(os.path.join(work, "tls"), ["localhost"])
        server = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        node, ports = yield start_node(reactor, work, "n1", [
            "--static", static, "--keepalive", "1", "--pu-listen", server, "--cu-listen", server])
        self.addCleanup(node.stop)
        only = "auth_success,correlation_200,malformed_bad_magic,oversized_4gib,pu_vanished_in_flight"
        out, err, code = yield conformance(f"tls:localhost:{ports['pu']}:trustRoots={trust}",
                                           f"tls:localhost:{ports['cu']}:trustRoots={trust}",
                                           "--only", only)
        self.assertEqual(code, 0, f"{out}\n{err}")
        self.assertEqual(lines(out, "PASS"), set(only.split(",")))
        self.assertIn("5 passed, 0 failed, 0 skipped", out)


class _Broken(protocol.Protocol):
    """Answers every request with a HelloAck of version 7 (or never answers)."""

    mute = False

    def dataReceived(self, data):
        if self.mute:
            return
        for frame in codec.FrameDecoder().feed(data):
            if isinstance(frame, codec.Frame) and not frame.flags & codec.FLAG_RESPONSE:
                self.transport.write(codec.encode_response(
                    frame.type, HelloAck(version=7, node_id="broken", agent="x", features=[]),
                    frame.txid))


class _Mute(_Broken):
    mute = True


class AgainstBrokenServers(unittest.TestCase):
    timeout = 60

    def listen(self, proto):
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(proto), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"tcp:127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_a_server_answering_wrongly_fails_with_reasons(self):
        address = self.listen(_Broken)
        out, err, code = yield conformance(
            address, address, "--timeout", "1",
            "--only", "hello_version,hello_no_common_version,auth_success,malformed_bad_magic")
        self.assertEqual(code, 1, f"{out}\n{err}")
        self.assertEqual(lines(out, "FAIL"), {"hello_version", "hello_no_common_version",
                                              "auth_success", "malformed_bad_magic"})
        self.assertIn("HelloAck version 7, want 1", out)
        self.assertIn("expected error NO_COMMON_VERSION (0x020a) type HELLO", out)
        self.assertEqual(SUMMARY.findall(out), [("0", "4", "0")])

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_fails_without_hanging(self):
        address = self.listen(_Mute)
        out, err, code = yield conformance(address, address, "--timeout", "0.5", "--json",
                                           "--only", "hello_version", "--only", "keepalive_timeout")
        self.assertEqual(code, 1, f"{out}\n{err}")
        doc = json.loads(out)
        self.assertEqual((doc["passed"], doc["failed"], doc["skipped"]), (0, 1, 1))
        by_name = {c["name"]: c for c in doc["checks"]}
        self.assertEqual(by_name["hello_version"]["status"], "FAIL")
        self.assertIn("no HelloAck within 0.5 s", by_name["hello_version"]["reason"])
        self.assertEqual(by_name["keepalive_timeout"]["status"], "SKIP")

    @defer.inlineCallbacks
    def test_nothing_listening_is_a_failure_not_a_crash(self):
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(_Mute), interface="127.0.0.1")
        address = f"tcp:127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        out, err, code = yield conformance(address, address, "--only", "auth_success")
        self.assertEqual(code, 1, f"{out}\n{err}")
        self.assertIn("FAIL auth_success  CU link 1: cannot connect", out)


class InProcessNode:
    """A real RGM in this process, its PU and CU listeners on loopback port 0, holding
    cam1 and alice (granted every action) as ``write_static`` does. A test breaks one
    rule of docs/protocol.md in it (``TestCase.patch``) and runs checks against it."""

    def __init__(self, testcase):
        central = MemoryCentral()
        central.add_device(records.device("cam1", "cam1-secret", home_node="n1", channels=1))
        central.add_user(records.user("alice", "alice-pw"))
        central.add_grant(records.grant("user:alice", "cam1", ALL))
        self.rgm = RGMService(RGMConfig(node_id="n1", node_secret=b"in-process-secret",
                                        keepalive_interval=1), MemoryStore(), central, reactor)
        central.nodes["n1"] = self.rgm
        self.rgm.events = EventHub("n1", self.rgm.store, central, reactor)
        self.rgm.startService()
        testcase.addCleanup(self.rgm.stopService)
        self.endpoints = {}
        for role, name in ((Role.PU, "pu"), (Role.CU, "cu")):
            port = reactor.listenTCP(0, self.rgm.factory(role), interface="127.0.0.1")
            testcase.addCleanup(port.stopListening)
            self.endpoints[name] = f"tcp:127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def run(self, names):
        """{check name: (status, reason)} of the checks ``names`` run against this node."""
        ctx = checks.Context(reactor, self.endpoints["pu"], self.endpoints["cu"], "cam1",
                             "alice", "cam1-secret", "alice-pw", timeout=1.5)
        results = yield runner.run(ctx, names)
        return {r.name: (r.status, r.reason) for r in results}


def _late_magic(feed):
    """``FrameDecoder.feed`` that waits for 16 bytes before it looks at a bad magic."""
    def late(self, data):
        held = getattr(self, "_late", b"") + bytes(data)
        if self.error is None and not self.buffered and held[:2] != codec.MAGIC \
                and len(held) < codec.HEADER_SIZE:
            self._late = held
            return []
        self._late = b""
        return feed(self, held)
    return late


def _wrap_received(test, before):
    """Patch ``RGMService.received`` so that ``before(rgm, link, frame, msg)`` runs first;
    when it returns True the frame is taken."""
    original = RGMService.received

    def received(self, link, frame, msg):
        if not before(self, link, frame, msg):
            original(self, link, frame, msg)

    test.patch(RGMService, "received", received)


class AgainstBrokenRules(unittest.TestCase):
    """Each rule of docs/protocol.md that the node once broke, or could: an in-process
    node that breaks it fails the checks that assert it (with a reason naming the rule),
    and the same node unbroken passes them."""

    timeout = 60

    @defer.inlineCallbacks
    def broken(self, names, want_in_reason=None):
        node = InProcessNode(self)
        results = yield node.run(names)
        failed = {n for n, (status, _) in results.items() if status == runner.FAIL}
        self.assertEqual(failed, set(names), results)
        if want_in_reason:
            for name in names:
                self.assertIn(want_in_reason, results[name][1], name)
        return results

    @defer.inlineCallbacks
    def test_the_unbroken_node_passes(self):
        names = ["hello_first", "hello_no_common_version", "hello_min_above_max",
                 "hello_wrong_role", "not_authenticated", "register_first",
                 "unknown_device_forbidden", "txid_zero", "second_login",
                 "bad_magic_two_bytes", "pu_bad_answer"]
        results = yield InProcessNode(self).run(names)
        self.assertEqual({n: s for n, (s, _) in results.items()},
                         dict.fromkeys(names, runner.PASS), results)

    def test_keepalive_refused_and_link_closed_before_hello(self):
        def old(rgm, link, frame, msg):
            if link.session.state == State.NEW and frame.type not in (MsgType.HELLO,
                                                                      MsgType.BYE):
                rgm.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE, "HELLO first")
                link.close()
                return True
            return False

        _wrap_received(self, old)
        fast = relay.fast_keepalive
        self.patch(relay, "fast_keepalive", lambda rgm, link, frame: link.session.state
                   != State.NEW and fast(rgm, link, frame))
        return self.broken(["hello_first"], "KEEPALIVE response before HELLO")

    def test_a_refusal_before_hello_closes_the_link(self):
        def closes(rgm, link, frame, msg):
            if link.session.state == State.NEW and frame.type == MsgType.DEVICE_LIST:
                rgm.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE, "HELLO first")
                link.close()
                return True
            return False

        _wrap_received(self, closes)
        return self.broken(["hello_first"], "closed the link")

    def test_unexpected_message_without_a_message_before_register(self):
        def old(rgm, link, frame, msg):
            if link.session.state == State.AUTHENTICATED and frame.type != MsgType.REGISTER:
                rgm.refuse(link, frame, ResultCode.UNEXPECTED_MESSAGE)
                return True
            return False

        _wrap_received(self, old)
        return self.broken(["register_first"], "expected error NOT_AUTHENTICATED")

    def test_refusals_without_a_message(self):
        refuse = RGMService.refuse
        self.patch(RGMService, "refuse", lambda self, link, frame, code, message="":
                   refuse(self, link, frame, code))
        return self.broken(["hello_first", "not_authenticated", "register_first"],
                           "carries an empty message")

    def test_unknown_device_for_any_id(self):
        on_cu_request = relay.on_cu_request

        def oracle(rgm, link, frame, msg):
            device_id = getattr(msg.body, "device_id", None)
            if device_id is not None and rgm.store.get_device(device_id) is None:
                return link.send_error(frame.type, frame.txid, ResultCode.UNKNOWN_DEVICE, "no")
            return on_cu_request(rgm, link, frame, msg)

        self.patch(relay, "on_cu_request", oracle)
        return self.broken(["unknown_device_forbidden"], "expected error FORBIDDEN")

    def test_no_bye_before_closing_after_a_refused_hello(self):
        on_hello = RGMService.on_hello

        def no_bye(self, link, frame, msg):
            close = link.close
            link.close = lambda code=None, message="": close()
            try:
                on_hello(self, link, frame, msg)
            finally:
                del link.close

        self.patch(RGMService, "on_hello", no_bye)
        return self.broken(["hello_no_common_version", "hello_min_above_max",
                            "hello_wrong_role"], "without a BYE")

    def test_min_above_max_read_as_a_range(self):
        on_hello = RGMService.on_hello

        def swapped(self, link, frame, msg):
            h = msg.body
            if h.min_version > h.max_version:
                msg.body = Hello(min_version=h.max_version, max_version=h.min_version,
                                 role=h.role, agent=h.agent, features=h.features)
            on_hello(self, link, frame, msg)

        self.patch(RGMService, "on_hello", swapped)
        return self.broken(["hello_min_above_max"], "expected error NO_COMMON_VERSION")

    def test_a_bad_pu_answer_leaves_the_pu_link_up(self):
        self.patch(SignallingLink, "bad_response", lambda self, err, frame: None)
        return self.broken(["pu_bad_answer"], "the error for the PU's bad CONFIG_GET answer")

    def test_a_request_with_txid_0_is_served(self):
        self.patch(SignallingLink, "refuse_txid_zero", lambda self, frame: False)
        return self.broken(["txid_zero"], "expected error UNEXPECTED_MESSAGE (0x0204) type "
                                          "KEEPALIVE txid 0")

    def test_bad_magic_after_a_whole_header(self):
        self.patch(codec.FrameDecoder, "feed", _late_magic(codec.FrameDecoder.feed))
        return self.broken(["bad_magic_two_bytes"], "no BAD_MAGIC after two bytes")

    @defer.inlineCallbacks
    def test_the_event_checks(self):
        """An unbroken node passes them; one that replays what a CU asks to resume
        twice, that takes a PU's event of another device, or that keeps no events
        (skipped), does not pass."""
        names = ["events_raise_notify", "events_resume", "events_limits"]
        results = yield InProcessNode(self).run(names)
        self.assertEqual({n: s for n, (s, _) in results.items()},
                         dict.fromkeys(names, runner.PASS), results)

        subscribe = EventHub.subscribe

        def twice(hub, link, body):
            answer, notes = subscribe(hub, link, body)
            return answer, notes + notes

        self.patch(EventHub, "subscribe", twice)
        results = yield self.broken(["events_resume"], "more than once")
        self.patch(EventHub, "subscribe", subscribe)

        on_raise = EventHub.on_raise
        self.patch(EventHub, "on_raise", lambda hub, device_id, body: on_raise(
            hub, body.device_id, body))
        yield self.broken(["events_raise_notify"], "FORBIDDEN")

    @defer.inlineCallbacks
    def test_the_wall_checks(self):
        """An unbroken node passes them; one that does not tell the wall of its change,
        or that lets any user drive any wall, does not."""
        names = ["wall_describe_assign_notify", "wall_refusals"]
        results = yield InProcessNode(self).run(names)
        self.assertEqual({n: s for n, (s, _) in results.items()},
                         dict.fromkeys(names, runner.PASS), results)

        changed = WallRegistry.changed

        def silent(registry, wall):
            link, wall.link = wall.link, None
            try:
                return changed(registry, wall)
            finally:
                wall.link = link

        self.patch(WallRegistry, "changed", silent)
        yield self.broken(["wall_describe_assign_notify"], "WALL_NOTIFY")
        self.patch(WallRegistry, "changed", changed)
        self.patch(MemoryStore, "actions_for", lambda store, user, device_id: 0xFF)
        yield self.broken(["wall_refusals"], "expected error FORBIDDEN")

    @defer.inlineCallbacks
    def test_a_node_without_events_is_skipped(self):
        node = InProcessNode(self)
        node.rgm.events = None
        results = yield node.run(["events_raise_notify", "events_resume"])
        self.assertEqual({n: s for n, (s, _) in results.items()},
                         dict.fromkeys(["events_raise_notify", "events_resume"], runner.SKIP))

    def test_a_second_login_of_a_user_ends_the_first(self):
        on_register = RGMService.on_register

        def single(self, link, frame, msg):
            for other in list(self.cu_links.values()):
                if other.session.identity == link.session.identity:
                    other.close(ResultCode.SESSION_REPLACED, "one session per user")
            on_register(self, link, frame, msg)

        self.patch(RGMService, "on_register", single)
        return self.broken(["second_login"])


class CommandLine(unittest.TestCase):
    def parse(self, argv, env=None):
        old = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        for k in ("VSS_PU_SECRET", "VSS_PASSWORD"):
            os.environ.pop(k, None)
        os.environ.update(env or {})
        opts = cli.Options()
        opts.parseOptions(argv)
        return opts

    BASE = ["--pu", "tcp:h:1", "--cu", "tcp:h:2", "--device", "cam1", "--user", "alice"]

    def test_secrets_come_from_the_environment_or_files_only(self):
        with self.assertRaises(cli.usage.UsageError) as e:
            self.parse(self.BASE)
        self.assertIn("VSS_PU_SECRET", str(e.exception))
        self.assertIn("VSS_PASSWORD", str(e.exception))
        with self.assertRaises(cli.usage.UsageError):
            self.parse(self.BASE + ["--password", "x"], {"VSS_PU_SECRET": "s",
                                                         "VSS_PASSWORD": "p"})
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        opts = self.parse(self.BASE + ["--password-file", path], {"VSS_PU_SECRET": "s"})
        self.assertEqual((opts.pu_secret, opts.password), ("s", "from-file"))

    def test_only_names_known_checks(self):
        env = {"VSS_PU_SECRET": "s", "VSS_PASSWORD": "p"}
        opts = self.parse(self.BASE + ["--only", "hello_version,slow_peer"], env)
        self.assertEqual(opts["only"], ["hello_version", "slow_peer"])
        with self.assertRaises(cli.usage.UsageError) as e:
            self.parse(self.BASE + ["--only", "nope"], env)
        self.assertIn("'nope'", str(e.exception))


class Helpers(unittest.TestCase):
    def test_every_check_has_a_unique_name_and_a_description(self):
        names = checks.names()
        self.assertEqual(len(names), len(set(names)))
        for c in checks.CHECKS:
            self.assertRegex(c.name, r"^[a-z0-9_]+$")
            self.assertTrue(c.description and "\n" not in c.description)

    def test_selection_puts_slow_checks_last(self):
        chosen = runner.select()
        slow = [c.slow for c in chosen]
        self.assertEqual(slow, sorted(slow))
        self.assertEqual([c.name for c in runner.select(["slow_peer", "hello_version"])],
                         ["hello_version", "slow_peer"])
        self.assertRaises(KeyError, runner.select, ["nope"])

    def test_result_lines_and_summary(self):
        results = [runner.Result("a", runner.PASS, "does a"),
                   runner.Result("b", runner.FAIL, "does b", "broke"),
                   runner.Result("c", runner.SKIP, "does c", "slow check")]
        self.assertEqual([r.line() for r in results],
                         ["PASS a  does a", "FAIL b  broke", "SKIP c  slow check"])
        self.assertEqual(runner.summary(results), "1 passed, 1 failed, 1 skipped")

    def test_expect_error_names_what_was_wanted_and_what_came(self):
        frame = codec.FrameDecoder().feed(codec.encode_error(
            MsgType.KEEPALIVE, 5, ResultCode.NOT_AUTHENTICATED, "log in"))[0]
        probe.expect_error(frame, ResultCode.NOT_AUTHENTICATED, MsgType.KEEPALIVE, 5)
        with self.assertRaises(probe.CheckFailed) as e:
            probe.expect_error(frame, ResultCode.UNEXPECTED_MESSAGE, MsgType.KEEPALIVE, 5)
        self.assertEqual(str(e.exception),
                         "expected error UNEXPECTED_MESSAGE (0x0204) type KEEPALIVE txid 5, "
                         "got error NOT_AUTHENTICATED (0x0202) type KEEPALIVE txid 5 'log in'")
        with self.assertRaises(probe.CheckFailed):
            probe.expect_response(frame, MsgType.KEEPALIVE, 5)

    def test_probe_waits_for_the_frame_it_expects_or_times_out(self):
        clock = task.Clock()
        link = probe.ProbeLink(clock, "CU link 1")
        link.makeConnection(StringTransport())
        d = link.response(9, 2.0, "answer to txid 9")
        link.dataReceived(codec.encode_error(MsgType.ERROR, 0, ResultCode.BAD_MAGIC))
        self.assertNoResult(d)
        link.dataReceived(codec.encode_frame(MsgType.KEEPALIVE, b"\x00\x00", 9,
                                             codec.FLAG_RESPONSE))
        self.assertEqual(self.successResultOf(d).txid, 9)
        self.assertEqual([f.type for f in link.unread()], [MsgType.ERROR])
        late = link.response(10, 2.0, "answer to txid 10")
        clock.advance(2.0)
        self.assertEqual(str(self.failureResultOf(late, probe.ProbeTimeout).value),
                         "CU link 1: no answer to txid 10 within 2 s")
        closed = link.wait_closed(1.0)
        link.connectionLost(None)
        self.assertTrue(self.successResultOf(closed))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_garbage_from_the_node_is_reported_as_such(self):
        clock = task.Clock()
        link = probe.ProbeLink(clock, "PU link 2")
        transport = StringTransport()
        link.makeConnection(transport)
        d = link.response(1, 5.0, "HelloAck")
        link.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        link.connectionLost(None)
        self.assertIn("PU link 2: the node sent bytes that are not a valid frame (BAD_MAGIC",
                      str(self.failureResultOf(d, probe.LinkClosed).value))

    def test_a_check_that_never_ends_fails_at_its_deadline(self):
        clock = task.Clock()
        ctx = checks.Context(None, "tcp:h:1", "tcp:h:2", "cam1", "alice", "s", "p",
                             timeout=1.0, clock=clock)
        hang = checks.Check("hangs", "never ends", lambda ctx: defer.Deferred())
        d = runner.run_one(ctx, hang)
        clock.advance(runner.deadline(ctx, hang))
        result = self.successResultOf(d)
        self.assertEqual((result.status, result.reason),
                         (runner.FAIL, "did not finish within 22 s"))
