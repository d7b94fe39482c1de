"""
The election of the active CMS (``vss.cms.standby``) with ``task.Clock`` and a lock of
the test's own; the node link's walk over several CMS addresses
(``vss.protocols.reconnect``); the ``--standby`` option and the admin API of a standby.
"""

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vss.cms.standby import ACTIVE, STANDBY, TAKING_OVER, Election, IActiveLock
from vss.config import ConfigError, cms_addresses
from vss.protocols import reconnect
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.tap.cms import standby_from


@implementer(IActiveLock)
class FakeLock:
    """A lock whose answers the test gives: ``answers`` holds the Deferreds of the calls
    in progress."""

    description = "test lock"

    def __init__(self):
        self.calls = []  # (name, Deferred)
        self.released = 0

    def _call(self, name):
        d = defer.Deferred()
        self.calls.append((name, d))
        return d

    def acquire(self):
        return self._call("acquire")

    def check(self):
        return self._call("check")

    def release(self):
        self.released += 1

    def answer(self, value):
        name, d = self.calls.pop(0)
        if isinstance(value, Exception):
            d.errback(value)
        else:
            d.callback(value)
        return name


class ElectionTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.lock = FakeLock()
        self.took = []  # Deferreds of on_active
        self.lost = []  # reasons of on_standby
        self.election = Election(self.lock, self.clock, self.on_active, self.lost.append)
        self.election.startService()
        self.addCleanup(self.election.stopService)

    def on_active(self):
        d = defer.Deferred()
        self.took.append(d)
        return d

    def become_active(self):
        self.assertEqual(self.lock.answer(True), "acquire")
        self.assertEqual(self.election.state, TAKING_OVER)
        self.took[-1].callback(None)
        self.assertEqual(self.election.state, ACTIVE)

    def test_interface(self):
        self.assertTrue(verifyObject(IActiveLock, self.lock))

    def test_standby_polls_every_second_until_it_gets_the_lock(self):
        self.assertEqual([n for n, _ in self.lock.calls], ["acquire"])  # at once
        self.lock.answer(False)
        self.assertEqual(self.election.state, STANDBY)
        self.assertEqual(self.election.reason, "another CMS is active")
        self.clock.advance(0.5)
        self.assertEqual(self.lock.calls, [])
        self.clock.advance(0.5)
        self.assertEqual([n for n, _ in self.lock.calls], ["acquire"])
        self.become_active()
        self.assertTrue(self.election.active)
        self.assertEqual(self.election.takeovers, 1)
        self.assertEqual(self.lost, [])

    def test_not_active_until_taking_over_succeeds(self):
        self.lock.answer(True)
        self.assertFalse(self.election.active)
        self.clock.advance(5)  # no lock checks while taking over
        self.assertEqual(self.lock.calls, [])
        self.took[0].errback(VssError(ResultCode.DB_UNAVAILABLE, "gone"))
        self.assertEqual(self.election.state, STANDBY)
        self.assertIn("taking over failed", self.lost[0])
        self.assertEqual(self.lock.released, 1)
        self.flushLoggedErrors(VssError)
        self.clock.advance(1)
        self.assertEqual([n for n, _ in self.lock.calls], ["acquire"])

    def test_active_checks_every_second_and_stands_by_when_the_lock_is_lost(self):
        self.become_active()
        self.clock.advance(1)
        self.assertEqual(self.lock.answer(True), "check")
        self.assertTrue(self.election.active)
        self.clock.advance(1)
        self.assertEqual(self.lock.answer(False), "check")
        self.assertEqual(self.election.state, STANDBY)
        self.assertEqual(self.lost, ["the test lock was lost"])
        self.assertEqual(self.lock.released, 1)
        self.clock.advance(1)  # a standby again: it asks for the lock
        self.assertEqual([n for n, _ in self.lock.calls], ["acquire"])

    def test_a_failed_check_stands_by_at_once(self):
        self.become_active()
        self.clock.advance(1)
        self.lock.answer(OSError("server closed the connection"))
        self.assertFalse(self.election.active)
        self.assertIn("server closed the connection", self.lost[0])
        self.assertIn("database cannot be reached", self.lost[0])

    def test_a_check_without_answer_stands_by_after_the_timeout(self):
        self.become_active()
        self.clock.advance(1)  # the check is sent and never answered
        self.clock.advance(2)
        self.assertTrue(self.election.active)
        self.clock.advance(1)  # 3 s after it was sent
        self.assertFalse(self.election.active)
        self.assertIn("did not answer the lock check within 3 s", self.lost[0])
        # its late answer changes nothing
        self.lock.answer(True)
        self.assertEqual(self.election.state, STANDBY)
        self.assertEqual(len(self.lost), 1)

    def test_a_standby_that_cannot_reach_the_database_says_so_and_retries(self):
        self.lock.answer(OSError("connection refused"))
        self.assertEqual(self.election.state, STANDBY)
        self.assertIn("connection refused", self.election.reason)
        self.assertEqual(self.lock.released, 1)
        self.assertEqual(self.lost, [])  # never active: nothing to stop
        self.clock.advance(1)
        self.assertEqual([n for n, _ in self.lock.calls], ["acquire"])

    def test_stopping_releases_the_lock_and_leaves_no_timer(self):
        self.become_active()
        yield_ = self.election.stopService()
        self.assertEqual(self.lock.released, 1)
        self.assertEqual(self.election.state, STANDBY)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return yield_


