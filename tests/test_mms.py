"""
MMS, the admin HTTP API (``vss.cms.mms``) and ``vss-admin``, over a real SQLite
``IStaticStore`` in a temporary directory.

Most tests talk real HTTP to the API listening on 127.0.0.1 port 0; one drives the
resource tree with ``DummyRequest``; the last runs ``vss-admin`` as real processes.
"""

import calendar
import json
import os
import sqlite3
import time
from io import BytesIO

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vss.cms import mms
from vss.cms.admin_backend import StoreAdminBackend
from vss.cms.store import hash_token, make_static_store
from vss.interfaces import IAdminBackend
from vss.protocols import scram
from vss.protocols.messages import Action, ChangeOp, Entity
from vss.testing import records
from vss.testing.processes import child_env, run_tool

TOKEN = "test-admin-token-0123456789"
PASSWORD = "Hunter2-Secret-Pw"
SECRET = "Cam-Secret-9f8e7d"
URL_PASS = "Cam-Url-Pass-42"
QUERY_PASS = "Q-Param-Pass-77"
SOURCE = f"rtsp://admin:{URL_PASS}@10.0.0.5:554/stream1?password={QUERY_PASS}&ch=1"


class ApiTestCase(unittest.TestCase):
    """The API on a fresh SQLite store, listening on 127.0.0.1:0."""

    timeout = 60

    def make_backend(self, store):
        return StoreAdminBackend(store, publish=self.published.append)

    def make_clock(self):
        """The store's clock (None: the reactor)."""
        return None

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.db = os.path.join(self.work, "cms.sqlite3")
        self.store = make_static_store("sqlite:" + self.db, reactor=reactor,
                                       clock=self.make_clock())
        yield self.store.open()
        self.addCleanup(self.store.close)
        self.root_id = yield self.store.add_admin_token("root", hash_token(TOKEN))
        self.published = []
        self.raw_answers = []
        self.backend = self.make_backend(self.store)
        self.site = mms.make_admin_site(self.backend)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    @defer.inlineCallbacks
    def call(self, method, path, body=None, token=TOKEN, data=None, headers=None,
             prefix=mms.API_PREFIX, producer=None):
        """(status, JSON payload, response headers) of one real HTTP request."""
        h = Headers(headers or {})
        if token is not None:
            h.setRawHeaders(b"authorization", [b"Bearer " + token.encode()])
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            producer = FileBodyProducer(BytesIO(data))
        response = yield self.agent.request(method.encode(), (self.base + prefix + path).encode(),
                                            h, producer)
        raw = yield readBody(response)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json"], raw)
        payload = json.loads(raw)
        self.raw_answers.append(raw)
        return response.code, payload, response.headers

    @defer.inlineCallbacks
    def ok(self, method, path, body=None, status=200):
        code, payload, _ = yield self.call(method, path, body)
        self.assertEqual(code, status, payload)
        return payload

    @defer.inlineCallbacks
    def error(self, method, path, body=None, status=400, field=None, **kw):
        code, payload, headers = yield self.call(method, path, body, **kw)
        self.assertEqual(code, status, payload)
        self.assertIsInstance(payload.get("error"), str)
        self.assertTrue(payload["error"])
        self.assertNotIn("Traceback", payload["error"])
        if field is not None:
            self.assertEqual(payload.get("field"), field, payload)
        return payload, headers

    @defer.inlineCallbacks
    def add_node(self, node_id, state="up", **load):
        yield self.store.upsert_node(node_id, f"{node_id}:7000", f"{node_id}:554", 100)
        yield self.store.set_node_state(node_id, state, load or None)

    @defer.inlineCallbacks
    def log_seqs(self):
        changes, _ = yield self.store.changes_after(0, 10000)
        return [c.seq for c in changes]

    def published_seqs(self):
        return [c.seq for batch in self.published for c in batch]


class AuthTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_token_required(self):
        _, headers = yield self.error("GET", "/users", token=None, status=401)
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="vss"'])
        yield self.error("GET", "/users", token="not-the-token", status=401)
        yield self.error("GET", "/users", token="", status=401)
        yield self.error("GET", "/users", token=None, status=401,
                         headers={b"authorization": [b"Basic cm9vdDpyb290"]})
        # unknown routes do not tell anything before authentication either
        yield self.error("GET", "/no-such-thing", token=None, status=401)
        yield self.error("POST", "/users", {"username": "eve", "password": PASSWORD},
                         token="wrong", status=401)
        self.assertIsNone((yield self.store.get_user("eve")))
        self.assertEqual(self.published, [])

    @defer.inlineCallbacks
    def test_right_token(self):
        index = yield self.ok("GET", "/")
        self.assertEqual(index["admin"], "root")
        code, payload, _ = yield self.call("GET", "/users/")
        self.assertEqual((code, payload), (200, {"items": [], "next_cursor": ""}))

    @defer.inlineCallbacks
    def test_outside_the_api_is_a_json_404(self):
        for path in ("/", "/api", "/api/v2/users", "/favicon.ico"):
            code, payload, _ = yield self.call("GET", path, token=None, prefix="")
            self.assertEqual(code, 404, path)
            self.assertIn("error", payload)


TOKEN_KEYS = {"id", "name", "state", "created", "expires", "last_used", "revoked", "current"}
#: 2023-11-14T22:13:20Z, the store's clock in the token tests
T0 = 1_700_000_000


