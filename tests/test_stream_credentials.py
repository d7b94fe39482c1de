"""
Stable stream URLs for third-party players (``vss.streamcreds``): a user makes a
long-lived, revocable stream credential for a device; players use it in the URL or as
RTSP Digest credentials, on any node; revocation ends the sessions playing with it
within a second on every node, and a new one is refused.

The end-to-end tests run CMS and two nodes (real services over loopback TCP), a real
``vss-pu`` publishing H.264 to node-a, and PyAV (FFmpeg's RTSP client) as the player on
node-b; the unit tests drive the sans-IO parts and the node's checks with fakes.
"""

import json
import threading
import time

from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    CredCreate,
    CredList,
    CredRevoke,
    MsgType,
    Role,
    StreamCredential,
    UserRecord,
)
from vss.rtsp.auth import DigestClient, parse_challenge
from vss.streamcreds import secret as sc
from vss.streamcreds.node import StreamCredentials, live_stream_of, safe_for_secrets
from vss.testing.platform import start_platform, verifier, wait_until
from vss.testing.records import grant

try:
    import av
except ImportError:  # pragma: no cover - av is a dependency
    av = None

KEY = sc.credential_key(b"k" * 40)
VERIFIER = verifier("pw")
NOW_MS = 1_767_600_000_000


class SecretTests(unittest.SynchronousTestCase):
    def make(self, secret, cred_id="sc-0123456789ab", username="alice", device_id="cam-1"):
        return StreamCredential(cred_id, username, device_id, "vlc", NOW_MS, 0, 0,
                                sc.seal(KEY, cred_id, username, device_id, secret), 1)

    def test_the_stored_form_checks_the_secret_and_nothing_else(self):
        secret = sc.new_secret()
        self.assertRegex(secret, sc.SECRET_RE)
        self.assertRegex(sc.new_id(), sc.ID_RE)
        record = self.make(secret)
        self.assertNotIn(secret.encode(), record.sealed)
        self.assertNotIn(sc.ha1(record.cred_id, secret), record.sealed)  # HA1 is sealed
        self.assertTrue(sc.secret_matches(KEY, record, secret))
        other = secret[:-1] + ("B" if secret.endswith("A") else "A")
        self.assertFalse(sc.secret_matches(KEY, record, other))
        # another cluster's key, or the sealed value moved to another credential, user
        # or device: it does not open
        self.assertFalse(sc.secret_matches(sc.credential_key(b"x" * 40), record, secret))
        for field in ("cred_id", "username", "device_id"):
            moved = StreamCredential(**{**{n: getattr(record, n) for n in record._fields},
                                        field: "sc-00000000000f" if field == "cred_id"
                                        else "other"})
            self.assertIsNone(sc.unseal(KEY, moved), field)
        self.assertEqual(sc.unseal(KEY, record), sc.ha1(record.cred_id, secret))

    def test_states(self):
        record = self.make(sc.new_secret())
        self.assertEqual(sc.state(record, NOW_MS), sc.ACTIVE)
        expiring = StreamCredential(record.cred_id, record.username, record.device_id,
                                    record.name, record.created, NOW_MS + 10, 0,
                                    record.sealed, 1)
        self.assertEqual(sc.state(expiring, NOW_MS + 9), sc.ACTIVE)
        self.assertEqual(sc.state(expiring, NOW_MS + 10), sc.EXPIRED)
        revoked = StreamCredential(record.cred_id, record.username, record.device_id, "x",
                                   NOW_MS, 0, NOW_MS + 5, record.sealed, 2)
        self.assertEqual(sc.state(revoked, NOW_MS), sc.REVOKED)

    def test_url_credentials_and_redaction(self):
        secret = "A" * 43
        self.assertEqual(sc.split_url_credential(f"sc-0123456789ab.{secret}"),
                         ("sc-0123456789ab", secret))
        for bad in ("", "sc-0123456789ab", f"sc-0123456789ab{secret}", f"x.{secret}",
                    f"sc-0123456789ab.{secret}!", "sc-0123456789ab.short"):
            self.assertIsNone(sc.split_url_credential(bad), bad)
        # the URL forms as any log line of vss shows them
        from vss.redact import redact

        text = (f"DESCRIBE rtsp://h:554/live/c/main?cred=sc-0123456789ab.{secret}&x=1 "
                f"rtsp://sc-0123456789ab:{secret}@h/live/c/main")
        out = redact(text)
        self.assertNotIn(secret, out)
        self.assertIn("cred=REDACTED&x=1", out)
        self.assertIn("rtsp://sc-0123456789ab:REDACTED@h/live/c/main", out)

    def test_live_paths(self):
        self.assertEqual(live_stream_of("/live/cam-1/main"), ("cam-1", 0, 0))
        self.assertEqual(live_stream_of("/live/dvs/ch3-sub"), ("dvs", 3, 1))
        for bad in ("/live/cam-1/pb-0123", "/live/cam-1", "/x/cam-1/main", "/live//main"):
            self.assertIsNone(live_stream_of(bad), bad)