class FirstRoundTests(unittest.TestCase):
    """Before it listens, a CMS tries once: alone on its database it serves as the
    active CMS from its first answer."""

    def setUp(self):
        self.clock = task.Clock()
        self.lock = FakeLock()
        self.lost = []
        self.election = Election(self.lock, self.clock, lambda: defer.succeed(None),
                                 self.lost.append)

    def test_won_first_round_is_active_before_the_service_starts(self):
        d = self.election.first_round()
        self.assertNoResult(d)
        self.lock.answer(True)
        self.successResultOf(d)
        self.assertTrue(self.election.active)
        self.election.startService()
        self.assertEqual(self.lock.answer(True), "check")  # then checks it holds it
        self.successResultOf(self.election.stopService())

    def test_lost_first_round_is_a_standby(self):
        d = self.election.first_round()
        self.lock.answer(False)
        self.successResultOf(d)
        self.assertEqual(self.election.state, STANDBY)
        d = self.election.first_round()
        self.lock.answer(OSError("no database"))
        self.successResultOf(d)
        self.assertIn("no database", self.election.reason)


class StandbyOptionTests(unittest.TestCase):
    def test_auto_is_on_with_postgresql_and_off_with_sqlite(self):
        self.assertTrue(standby_from("auto", "postgresql://db/vss"))
        self.assertTrue(standby_from("auto", "host=db dbname=vss"))
        self.assertFalse(standby_from("auto", "sqlite:/var/lib/vss/cms.sqlite3"))
        self.assertFalse(standby_from("off", "postgresql://db/vss"))

    def test_on_with_sqlite_is_refused_clearly(self):
        e = self.assertRaises(ConfigError, standby_from, "on", "sqlite:cms.sqlite3")
        self.assertIn("needs PostgreSQL", str(e))
        self.assertIn("SQLite", str(e))
        self.assertRaises(ConfigError, standby_from, "maybe", "postgresql://db/vss")

    def test_options_refuse_standby_on_sqlite(self):
        from vss.tap.cms import Options

        options = Options()
        e = self.assertRaises(ConfigError, options.parseOptions,
                              ["--standby", "on", "--data-dir", self.mktemp()])
        self.assertIn("--standby on", str(e))

    def test_a_node_takes_several_cms_addresses_and_checks_each(self):
        import os

        from vss.tap.node import Options

        secret = os.path.abspath(self.mktemp())
        with open(secret, "wb") as f:
            f.write(b"s" * 32)

        def node(cms):
            o = Options()
            o.parseOptions(["--node-id", "node-a", "--cluster-secret-file", secret,
                            "--data-dir", self.mktemp(), "--cms", cms])
            return o.settings

        s = node("tcp:127.0.0.1:7200,tcp:127.0.0.1:7201")
        self.assertEqual(cms_addresses(s.cms), ["tcp:127.0.0.1:7200", "tcp:127.0.0.1:7201"])
        e = self.assertRaises(ConfigError, node, "tcp:127.0.0.1:7200,tcp:10.0.0.5:7200")
        self.assertIn("a plaintext link on 10.0.0.5", str(e))
        e = self.assertRaises(ConfigError, node, "tcp:127.0.0.1:7200,ssl:10.0.0.5:7200")
        self.assertIn("'ssl:10.0.0.5:7200' must be tcp:HOST:PORT", str(e))

    def test_cms_addresses(self):
        self.assertEqual(cms_addresses("tcp:a:7200, tcp:b:7200,"), ["tcp:a:7200", "tcp:b:7200"])
        self.assertEqual(cms_addresses("tcp:a:7200"), ["tcp:a:7200"])
        self.assertEqual(cms_addresses(""), [])


