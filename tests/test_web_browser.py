"""
The browser client in a real headless Chromium (``vss.testing.browser``), against a
central platform and a node running in this process over real TCP, with a real
``vss-pu`` camera publishing H.264: the person logs in on the node's web address,
watches live video (decoded pictures advance, their latency is measured), moves the
camera and sees its position change, clicks the recordings timeline and plays back from
that time (the footage time of the pictures shown), and gets a clear message for a
wrong password, a camera they lost access to and a session the node ended. The phone
layout (390 x 844) is screenshotted. Skipped where no Chromium is installed.
"""

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.testing import browser as harness
from vss.testing.platform import start_platform, verifier

ALL = int(Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD)


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
        yield self.p.start_pu("node-a", "cam-a", "cam-a-s")
        self.url = f"http://127.0.0.1:{self.p.port('node-a', 'http')}/"

    @defer.inlineCallbacks
    def record(self, seconds, segment_seconds=4):
        from vss.cdn.service import CDNRecording

        rec = CDNRecording(self.node.cdn, self.node.recorder)
        yield rec.start("cam-a", 0, 0, segment_seconds)
        yield task.deferLater(reactor, seconds, lambda: None)
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