class _Request:
    def __init__(self, method, uri, authorization=None):
        self.method, self.uri = method, uri
        self.headers = {"Authorization": authorization} if authorization else {}


class CheckTests(unittest.SynchronousTestCase):
    """The node's check of a request and its revalidation of sessions, with a clock."""

    def setUp(self):
        from vss.rtsp.server import RTSPUrl
        from vss.store.memory import MemoryStore
        from vss.testing.records import device

        self.RTSPUrl = RTSPUrl
        self.clock = task.Clock()
        self.clock.advance(NOW_MS / 1000)
        self.store = MemoryStore()
        self.store.put_device(device("cam-1", "cam-1-s", "node-a", iterations=4096))
        self.store.put_user(UserRecord("alice", VERIFIER, ["ops"], True, 1))
        self.store.put_grant(grant("group:ops", "cam-1", Action.VIEW))
        self.secret = sc.new_secret()
        self.cred = StreamCredential("sc-0123456789ab", "alice", "cam-1", "vlc", NOW_MS, 0, 0,
                                     sc.seal(KEY, "sc-0123456789ab", "alice", "cam-1",
                                             self.secret), 1)
        self.store.put_credential(self.cred)
        self.creds = StreamCredentials(KEY, self.store, None, None, self.clock)

    def check(self, uri, auth=None, method="DESCRIBE", what="play"):
        return self.creds.authorize(_Request(method, uri, auth), self.RTSPUrl.parse(uri), what)

    def test_url_and_digest_are_allowed_anything_else_is_not(self):
        base = "rtsp://h:554/live/cam-1/main"
        ok, info = self.check(f"{base}?cred=sc-0123456789ab.{self.secret}")
        self.assertTrue(ok)
        self.assertEqual((info["cred"], info["user"], info["device"]),
                         ("sc-0123456789ab", "alice", "cam-1"))
        self.assertIsNone(self.check(base))  # nothing given: a token, or the 401
        self.assertEqual(self.check(f"{base}?cred=sc-0123456789ab.{'B' * 43}")[0], False)
        challenge = parse_challenge(self.creds.challenges()[0])[1]
        self.assertEqual(challenge["realm"], "vss")
        self.assertEqual(len(self.creds.challenges()), 1)  # no Basic
        client = DigestClient("sc-0123456789ab", self.secret, challenge)
        self.assertTrue(self.check(base, client.header("DESCRIBE", base))[0])
        wrong = DigestClient("sc-0123456789ab", "A" * 43, challenge)
        self.assertEqual(self.check(base, wrong.header("DESCRIBE", base))[0], False)
        import base64

        basic = "Basic " + base64.b64encode(f"sc-0123456789ab:{self.secret}".encode()).decode()
        self.assertIsNone(self.check(base, basic))
        # another device, a playback path, publishing: refused
        self.assertEqual(self.check(f"rtsp://h/live/cam-2/main?cred=sc-0123456789ab."
                                    f"{self.secret}")[0], False)
        self.assertEqual(self.check(f"rtsp://h/live/cam-1/pb-00?cred=sc-0123456789ab."
                                    f"{self.secret}")[0], False)
        self.assertEqual(self.check(f"{base}?cred=sc-0123456789ab.{self.secret}",
                                    what="publish")[0], False)

    def test_bound_to_the_user_and_its_grant(self):
        url = f"rtsp://h/live/cam-1/sub?cred=sc-0123456789ab.{self.secret}"
        self.assertTrue(self.check(url)[0])
        self.store.put_user(UserRecord("alice", VERIFIER, ["ops"], False, 2))
        self.assertEqual(self.check(url), (False, "stream credential sc-0123456789ab: user "
                                           "alice is disabled"))
        self.store.put_user(UserRecord("alice", VERIFIER, [], True, 3))
        self.assertIn("may no longer view", self.check(url)[1])
        self.store.put_user(UserRecord("alice", VERIFIER, ["ops"], True, 4))
        self.assertTrue(self.check(url)[0])
        self.clock.advance(0)
        expiring = StreamCredential(*(getattr(self.cred, n) for n in self.cred._fields[:5]),
                                    NOW_MS + 1500, 0, self.cred.sealed, 2)
        self.store.put_credential(expiring)
        self.assertTrue(self.check(url)[0])
        self.clock.advance(1.5)
        self.assertIn("expired", self.check(url)[1])

    def test_revalidation_ends_the_sessions_that_no_longer_hold(self):
        ended = []

        class Session:
            def __init__(self, sid, path, auth):
                self.id, self.path, self.auth = sid, path, auth

        class Rtsp:
            sessions = {"s1": Session("s1", "/live/cam-1/main", {"cred": "sc-0123456789ab"}),
                        "s2": Session("s2", "/live/cam-1/main", {"id": "a token"}),
                        "s3": Session("s3", "/live/cam-1/main", None)}

            def end_session(self, s, why):
                ended.append((s.id, why))
                del self.sessions[s.id]

        class Cdn:
            rtsp = Rtsp()

        self.creds.cdn = Cdn()
        self.creds.startService()
        self.addCleanup(self.creds.stopService)
        self.clock.advance(1)
        self.assertEqual(ended, [])
        revoked = StreamCredential(*(getattr(self.cred, n) for n in self.cred._fields[:6]),
                                   NOW_MS + 1000, self.cred.sealed, 2)
        self.store.put_credential(revoked)
        self.creds.revalidate()  # what an applied change triggers at once
        self.assertEqual(ended, [("s1", "stream credential sc-0123456789ab: revoked")])
        self.assertEqual(sorted(Cdn.rtsp.sessions), ["s2", "s3"])

    def test_secrets_are_sent_over_tls_or_to_this_machine_only(self):
        from twisted.internet.testing import StringTransport

        class Link:
            def __init__(self, host, transport=None):
                self.peer_host, self.transport = host, transport or StringTransport()

        self.assertTrue(safe_for_secrets(Link("127.0.0.1")))
        self.assertTrue(safe_for_secrets(Link("::1")))
        self.assertTrue(safe_for_secrets(Link("::ffff:127.0.0.1")))
        self.assertFalse(safe_for_secrets(Link("::ffff:10.0.0.7")))
        self.assertFalse(safe_for_secrets(Link("10.0.0.7")))
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        tls = StringTransport()
        directlyProvides(tls, ISSLTransport)
        self.assertTrue(safe_for_secrets(Link("10.0.0.7", tls)))
        self.creds.central = object()  # never reached
        d = self.creds.create(Link("10.0.0.7"), "alice", CredCreate(device_id="cam-1",
                                                                     name="vlc", expires_in=0))
        self.assertEqual(self.failureResultOf(d, VssError).value.code, ResultCode.FORBIDDEN)
        d = self.creds.create(Link("127.0.0.1"), "bob", CredCreate(device_id="cam-1",
                                                                    name="", expires_in=0))
        self.assertEqual(self.failureResultOf(d, VssError).value.code, ResultCode.FORBIDDEN)


