"""
The console's side of the admin API (``vss.cms.console``) over real HTTP on 127.0.0.1:
operators and their sessions (cookie flags, idle and absolute expiry, logout, revocation
when disabled), roles (an auditor changes nothing), the CSRF defence, throttled logins,
the audit of every change (secrets masked) and of logins, and the audit log's immutability
through the API.
"""

import json
import os
from io import BytesIO

from twisted.internet import defer, endpoints, reactor, ssl, task
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from vss.cms import mms
from vss.cms.admin_backend import StoreAdminBackend
from vss.cms.console import make_console_site
from vss.cms.operators import (
    OperatorAccounts,
    Sessions,
    check_password,
    hash_password,
)
from vss.cms.store import hash_token, make_static_store
from vss.testing.platform import verifier
from vss.testing.processes import child_env, run_tool
from vss.tls import make_ca_and_cert

TOKEN = "console-test-token-0123456789"
ADMIN_PW = "Admin-Password-123"
AUDITOR_PW = "Auditor-Password-456"
CAM_PASS = "Cam-Url-Pass-42"


class Response:
    def __init__(self, code, payload, headers):
        self.code = code
        self.payload = payload
        self.headers = headers

    def header(self, name):
        values = self.headers.getRawHeaders(name.encode())
        return values[0].decode("latin-1") if values else None


class ConsoleApiCase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.store = make_static_store("sqlite:" + os.path.join(work, "cms.sqlite3"),
                                       reactor=reactor)
        yield self.store.open()
        self.addCleanup(self.store.close)
        yield self.store.add_admin_token("root", hash_token(TOKEN))
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.accounts = OperatorAccounts(self.store, self.clock, scrypt_n=2**10,
                                         run_slow=lambda f, *a: f(*a))
        self.published = []
        backend = StoreAdminBackend(self.store, publish=self.published.append)
        self.site = make_console_site(backend, self.accounts)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.host = f"127.0.0.1:{self.port.getHost().port}"
        self.base = f"http://{self.host}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)
        for name, pw, role in (("ann", ADMIN_PW, "administrator"),
                               ("otto", AUDITOR_PW, "auditor")):
            yield self.request("POST", "/operators", {"username": name, "password": pw,
                                                      "role": role}, token=TOKEN, expect=201)

    @defer.inlineCallbacks
    def request(self, method, path, body=None, token=None, cookie=None, csrf=None,
                headers=None, expect=None, prefix=mms.API_PREFIX, raw=None):
        h = Headers(headers or {})
        if token is not None:
            h.setRawHeaders(b"authorization", [b"Bearer " + token.encode()])
        if cookie is not None:
            h.setRawHeaders(b"cookie", [cookie.encode()])
        if csrf is not None:
            h.setRawHeaders(b"x-csrf-token", [csrf.encode()])
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        producer = FileBodyProducer(BytesIO(data)) if data is not None else None
        response = yield self.agent.request(method.encode(),
                                            (self.base + prefix + path).encode(), h, producer)
        text = yield readBody(response)
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        r = Response(response.code, payload, response.headers)
        if expect is not None:
            self.assertEqual(r.code, expect, payload)
        return r

    @defer.inlineCallbacks
    def login(self, username, password, expect=200):
        r = yield self.request("POST", "/session", {"username": username,
                                                    "password": password}, expect=expect)
        if expect != 200:
            return r
        set_cookie = r.header("set-cookie")
        cookie = set_cookie.split(";")[0]
        return cookie, r.payload["csrf"], set_cookie


class SessionTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_login_cookie_whoami_logout(self):
        cookie, csrf, set_cookie = yield self.login("ann", ADMIN_PW)
        flags = [f.strip().lower() for f in set_cookie.split(";")]
        self.assertTrue(cookie.startswith("vss_console="))
        self.assertIn("httponly", flags)
        self.assertIn("samesite=strict", flags)
        self.assertIn("path=/", flags)
        self.assertNotIn("secure", flags)  # plain HTTP here; Secure over TLS
        self.assertEqual(len(cookie.split("=", 1)[1]), 43)  # 256 random bits
        me = yield self.request("GET", "/session", cookie=cookie, expect=200)
        self.assertEqual((me.payload["username"], me.payload["role"], me.payload["csrf"],
                          me.payload["can_change"]), ("ann", "administrator", csrf, True))
        # the session reads the API like a token
        yield self.request("GET", "/devices", cookie=cookie, expect=200)
        # logout needs the CSRF token, then the cookie is worthless
        yield self.request("DELETE", "/session", cookie=cookie, expect=403)
        out = yield self.request("DELETE", "/session", cookie=cookie, csrf=csrf, expect=200)
        self.assertIn("max-age=0", out.header("set-cookie").lower())
        gone = yield self.request("GET", "/devices", cookie=cookie, expect=401)
        self.assertIn("session ended", gone.payload["error"])
        kinds = [(e.kind, e.actor, e.status) for e in (yield self.store.list_audit())[0]]
        self.assertEqual(kinds[:2], [("logout", "operator:ann", 200),
                                     ("login", "operator:ann", 200)])

    @defer.inlineCallbacks
    def test_idle_and_absolute_expiry(self):
        cookie, _, _ = yield self.login("ann", ADMIN_PW)
        sessions = self.accounts.sessions
        for _ in range(5):  # each request starts the idle time again
            self.clock.advance(sessions.idle - 60)
            yield self.request("GET", "/session", cookie=cookie, expect=200)
        # the page's own polling is not activity: the idle time runs out under it
        for _ in range(4):
            self.clock.advance(sessions.idle / 4 - 1)
            yield self.request("GET", "/status", cookie=cookie, expect=200,
                               headers={b"x-vss-background": [b"1"]})
        self.clock.advance(4)
        yield self.request("GET", "/session", cookie=cookie, expect=401)
        cookie, _, _ = yield self.login("ann", ADMIN_PW)
        while self.clock.seconds() < 1_700_000_000 + 6 * sessions.idle + sessions.max_age:
            self.clock.advance(sessions.idle / 2)
            r = yield self.request("GET", "/session", cookie=cookie)
            if r.code == 401:
                break
        # ended by its age, however busy it was
        self.assertEqual(r.code, 401)
        self.assertEqual(len(sessions), 0)

    @defer.inlineCallbacks
    def test_disabling_an_operator_ends_their_sessions(self):
        cookie, _, _ = yield self.login("otto", AUDITOR_PW)
        other, _, _ = yield self.login("otto", AUDITOR_PW)
        listed = yield self.request("GET", "/operators/otto", token=TOKEN, expect=200)
        self.assertEqual(listed.payload["sessions"], 2)
        yield self.request("PATCH", "/operators/otto", {"enabled": False}, token=TOKEN,
                           expect=200)
        for c in (cookie, other):
            yield self.request("GET", "/session", cookie=c, expect=401)
        r = yield self.login("otto", AUDITOR_PW, expect=401)
        self.assertEqual(r.payload["error"], "this account is disabled")
        # a new password ends the sessions too; a change of nothing does not
        cookie, _, _ = yield self.login("ann", ADMIN_PW)
        yield self.request("PATCH", "/operators/ann", {"role": "administrator"}, token=TOKEN,
                           expect=200)
        yield self.request("GET", "/session", cookie=cookie, expect=200)
        yield self.request("PATCH", "/operators/ann", {"password": "Another-Password-1"},
                           token=TOKEN, expect=200)
        yield self.request("GET", "/session", cookie=cookie, expect=401)
        yield self.login("ann", "Another-Password-1")

    @defer.inlineCallbacks
    def test_wrong_password_is_throttled(self):
        for _ in range(3):
            r = yield self.login("ann", "not-the-password", expect=401)
            self.assertEqual((r.payload["error"], r.payload["field"]),
                             ("wrong user name or password", "password"))
        r = yield self.login("ann", ADMIN_PW, expect=429)  # even the right one waits
        self.assertEqual(r.header("retry-after"), "1")
        self.assertIn("try again in 1 s", r.payload["error"])
        self.clock.advance(1)
        yield self.login("ann", "not-the-password", expect=401)
        r = yield self.login("ann", ADMIN_PW, expect=429)
        self.assertEqual(r.header("retry-after"), "2")
        self.clock.advance(2)
        yield self.login("ann", ADMIN_PW)
        # an unknown name gets the same answer as a wrong password
        r = yield self.login("nobody", "whatever-password", expect=401)
        self.assertEqual(r.payload["error"], "wrong user name or password")
        entries = (yield self.store.list_audit(kinds=["login"]))[0]
        self.assertEqual([e.status for e in entries][::-1], [401, 401, 401, 429, 401, 429,
                                                             200, 401])
        self.assertTrue(all(e.source == "127.0.0.1" for e in entries))


class RoleAndCsrfTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_an_auditor_reads_but_changes_nothing(self):
        cookie, csrf, _ = yield self.login("otto", AUDITOR_PW)
        me = yield self.request("GET", "/session", cookie=cookie, expect=200)
        self.assertFalse(me.payload["can_change"])
        for path in ("/devices", "/users", "/grants", "/operators", "/audit", "/tokens"):
            yield self.request("GET", path, cookie=cookie, expect=200)
        attempts = [("POST", "/users", {"username": "eve", "password": "eve-password"}),
                    ("POST", "/devices", {"device_id": "cam-9",
                                          "source_url": "rtsp://10.0.0.9/s"}),
                    ("PATCH", "/operators/otto", {"role": "administrator"}),
                    ("POST", "/tokens", {"name": "mine"})]
        for method, path, body in attempts:
            r = yield self.request(method, path, body, cookie=cookie, csrf=csrf, expect=403)
            self.assertEqual(r.payload["error"], "the auditor role may not change anything")
        self.assertIsNone((yield self.store.get_user("eve")))
        self.assertEqual((yield self.store.get_operator("otto")).role, "auditor")
        refused = (yield self.store.list_audit(kinds=["change"], actor="otto"))[0]
        self.assertEqual([(e.action, e.status) for e in refused][::-1],
                         [(f"{m} {p}", 403) for m, p, _ in attempts])
        # the password of the refused request is masked in its entry
        self.assertEqual(refused[-1].detail["request"], {"username": "eve",
                                                         "password": "***"})

    @defer.inlineCallbacks
    def test_forged_cross_site_changes_are_refused(self):
        cookie, csrf, _ = yield self.login("ann", ADMIN_PW)
        # a form posted from another site: the cookie comes along, the token cannot
        forged = b'{"username": "evil", "password": "=evil-password-1"}'
        r = yield self.request("POST", "/users", cookie=cookie, raw=forged,
                               headers={b"content-type": [b"text/plain"],
                                        b"origin": [b"http://attacker.example"]},
                               expect=403)
        self.assertIn("CSRF token is missing", r.payload["error"])
        # the right token from a page of another origin is refused too
        r = yield self.request("POST", "/users", cookie=cookie, csrf=csrf, raw=forged,
                               headers={b"origin": [b"http://attacker.example"]},
                               expect=403)
        self.assertIn("http://attacker.example", r.payload["error"])
        r = yield self.request("POST", "/users", cookie=cookie, csrf=csrf, raw=forged,
                               headers={b"sec-fetch-site": [b"cross-site"]}, expect=403)
        self.assertIn("cross-site request", r.payload["error"])
        self.assertIsNone((yield self.store.get_user("evil")))
        # the same page's own request passes
        yield self.request("POST", "/users", {"username": "alice",
                                              "password": "alice-password"},
                           cookie=cookie, csrf=csrf,
                           headers={b"origin": [f"http://{self.host}".encode()],
                                    b"sec-fetch-site": [b"same-origin"]}, expect=201)
        # a login posted from another site is refused
        r = yield self.request("POST", "/session", {"username": "ann",
                                                    "password": ADMIN_PW},
                               headers={b"origin": [b"http://attacker.example"]},
                               expect=403)


class AuditTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_every_change_is_audited_with_secrets_masked(self):
        cookie, csrf, _ = yield self.login("ann", ADMIN_PW)
        url = f"rtsp://admin:{CAM_PASS}@10.0.0.5/s?password={CAM_PASS}"
        r = yield self.request("POST", "/devices", {"device_id": "cam-1", "name": "Gate",
                                                    "source_url": url},
                               cookie=cookie, csrf=csrf, expect=201)
        seq = int(r.header("x-vss-change-seq"))
        self.assertEqual(seq, self.published[-1][-1].seq)
        yield self.request("PATCH", "/devices/cam-1", {"name": "Front gate"}, token=TOKEN,
                           expect=200)
        yield self.request("POST", "/users", {"username": "bob",
                                              "password": "bob-password-1"},
                           cookie=cookie, csrf=csrf, expect=201)
        yield self.request("PUT", "/grants", {"principal": "user:bob", "device_id": "cam-1",
                                              "actions": ["view"]},
                           cookie=cookie, csrf=csrf, expect=201)
        yield self.request("POST", "/tokens", {"name": "script"}, cookie=cookie, csrf=csrf,
                           expect=201)
        yield self.request("PATCH", "/devices/cam-9", {"name": "x"}, token=TOKEN, expect=404)
        page = yield self.request("GET", "/audit?kind=change", cookie=cookie, expect=200)
        entries = page.payload["items"][::-1]
        self.assertEqual([e["action"] for e in entries[:2]], ["POST /operators"] * 2)
        self.assertEqual(entries[0]["detail"]["request"]["password"], "***")
        entries = entries[2:]
        self.assertEqual([(e["actor"], e["action"], e["target"], e["status"])
                          for e in entries], [
            ("operator:ann", "POST /devices", "device:cam-1", 201),
            ("token:root#1", "PATCH /devices/cam-1", "device:cam-1", 200),
            ("operator:ann", "POST /users", "user:bob", 201),
            ("operator:ann", "PUT /grants", "grant:user:bob|cam-1", 201),
            ("operator:ann", "POST /tokens", "token:#2", 201),
            ("token:root#1", "PATCH /devices/cam-9", "device:cam-9", 404)])
        added, renamed = entries[0], entries[1]
        self.assertIsNone(added["detail"]["before"])
        self.assertEqual(added["detail"]["after"]["name"], "Gate")
        self.assertEqual(added["detail"]["seq"], seq)
        self.assertEqual((renamed["detail"]["before"]["name"],
                          renamed["detail"]["after"]["name"]), ("Gate", "Front gate"))
        self.assertEqual(entries[-1]["detail"]["error"], "no device 'cam-9'")
        self.assertEqual(entries[0]["source"], "127.0.0.1")
        text = json.dumps(page.payload)
        for secret in (CAM_PASS, "bob-password-1", ADMIN_PW):
            self.assertNotIn(secret, text)
        self.assertIn("***", entries[4]["detail"]["after"]["token"])
        self.assertEqual(entries[2]["detail"]["request"]["password"], "***")
        # filters
        mine = yield self.request("GET", "/audit?actor=token:root&kind=change", token=TOKEN)
        self.assertEqual(len(mine.payload["items"]), 4)
        logins = yield self.request("GET", "/audit?kind=login", token=TOKEN)
        self.assertEqual([e["actor"] for e in logins.payload["items"]], ["operator:ann"])
        paged = yield self.request("GET", "/audit?limit=2", token=TOKEN)
        self.assertEqual(len(paged.payload["items"]), 2)
        rest = yield self.request("GET", f"/audit?cursor={paged.payload['next_cursor']}",
                                  token=TOKEN)
        self.assertEqual(rest.payload["items"][0]["id"], paged.payload["items"][-1]["id"] - 1)
        yield self.request("GET", "/audit?kind=edit", token=TOKEN, expect=400)
        yield self.request("GET", "/audit?since=yesterday", token=TOKEN, expect=400)

    @defer.inlineCallbacks
    def test_entries_cannot_be_changed_through_the_api(self):
        cookie, csrf, _ = yield self.login("ann", ADMIN_PW)
        first = (yield self.request("GET", "/audit", token=TOKEN)).payload["items"]
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = yield self.request(method, "/audit", {"actor": "nobody"}, cookie=cookie,
                                   csrf=csrf, expect=405)
            self.assertEqual(r.header("allow"), "GET")
            r = yield self.request(method, f"/audit/{first[0]['id']}", {}, token=TOKEN)
            self.assertIn(r.code, (404, 405))
        after = (yield self.request("GET", "/audit", token=TOKEN)).payload["items"]
        self.assertEqual(after[-len(first):], first)


class OperatorRulesTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_operator_accounts(self):
        listed = yield self.request("GET", "/operators", token=TOKEN, expect=200)
        self.assertEqual([(o["username"], o["role"]) for o in listed.payload["items"]],
                         [("ann", "administrator"), ("otto", "auditor")])
        self.assertNotIn("verifier", json.dumps(listed.payload))
        self.assertNotIn(ADMIN_PW, json.dumps(listed.payload))
        stored = yield self.store.get_operator("ann")
        self.assertTrue(stored.verifier.startswith("scrypt$1024$8$1$"))
        self.assertTrue(check_password(stored.verifier, ADMIN_PW))
        r = yield self.request("POST", "/operators", {"username": "short", "password": "x"},
                               token=TOKEN, expect=400)
        self.assertEqual(r.payload["field"], "password")
        yield self.request("POST", "/operators", {"username": "ann",
                                                  "password": "long-enough-pw"},
                           token=TOKEN, expect=409)
        r = yield self.request("PATCH", "/operators/ann", {"enabled": False}, token=TOKEN,
                               expect=409)
        self.assertIn("last enabled administrator", r.payload["error"])
        yield self.request("DELETE", "/operators/ann", token=TOKEN, expect=409)
        yield self.request("DELETE", "/operators/otto", token=TOKEN, expect=200)
        yield self.request("GET", "/operators/otto", token=TOKEN, expect=404)

    def test_password_verifier(self):
        v = hash_password("correct horse", n=2**10)
        self.assertTrue(check_password(v, "correct horse"))
        self.assertFalse(check_password(v, "correct horsE"))
        self.assertFalse(check_password("plain", "plain"))
        self.assertFalse(check_password("scrypt$99999999$8$1$AA==$AA==", "x"))
        self.assertNotEqual(hash_password("same", n=2**10), hash_password("same", n=2**10))

    def test_sessions_are_bounded(self):
        clock = task.Clock()
        sessions = Sessions(clock, max_sessions=3)
        cookies = [sessions.open("ann", "administrator", "h")[0] for _ in range(5)]
        self.assertEqual(len(sessions), 3)
        self.assertIsNone(sessions.find(cookies[0]))
        self.assertIsNotNone(sessions.find(cookies[4]))


class ConsolePagesTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_page_files_and_headers(self):
        r = yield self.agent.request(b"GET", (self.base + "/").encode())
        yield readBody(r)
        self.assertEqual((r.code, r.headers.getRawHeaders(b"location")),
                         (302, [b"/console/"]))
        r = yield self.agent.request(b"GET", (self.base + "/console/").encode())
        page = yield readBody(r)
        self.assertEqual(r.code, 200)
        self.assertIn(b'<script type="module" src="/console/static/js/app.js">', page)
        csp = r.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertIn(b"frame-ancestors 'none'", csp)
        for path in ("/console/static/js/app.js", "/console/static/console.css",
                     "/console/web/base.css", "/console/web/favicon.svg"):
            r = yield self.agent.request(b"GET", (self.base + path).encode())
            body = yield readBody(r)
            self.assertEqual(r.code, 200, path)
            self.assertTrue(body, path)
        r = yield self.agent.request(b"GET", (self.base + "/console/../cms.sqlite3").encode())
        yield readBody(r)
        self.assertEqual(r.code, 404)
        r = yield self.agent.request(b"POST", (self.base + "/console/").encode())
        yield readBody(r)
        self.assertEqual(r.code, 405)



class CommandLineTests(ConsoleApiCase):
    """``vss-admin operator ...``, ``grant set --for`` and ``vss-admin audit`` as real
    processes against the console's API."""

    timeout = 120

    @defer.inlineCallbacks
    def admin(self, *args, **env):
        out, err, code = yield run_tool("vss-admin", list(args), env=child_env(
            VSS_API=self.base, VSS_ADMIN_TOKEN=TOKEN, **env))
        self.assertEqual(code, 0, err)
        return out

    @defer.inlineCallbacks
    def test_operators_grants_with_an_expiry_and_the_audit(self):
        out = yield self.admin("operator", "add", "vic", "--role", "administrator",
                               VSS_OPERATOR_PASSWORD="vic-console-pw")
        self.assertEqual(out.strip(), "operator vic (administrator) added")
        yield self.login("vic", "vic-console-pw")
        out = yield self.admin("operator", "list")
        self.assertIn("vic       administrator  yes      1", out)
        out = yield self.admin("operator", "set", "vic", "--disable")
        self.assertEqual(out.strip(), "operator vic changed (administrator, disabled)")
        self.assertEqual(len(self.accounts.sessions.of("vic")), 0)
        yield self.store.upsert_device("cam-1", "Gate", 1, 1, "", verifier("cam-secret"))
        out = yield self.admin("grant", "set", "group:ops", "cam-1", "view", "--for", "3d")
        self.assertRegex(out.strip(), r"^group:ops may view on cam-1 until 20\d\d-")
        (grant,), _ = yield self.store.list_grants()
        self.assertGreater(grant.expires, 0)
        out = yield self.admin("grant", "list")
        self.assertIn("group:ops  cam-1   view", out)
        out = yield self.admin("audit", "--kind", "change", "--actor", "token:root",
                               "--since", "1h")
        lines = out.strip().splitlines()
        self.assertTrue(lines[0].startswith("TIME (UTC)"), out)
        self.assertIn("PUT /grants", lines[1])
        self.assertIn("grant:group:ops|cam-1", lines[1])
        self.assertIn("ok 201", lines[1])
        self.assertNotIn("vic-console-pw", out)
        out = yield self.admin("--json", "audit", "--kind", "change", "--limit", "1")
        (entry,) = json.loads(out)
        self.assertEqual((entry["actor"], entry["detail"]["client"]),
                         ("token:root#1", "vss-admin"))
        out, err, code = yield run_tool("vss-admin", ["audit", "--kind", "edit"],
                                        env=child_env(VSS_API=self.base,
                                                      VSS_ADMIN_TOKEN=TOKEN))
        self.assertEqual(code, 1)
        self.assertIn("kind must be among", err)



