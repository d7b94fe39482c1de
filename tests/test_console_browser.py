"""
The operator console in a real headless Chromium (``vss.testing.browser``), against a
central platform and two nodes running in this process over real TCP: an operator logs
in, adds an RTSP camera (its credentials never shown back) and a user, grants the user
the camera in the matrix, sees each change confirmed by every node (S506), and the user
then lists the camera with ``vssctl`` on a node; a weekly recording schedule is drawn and
saved; the audit page shows each change. An auditor finds no button to change anything
and the API refuses them; a forged cross-site POST from another page is refused; a wrong
password is throttled. Screenshots at 1280 x 800 and at a phone's 390 x 844 go to the
test artefacts. Skipped where no Chromium is installed.
"""

import json
import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from vss.cms.operators import hash_password
from vss.cms.store.operators import ADMINISTRATOR, AUDITOR
from vss.rgm.auth import Throttle
from vss.testing import browser as harness
from vss.testing.platform import start_platform, verifier
from vss.testing.processes import vssctl

ANN_PW = "ann-console-password"
OTTO_PW = "otto-console-password"
CAM_USER = "viewer"
CAM_PASS = "Cam-Pass-5150"
CAROL_PW = "carol-password-1"
PHONE = (390, 844)


class ConsoleBrowserCase(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        harness.require()
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))
        self.p = yield start_platform(self)
        store = self.store = self.p.cms.store
        # cheap verifiers for the test (the console makes n=2^15 ones)
        yield store.add_operator("ann", hash_password(ANN_PW, n=2**12), ADMINISTRATOR)
        yield store.add_operator("otto", hash_password(OTTO_PW, n=2**12), AUDITOR)
        self.nodes = [(yield self.p.start_node("node-a")), (yield self.p.start_node("node-b"))]
        self.base = f"http://127.0.0.1:{self.p.cms.listeners()['admin']}"
        self.b = yield harness.start_browser(self)
        yield self.b.viewport(1280, 800)
        self.seen_seq = 0  # the last change-log sequence the page said was confirmed

    @defer.inlineCallbacks
    def login(self, user, password, expect="ready"):
        b = self.b
        yield b.open(self.base + "/")
        yield b.wait_for("the sign-in page", "return ['login', 'login-failed', "
                         "'login-throttled'].includes(document.body.dataset.state)")
        yield b.js("""
            document.getElementById('login-user').value = arguments[0];
            document.getElementById('login-password').value = arguments[1];
            document.getElementById('login-form').requestSubmit();""", user, password)
        yield b.wait_for(f"state {expect}", "return document.body.dataset.state === arguments[0]",
                         expect)

    @defer.inlineCallbacks
    def go(self, page):
        yield self.b.js("location.hash = '#/' + arguments[0]", page)
        yield self.b.wait_for(f"the {page} page",
                              "return document.body.dataset.loaded === arguments[0]", page)

    def fill(self, values):
        """Set the fields of the open dialog by name (inputs, selects, checkboxes)."""
        return self.b.js("""
            const dialog = document.querySelector('dialog[open]');
            for (const [name, value] of Object.entries(arguments[0])) {
              const el = dialog.querySelector(`[name="${name}"]`);
              if (!el) throw new Error('no field ' + name);
              if (el.type === 'checkbox') el.checked = value; else el.value = value;
              el.dispatchEvent(new Event('input', {bubbles: true}));
              el.dispatchEvent(new Event('change', {bubbles: true}));
            }""", values)

    def submit_dialog(self):
        return self.b.js("document.querySelector('dialog[open] footer button[type=submit]')"
                         ".click()")

    @defer.inlineCallbacks
    def confirmed(self, what):
        """Wait for the page to say that every node confirmed the change just made (a
        change-log sequence after the last one seen)."""
        text = yield self.b.wait_for(f"{what} confirmed by every node", """
            const [seq, nodes] = (document.body.dataset.confirmed || '0:').split(':');
            return Number(seq) > arguments[0] && document.body.dataset.confirmed""",
                                     self.seen_seq, timeout=30)
        seq, nodes = text.split(":")
        self.assertEqual(sorted(nodes.split(",")), ["node-a", "node-b"])
        self.seen_seq = int(seq)
        for node in self.nodes:  # what the page says, the nodes hold
            self.assertGreaterEqual(node.central.applier.applied_seq, self.seen_seq)
        return self.seen_seq

    @defer.inlineCallbacks
    def shot(self, name):
        yield self.b.screenshot(f"console-{name}")