class Player(threading.Thread):
    """PyAV (FFmpeg's RTSP client) playing a URL over TCP until the stream ends: counts
    the frames and notes when it stopped (for a thread; blocking calls)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.frames = 0
        self.error = None
        self.playing = threading.Event()
        self.ended_at = None

    def run(self):
        try:
            with av.open(self.url, options={"rtsp_transport": "tcp", "stimeout": "5000000"},
                         timeout=(20, 5)) as c:
                for _ in c.decode(video=0):
                    self.frames += 1
                    if self.frames >= 5:
                        self.playing.set()
        except Exception as e:  # noqa: BLE001 - how the stream ended is the result
            self.error = e
        finally:
            self.ended_at = time.monotonic()
            self.playing.set()


def first_frames(url, count=5):
    """Blocking: decode ``count`` frames of ``url`` (the error, if refused)."""
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as c:
        n = 0
        for _ in c.decode(video=0):
            n += 1
            if n >= count:
                return n
    return n


class TwoNodeTests(unittest.TestCase):
    """A device homed on node-a, played through node-b with the credential."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Gate A", 1, 1, "node-a", verifier("cam-a-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), ["ops"]))
        yield change(store.upsert_user("bob", verifier("bob-pw"), []))
        yield change(store.set_grant("group:ops", "cam-a", int(Action.VIEW | Action.PTZ)))
        self.node_a = yield self.p.start_node("node-a")
        self.node_b = yield self.p.start_node("node-b")
        yield self.p.start_pu("node-a", "cam-a", "cam-a-s")

    def sessions_of(self, node, cred_id):
        return [s for s in node.rtsp.sessions.values()
                if isinstance(s.auth, dict) and s.auth.get("cred") == cred_id]

    @defer.inlineCallbacks
    def test_url_and_digest_play_through_another_node_and_revocation_ends_them(self):
        # alice has logged in on node-a too: both nodes hold her and her credentials
        yield self.p.login("node-a", Role.CU, "alice", "alice-pw")
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        issued = (yield alice.request(MsgType.CRED_CREATE, CredCreate(
            device_id="cam-a", name="vlc in the office", expires_in=0), timeout=20)).body
        cred, secret = issued.credential, issued.secret
        self.assertRegex(cred.cred_id, sc.ID_RE)
        self.assertEqual((cred.username, cred.device_id, cred.sealed, cred.revoked),
                         ("alice", "cam-a", b"", 0))
        rtsp_b = f"rtsp://127.0.0.1:{self.p.port('node-b', 'rtsp')}"
        self.assertEqual(issued.url,
                         f"{rtsp_b}/live/cam-a/main?cred={cred.cred_id}.{secret}")
        # CMS keeps the sealed form only; every node alice is registered on holds it by
        # passive sync
        stored = yield self.p.cms.store.get_credential(cred.cred_id)
        self.assertNotIn(secret.encode(), stored.sealed)
        yield wait_until(reactor, lambda: self.node_a.store.get_credential(cred.cred_id),
                         what="node-a's copy")
        listed = (yield alice.request(MsgType.CRED_LIST, CredList(device_id=""))).body
        self.assertEqual([c.cred_id for c in listed.credentials], [cred.cred_id])

        # the URL form and Digest (user: the id, password: the secret), both on node-b;
        # node-b starts the stream (pulled once from node-a) for them
        url_player = Player(issued.url)
        digest_player = Player(f"rtsp://{cred.cred_id}:{secret}@127.0.0.1:"
                               f"{self.p.port('node-b', 'rtsp')}/live/cam-a/main")
        for player in (url_player, digest_player):
            player.start()
            yield threads.deferToThread(player.playing.wait, 60)
            self.assertIsNone(player.error, player.url)
            self.assertGreaterEqual(player.frames, 5)
        self.assertEqual(len(self.sessions_of(self.node_b, cred.cred_id)), 2)
        self.assertEqual(self.node_b.cdn.counters["node_pulls"], 1)
        # each player's live view is in the central audit log, as alice's, by node-b
        for _ in range(300):
            views, _ = yield self.p.cms.store.list_audit(kinds=["live"], text=cred.cred_id)
            if len(views) >= 2:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual({(e.actor, e.target, e.node_id, e.source, e.detail["via"])
                          for e in views},
                         {("user:alice", "device:cam-a", "node-b", "127.0.0.1",
                           f"stream credential {cred.cred_id}")})
        self.assertEqual(len(views), 2)

        # revoked (by its user, through node-b and CMS): both sessions end within 1 s
        revoke_started = time.monotonic()
        yield alice.request(MsgType.CRED_REVOKE, CredRevoke(cred_id=cred.cred_id,
                                                            username=""))
        yield wait_until(reactor, lambda: not self.sessions_of(self.node_b, cred.cred_id),
                         timeout=5, what="the sessions to end")
        self.assertLess(time.monotonic() - revoke_started, 1.0)
        for player in (url_player, digest_player):
            yield threads.deferToThread(player.join, 10)
            self.assertIsNotNone(player.ended_at)
            self.assertLess(player.ended_at - revoke_started, 2.0)
        # a new session is refused at once, on either node
        for node in ("node-b", "node-a"):
            url = issued.url.replace(rtsp_b, f"rtsp://127.0.0.1:{self.p.port(node, 'rtsp')}")
            with self.assertRaises(Exception) as e:
                yield threads.deferToThread(first_frames, url, 1)
            self.assertIn("401", str(e.exception))
        self.assertEqual(self.node_a.store.get_credential(cred.cred_id).revoked,
                         (yield self.p.cms.store.get_credential(cred.cred_id)).revoked)

        # no log line of any part holds the secret
        text = "\n".join(formatEvent(e) or "" for e in self.events)
        self.assertIn(cred.cred_id, text)
        self.assertNotIn(secret, text)

    @defer.inlineCallbacks
    def test_bound_to_the_user_grant_and_refused_to_others(self):
        alice = yield self.p.login("node-b", Role.CU, "alice", "alice-pw")
        bob = yield self.p.login("node-b", Role.CU, "bob", "bob-pw")
        with self.assertRaises(VssError) as e:
            yield bob.request(MsgType.CRED_CREATE, CredCreate(device_id="cam-a", name="x",
                                                              expires_in=0))
        self.assertEqual(e.exception.code, ResultCode.FORBIDDEN)
        issued = (yield alice.request(MsgType.CRED_CREATE, CredCreate(
            device_id="cam-a", name="nvr", expires_in=3600), timeout=20)).body
        # bob cannot revoke alice's: not found (not even that it exists)
        with self.assertRaises(VssError) as e:
            yield bob.request(MsgType.CRED_REVOKE, CredRevoke(cred_id=issued.credential.cred_id,
                                                              username="alice"))
        self.assertEqual(e.exception.code, ResultCode.NOT_FOUND)
        self.assertEqual((yield bob.request(MsgType.CRED_LIST, CredList(device_id=""))
                          ).body.credentials, [])
        player = Player(issued.url)
        player.start()
        yield threads.deferToThread(player.playing.wait, 60)
        self.assertIsNone(player.error)
        # the user loses the grant (the group's grant goes): the session ends, on every
        # node the credential stops working
        lost = time.monotonic()
        yield self.p.change(self.p.cms.store.remove_grant("group:ops", "cam-a"))
        yield wait_until(reactor, lambda: not self.sessions_of(
            self.node_b, issued.credential.cred_id), timeout=5, what="the session to end")
        self.assertLess(time.monotonic() - lost, 1.0)
        yield threads.deferToThread(player.join, 10)
        with self.assertRaises(Exception) as e:
            yield threads.deferToThread(first_frames, issued.url, 1)
        self.assertIn("401", str(e.exception))

    @defer.inlineCallbacks
    def test_vssctl_creates_lists_and_revokes(self):
        from vss.testing.processes import vssctl

        node = f"tcp:127.0.0.1:{self.p.port('node-b', 'cu')}"
        out, err, code = yield vssctl(node, ["stream-cred", "create", "cam-a", "--name",
                                             "home assistant", "--expires-in", "30d"],
                                      "alice", "alice-pw")
        self.assertEqual(code, 0, err)
        url_line, digest_line = out.splitlines()
        url, digest = url_line.split()[1], digest_line.split()[1]
        cred_id = url.split("cred=")[1].split(".")[0]
        secret = url.split("cred=")[1].split(".", 1)[1]
        rtsp_b = f"127.0.0.1:{self.p.port('node-b', 'rtsp')}"
        self.assertEqual(url, f"rtsp://{rtsp_b}/live/cam-a/main?cred={cred_id}.{secret}")
        self.assertEqual(digest, f"rtsp://{cred_id}:{secret}@{rtsp_b}/live/cam-a/main")
        self.assertIn(f"stream credential {cred_id} for cam-a (expires ", err)
        self.assertIn("shown only now", err)
        frames = yield threads.deferToThread(first_frames, digest, 3)
        self.assertEqual(frames, 3)

        out, err, code = yield vssctl(node, ["--json", "stream-cred", "list"], "alice",
                                      "alice-pw")
        self.assertEqual(code, 0, err)
        [listed] = json.loads(out)["credentials"]
        self.assertEqual((listed["cred_id"], listed["name"], listed["device_id"]),
                         (cred_id, "home assistant", "cam-a"))
        self.assertNotIn("sealed", listed)
        self.assertNotIn(secret, out)
        out, err, code = yield vssctl(node, ["stream-cred", "revoke", cred_id], "bob",
                                      "bob-pw")
        self.assertEqual(code, 1)
        self.assertIn("[not_found]", err)
        out, err, code = yield vssctl(node, ["stream-cred", "revoke", cred_id], "alice",
                                      "alice-pw")
        self.assertEqual((code, out.strip()),
                         (0, f"stream credential {cred_id} for cam-a revoked"), err)
        out, err, code = yield vssctl(node, ["stream-cred", "list", "cam-a"], "alice",
                                      "alice-pw")
        self.assertEqual(out.splitlines()[1].split()[:3], [cred_id, "cam-a", "revoked"])
        with self.assertRaises(Exception) as e:
            yield threads.deferToThread(first_frames, digest, 1)
        self.assertIn("401", str(e.exception))