class AdminTokenTests(ApiTestCase):
    """Admin tokens over real HTTP, with the store on a clock the test moves."""

    def make_clock(self):
        self.clock = task.Clock()
        self.clock.advance(T0)
        return self.clock

    def assertRefused(self, payload_headers, message):
        payload, headers = payload_headers
        self.assertEqual(payload["error"], message)
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="vss"'])

    @defer.inlineCallbacks
    def test_list_create_revoke(self):
        listed = yield self.ok("GET", "/tokens")
        self.assertEqual(listed, {"items": [{
            "id": self.root_id, "name": "root", "state": "active",
            "created": "2023-11-14T22:13:20Z", "expires": None,
            # this very request was a use
            "last_used": "2023-11-14T22:13:20Z", "revoked": None, "current": True}]})

        self.clock.advance(10)
        created = yield self.ok("POST", "/tokens", {"name": "ops", "expires_in": 3600},
                                status=201)
        ops = created.pop("token")
        self.assertTrue(ops.startswith("vssa_") and len(ops) > 40, ops)
        self.assertEqual(created, {
            "id": created["id"], "name": "ops", "state": "active",
            "created": "2023-11-14T22:13:30Z", "expires": "2023-11-14T23:13:30Z",
            "last_used": None, "revoked": None, "current": False})
        ops_id = created["id"]
        self.assertGreater(ops_id, self.root_id)
        code, shown, _ = yield self.call("GET", f"/tokens/{ops_id}", token=ops)
        self.assertEqual(code, 200, shown)
        self.assertEqual((shown["current"], shown["last_used"]),
                         (True, "2023-11-14T22:13:30Z"))

        # a second operator revokes the first token: it fails at once, saying why
        self.clock.advance(5)
        code, revoked, _ = yield self.call("DELETE", f"/tokens/{self.root_id}", token=ops)
        self.assertEqual(code, 200, revoked)
        self.assertEqual((revoked["state"], revoked["revoked"]),
                         ("revoked", "2023-11-14T22:13:35Z"))
        self.assertRefused((yield self.error("GET", "/users", status=401)),
                           "the token was revoked at 2023-11-14T22:13:35Z")
        code, payload, _ = yield self.call("DELETE", f"/tokens/{self.root_id}", token=ops)
        self.assertEqual((code, payload["error"]),
                         (409, f"admin token {self.root_id} is revoked already"))

        # lock-out protection: the last valid token stays unless forced
        code, payload, _ = yield self.call("DELETE", f"/tokens/{ops_id}", token=ops)
        self.assertEqual((code, payload.get("field")), (409, "id"), payload)
        self.assertIn("last valid", payload["error"])
        self.assertIn("?force=true", payload["error"])
        code, _, _ = yield self.call("GET", "/tokens", token=ops)
        self.assertEqual(code, 200)

        # a token may revoke itself when another is left
        code, third, _ = yield self.call("POST", "/tokens", {"name": "night"}, token=ops)
        self.assertEqual((code, third["expires"]), (201, None))
        code, payload, _ = yield self.call("DELETE", f"/tokens/{ops_id}", token=ops)
        self.assertEqual((code, payload["current"], payload["state"]),
                         (200, True, "revoked"))
        code, payload, _ = yield self.call("GET", "/", token=ops)
        self.assertEqual((code, payload["error"]),
                         (401, "the token was revoked at 2023-11-14T22:13:35Z"))
        code, listed, _ = yield self.call("GET", "/tokens", token=third["token"])
        self.assertEqual([(t["name"], t["state"], t["current"]) for t in listed["items"]],
                         [("root", "revoked", False), ("ops", "revoked", False),
                          ("night", "active", True)])
        for item in listed["items"]:
            self.assertEqual(set(item), TOKEN_KEYS)

        # forced: nobody is let in any more
        code, _, _ = yield self.call("DELETE", f"/tokens/{third['id']}?force=true",
                                     token=third["token"])
        self.assertEqual(code, 200)
        code, payload, _ = yield self.call("GET", "/tokens", token=third["token"])
        self.assertEqual(code, 401, payload)
        self.assertEqual((yield self.store.count_admin_tokens()), 0)

        # no answer ever held a hash, and a secret only in its creation answer
        text = b"\n".join(self.raw_answers).decode()
        for secret in (TOKEN, ops, third["token"]):
            self.assertNotIn(hash_token(secret), text)
        self.assertNotIn(TOKEN, text)
        self.assertEqual(text.count(ops), 1)
        self.assertEqual(text.count(third["token"]), 1)
        self.assertEqual(self.published, [])

    @defer.inlineCallbacks
    def test_expiry(self):
        created = yield self.ok("POST", "/tokens", {"name": "temp", "expires_in": 60},
                                status=201)
        code, _, _ = yield self.call("GET", "/status", token=created["token"])
        self.assertEqual(code, 200)
        self.clock.advance(59)
        code, _, _ = yield self.call("GET", "/status", token=created["token"])
        self.assertEqual(code, 200)
        self.clock.advance(1)
        self.assertRefused((yield self.error("GET", "/status", token=created["token"],
                                             status=401)),
                           "the token expired at 2023-11-14T22:14:20Z")
        listed = yield self.ok("GET", "/tokens")
        self.assertEqual([(t["name"], t["state"]) for t in listed["items"]],
                         [("root", "active"), ("temp", "expired")])
        # an expired token is no way in: the last valid one is still protected
        code, payload, _ = yield self.call("DELETE", f"/tokens/{self.root_id}")
        self.assertEqual(code, 409, payload)
        code, payload, _ = yield self.call("DELETE", f"/tokens/{created['id']}")
        self.assertEqual((code, payload["state"]), (200, "revoked"))

    @defer.inlineCallbacks
    def test_bad_requests(self):
        yield self.error("POST", "/tokens", {"name": "bad name!"}, field="name")
        yield self.error("POST", "/tokens", {}, field="name")
        yield self.error("POST", "/tokens", {"name": "ops", "expires_in": 0},
                         field="expires_in")
        yield self.error("POST", "/tokens", {"name": "ops", "expires_in": "1h"},
                         field="expires_in")
        yield self.error("POST", "/tokens", {"name": "ops", "token": "chosen-by-me"},
                         field="token")
        for ref in ("999", "abc", "-1", "1e3"):
            yield self.error("GET", f"/tokens/{ref}", status=404)
            yield self.error("DELETE", f"/tokens/{ref}", status=404)
        yield self.error("PATCH", f"/tokens/{self.root_id}", {"name": "x"}, status=405)
        self.assertEqual(len((yield self.store.list_admin_tokens())), 1)


class UserTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_crud(self):
        user = yield self.ok("POST", "/users", {"username": "alice", "password": PASSWORD,
                                                "groups": ["ops", "day"]}, status=201)
        self.assertEqual(user, {"username": "alice", "groups": ["day", "ops"],
                                "enabled": True, "version": 1})
        yield self.error("POST", "/users", {"username": "alice", "password": PASSWORD},
                         status=409, field="username")
        listed = yield self.ok("GET", "/users")
        self.assertEqual([u["username"] for u in listed["items"]], ["alice"])
        self.assertEqual((yield self.ok("GET", "/users/alice")), user)

        before = yield self.store.get_user("alice")
        changed = yield self.ok("PATCH", "/users/alice",
                                {"groups": ["night"], "enabled": False, "password": "N3w-Pass!"})
        self.assertEqual(changed, {"username": "alice", "groups": ["night"], "enabled": False,
                                   "version": 2})
        after = yield self.store.get_user("alice")
        self.assertNotEqual(after.verifier, before.verifier)
        self.assertTrue(_verifies(after.verifier, "N3w-Pass!"))
        # a change without a password keeps the verifier
        yield self.ok("PATCH", "/users/alice", {"enabled": True})
        self.assertEqual((yield self.store.get_user("alice")).verifier, after.verifier)
        # no change at all: no new version, nothing published
        batches = len(self.published)
        same = yield self.ok("PATCH", "/users/alice", {"groups": ["night"], "enabled": True})
        self.assertEqual((same["version"], len(self.published)), (3, batches))
        # an outdated version is a conflict
        yield self.error("PATCH", "/users/alice", {"enabled": False, "version": 1},
                         status=409, field="version")

        store_made = yield self.store.upsert_device("cam-1", "Cam", 1, 1, "",
                                                    records.verifier("x", 1))
        store_made += yield self.store.set_grant("user:alice", "cam-1", Action.VIEW)
        removed = yield self.ok("DELETE", "/users/alice")
        self.assertEqual(removed["grants_removed"], 1)
        yield self.error("GET", "/users/alice", status=404)
        yield self.error("DELETE", "/users/alice", status=404)
        yield self.error("PATCH", "/users/alice", {"enabled": True}, status=404)
        self.assertEqual((yield self.store.list_grants())[0], [])

        # every change the API made went to publish, as the store logged it
        ops = [(c.entity, c.op, c.key) for batch in self.published for c in batch]
        self.assertEqual(ops[0], (Entity.USER, ChangeOp.UPSERT, "alice"))
        self.assertEqual(ops[-2:], [(Entity.GRANT, ChangeOp.DELETE, "user:alice|cam-1"),
                                    (Entity.USER, ChangeOp.DELETE, "alice")])
        api_seqs = self.published_seqs()
        self.assertEqual(sorted(api_seqs + [c.seq for c in store_made]),
                         (yield self.log_seqs()))

    @defer.inlineCallbacks
    def test_paging(self):
        for i in range(5):
            yield self.store.upsert_user(f"u{i}", records.verifier("pw", 1), [])
        seen, cursor, pages = [], "", 0
        while True:
            page = yield self.ok("GET", f"/users?limit=2&cursor={cursor}")
            pages += 1
            self.assertLessEqual(len(page["items"]), 2)
            seen += [u["username"] for u in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        self.assertEqual(seen, ["u0", "u1", "u2", "u3", "u4"])
        self.assertEqual(pages, 3)
        for bad in ("0", "-1", "x", str(mms.MAX_LIMIT + 1)):
            yield self.error("GET", f"/users?limit={bad}", field="limit")


def _verifies(verifier, secret):
    salt, iterations, stored, server = scram.make_verifier(secret, verifier.salt,
                                                           verifier.iterations)
    return (stored, server) == (verifier.stored_key, verifier.server_key)


class SecretTests(ApiTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return super().setUp()

    @defer.inlineCallbacks
    def test_passwords_and_secrets_never_leave_or_get_stored(self):
        yield self.add_node("n1")
        yield self.ok("POST", "/users", {"username": "alice", "password": PASSWORD},
                      status=201)
        device = yield self.ok("POST", "/devices", {
            "device_id": "cam-1", "secret": SECRET, "source_url": SOURCE}, status=201)
        self.assertTrue(device["secret_set"])
        self.assertEqual(device["source_url"],
                         "rtsp://***@10.0.0.5:554/stream1?password=***&ch=1")
        yield self.ok("PATCH", "/users/alice", {"password": PASSWORD + "2"})
        yield self.ok("PATCH", "/devices/cam-1", {"secret": SECRET + "2"})
        # a masked URL sent back unchanged keeps the real one
        yield self.ok("PATCH", "/devices/cam-1", {"source_url": device["source_url"],
                                                  "name": "Gate"})
        self.assertEqual((yield self.store.get_device("cam-1")).source_url, SOURCE)
        for path in ("/users", "/users/alice", "/devices", "/devices/cam-1", "/status"):
            yield self.ok("GET", path)
        yield self.error("POST", "/users", {"username": "alice", "password": PASSWORD},
                         status=409)

        # the log saw the changes (so it is watched), never their secrets
        audit = [formatEvent(e) for e in self.events]
        self.assertTrue(any("admin root POST /api/v1/users: 201" in t for t in audit), audit)
        secrets = [PASSWORD, SECRET, URL_PASS, QUERY_PASS]
        for raw in self.raw_answers:
            for s in secrets:
                self.assertNotIn(s.encode(), raw)
        for event in self.events:
            text = (formatEvent(event) or "") + repr(event)
            for s in secrets:
                self.assertNotIn(s, text)

        # the database holds verifiers only (the camera URL must stay usable: kept)
        user = yield self.store.get_user("alice")
        dev = yield self.store.get_device("cam-1")
        self.assertTrue(_verifies(user.verifier, PASSWORD + "2"))
        self.assertTrue(_verifies(dev.verifier, SECRET + "2"))
        yield self.store.close()
        conn = sqlite3.connect(self.db)
        try:
            rows = []
            for table in ("users", "devices", "change_log", "meta", "admin_tokens"):
                rows += conn.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            conn.close()
        dump = repr(rows)
        for s in (PASSWORD, PASSWORD + "2", SECRET, SECRET + "2", TOKEN):
            self.assertNotIn(s, dump)
        for name in os.listdir(self.work):
            with open(os.path.join(self.work, name), "rb") as f:
                data = f.read()
            for s in (PASSWORD, SECRET, TOKEN):
                self.assertNotIn(s.encode(), data, name)
        self.assertIn(hash_token(TOKEN), dump)

    @defer.inlineCallbacks
    def test_device_without_secret_needs_a_source(self):
        yield self.error("POST", "/devices", {"device_id": "cam-1"}, field="secret")
        dev = yield self.ok("POST", "/devices", {"device_id": "cam-2", "source_url": SOURCE},
                            status=201)
        self.assertFalse(dev["secret_set"])


class DeviceTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_crud(self):
        yield self.add_node("n1")
        dev = yield self.ok("POST", "/devices", {
            "device_id": "dvs-1", "name": "Lobby encoder", "kind": "dvs", "channels": 4,
            "home_node": "n1", "secret": SECRET}, status=201)
        self.assertEqual(dev, {"device_id": "dvs-1", "name": "Lobby encoder", "kind": "dvs",
                               "channels": 4, "home_node": "n1", "source_url": "",
                               "enabled": True, "secret_set": True, "version": 1})
        yield self.error("POST", "/devices", {"device_id": "dvs-1", "secret": SECRET},
                         status=409, field="device_id")
        stored = yield self.store.get_device("dvs-1")
        changed = yield self.ok("PATCH", "/devices/dvs-1", {"name": "Lobby", "channels": 2,
                                                            "enabled": False})
        self.assertEqual((changed["name"], changed["channels"], changed["enabled"],
                          changed["version"]), ("Lobby", 2, False, 2))
        self.assertEqual((yield self.store.get_device("dvs-1")).verifier, stored.verifier)
        changed = yield self.ok("PATCH", "/devices/dvs-1", {"kind": "dvr", "secret": "An0ther-S"})
        self.assertEqual((changed["kind"], changed["name"], changed["channels"]),
                         ("dvr", "Lobby", 2))
        self.assertTrue(_verifies((yield self.store.get_device("dvs-1")).verifier, "An0ther-S"))
        yield self.error("PATCH", "/devices/dvs-1", {"home_node": "nowhere"}, field="home_node")
        yield self.error("PATCH", "/devices/dvs-1", {"device_id": "other"}, field="device_id")
        yield self.error("PATCH", "/devices/nope", {"name": "x"}, status=404)
        listed = yield self.ok("GET", "/devices?home_node=n1")
        self.assertEqual([d["device_id"] for d in listed["items"]], ["dvs-1"])
        self.assertEqual((yield self.ok("GET", "/devices?home_node=n2"))["items"], [])

        yield self.store.set_grant("group:ops", "dvs-1", Action.VIEW)
        removed = yield self.ok("DELETE", "/devices/dvs-1")
        self.assertEqual(removed["grants_removed"], 1)
        yield self.error("GET", "/devices/dvs-1", status=404)
        self.assertIsNone((yield self.store.get_device("dvs-1")))
        kinds = [(c.entity, c.op) for batch in self.published for c in batch]
        self.assertEqual(kinds[-2:], [(Entity.GRANT, ChangeOp.DELETE),
                                      (Entity.DEVICE, ChangeOp.DELETE)])
        # every batch published is exactly what the store logged for it
        log, _ = yield self.store.changes_after(0, 1000)
        by_seq = {c.seq: c for c in log}
        for batch in self.published:
            for c in batch:
                # (the log answers an upsert of a row deleted since as a delete)
                self.assertEqual((c.entity, c.key, c.version),
                                 (by_seq[c.seq].entity, by_seq[c.seq].key,
                                  by_seq[c.seq].version))

    @defer.inlineCallbacks
    def test_home_node_assignment(self):
        yield self.add_node("n1")
        yield self.add_node("n2")
        yield self.add_node("n0", state="down")
        yield self.ok("POST", "/devices", {"device_id": "a", "secret": SECRET,
                                           "home_node": "n1"}, status=201)
        # n0 has no device but is down; n2 has fewer devices than n1
        dev = yield self.ok("POST", "/devices", {"device_id": "b", "secret": SECRET},
                            status=201)
        self.assertEqual(dev["home_node"], "n2")
        # a tie goes to the lower id
        dev = yield self.ok("POST", "/devices", {"device_id": "c", "secret": SECRET},
                            status=201)
        self.assertEqual(dev["home_node"], "n1")
        # the home given must be a known node
        yield self.error("POST", "/devices", {"device_id": "d", "secret": SECRET,
                                              "home_node": "n9"}, field="home_node")
        # an empty home asks for an assignment again
        dev = yield self.ok("PATCH", "/devices/c", {"home_node": ""})
        self.assertEqual(dev["home_node"], "n2")

    @defer.inlineCallbacks
    def test_no_up_node_leaves_the_home_empty(self):
        yield self.add_node("n1", state="down")
        dev = yield self.ok("POST", "/devices", {"device_id": "a", "secret": SECRET},
                            status=201)
        self.assertEqual(dev["home_node"], "")


class StandbyCmsTests(ApiTestCase):
    """The admin API of a standby CMS (docs/admin-api.md): 503 NOT_ACTIVE, the active
    CMS named to a valid token only, nothing done."""

    def make_backend(self, store):
        self.standby = ("another CMS is active", "http://cms1.example:7280")
        return StoreAdminBackend(store, publish=self.published.append,
                                 not_active=lambda: self.standby)

    @defer.inlineCallbacks
    def test_a_standby_serves_nothing_and_names_the_active_cms(self):
        payload, headers = yield self.error("POST", "/users", {"username": "bob",
                                                               "password": "pw-bob-123"},
                                            status=503)
        self.assertEqual((payload["code"], payload["active"]),
                         ("NOT_ACTIVE", "http://cms1.example:7280"))
        self.assertIn("standby", payload["error"])
        self.assertEqual(headers.getRawHeaders(b"x-vss-active-cms"),
                         [b"http://cms1.example:7280"])
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIsNone((yield self.store.get_user("bob")))
        self.assertEqual(self.published, [])

    @defer.inlineCallbacks
    def test_without_a_valid_token_nothing_is_said(self):
        payload, headers = yield self.error("GET", "/devices", status=401, token="wrong")
        self.assertNotIn("cms1.example", json.dumps(payload))
        self.assertIsNone(headers.getRawHeaders(b"x-vss-active-cms"))

    @defer.inlineCallbacks
    def test_once_active_it_serves(self):
        self.standby = None
        yield self.ok("POST", "/users", {"username": "bob", "password": "pw-bob-123"},
                      status=201)


class AssignedByCmsTests(ApiTestCase):
    def make_backend(self, store):
        self.asked = []

        def assign(device_id):
            self.asked.append(device_id)
            return defer.succeed("n7")

        return StoreAdminBackend(store, publish=self.published.append, assign_home_node=assign,
                                 status=lambda: {"cms_id": "c1", "nodes": {}})

    @defer.inlineCallbacks
    def test_backend_callables_are_used(self):
        dev = yield self.ok("POST", "/devices", {"device_id": "cam-9", "secret": SECRET},
                            status=201)
        self.assertEqual((dev["home_node"], self.asked), ("n7", ["cam-9"]))
        self.assertEqual((yield self.ok("GET", "/status")), {"cms_id": "c1", "nodes": {}})

    def test_interface(self):
        self.assertTrue(verifyObject(IAdminBackend, self.backend))
        self.assertTrue(verifyObject(IAdminBackend, StoreAdminBackend(self.store)))


class GrantTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_wall_grant(self):
        """Who may drive a TV wall or decoder: the action 'wall' on ``cu:ACCOUNT``, and
        that action only there."""
        yield self.store.upsert_user("op", records.verifier("pw", 1), [])
        yield self.store.upsert_user("wall1", records.verifier("pw", 1), [])
        yield self.store.upsert_device("cam-1", "c", 1, 1, "", records.verifier("s", 1))
        g = yield self.ok("PUT", "/grants", {"principal": "user:op", "device_id": "cu:wall1",
                                             "actions": ["wall"]}, status=201)
        self.assertEqual((g["device_id"], g["actions"]), ("cu:wall1", ["wall"]))
        self.assertEqual(self.published[-1][-1].grant.actions, int(Action.WALL))
        yield self.error("PUT", "/grants", {"principal": "user:op", "device_id": "cu:wall1",
                                            "actions": ["view"]}, field="actions")
        yield self.error("PUT", "/grants", {"principal": "user:op", "device_id": "cam-1",
                                            "actions": ["wall"]}, field="actions")
        yield self.error("PUT", "/grants", {"principal": "user:op", "device_id": "cu:nobody",
                                            "actions": ["wall"]}, status=404)

    @defer.inlineCallbacks
    def test_expiry(self):
        """A grant may carry an expiry (an ISO time with its zone, in the future):
        stored, listed, changed (a change of expiry alone is a change), cleared."""
        yield self.store.upsert_user("alice", records.verifier("pw", 1), [])
        yield self.store.upsert_device("cam-1", "c", 1, 1, "", records.verifier("s", 1))
        friday = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
        g = yield self.ok("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-1",
                                             "actions": ["view"], "expires": friday},
                          status=201)
        self.assertEqual((g["expires"], g["expired"]), (friday, False))
        (stored,), _ = yield self.store.list_grants()
        self.assertEqual(stored.expires,
                         calendar.timegm(time.strptime(friday, "%Y-%m-%dT%H:%M:%SZ")) * 1000)
        self.assertEqual(self.published[-1][-1].grant.expires, stored.expires)
        batches = len(self.published)
        same = yield self.ok("PUT", "/grants", {"principal": "user:alice",
                                                "device_id": "cam-1", "actions": ["view"],
                                                "expires": friday.replace("Z", "+00:00")})
        self.assertEqual((same["version"], len(self.published)), (1, batches))
        never = yield self.ok("PUT", "/grants", {"principal": "user:alice",
                                                 "device_id": "cam-1", "actions": ["view"],
                                                 "expires": None})
        self.assertEqual((never["expires"], never["version"]), (None, 2))
        for bad in ("2020-01-01T00:00:00Z", "friday", "2030-01-01T00:00:00", 7):
            yield self.error("PUT", "/grants", {"principal": "user:alice",
                                                "device_id": "cam-1", "actions": ["view"],
                                                "expires": bad}, field="expires")

    @defer.inlineCallbacks
    def test_set_list_remove(self):
        yield self.store.upsert_user("alice", records.verifier("pw", 1), ["ops"])
        for d in ("cam-1", "cam-2"):
            yield self.store.upsert_device(d, d, 1, 1, "", records.verifier("s", 1))
        g = yield self.ok("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-1",
                                             "actions": ["view", "ptz"]}, status=201)
        self.assertEqual(g, {"principal": "user:alice", "device_id": "cam-1",
                             "actions": ["view", "ptz"], "version": 1, "expires": None,
                             "expired": False})
        # the same again changes nothing and syncs nothing
        batches = len(self.published)
        again = yield self.ok("PUT", "/grants", {"principal": "user:alice",
                                                 "device_id": "cam-1", "actions": ["ptz", "view"]})
        self.assertEqual((again, len(self.published)), (g, batches))
        g = yield self.ok("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-1",
                                             "actions": ["view", "record", "config"]})
        self.assertEqual((g["actions"], g["version"]), (["view", "config", "record"], 2))
        yield self.ok("PUT", "/grants", {"principal": "group:night", "device_id": "cam-2",
                                         "actions": ["view"]}, status=201)
        actions = yield self.store.list_grants(principal="user:alice")
        self.assertEqual(actions[0][0].actions,
                         int(Action.VIEW | Action.CONFIG | Action.RECORD))
        listed = yield self.ok("GET", "/grants")
        self.assertEqual([(x["principal"], x["device_id"]) for x in listed["items"]],
                         [("group:night", "cam-2"), ("user:alice", "cam-1")])
        only = yield self.ok("GET", "/grants?device_id=cam-2")
        self.assertEqual([x["principal"] for x in only["items"]], ["group:night"])
        page = yield self.ok("GET", "/grants?limit=1")
        self.assertEqual(len(page["items"]), 1)
        self.assertTrue(page["next_cursor"])
        rest = yield self.ok("GET", f"/grants?limit=1&cursor={page['next_cursor']}")
        self.assertEqual(rest["items"][0]["principal"], "user:alice")

        yield self.error("PUT", "/grants", {"principal": "user:bob", "device_id": "cam-1",
                                            "actions": ["view"]}, status=404)
        yield self.error("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-9",
                                            "actions": ["view"]}, status=404)
        yield self.error("PUT", "/grants", {"principal": "alice", "device_id": "cam-1",
                                            "actions": ["view"]}, field="principal")
        yield self.error("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-1",
                                            "actions": ["fly"]}, field="actions")
        yield self.error("PUT", "/grants", {"principal": "user:alice", "device_id": "cam-1",
                                            "actions": []}, field="actions")

        yield self.ok("DELETE", "/grants?principal=user:alice&device_id=cam-1")
        yield self.error("DELETE", "/grants?principal=user:alice&device_id=cam-1", status=404)
        yield self.ok("DELETE", "/grants", {"principal": "group:night", "device_id": "cam-2"})
        yield self.error("DELETE", "/grants", field="principal")
        self.assertEqual((yield self.store.list_grants())[0], [])
        self.assertEqual(self.published_seqs(), (yield self.log_seqs())[3:])


class NodeTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_nodes(self):
        n = yield self.ok("POST", "/nodes", {"node_id": "n1", "signalling": "10.0.0.1:7000",
                                             "media": "10.0.0.1:554", "capacity": 500},
                          status=201)
        self.assertEqual((n["node_id"], n["state"], n["capacity"]), ("n1", "down", 500))
        n = yield self.ok("POST", "/nodes", {"node_id": "n1", "signalling": "10.0.0.2:7000"})
        self.assertEqual((n["signalling"], n["capacity"]), ("10.0.0.2:7000", 0))
        yield self.ok("POST", "/nodes", {"node_id": "n2"}, status=201)
        page = yield self.ok("GET", "/nodes?limit=1")
        self.assertEqual(([x["node_id"] for x in page["items"]], page["next_cursor"]),
                         (["n1"], "n1"))
        page = yield self.ok("GET", "/nodes?limit=1&cursor=n1")
        self.assertEqual(([x["node_id"] for x in page["items"]], page["next_cursor"]),
                         (["n2"], ""))
        yield self.error("POST", "/nodes", {"node_id": "bad:id"}, field="node_id")
        yield self.error("POST", "/nodes", {"node_id": "n3", "capacity": -1}, field="capacity")

        yield self.ok("POST", "/devices", {"device_id": "cam-1", "secret": SECRET,
                                           "home_node": "n1"}, status=201)
        yield self.error("DELETE", "/nodes/n1", status=409)
        yield self.ok("DELETE", "/nodes/n1?force=true")
        yield self.ok("DELETE", "/nodes/n2")
        yield self.error("DELETE", "/nodes/n2", status=404)
        yield self.error("GET", "/nodes/n2", status=405)
        self.assertEqual((yield self.store.list_nodes()), [])
        nodes = [(c.op, c.key) for batch in self.published for c in batch
                 if c.entity == Entity.NODE]
        self.assertEqual(nodes, [(ChangeOp.UPSERT, "n1"), (ChangeOp.UPSERT, "n1"),
                                 (ChangeOp.UPSERT, "n2"), (ChangeOp.DELETE, "n1"),
                                 (ChangeOp.DELETE, "n2")])


class RecordSettingsTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_get_put(self):
        yield self.store.upsert_device("dvs-1", "Enc", 2, 2, "", records.verifier("s", 1))
        got = yield self.ok("GET", "/devices/dvs-1/record-settings/1")
        self.assertEqual((got["mode"], got["stored"], got["channel"]), ("off", False, 1))
        put = yield self.ok("PUT", "/devices/dvs-1/record-settings/1", {
            "mode": "schedule", "stream": "sub", "segment_seconds": 600, "retention_days": 30,
            "quota_mb": 2048, "pre_event_seconds": 3, "post_event_seconds": 20,
            "schedule": [{"day": "mon", "start": "8:00", "end": "18:30"},
                         {"day": 6, "start": 0, "end": "24:00"}],
            "event_types": ["motion", "alarm-in", "motion"]})
        expected = {"device_id": "dvs-1", "channel": 1, "mode": "schedule", "stream": "sub",
                    "segment_seconds": 600, "retention_days": 30, "quota_mb": 2048,
                    "pre_event_seconds": 3, "post_event_seconds": 20, "stored": True,
                    "event_types": ["alarm-in", "motion"],
                    "schedule": [{"day": "mon", "start": "08:00", "end": "18:30"},
                                 {"day": "sun", "start": "00:00", "end": "24:00"}]}
        self.assertEqual(put, expected)
        self.assertEqual((yield self.ok("GET", "/devices/dvs-1/record-settings/1")), expected)
        stored = yield self.store.get_record_settings("dvs-1", 1)
        self.assertEqual(stored["mode"], "schedule")
        self.assertEqual(self.published[-1][0].entity, Entity.DEVICE)
        self.assertEqual(self.published[-1][0].key, "dvs-1")
        self.assertIsNone((yield self.store.get_record_settings("dvs-1", 0)))

        # what the device reported (active sync) survives an operator's PUT
        yield self.store.set_record_settings("dvs-1", 0, {"reported": {"config": {"fps": "25"}}})
        got = yield self.ok("GET", "/devices/dvs-1/record-settings/0")
        self.assertEqual((got["stored"], got["reported"]), (False, {"config": {"fps": "25"}}))
        got = yield self.ok("PUT", "/devices/dvs-1/record-settings/0", {"mode": "continuous",
                                                                         **{"reported": {}}})
        self.assertEqual(got["reported"], {"config": {"fps": "25"}})

        for body, field in [({"mode": "sometimes"}, "mode"), ({"stream": "third"}, "stream"),
                            ({"segment_seconds": 0}, "segment_seconds"),
                            ({"retention_days": "7"}, "retention_days"),
                            ({"mode": "schedule"}, "schedule"),
                            ({"schedule": [{"day": "mon", "start": "18:00", "end": "08:00"}]},
                             "schedule"),
                            ({"schedule": [{"day": "xyz", "start": "1:00", "end": "2:00"}]},
                             "schedule"),
                            ({"event_types": "motion"}, "event_types"),
                            ({"event_types": ["Motion!"]}, "event_types"),
                            ({"event_types": [f"t{i}" for i in range(17)]}, "event_types"),
                            ({"colour": "red"}, "colour")]:
            yield self.error("PUT", "/devices/dvs-1/record-settings/0", body, field=field)
        yield self.error("GET", "/devices/dvs-1/record-settings/2", status=404)
        yield self.error("GET", "/devices/dvs-1/record-settings/x", status=404)
        yield self.error("GET", "/devices/nope/record-settings/0", status=404)
        yield self.error("GET", "/devices/dvs-1/record-settings", status=404)


class ValidationTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_bad_bodies(self):
        yield self.error("POST", "/users", data=b"{not json", field="")
        yield self.error("POST", "/users", data=b"[1, 2]", field="")
        yield self.error("POST", "/users", data=b"\xff\xfe", field="")
        yield self.error("POST", "/users", data=b"", field="")
        yield self.error("POST", "/users", data=b"[" * 100000, field="")
        yield self.error("POST", "/users", {"username": "a", "password": PASSWORD,
                                            "pasword": "x"}, field="pasword")
        yield self.error("POST", "/users", {"username": "a", "password": "short"},
                         field="password")
        yield self.error("POST", "/users", {"username": "a b", "password": PASSWORD},
                         field="username")
        yield self.error("POST", "/users", {"password": PASSWORD}, field="username")
        yield self.error("POST", "/users", {"username": "a", "password": PASSWORD,
                                            "groups": "ops"}, field="groups")
        yield self.error("POST", "/users", {"username": "a", "password": PASSWORD,
                                            "enabled": "yes"}, field="enabled")
        yield self.error("POST", "/devices", {"device_id": "a|b", "secret": SECRET},
                         field="device_id")
        yield self.error("POST", "/devices", {"device_id": "a", "secret": SECRET,
                                              "kind": "nvr"}, field="kind")
        yield self.error("POST", "/devices", {"device_id": "a", "secret": SECRET,
                                              "channels": 0}, field="channels")
        yield self.error("POST", "/devices", {"device_id": "a", "secret": SECRET,
                                              "channels": True}, field="channels")
        yield self.error("POST", "/devices", {"device_id": "a", "source_url": "http://x/y"},
                         field="source_url")
        _, headers = yield self.error("DELETE", "/users", status=405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, POST"])
        self.assertEqual((yield self.store.list_users())[0], [])
        self.assertEqual(self.published, [])

    @defer.inlineCallbacks
    def test_body_over_one_mib(self):
        big = json.dumps({"username": "a", "password": PASSWORD,
                          "pad": "x" * mms.MAX_BODY}).encode()
        yield self.error("POST", "/users", data=big, status=413)
        self.assertIsNone((yield self.store.get_user("a")))
        # just under the limit is read (and refused for its content, not its size)
        ok = json.dumps({"username": "a", "password": PASSWORD, "groups": []}).encode()
        padded = ok[:-1] + b" " * (mms.MAX_BODY - len(ok)) + b"}"
        self.assertEqual(len(padded), mms.MAX_BODY)
        code, payload, _ = yield self.call("POST", "/users", data=padded)
        self.assertEqual(code, 201, payload)

    @defer.inlineCallbacks
    def test_chunked_body_over_one_mib(self):
        big = json.dumps({"username": "a", "password": PASSWORD,
                          "pad": "x" * (2 * mms.MAX_BODY)}).encode()
        code, payload, _ = yield self.call("POST", "/users", producer=Chunked(big))
        self.assertEqual(code, 413, payload)
        code, payload, _ = yield self.call(
            "POST", "/users", producer=Chunked(json.dumps({"username": "a",
                                                           "password": PASSWORD}).encode()))
        self.assertEqual(code, 201, payload)

    @defer.inlineCallbacks
    def test_internal_error_is_a_json_500_without_traceback(self):
        def broken():
            raise RuntimeError("secret internals")

        self.backend._status = broken
        payload, _ = yield self.error("GET", "/status", status=500)
        self.assertEqual(payload, {"error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


@implementer(IBodyProducer)
class Chunked:
    """A body of unknown length: sent chunked, without Content-Length."""

    length = UNKNOWN_LENGTH

    def __init__(self, data):
        self.data = data

    def startProducing(self, consumer):
        for i in range(0, len(self.data), 65536):
            consumer.write(self.data[i:i + 65536])
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class StreamCredentialApiTests(ApiTestCase):
    """Operators make, list and revoke stream credentials (vss.streamcreds)."""

    def make_backend(self, store):
        from vss.streamcreds.secret import credential_key

        return StoreAdminBackend(store, publish=self.published.append,
                                 credential_key=credential_key(b"c" * 40))

    @defer.inlineCallbacks
    def test_make_list_revoke(self):
        from vss.streamcreds import secret as sc

        yield self.store.upsert_node("node-a", "tcp:10.0.0.1:7102", "rtsp://10.0.0.1:7554", 0)
        yield self.store.upsert_device("cam-1", "c", 1, 1, "node-a", records.verifier("s"))
        yield self.store.upsert_user("alice", records.verifier("pw"), ["ops"])
        yield self.store.upsert_user("bob", records.verifier("pw"), [])
        yield self.store.set_grant("group:ops", "cam-1", Action.VIEW)
        body = {"user": "bob", "device_id": "cam-1", "name": "nvr"}
        payload, _ = yield self.error("POST", "/stream-credentials", body, field="user")
        self.assertIn("may not view cam-1", payload["error"])
        yield self.error("POST", "/stream-credentials", {**body, "device_id": "nope"},
                         status=404)
        yield self.error("POST", "/stream-credentials", {**body, "expires_in": 0},
                         field="expires_in")
        created = yield self.ok("POST", "/stream-credentials",
                                {**body, "user": "alice", "expires_in": 86400}, status=201)
        cred_id, secret = created["id"], created["secret"]
        self.assertRegex(cred_id, sc.ID_RE)
        self.assertEqual((created["user"], created["device_id"], created["state"],
                          created["digest_user"], created["path"]),
                         ("alice", "cam-1", "active", cred_id, "/live/cam-1/main"))
        self.assertEqual(created["url"],
                         f"rtsp://10.0.0.1:7554/live/cam-1/main?cred={cred_id}.{secret}")
        stored = yield self.store.get_credential(cred_id)
        self.assertTrue(sc.secret_matches(self.backend.credential_key, stored, secret))
        self.assertEqual([(c.entity, c.key) for batch in self.published for c in batch],
                         [(Entity.CREDENTIAL, cred_id)])
        listed = yield self.ok("GET", "/stream-credentials?user=alice")
        self.assertEqual([c["id"] for c in listed["items"]], [cred_id])
        self.assertEqual(set(listed["items"][0]), {"id", "user", "device_id", "name", "state",
                                                   "created", "expires", "revoked", "version"})
        self.assertEqual((yield self.ok("GET", "/stream-credentials?device_id=cam-9"))["items"],
                         [])
        revoked = yield self.ok("DELETE", f"/stream-credentials/{cred_id}")
        self.assertEqual(revoked["state"], "revoked")
        self.assertIsNotNone(revoked["revoked"])
        self.assertEqual((yield self.ok("GET", f"/stream-credentials/{cred_id}"))["state"],
                         "revoked")
        yield self.error("DELETE", f"/stream-credentials/{cred_id}", status=409)
        yield self.error("GET", "/stream-credentials/sc-00000000000f", status=404)
        yield self.error("DELETE", "/stream-credentials/../tokens", status=404)
        # the secret was in one answer only; the sealed form in none
        text = b"\n".join(self.raw_answers).decode()
        self.assertEqual(text.count(secret), 2)  # in "secret" and in "url"
        self.assertNotIn(stored.sealed.hex(), text)

    @defer.inlineCallbacks
    def test_without_the_cluster_secret_none_can_be_made(self):
        backend = StoreAdminBackend(self.store)
        self.assertIsNone(backend.credential_key)
        site = mms.make_admin_site(backend)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        payload, _ = yield self.error("POST", "/stream-credentials",
                                      {"user": "alice", "device_id": "cam-1"}, status=409)
        self.assertIn("cluster secret", payload["error"])


class OpenApiTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_every_route_is_described(self):
        doc = yield self.ok("GET", "/openapi.json")
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertEqual(doc["servers"], [{"url": mms.API_PREFIX}])
        _, v1 = mms.make_admin_resource(self.backend)
        routes = dict(mms.iter_routes(v1))
        self.assertGreaterEqual(len(routes), 11)
        for path, methods in routes.items():
            self.assertIn(path, doc["paths"])
            self.assertEqual(sorted(m.upper() for m in doc["paths"][path]), methods, path)
        self.assertEqual(sorted(doc["paths"]), sorted(routes))
        # every schema referenced is defined
        text = json.dumps(doc)
        for ref in set(part.split('"')[0] for part in text.split("#/components/schemas/")[1:]):
            self.assertIn(ref, doc["components"]["schemas"])
        index = yield self.ok("GET", "/")
        self.assertEqual({r["path"] for r in index["routes"]}, set(routes))


class DummyRequestTests(unittest.TestCase):
    """The resource tree without sockets."""

    @defer.inlineCallbacks
    def test_post_and_get(self):
        path = os.path.join(os.path.abspath(self.mktemp()), "cms.sqlite3")
        store = make_static_store("sqlite:" + path, reactor=reactor)
        yield store.open()
        self.addCleanup(store.close)
        yield store.add_admin_token("root", hash_token(TOKEN))
        published = []
        root, _ = mms.make_admin_resource(StoreAdminBackend(store, publish=published.append))

        def request(method, segments, body=None):
            req = DummyRequest(segments)
            req.method = method
            req.path = b"/" + b"/".join(segments)
            req.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + TOKEN.encode()])
            req.content = BytesIO(json.dumps(body).encode() if body is not None else b"")
            res = root
            while req.postpath:
                name = req.postpath.pop(0)
                req.prepath.append(name)
                res = res.getChildWithDefault(name, req)
            d = req.notifyFinish()
            self.assertEqual(res.render(req), mms.server.NOT_DONE_YET)
            return d.addCallback(lambda _: (req.responseCode or 200,
                                            json.loads(b"".join(req.written))))

        code, user = yield request(b"POST", [b"api", b"v1", b"users"],
                                   {"username": "bob", "password": PASSWORD})
        self.assertEqual((code, user["username"]), (201, "bob"))
        code, listed = yield request(b"GET", [b"api", b"v1", b"users"])
        self.assertEqual([u["username"] for u in listed["items"]], ["bob"])
        self.assertEqual(len(published), 1)


class AdminCommandLineTests(ApiTestCase):
    """``vss-admin`` as real processes: bootstrap into the database, then commands over
    HTTP against the API this test serves."""

    timeout = 90

    def tool(self, *args, token=None, **env):
        extra = {"VSS_API": self.base, **env}
        if token:
            extra["VSS_ADMIN_TOKEN"] = token
        return run_tool("vss-admin", list(args), env=child_env(**extra), cwd=self.work)

    def write(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text + "\n")
        os.chmod(path, 0o600)
        return path

    @defer.inlineCallbacks
    def test_bootstrap_then_commands(self):
        out, err, code = yield self.tool("bootstrap", "--db", "sqlite:" + self.db,
                                         "--name", "ops")
        # the test's own token exists already
        self.assertEqual(code, 1, err)
        self.assertIn("exists already", err)
        out, err, code = yield self.tool("bootstrap", "--db", "sqlite:" + self.db,
                                         "--name", "ops", "--another")
        self.assertEqual(code, 0, err)
        token = out.strip()
        self.assertEqual(len(out.strip().splitlines()), 1)
        self.assertEqual((yield self.store.admin_for_token_hash(hash_token(token))), "ops")

        pw = self.write("alice.pw", PASSWORD)
        out, err, code = yield self.tool("user", "add", "alice", "--groups", "ops,night",
                                         "--password-file", pw, token=token)
        self.assertEqual((code, out.strip()), (0, "user alice added"), err)
        self.assertTrue(_verifies((yield self.store.get_user("alice")).verifier, PASSWORD))

        yield self.add_node("n1", pus=3)
        secret = self.write("cam.secret", SECRET)
        token_file = self.write("token", token)
        out, err, code = yield self.tool("--token-file", token_file, "device", "add", "cam-1",
                                         "--channels", "2", "--secret-file", secret)
        self.assertEqual(code, 0, err)
        self.assertIn("home node n1", out)
        out, err, code = yield self.tool("device", "add", "cam-2", token=token,
                                         VSS_DEVICE_SECRET=SECRET)
        self.assertEqual(code, 0, err)
        out, err, code = yield self.tool("grant", "set", "user:alice", "cam-1", "view,ptz",
                                         token=token)
        self.assertEqual((code, out.strip()), (0, "user:alice may view,ptz on cam-1"), err)
        grants, _ = yield self.store.list_grants(principal="user:alice")
        self.assertEqual(grants[0].actions, int(Action.VIEW | Action.PTZ))

        out, err, code = yield self.tool("status", token=token)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:4], ["NODE", "STATE", "DEVICES", "ONLINE"])
        self.assertEqual(lines[1].split()[:4], ["n1", "up", "2", "3"])
        out, err, code = yield self.tool("--json", "user", "list", token=token)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [{"username": "alice", "groups": ["night", "ops"],
                                            "enabled": True, "version": 1}])
        out, err, code = yield self.tool("record-settings", "set", "cam-1", "--channel", "1",
                                         "--mode", "schedule", "--schedule",
                                         "mon 08:00-18:00", token=token)
        self.assertEqual(code, 0, err)
        self.assertIn("schedule mon 08:00-18:00", out)
        self.assertEqual((yield self.store.get_record_settings("cam-1", 1))["mode"], "schedule")

        # errors: one line, exit 1; usage errors exit 2; nothing secret printed
        out, err, code = yield self.tool("device", "show", "nope", token=token)
        self.assertEqual((code, err.strip()),
                         (1, "vss-admin: HTTP 404 Not Found: no device 'nope'"))
        out, err, code = yield self.tool("user", "list", token="wrong")
        self.assertEqual(code, 1)
        self.assertIn("HTTP 401", err)
        out, err, code = yield self.tool("user", "list")
        self.assertEqual(code, 2)
        self.assertIn("VSS_ADMIN_TOKEN", err)
        out, err, code = yield self.tool("grant", "set", "user:alice", token=token)
        self.assertEqual(code, 2)
        out, err, code = yield self.tool("user", "list", token=token,
                                         VSS_API="http://127.0.0.1:1")
        self.assertEqual(code, 1)
        self.assertIn("cannot reach", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

        published = [c.key for batch in self.published for c in batch]
        self.assertEqual(published, ["alice", "cam-1", "cam-2", "user:alice|cam-1", "cam-1"])


class ServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_listen_service_on_loopback(self):
        path = os.path.join(os.path.abspath(self.mktemp()), "cms.sqlite3")
        store = make_static_store("sqlite:" + path, reactor=reactor)
        yield store.open()
        self.addCleanup(store.close)
        self.assertIn("interface=127.0.0.1", mms.DEFAULT_LISTEN)
        svc = mms.make_admin_service(StoreAdminBackend(store), reactor,
                                     "tcp:0:interface=127.0.0.1")
        svc.startService()
        self.addCleanup(svc.stopService)
        port = yield svc.ready
        self.assertEqual(svc.listening.getHost().host, "127.0.0.1")
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/api/v1/status".encode())
        body = yield readBody(response)
        self.assertEqual((response.code, json.loads(body)["error"]),
                         (401, "a bearer token is required"))


class StreamCredCommandLineTests(ApiTestCase):
    """``vss-admin stream-cred`` as real processes against the API this test serves."""

    timeout = 90
    make_backend = StreamCredentialApiTests.make_backend

    def tool(self, *args):
        return run_tool("vss-admin", list(args), env=child_env(VSS_API=self.base,
                                                               VSS_ADMIN_TOKEN=TOKEN),
                        cwd=self.work)

    @defer.inlineCallbacks
    def test_create_list_revoke(self):
        yield self.store.upsert_device("cam-1", "c", 1, 1, "", records.verifier("s"))
        yield self.store.upsert_user("alice", records.verifier("pw"), [])
        yield self.store.set_grant("user:alice", "cam-1", Action.VIEW)
        out, err, code = yield self.tool("stream-cred", "create", "alice", "cam-1", "--name",
                                         "home assistant", "--expires-in", "30d")
        self.assertEqual(code, 0, err)
        [digest] = out.splitlines()  # no home node known yet: no URL, the Digest pair
        _, _, user, _, password, _, path = digest.split()
        self.assertEqual((path, user[:3]), ("/live/cam-1/main)", "sc-"))
        self.assertIn(f"stream credential {user} of alice for cam-1 created (expires ", err)
        self.assertIn("shown only now", err)
        stored = yield self.store.get_credential(user)
        from vss.streamcreds import secret as sc

        self.assertTrue(sc.secret_matches(self.backend.credential_key, stored, password))
        out, err, code = yield self.tool("stream-cred", "list", "--user", "alice")
        self.assertEqual(code, 0, err)
        header, row = out.splitlines()
        self.assertEqual(header.split(), ["ID", "USER", "DEVICE", "STATE", "CREATED",
                                          "EXPIRES", "NAME"])
        self.assertEqual(row.split()[:4], [user, "alice", "cam-1", "active"])
        self.assertTrue(row.endswith("home assistant"))
        self.assertNotIn(password, out)
        out, err, code = yield self.tool("stream-cred", "revoke", user)
        self.assertEqual((code, out.strip()),
                         (0, f"stream credential {user} of alice for cam-1 revoked"), err)
        out, err, code = yield self.tool("stream-cred", "revoke", user)
        self.assertEqual(code, 1)
        self.assertIn("revoked already", err)
        out, err, code = yield self.tool("stream-cred", "create", "bob", "cam-1")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.splitlines()), 1)