class OperatorFlowTests(ConsoleBrowserCase):
    @defer.inlineCallbacks
    def test_camera_user_grant_schedule_confirmed_listed_and_audited(self):
        b = self.b
        yield self.login("ann", ANN_PW)
        yield self.go("dashboard")
        yield b.wait_for("both nodes up", """
            return document.querySelectorAll('#dashboard-nodes tr[data-node]').length === 2
              && !document.getElementById('dashboard-nodes').textContent.includes('down')""")
        yield self.shot("dashboard")

        # an RTSP camera by URL, its credentials in fields of their own
        yield self.go("devices")
        yield b.js("document.getElementById('add-device').click()")
        yield b.wait_for("the add dialog", "return document.querySelector('dialog[open]')")
        yield self.fill({"device_id": "cam-gate", "name": "Front gate",
                         "home_node": "node-a", "source_url": "rtsp://127.0.0.1:9/stream1",
                         "camera_user": CAM_USER, "camera_password": CAM_PASS})
        yield self.shot("add-camera")
        # a bad id first: the API's error shows next to its field
        yield self.fill({"device_id": "bad id!"})
        yield self.submit_dialog()
        error = yield b.wait_for("the error next to the device id", """
            const input = document.querySelector('dialog[open] [name=device_id]');
            const p = input && input.closest('.field').querySelector('.field-error');
            return input.getAttribute('aria-invalid') === 'true' && !p.hidden && p.textContent""")
        self.assertIn("not a valid device id", error)
        yield self.shot("field-error")
        yield self.fill({"device_id": "cam-gate"})
        yield self.submit_dialog()
        yield self.confirmed("the new camera")
        device = yield self.store.get_device("cam-gate")
        self.assertEqual(device.source_url,
                         f"rtsp://{CAM_USER}:{CAM_PASS}@127.0.0.1:9/stream1")
        self.assertEqual((device.home_node, device.name), ("node-a", "Front gate"))
        held = {n.central.node_id: n.store.get_device("cam-gate") for n in self.nodes}
        self.assertEqual(held["node-a"].name, "Front gate")
        # no user registered on node-b may see it: node-b does not hold it
        # (docs/consistency.md, "What each node holds")
        self.assertIsNone(held["node-b"])
        yield b.wait_for("the camera listed", "return document.querySelector("
                         "'#devices-table tr[data-device=\"cam-gate\"]')")
        shown = yield b.js("return document.body.innerText")
        self.assertIn("rtsp://***@127.0.0.1:9/stream1", shown)
        self.assertNotIn(CAM_PASS, shown)
        yield self.shot("devices")
        # its edit form shows the URL masked and never the password
        yield b.js("document.querySelector('[aria-label=\"Edit cam-gate\"]').click()")
        values = yield b.wait_for("the edit dialog", """
            const d = document.querySelector('dialog[open]');
            return d && [...d.querySelectorAll('input')].map((i) => i.value).join(' ')""")
        self.assertNotIn(CAM_PASS, values)
        self.assertIn("rtsp://***@127.0.0.1:9", values)
        # moved to node-b there; the masked URL sent back keeps the real credentials
        yield self.fill({"home_node": "node-b"})
        yield self.submit_dialog()
        yield self.confirmed("the move")
        device = yield self.store.get_device("cam-gate")
        self.assertEqual((device.home_node, device.source_url),
                         ("node-b", f"rtsp://{CAM_USER}:{CAM_PASS}@127.0.0.1:9/stream1"))
        for node in self.nodes:
            self.assertEqual(node.store.get_device("cam-gate").home_node, "node-b")

        # a user
        yield self.go("users")
        yield b.js("document.getElementById('add-user').click()")
        yield b.wait_for("the add dialog", "return document.querySelector('dialog[open]')")
        yield self.fill({"username": "carol", "password": CAROL_PW, "groups": "guards"})
        yield self.submit_dialog()
        yield self.confirmed("the new user")
        yield b.wait_for("carol listed", "return document.querySelector("
                         "'#users-table tr[data-user=\"carol\"]')")
        yield self.shot("users")

        # the grant, in the matrix
        yield self.go("grants")
        cell = "#grants-matrix button[data-principal=\"user:carol\"][data-device=\"cam-gate\"]"
        yield b.js(f"document.querySelector('{cell}').click()")
        yield b.wait_for("the grant dialog", "return document.querySelector('dialog[open]')")
        yield self.fill({"a-view": True, "a-ptz": True})
        yield self.submit_dialog()
        yield self.confirmed("the grant")
        yield b.wait_for("the granted cell", f"""
            return document.querySelector('{cell}')?.dataset.actions === 'view,ptz'""")
        yield self.shot("grants")

        # the user now lists the camera on a node
        node_a = f"tcp:127.0.0.1:{self.p.port('node-a', 'cu')}"
        out, err, code = yield vssctl(node_a, ["--json", "devices"], "carol", CAROL_PW)
        self.assertEqual(code, 0, err)
        listed = {d["device_id"]: d for d in json.loads(out)["devices"]}
        self.assertEqual(list(listed), ["cam-gate"])
        self.assertEqual(listed["cam-gate"]["name"], "Front gate")

        # a weekly recording schedule, drawn on the grid
        yield self.go("recording")
        yield b.js("""
            const s = document.getElementById('record-device');
            document.body.dataset.recordLoaded = '';
            s.value = 'cam-gate'; s.dispatchEvent(new Event('change'));""")
        yield b.wait_for("cam-gate's settings",
                         "return document.body.dataset.recordLoaded === 'cam-gate/0'")
        yield b.js("""
            document.getElementById('preset-business').click();
            const sat = document.querySelector('.slot[data-day="sat"][data-cell="20"]');
            sat.dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}));
            window.dispatchEvent(new PointerEvent('pointerup'));
            const mode = document.querySelector('#record-form [name=mode]');
            mode.value = 'schedule';""")
        summary = yield b.js("return document.getElementById('week-summary').textContent")
        self.assertEqual(summary, "6 slots, 50.5 hours a week.")
        yield self.shot("recording")
        yield b.js("document.getElementById('save-record').click()")
        yield self.confirmed("the recording settings")
        settings = yield self.store.get_record_settings("cam-gate", 0)
        self.assertEqual(settings["mode"], "schedule")
        self.assertEqual(settings["schedule"], [
            *({"day": d, "start": "08:00", "end": "18:00"} for d in ("mon", "tue", "wed", "thu",
                                                                     "fri")),
            {"day": "sat", "start": "10:00", "end": "10:30"}])

        # the audit page shows each change
        yield self.go("audit")
        yield b.js("""
            document.querySelector('#audit-filters input[value="change"]').checked = true;
            document.getElementById('audit-filters').requestSubmit();""")
        rows = yield b.wait_for("the changes", """
            const rows = [...document.querySelectorAll('#audit-table tr[data-id]')];
            return rows.length >= 6 && rows.map((r) => [r.dataset.kind, r.dataset.actor,
                                                         r.dataset.action, r.dataset.target])""")
        self.assertEqual(rows[:6][::-1], [
            ["change", "operator:ann", "POST /devices", "device:bad id!"],
            ["change", "operator:ann", "POST /devices", "device:cam-gate"],
            ["change", "operator:ann", "PATCH /devices/cam-gate", "device:cam-gate"],
            ["change", "operator:ann", "POST /users", "user:carol"],
            ["change", "operator:ann", "PUT /grants", "grant:user:carol|cam-gate"],
            ["change", "operator:ann", "PUT /devices/cam-gate/record-settings/0",
             "device:cam-gate/channel:0"]])
        # the first POST was the refused bad id: its row says so; the others succeeded
        results = yield b.js("return [...document.querySelectorAll('#audit-table tr[data-id]')]"
                             ".slice(0, 6).map((r) => r.cells[6].textContent)")
        self.assertEqual(results[::-1], ["refused 400", "ok 201", "ok 200", "ok 201", "ok 201",
                                         "ok 200"])
        yield b.js("document.querySelector('#audit-table tr[data-id] td.actions button').click()")
        detail = yield b.wait_for("the entry's detail",
                                  "return document.querySelector('.detail-row')?.innerText")
        self.assertIn("schedule", detail)
        page = yield b.js("return document.body.innerText")
        self.assertNotIn(CAM_PASS, page)
        yield self.shot("audit")

        # phone width: no sideways scrolling of the page
        yield b.viewport(*PHONE, mobile=True)
        for name in ("dashboard", "devices", "grants", "audit"):
            yield self.go(name)
            widths = yield b.js("return [document.documentElement.scrollWidth, "
                                "window.innerWidth]")
            self.assertLessEqual(widths[0], widths[1], f"{name} scrolls sideways on a phone")
            yield self.shot(f"{name}-phone")
        yield b.js("document.getElementById('menu-button').click()")
        yield b.wait_for("the menu", "return document.getElementById('nav')"
                         ".classList.contains('open')")
        yield self.shot("menu-phone")


