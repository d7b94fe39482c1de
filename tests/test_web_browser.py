"""
The browser client in a real headless Chromium (``vss.testing.browser``), against a
central platform and a node running in this process over real TCP, with a real
``vss-pu`` camera publishing H.264: the person logs in on the node's web address,
watches live video (decoded pictures advance, their latency is measured), moves the
camera and sees its position change, clicks the recordings timeline and plays back from
that time (the footage time of the pictures shown), and gets a clear message for a
wrong password, a camera they lost access to and a session the node ended. The phone
layout (390 x 844) is screenshotted. The recent events: stored ones listed at login, a
new one pushed into the list without a reload, acknowledged with a comment (stored by
CMS), the ones raised while the page was away sent again on the next login, and a click on
an event of a recorded camera plays it back from the event's time. The page's codec of
the event messages is checked against the bytes of docs/protocol.md. Skipped where no
Chromium is installed.
"""

import os
import signal
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.messages import KV, Action, EventPhase, EventRaise, MsgType, Role, Severity
from vss.testing import browser as harness
from vss.testing.platform import start_platform, verifier

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


def event_row(key):
    return f"return document.querySelector('.event[data-event=\"{key}\"]')"


class BrowserClientTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        harness.require()
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Front door", 1, 1, "node-a",
                                         verifier("cam-a-s")))
        yield change(store.upsert_device("cam-z", "Yard", 1, 1, "node-a", verifier("cam-z-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.upsert_user("bob", verifier("bob-pw"), []))
        yield change(store.set_grant("user:alice", "cam-a", ALL))
        yield change(store.set_grant("user:alice", "cam-z", int(Action.VIEW)))
        yield change(store.set_grant("user:bob", "cam-a", int(Action.VIEW)))
        self.node = yield self.p.start_node("node-a")
        yield self.p.start_pu("node-a", "cam-a", "cam-a-s")
        self.url = f"http://127.0.0.1:{self.p.port('node-a', 'http')}/"
        self.b = yield harness.start_browser(self)

    @defer.inlineCallbacks
    def login(self, user, password, expect="ready"):
        b = self.b
        yield b.open(self.url)
        yield b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        yield b.js("""
            document.getElementById('user').value = arguments[0];
            document.getElementById('password').value = arguments[1];
            document.getElementById('login-form').requestSubmit();""", user, password)
        yield b.wait_for(f"state {expect}",
                         "return document.body.dataset.state === arguments[0]", expect)

    def tile(self, what, index=0):
        return self.b.js(f"return document.querySelectorAll('.tile')[{index}].dataset.{what}")

    @defer.inlineCallbacks
    def test_login_live_video_ptz_and_grid(self):
        b = self.b
        yield self.login("alice", "alice-pw")
        names = yield b.wait_for("the online camera", """
            const li = document.querySelector('.device[data-device="cam-a"]');
            return li && li.classList.contains('online') && li.textContent""")
        self.assertIn("Front door", names)
        yield b.js("document.querySelector('.device[data-device=\"cam-a\"]').click()")
        # decoded pictures advance: requestVideoFrameCallback counts them
        yield b.wait_for("25 decoded pictures", """
            return Number(document.querySelector('.tile').dataset.frames) >= 25""",
                         timeout=40)
        t1 = float((yield self.tile("mediaTime")))
        yield task.deferLater(reactor, 1.0, lambda: None)
        frames2 = int((yield self.tile("frames")))
        t2 = float((yield self.tile("mediaTime")))
        self.assertGreater(t2 - t1, 0.5, "the video does not advance")
        self.assertGreater(frames2, 25)
        latency = yield self.tile("latency")
        self.assertIsNotNone(latency, "no picture's ingest time was found")
        self.assertLess(int(latency), 5000)
        size = yield b.js("const v = document.querySelector('.tile video'); "
                          "return [v.videoWidth, v.videoHeight]")
        self.assertEqual(size, [640, 360])
        yield b.screenshot("web-live")

        # PTZ: the pad moves the camera; the position shown is the PU's answer
        yield b.wait_for("the PTZ pad", "return !document.getElementById('ptz').hidden")
        yield b.js("document.querySelector('.pad .right').click()")
        # the camera moves over time; where it stopped is pushed (STATE_CHANGE PTZ)
        pan = yield b.wait_for("a pan to the right", """
            const p = Number(document.getElementById('ptz-position').dataset.pan);
            return p > 0.09 && p""")
        self.assertAlmostEqual(float(pan), 0.1, places=2)
        yield b.js("document.querySelector('.pad .right').click()")
        pan = yield b.wait_for("a second pan step", """
            const p = Number(document.getElementById('ptz-position').dataset.pan);
            return p > 0.19 && p""")
        self.assertAlmostEqual(float(pan), 0.2, places=2)
        shown = yield b.js("return document.getElementById('ptz-position').textContent")
        self.assertIn("pan 0.20", shown)
        # a preset saved here is listed
        yield b.js("document.getElementById('preset-name').value = 'Gate'; "
                   "document.getElementById('preset-form').requestSubmit()")
        yield b.wait_for("the saved preset", """
            return [...document.querySelectorAll('#presets button')]
                .some((x) => x.textContent === 'Gate')""")

        # a 2 x 2 grid: the second tile shows the same camera from the same packager
        yield b.js("document.querySelector('.layouts [data-n=\"4\"]').click()")
        yield b.js("document.querySelectorAll('.tile')[1].click(); "
                   "document.querySelector('.device[data-device=\"cam-a\"]').click()")
        yield b.wait_for("the second tile's pictures", """
            return Number(document.querySelectorAll('.tile')[1].dataset.frames) >= 10""",
                         timeout=30)
        media = self.node.web.media
        self.assertEqual(len(media.packagers), 1)
        self.assertEqual(len(list(media.packagers.values())[0].viewers), 2)
        yield b.screenshot("web-grid-4")

    @defer.inlineCallbacks
    def test_wrong_password_lost_grant_and_ended_session(self):
        b = self.b
        yield self.login("alice", "not-her-password", expect="login-failed")
        text = yield b.js("return document.getElementById('login-error').textContent")
        self.assertEqual(text, "Wrong user name or password.")
        yield b.screenshot("web-wrong-password")

        # bob may view cam-a; an operator takes the grant away while his list shows it
        yield self.login("bob", "bob-pw")
        yield b.wait_for("bob's camera", "return document.querySelector('.device[data-device=\"cam-a\"]')")
        store, change = self.p.cms.store, self.p.change
        yield change(store.set_grant("user:bob", "cam-a", 0))
        yield b.js("document.querySelector('.device[data-device=\"cam-a\"]').click()")
        message = yield b.wait_for("the refusal", """
            const s = document.querySelector('.tile .status.error');
            return s && s.textContent""", timeout=20)
        self.assertEqual(message, "You do not have access to this camera.")
        yield b.screenshot("web-no-grant")

        # an operator disables bob: the node ends his session and the page says so
        yield change(store.upsert_user("bob", verifier("bob-pw"), [], enabled=False))
        yield b.wait_for("the ended session", "return document.body.dataset.state === 'session-ended'",
                         timeout=20)
        text = yield b.js("return document.getElementById('login-error').textContent")
        self.assertTrue(text.startswith("Your session was ended by the node"), text)
        self.assertIn("Please sign in again.", text)
        yield b.screenshot("web-session-ended")

    @defer.inlineCallbacks
    def test_phone_layout(self):
        b = self.b
        yield b.viewport(390, 844, mobile=True)
        yield self.login("alice", "alice-pw")
        yield b.js("document.querySelector('.device[data-device=\"cam-a\"]').click()")
        yield b.wait_for("pictures on the phone", """
            return Number(document.querySelector('.tile').dataset.frames) >= 10""", timeout=40)
        widths = yield b.js("""
            return [document.documentElement.scrollWidth, window.innerWidth,
                    document.querySelector('.tile').getBoundingClientRect().width,
                    document.querySelector('.pad').getBoundingClientRect().width]""")
        self.assertLessEqual(widths[0], widths[1], "the page scrolls sideways on a phone")
        self.assertGreater(widths[2], 340)  # the video uses the width of the phone
        self.assertGreater(widths[3], 100)
        yield b.screenshot("web-phone")

        # the events list under the camera controls, as wide as the phone, usable by touch
        pu = yield self.p.login("node-a", Role.PU, "cam-z", "cam-z-s")
        raised = (yield pu.request(MsgType.EVENT_RAISE, EventRaise(
            device_id="cam-z", channel=0, type="tamper", phase=int(EventPhase.PULSE),
            severity=int(Severity.CRITICAL), pu_time=0, items=[]))).body
        key = f"{raised.node_id}/{raised.seq}"
        yield b.wait_for("the event on the phone", event_row(key), timeout=10)
        # the header says an alarm is open and takes the person to the list
        jump = yield b.js("return document.getElementById('events-jump').textContent")
        self.assertEqual(jump, "1 alarm")
        below = yield b.js("return document.querySelector('.event').getBoundingClientRect().top")
        self.assertGreater(below, 844, "the list was in view already")
        yield b.js("document.getElementById('events-jump').click()")
        yield b.wait_for("the list in view", """
            const r = document.querySelector('.event').getBoundingClientRect();
            return r.top >= 0 && r.bottom <= window.innerHeight""")
        yield b.js(event_row(key) + ".querySelector('.ack-button').click()")
        box = yield b.js(f"""
            const r = ({event_row(key)[7:]}).getBoundingClientRect();
            const input = ({event_row(key)[7:]}).querySelector('.ack-comment').getBoundingClientRect();
            return [r.left, r.right, input.width, document.documentElement.scrollWidth,
                    window.innerWidth]""")
        self.assertGreaterEqual(box[0], 0)
        self.assertLessEqual(box[1], box[4])
        self.assertGreater(box[2], 150, "the comment field is too narrow to type in")
        self.assertLessEqual(box[3], box[4], "the page scrolls sideways on a phone")
        yield b.screenshot("web-phone-events")

    @defer.inlineCallbacks
    def raise_event(self, pu, type, phase=EventPhase.PULSE, severity=Severity.ALARM, **items):
        answer = yield pu.request(MsgType.EVENT_RAISE, EventRaise(
            device_id="cam-z", channel=0, type=type, phase=int(phase), severity=int(severity),
            pu_time=0, items=[KV(key=k, value=str(v)) for k, v in items.items()]))
        return answer.body

    @defer.inlineCallbacks
    def stored(self, raised, timeout=20.0):
        """The CMS's entry of an event once it stores it (a node reports in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            entries, _ = yield self.p.cms.store.list_events(device_id="cam-z")
            found = [e for e in entries if e.event.seq == raised.seq]
            if found:
                return found[0]
            self.assertLess(time.monotonic(), deadline, f"CMS never stored event {raised.seq}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_events_listed_pushed_acknowledged_and_resumed(self):
        b = self.b
        pu = yield self.p.login("node-a", Role.PU, "cam-z", "cam-z-s")
        # an event from before the login: listed from the stored ones
        old = yield self.raise_event(pu, "alarm-in", input=3)
        yield self.stored(old)
        yield self.login("alice", "alice-pw")
        old_key = f"node-a/{old.seq}"
        text = yield b.wait_for("the stored event", event_row(old_key) + "?.textContent")
        self.assertIn("alarm-in", text)
        self.assertIn("ALARM", text)
        self.assertIn("Yard", text)  # the device's name
        self.assertIn("input=3", text)

        # a new event is pushed into the list (no reload, no polling)
        started = time.monotonic()
        new = yield self.raise_event(pu, "motion", EventPhase.START, Severity.WARNING, zone=2)
        key = f"node-a/{new.seq}"
        yield b.wait_for("the pushed event", event_row(key), timeout=5)
        self.assertLess(time.monotonic() - started, 3.0)
        row = yield b.js(f"""const li = ({event_row(key)[7:]});
            return [li.querySelector('.type').textContent, li.querySelector('.phase').textContent,
                    li.querySelector('.sev').textContent, li.dataset.acked, Number(li.dataset.time),
                    window.vss.events.get(arguments[0]).feed_id,
                    document.querySelector('.event').dataset.event]""", key)
        self.assertEqual(row[:4], ["motion", "start · ongoing", "WARNING", "0"])
        self.assertLess(abs(row[4] - time.time() * 1000), 10000)
        self.assertEqual(row[5], new.seq)  # the node's own event: its feed id is its seq
        self.assertEqual(row[6], key)  # newest first
        loaded = yield b.js("return window.vss.feed.last")
        self.assertEqual(loaded, new.seq)

        # acknowledged with a comment: the page shows who, CMS stores it
        yield b.js(event_row(key) + ".querySelector('.ack-button').click()")
        yield b.js(f"""const li = ({event_row(key)[7:]});
            const input = li.querySelector('.ack-comment');
            input.value = 'a cat on the wall';
            input.dispatchEvent(new Event('input'));
            li.querySelector('.ack-form').requestSubmit();""")
        shown = yield b.wait_for("the acknowledgement", f"""const li = ({event_row(key)[7:]});
            return li && li.dataset.acked === '1' && li.querySelector('.ack').textContent""",
                                 timeout=15)
        self.assertTrue(shown.startswith("Acknowledged by alice at "), shown)
        self.assertTrue(shown.endswith(": a cat on the wall"), shown)
        entry = yield self.stored(new)
        self.assertEqual((entry.acked_by, entry.comment), ("alice", "a cat on the wall"))
        self.assertGreater(entry.acked_at, 0)
        # the motion ends: its START says when; the alarm input is still open (the header)
        stop = yield self.raise_event(pu, "motion", EventPhase.STOP, Severity.WARNING, zone=2)
        stop_key = f"node-a/{stop.seq}"
        yield b.wait_for("the motion's stop", event_row(stop_key), timeout=5)
        phase = yield b.js(event_row(key) + ".querySelector('.phase').textContent")
        self.assertRegex(phase, r"^start · ended \d\d:\d\d:\d\d$")
        jump = yield b.js("const j = document.getElementById('events-jump'); "
                          "return [j.hidden, j.textContent]")
        self.assertEqual(jump, [False, "1 alarm"])
        yield b.screenshot("web-events")

        # the link drops; an event raised meanwhile is sent again after the next login
        # (EVENT_SUBSCRIBE resuming after the last feed id), once
        yield b.js("window.vss.link.ws.close()")
        yield b.wait_for("the lost link", "return document.body.dataset.state === 'session-ended'")
        away = yield self.raise_event(pu, "video-loss", severity=Severity.CRITICAL)
        # the end of an alarm's condition is no alarm to acknowledge
        yield self.raise_event(pu, "alarm-in", EventPhase.STOP, input=3)
        yield b.js("""
            document.getElementById('password').value = 'alice-pw';
            document.getElementById('login-form').requestSubmit();""")
        away_key = f"node-a/{away.seq}"
        yield b.wait_for("the event raised while away", event_row(away_key), timeout=10)
        feed_id = yield b.js("return window.vss.events.get(arguments[0]).feed_id", away_key)
        self.assertEqual(feed_id, away.seq, "not replayed by the subscription")
        keys = yield b.js("return [...document.querySelectorAll('.event')]"
                          ".map((li) => li.dataset.event)")
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(keys[1:5], [away_key, stop_key, key, old_key])
        buttons = yield b.js("return document.querySelector('.event').querySelector('.ack-button')")
        self.assertIsNone(buttons)
        acked = yield b.js(event_row(key) + ".dataset.acked")
        self.assertEqual(acked, "1")
        jump = yield b.js("return document.getElementById('events-jump').textContent")
        self.assertEqual(jump, "2 alarms")

    @defer.inlineCallbacks
    def test_event_codec_matches_the_protocol_bytes(self):
        """wire.js against the hand-written vectors of docs/protocol.md (EVENT_NOTIFY) and
        bodies written here byte by byte from its tables."""
        b = self.b
        yield b.open(self.url)
        yield b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        out = yield b.js_async("""
            const done = arguments[arguments.length - 1];
            import('/static/js/wire.js').then((w) => {
              const hex = (u) => [...u].map((x) => x.toString(16).padStart(2, '0')).join('');
              const bytes = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16)));
              const [f] = new w.FrameReader().feed(bytes(arguments[0]));
              done({
                notify: [f.type, f.flags, w.decode.eventNotify(f.body)],
                subscribe: hex(w.encode.eventSubscribe({devices: ['c'], types: ['motion'], resume_after: 7})),
                unsubscribe: hex(w.encode.eventUnsubscribe(3)),
                ack: hex(w.encode.eventAck({node_id: 'n1', seq: 5, device_id: 'c', comment: 'ok'})),
                query: hex(w.encode.eventQuery({device_id: 'c', from_time: 1, limit: 50})),
                subscribed: w.decode.eventSubscribed(bytes('00000003' + '0000000000000009' + '00000002' + '01' + '0000')),
                acked: w.decode.eventAcked(bytes('00026e31' + '0000000000000005' + '0005616c696365' + '0000018bcfe56800' + '0000')),
                events: w.decode.events(bytes('0001' + '00026e31' + '0000000000000005' + '000163' + '0000'
                  + '0003746d70' + '00' + '03' + '0000018bcfe56800' + '0000018bcfe56800' + '0000'
                  + '0003626f62' + '0000018bcfe56801' + '00026f6b' + '00' + '0000')),
              });
            }, (e) => done(String(e)));""",
            "5653010401930000000000000000004000060a24181e400100026e3100060a24181e4001"
            "000163000100066d6f74696f6e01020000018bcfe568000000018bcfe568320001"
            "00047a6f6e650001320000")
        seq = 0x00060A24181E4001
        ts = 1700000000000
        self.assertEqual(out["notify"], [0x0193, 0x04, {
            "feed_id": seq, "ext": [], "event": {
                "node_id": "n1", "seq": seq, "device_id": "c", "channel": 1, "type": "motion",
                "phase": 1, "severity": 2, "pu_time": ts, "node_time": ts + 50,
                "items": [{"key": "zone", "value": "2"}]}}])
        self.assertEqual(out["subscribe"], "0001" "000163" "0000" "0001" "00066d6f74696f6e"
                                           "0000000000000007" "0000")
        self.assertEqual(out["unsubscribe"], "00000003" "0000")
        self.assertEqual(out["ack"], "00026e31" "0000000000000005" "000163" "0000" "00026f6b"
                                     "0000")
        self.assertEqual(out["query"], "000163" "0000" "0000000000000001" "0000000000000000"
                                       "0032" "0000" "0000")
        self.assertEqual(out["subscribed"], {"subscription": 3, "head": 9, "replayed": 2,
                                             "gap": True, "ext": []})
        self.assertEqual(out["acked"], {"node_id": "n1", "seq": 5, "acked_by": "alice",
                                        "acked_at": ts, "ext": []})
        self.assertEqual(out["events"], {"truncated": False, "ext": [], "events": [{
            "event": {"node_id": "n1", "seq": 5, "device_id": "c", "channel": 0,
                      "type": "tmp", "phase": 0, "severity": 3, "pu_time": ts,
                      "node_time": ts, "items": []},
            "acked_by": "bob", "acked_at": ts + 1, "comment": "ok"}]})


class BrowserPlaybackTests(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        harness.require()
        os.environ.setdefault(harness.ARTEFACTS_ENV, os.path.abspath("test-artefacts"))
        self.p = yield start_platform(self)
        store, change = self.p.cms.store, self.p.change
        yield change(store.upsert_device("cam-a", "Front door", 1, 1, "node-a",
                                         verifier("cam-a-s")))
        yield change(store.upsert_user("alice", verifier("alice-pw"), []))
        yield change(store.set_grant("user:alice", "cam-a", ALL))
        self.node = yield self.p.start_node("node-a")
        self.pu = yield self.p.start_pu("node-a", "cam-a", "cam-a-s")
        self.url = f"http://127.0.0.1:{self.p.port('node-a', 'http')}/"

    @defer.inlineCallbacks
    def record(self, seconds, segment_seconds=4, during=None):
        """Record cam-a for ``seconds``; ``during()`` is called halfway."""
        from vss.cdn.service import CDNRecording

        rec = CDNRecording(self.node.cdn, self.node.recorder)
        yield rec.start("cam-a", 0, 0, segment_seconds)
        yield task.deferLater(reactor, seconds / 2, lambda: None)
        if during is not None:
            during()
        yield task.deferLater(reactor, seconds / 2, lambda: None)
        yield rec.stop("cam-a", 0, 0)
        listing = yield self.node.recorder.catalogue.list("cam-a", "main", 0, 2**62)
        return listing["segments"]

    @defer.inlineCallbacks
    def test_timeline_click_plays_back_from_that_time_pauses_and_seeks(self):
        segments = yield self.record(16)
        self.assertGreaterEqual(len(segments), 3, segments)
        b = yield harness.start_browser(self)
        yield b.open(self.url)
        yield b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        yield b.js("""
            document.getElementById('user').value = 'alice';
            document.getElementById('password').value = 'alice-pw';
            document.getElementById('login-form').requestSubmit();""")
        yield b.wait_for("the app", "return document.body.dataset.state === 'ready'")
        yield b.js("document.querySelector('.device[data-device=\"cam-a\"]').click()")
        # the last 10 minutes: the recording is drawn, the rest is a gap
        yield b.js("const z = document.getElementById('zoom'); z.value = '600000'; "
                   "z.dispatchEvent(new Event('change'))")
        yield b.wait_for("the recorded segments", """
            return Number(document.getElementById('timeline').dataset.segments) >= 3""")
        drawn = yield b.js("return [document.querySelectorAll('#timeline .segment').length, "
                           "document.querySelectorAll('#timeline .gap').length]")
        self.assertGreaterEqual(drawn[0], 3)
        self.assertGreaterEqual(drawn[1], 1)
        yield b.screenshot("web-timeline")

        def click_at(ms):
            return b.js("""
                const tl = document.getElementById('timeline');
                const r = tl.getBoundingClientRect();
                const v = window.vss.view;
                const x = r.left + (arguments[0] - (v.end - v.span)) / v.span * r.width;
                for (const type of ['pointerdown', 'pointerup']) {
                  tl.dispatchEvent(new PointerEvent(type, {clientX: x, clientY: r.top + 10,
                                                           pointerId: 1, bubbles: true}));
                }
                const t = v.end - v.span + (x - r.left) / r.width * v.span;
                return Math.round(t);""", ms)

        first = segments[0]
        asked = yield click_at(first.start_ms + 1000)
        # a pixel of the timeline is about a second: the time asked is where it landed
        self.assertLess(abs(asked - (first.start_ms + 1000)), 1500)
        yield b.wait_for("playback pictures", """
            const t = document.querySelector('.tile');
            return t.dataset.mode === 'playback' && Number(t.dataset.frames) >= 10
                && t.dataset.footage""", timeout=40)
        footage = int((yield self.tile(b, "footage")))
        # it plays from the asked time: from the keyframe at or before it (GOP 2 s)
        self.assertGreater(footage, asked - 2100)
        self.assertLess(footage, asked + 4000)
        yield task.deferLater(reactor, 1.0, lambda: None)
        later = int((yield self.tile(b, "footage")))
        self.assertGreater(later - footage, 500, "the footage time does not advance")

        # the speed: the node sends the footage faster or slower (Scale), the page plays
        # it at that rate, and the footage time shown advances at that rate
        for speed, low, high in ((2, 1.6, 2.4), (0.5, 0.35, 0.65)):
            yield b.js("const s = document.getElementById('speed'); s.value = arguments[0]; "
                       "s.dispatchEvent(new Event('change'))", str(speed))
            yield task.deferLater(reactor, 1.0, lambda: None)
            advanced, elapsed = yield b.js_async("""
                const done = arguments[arguments.length - 1];
                const tile = document.querySelector('.tile');
                const f0 = Number(tile.dataset.footage), t0 = performance.now();
                setTimeout(() => done([Number(tile.dataset.footage) - f0,
                                       performance.now() - t0]), 3000);""")
            rate = advanced / elapsed
            self.assertTrue(low <= rate <= high, f"at {speed}x the footage ran at {rate:.2f}x")
        self.assertLess(int((yield self.tile(b, "footage"))), segments[-1].end_ms)
        playing = yield b.js("return window.vss.tiles[0].player.video.playbackRate")
        self.assertEqual(playing, 0.5)

        # pause: the footage time stays; play: it goes on
        yield b.js("document.getElementById('play-pause').click()")
        yield b.wait_for("the pause", "return document.getElementById('play-pause').textContent === 'Play'")
        yield task.deferLater(reactor, 0.5, lambda: None)
        paused = int((yield self.tile(b, "footage")))
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(int((yield self.tile(b, "footage"))), paused)

        # a click further on seeks the same playback there: into a later segment with
        # footage after the click (the last one may be cut short by the stop)
        last = [s for s in segments[1:] if s.end_ms - s.start_ms >= 3000][-1]
        target = yield click_at(last.start_ms + 1500)
        yield b.wait_for("the seek", """
            const f = Number(document.querySelector('.tile').dataset.footage);
            return f >= arguments[0] - 2100 && f""", target, timeout=30)
        seeked = int((yield self.tile(b, "footage")))
        self.assertLess(seeked, target + 4000)
        yield b.screenshot("web-playback")

    def tile(self, b, what):
        return b.js(f"return document.querySelector('.tile').dataset.{what}")

    @defer.inlineCallbacks
    def test_a_click_on_an_event_plays_back_from_its_time(self):
        b = yield harness.start_browser(self)
        yield b.open(self.url)
        yield b.wait_for("the login page", "return document.body.dataset.state === 'login'")
        yield b.js("""
            document.getElementById('user').value = 'alice';
            document.getElementById('password').value = 'alice-pw';
            document.getElementById('login-form').requestSubmit();""")
        yield b.wait_for("the events", "return document.getElementById('event-list').dataset.ready")
        # the real vss-pu raises an alarm input (SIGUSR1) in the middle of a recording
        segments = yield self.record(12, during=lambda: self.pu.signal(signal.SIGUSR1))
        self.assertGreaterEqual(len(segments), 2, segments)
        key = yield b.wait_for("the alarm input in the list", """
            const li = [...document.querySelectorAll('.event')]
                .find((x) => x.querySelector('.type').textContent === 'alarm-in');
            return li && li.dataset.event""", timeout=10)
        at = int((yield b.js(event_row(key) + ".dataset.time")))
        self.assertTrue(segments[0].start_ms < at < segments[-1].end_ms, (at, segments))
        yield b.js(event_row(key) + ".click()")
        yield b.wait_for("playback pictures", """
            const t = document.querySelector('.tile');
            return t.dataset.device === 'cam-a' && t.dataset.mode === 'playback'
                && Number(t.dataset.frames) >= 10 && t.dataset.footage""", timeout=40)
        footage = int((yield self.tile(b, "footage")))
        # from the keyframe at or before the event's time (GOP 2 s)
        self.assertGreater(footage, at - 2100)
        self.assertLess(footage, at + 4000)
        cursor = yield b.js("return !document.querySelector('#timeline .cursor').hidden")
        self.assertTrue(cursor, "the event's time is not on the timeline")
        yield b.screenshot("web-event-playback")