class _Endpoint:
    """An endpoint whose connections the test answers."""

    def __init__(self, name, log):
        self.name = name
        self.log = log

    def connect(self, factory):
        self.log.append(self.name)
        d = defer.Deferred()
        self.pending = d
        return d


class _Proto:
    class transport:  # noqa: N801 - a stand-in
        @staticmethod
        def abortConnection():
            pass

        @staticmethod
        def loseConnection():
            pass


class EndpointListTests(unittest.TestCase):
    """The node's link to CMS walks the CMS addresses: the next soon, the backoff
    once a whole round failed, at most ``NOT_ACTIVE_MAX_DELAY`` after a NOT_ACTIVE."""

    def setUp(self):
        self.clock = task.Clock()
        self.log = []
        self.a, self.b = _Endpoint("a", self.log), _Endpoint("b", self.log)
        self.prepare_result = None
        self.r = reconnect.Reconnector([self.a, self.b], None, self.prepare, self.clock,
                                       initial=0.5, max_delay=10.0)

    def prepare(self, protocol):
        return self.prepare_result

    def test_the_next_address_soon_and_back_off_per_round(self):
        from twisted.internet.error import ConnectionRefusedError

        self.r.start()
        self.assertEqual(self.log, ["a"])
        self.a.pending.errback(ConnectionRefusedError())
        self.clock.advance(reconnect.NEXT_DELAY * 1.5)
        self.assertEqual(self.log, ["a", "b"])
        self.b.pending.errback(ConnectionRefusedError())  # a whole round failed
        self.clock.advance(0.3)
        self.assertEqual(self.log, ["a", "b"])
        self.clock.advance(0.3)
        self.assertEqual(self.log, ["a", "b", "a"])
        self.r.stop()

    def test_not_active_moves_on_and_keeps_the_delay_short(self):
        from twisted.internet.error import ConnectionRefusedError

        self.r.failures = 6  # a long outage before: the backoff is long
        self.r.start()
        self.a.pending.errback(ConnectionRefusedError())
        self.clock.advance(reconnect.NEXT_DELAY * 1.5)
        self.prepare_result = defer.fail(VssError(ResultCode.NOT_ACTIVE, "standby"))
        self.b.pending.callback(_Proto())
        self.r.lost(self.r.protocol)  # the standby closed the link
        self.assertLessEqual(self.r.last_delay, reconnect.NOT_ACTIVE_MAX_DELAY * 1.1)
        self.clock.advance(reconnect.NOT_ACTIVE_MAX_DELAY * 1.1)
        self.assertEqual(self.log, ["a", "b", "a"])
        self.r.stop()

    def test_a_lost_link_tries_the_next_address_first(self):
        self.r.start()
        self.a.pending.callback(_Proto())  # prepared: the link works on a
        self.assertEqual(self.r.failures, 0)
        self.r.lost(self.r.protocol)  # a dies
        self.clock.advance(reconnect.NEXT_DELAY * 1.5)
        self.assertEqual(self.log, ["a", "b"])
        self.r.stop()