class RefusalTests(ConsoleBrowserCase):
    @defer.inlineCallbacks
    def test_an_auditor_has_no_buttons_and_the_api_refuses(self):
        b = self.b
        yield self.login("otto", OTTO_PW)
        role = yield b.js("return document.getElementById('who-role').textContent")
        self.assertEqual(role, "auditor")
        yield self.store.upsert_device("cam-1", "Yard", 1, 1, "node-a",
                                       verifier("cam-1-secret"))
        yield self.store.upsert_user("dave", verifier("dave-password"), [])
        for page in ("devices", "users", "grants", "recording", "nodes", "credentials",
                     "tokens", "operators"):
            yield self.go(page)
            buttons = yield b.js("""
                return [...document.querySelectorAll(`#page-actions button, #page td.actions button,
                                                      #grants-matrix button, #save-record`)]
                  .map((x) => x.textContent)""")
            self.assertEqual(buttons, [], page)
            if page == "devices":
                yield self.shot("auditor-devices")
        disabled = yield b.js("return [...document.querySelectorAll('.slot')]"
                              ".every((s) => s.disabled)")
        self.assertTrue(disabled)  # the schedule is shown, not editable
        # the API refuses the auditor's change, CSRF token and all
        status = yield b.js_async("""
            const done = arguments[arguments.length - 1];
            fetch('/api/v1/session').then((r) => r.json()).then((s) =>
              fetch('/api/v1/users', {method: 'POST', headers: {'Content-Type': 'application/json',
                                                                'X-CSRF-Token': s.csrf},
                                      body: JSON.stringify({username: 'eve', password: 'eve-password'})}))
              .then((r) => r.json().then((body) => done([r.status, body.error])));""")
        self.assertEqual(status, [403, "the auditor role may not change anything"])
        self.assertIsNone((yield self.store.get_user("eve")))

    @defer.inlineCallbacks
    def test_a_forged_cross_site_post_is_refused(self):
        b = self.b
        yield self.login("ann", ANN_PW)
        # another site's page posts a form to the admin API; the browser sends the
        # console's cookie along (same site), never its CSRF token
        admin = self.base
        page = f"""<!doctype html><html><body>
            <form id="f" method="POST" enctype="text/plain" action="{admin}/api/v1/users">
              <input name='{{"username": "mallory", "groups": [], "password": "x' value='-forged-pw"}}'>
            </form>
            <script>document.getElementById('f').submit();</script></body></html>""".encode()

        class Evil(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                request.setHeader(b"content-type", b"text/html")
                return page

        port = reactor.listenTCP(0, server.Site(Evil()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield b.open(f"http://127.0.0.1:{port.getHost().port}/")
        text = yield b.wait_for("the admin API's answer", """
            return location.pathname === '/api/v1/users' && document.body.innerText""")
        answer = json.loads(text)
        self.assertIn("cross-site request refused", answer["error"])
        self.assertIsNone((yield self.store.get_user("mallory")))
        entries, _ = yield self.store.list_audit(kinds=["change"])
        self.assertEqual((entries[0].actor, entries[0].action, entries[0].status),
                         ("operator:ann", "POST /users", 403))
        # the console itself still works in the same browser, with the same session
        yield b.open(self.base + "/console/#/users")
        yield b.wait_for("the console", "return document.body.dataset.loaded === 'users'")

    @defer.inlineCallbacks
    def test_a_wrong_password_is_throttled(self):
        b = self.b
        # the throttle's time stands still here, so that a slow machine cannot wait it out
        clock = task.Clock()
        clock.advance(reactor.seconds())
        self.p.cms.accounts.throttle = Throttle(clock)
        for _ in range(3):
            yield self.login("ann", "not-her-password", expect="login-failed")
            text = yield b.js("return document.getElementById('login-error').textContent")
            self.assertEqual(text, "Wrong user name or password.")
        yield self.shot("wrong-password")
        yield self.login("ann", ANN_PW, expect="login-throttled")
        text = yield b.js("return document.getElementById('login-error').textContent")
        self.assertEqual(text, "Too many failed attempts. Try again in 1 second.")
        yield self.shot("throttled")
        # the wait passes; the right password then opens the console
        clock.advance(1.0)
        yield self.login("ann", ANN_PW)
        logins, _ = yield self.store.list_audit(kinds=["login"])
        self.assertEqual([e.status for e in logins][::-1], [401, 401, 401, 429, 200])