class EventsApiTests(ApiTestCase):
    """GET /events: the stored events and alarms, newest first, with who acknowledged."""

    @defer.inlineCallbacks
    def test_list_filter_and_refuse_bad_times(self):
        from vss.protocols.messages import KV, EventRecord

        def event(seq, device, t, type="motion"):
            return EventRecord(node_id="n1", seq=seq, device_id=device, channel=0, type=type,
                               phase=1, severity=2, pu_time=t, node_time=t,
                               items=[KV(key="zone", value="3")])

        yield self.store.store_events([event(1, "cam-1", 1_700_000_000_000),
                                       event(2, "cam-2", 1_700_000_001_000, "offline"),
                                       event(3, "cam-1", 1_700_000_002_000)])
        yield self.store.ack_event("n1", 1, "cam-1", "alice", 1_700_000_005_000, "a cat")
        page = yield self.ok("GET", "/events?device_id=cam-1")
        self.assertEqual([e["id"] for e in page["items"]], ["n1/3", "n1/1"])
        self.assertFalse(page["truncated"])
        first = page["items"][1]
        self.assertEqual((first["type"], first["phase"], first["severity"], first["items"],
                          first["time"], first["acked_by"], first["acked_at"],
                          first["comment"]),
                         ("motion", "start", "alarm", {"zone": "3"}, "2023-11-14T22:13:20Z",
                          "alice", "2023-11-14T22:13:25Z", "a cat"))
        self.assertIsNone(page["items"][0]["acked_by"])
        page = yield self.ok("GET", "/events?type=offline")
        self.assertEqual([e["id"] for e in page["items"]], ["n1/2"])
        page = yield self.ok("GET", "/events?since=2023-11-14T22:13:21Z&limit=1")
        self.assertEqual(([e["id"] for e in page["items"]], page["truncated"]), (["n1/3"], True))
        page = yield self.ok("GET", "/events?until=1700000001000")
        self.assertEqual([e["id"] for e in page["items"]], ["n1/1"])
        yield self.error("GET", "/events?since=yesterday", field="since")
        yield self.error("GET", "/events?since=2023-11-14T22:13:21", field="since")
        yield self.error("GET", "/events?since=5&until=4", field="until")
        yield self.error("GET", "/events?limit=0", field="limit")
        yield self.error("GET", "/events", token=None, status=401)