class DocumentedBytesTests(unittest.TestCase):
    def test_the_standby_answer_of_section_9_4_byte_for_byte(self):
        """docs/protocol.md 9.4: a standby CMS's error answer to HELLO and its BYE."""
        import os

        from vss.protocols import codec
        from vss.protocols.messages import Bye, MsgType

        doc = os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.md")
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        block = text.split("A standby's answer to HELLO", 1)[1].split("```", 2)[1]
        error, bye = (bytes.fromhex(part.replace("\n", " "))
                      for part in block.strip().split("\n\n"))
        message = "another CMS is active"
        self.assertEqual(error, codec.encode_error(MsgType.HELLO, 1, ResultCode.NOT_ACTIVE,
                                                   message, 1))
        self.assertEqual(bye, codec.encode_notify(
            MsgType.BYE, Bye(reason=int(ResultCode.NOT_ACTIVE), message=message)))


class StandbyCmsLinkTests(unittest.TestCase):
    """A standby CMS answers a node's link NOT_ACTIVE and closes it; an active CMS that
    stands by closes the links it had (StringTransport, task.Clock)."""

    def setUp(self):
        from vss.cms.service import CMSConfig, CMSService

        self.clock = task.Clock()
        self.cms = CMSService(CMSConfig(cms_id="cms-b", cluster_secret=b"s" * 32),
                              store=None, clock=self.clock)

    def connect(self):
        from twisted.internet.testing import StringTransport

        proto = self.cms.factory().buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def frames(self, transport):
        from vss.protocols import codec

        return [(f, codec.decode_body(f)) for f in codec.FrameDecoder().feed(
            transport.value())]

    def test_a_standby_answers_hello_not_active_and_closes(self):
        from vss.protocols import codec
        from vss.protocols.messages import Hello, MsgType, Role

        self.cms.stand_by("another CMS is active; the active CMS is cms-a")
        proto, transport = self.connect()
        proto.dataReceived(codec.encode_request(MsgType.HELLO, Hello(
            min_version=1, max_version=1, role=Role.NODE, agent="t", features=[]), 1))
        (err, err_msg), (bye, bye_msg) = self.frames(transport)
        self.assertEqual((err.type, err.txid, err.status),
                         (MsgType.HELLO, 1, ResultCode.NOT_ACTIVE))
        self.assertIn("the active CMS is cms-a", err_msg.body.message)
        self.assertEqual((bye.type, bye_msg.body.reason),
                         (MsgType.BYE, ResultCode.NOT_ACTIVE))
        self.assertTrue(transport.disconnecting)

    def test_standing_by_closes_every_link_and_activating_serves_again(self):
        from vss.protocols import codec
        from vss.protocols.messages import Hello, MsgType, Role

        proto, transport = self.connect()
        self.cms.stand_by("the lock was lost")
        (bye, bye_msg), = self.frames(transport)
        self.assertEqual((bye.type, bye_msg.body.reason, bye_msg.body.message),
                         (MsgType.BYE, ResultCode.NOT_ACTIVE, "the lock was lost"))
        self.assertTrue(transport.disconnecting)
        self.cms.activate()
        proto, transport = self.connect()
        proto.dataReceived(codec.encode_request(MsgType.HELLO, Hello(
            min_version=1, max_version=1, role=Role.NODE, agent="t", features=[]), 1))
        (ack, _), = self.frames(transport)
        self.assertEqual((ack.type, ack.status), (MsgType.HELLO, 0))
        self.assertFalse(transport.disconnecting)