class ConsoleOpenApiTests(ConsoleApiCase):
    @defer.inlineCallbacks
    def test_every_route_of_the_console_is_described(self):
        doc = (yield self.request("GET", "/openapi.json", token=TOKEN, expect=200)).payload
        v1 = self.site.resource.children[b"api"].children[b"v1"]
        routes = dict(mms.iter_routes(v1))
        for path in ("/session", "/operators", "/operators/{name}", "/audit"):
            self.assertIn(path, routes)
        for path, methods in routes.items():
            self.assertIn(path, doc["paths"])
            self.assertEqual(sorted(m.upper() for m in doc["paths"][path]), methods, path)
        self.assertEqual(sorted(doc["paths"]), sorted(routes))
        text = json.dumps(doc)
        for ref in set(part.split('"')[0] for part in text.split("#/components/schemas/")[1:]):
            self.assertIn(ref, doc["components"]["schemas"])
        self.assertEqual(doc["paths"]["/audit"].keys(), {"get"})  # nothing changes an entry


@implementer(IPolicyForHTTPS)
class _TrustCA:
    def __init__(self, ca_pem):
        self.ca = ssl.Certificate.loadPEM(ca_pem)

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode(), trustRoot=self.ca)


class TlsSessionTests(ConsoleApiCase):
    """Over TLS the session cookie is ``__Host-vss_console`` and Secure."""

    @defer.inlineCallbacks
    def test_the_cookie_is_secure_over_tls(self):
        cert, key, trust = make_ca_and_cert(os.path.abspath(self.mktemp()), ["localhost"])
        port = yield endpoints.serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        ).listen(self.site)
        self.addCleanup(port.stopListening)
        with open(os.path.join(trust, "ca.pem"), "rb") as f:
            agent = Agent(reactor, contextFactory=_TrustCA(f.read()),
                          pool=HTTPConnectionPool(reactor, persistent=False))
        base = f"https://localhost:{port.getHost().port}{mms.API_PREFIX}"
        body = json.dumps({"username": "ann", "password": ADMIN_PW}).encode()
        response = yield agent.request(b"POST", (base + "/session").encode(), Headers(),
                                       FileBodyProducer(BytesIO(body)))
        session = json.loads((yield readBody(response)))
        self.assertEqual(response.code, 200)
        set_cookie = response.headers.getRawHeaders(b"set-cookie")[0].decode()
        flags = [f.strip().lower() for f in set_cookie.split(";")]
        self.assertTrue(set_cookie.startswith("__Host-vss_console="), set_cookie)
        for flag in ("secure", "httponly", "samesite=strict", "path=/"):
            self.assertIn(flag, flags)
        self.assertFalse(any(f.startswith("domain=") for f in flags))
        h = Headers({b"cookie": [set_cookie.split(";")[0].encode()]})
        response = yield agent.request(b"GET", (base + "/session").encode(), h)
        me = json.loads((yield readBody(response)))
        self.assertEqual((response.code, me["csrf"]), (200, session["csrf"]))
        # the plain-HTTP cookie name means nothing over TLS
        h = Headers({b"cookie": [b"vss_console=" + set_cookie.split("=", 1)[1].split(";")[0]
                                 .encode()]})
        response = yield agent.request(b"GET", (base + "/session").encode(), h)
        yield readBody(response)
        self.assertEqual(response.code, 401)
