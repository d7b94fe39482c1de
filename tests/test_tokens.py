"""Stream tokens: signed, short-lived, bound to path and method."""

from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.interfaces import IStreamAuthorizer

SECRET = b"node-secret-0123456789"


class TokenTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.issuer = TokenIssuer(SECRET, clock=self.clock)
        self.auth = TokenAuthorizer(self.issuer)

    def test_interface(self):
        self.assertTrue(verifyObject(IStreamAuthorizer, self.auth))

    def test_valid_play(self):
        token = self.issuer.issue("/live/cam1/main")
        ok, info = self.auth.check(token, "/live/cam1/main", "play")
        self.assertTrue(ok, info)
        self.assertEqual((info["device"], info["stream"]), ("cam1", "main"))
        self.assertEqual(info["expiry"], 1_000_060)

    def test_url_safe(self):
        token = self.issuer.issue("/live/cam1/main", ("play", "publish"))
        self.assertTrue(set(token) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."))

    def test_expiry(self):
        token = self.issuer.issue("/live/cam1/main")
        self.clock.advance(59)
        self.assertTrue(self.auth.check(token, "/live/cam1/main", "play")[0])
        self.clock.advance(1)
        self.assertEqual(self.auth.check(token, "/live/cam1/main", "play"),
                         (False, "token expired"))

    def test_other_device_or_stream(self):
        token = self.issuer.issue("/live/cam1/main")
        self.assertFalse(self.auth.check(token, "/live/cam2/main", "play")[0])
        self.assertFalse(self.auth.check(token, "/live/cam1/sub", "play")[0])
        self.assertFalse(self.auth.check(token, "/live/cam10/main", "play")[0])

    def test_method_bound(self):
        token = self.issuer.issue("/live/cam1/main", ("play",))
        self.assertFalse(self.auth.check(token, "/live/cam1/main", "publish")[0])
        token = self.issuer.issue("/live/cam1/main", ("publish",))
        self.assertTrue(self.auth.check(token, "/live/cam1/main", "publish")[0])
        self.assertFalse(self.auth.check(token, "/live/cam1/main", "play")[0])

    def test_tampered(self):
        token = self.issuer.issue("/live/cam1/main")
        payload, sig = token.split(".")
        other = self.issuer.issue("/live/cam2/main").split(".")[0]
        self.assertFalse(self.auth.check(f"{other}.{sig}", "/live/cam2/main", "play")[0])
        flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
        self.assertFalse(self.auth.check(f"{payload}.{flipped}", "/live/cam1/main", "play")[0])

    def test_other_secret(self):
        token = TokenIssuer(b"another-secret-0123456", clock=self.clock).issue("/live/cam1/main")
        self.assertEqual(self.auth.check(token, "/live/cam1/main", "play"),
                         (False, "bad signature"))

    def test_garbage(self):
        for bad in (None, "", "x", "....", "a.b", "é.é", "x" * 5000):
            ok, reason = self.auth.check(bad, "/live/cam1/main", "play")
            self.assertFalse(ok)
            self.assertIsInstance(reason, str)

    def test_unique_ids(self):
        a = self.issuer.issue("/live/cam1/main")
        b = self.issuer.issue("/live/cam1/main")
        self.assertNotEqual(a, b)
        self.assertNotEqual(self.auth.check(a, "/live/cam1/main", "play")[1]["id"],
                            self.auth.check(b, "/live/cam1/main", "play")[1]["id"])

    def test_bad_arguments(self):
        self.assertRaises(ValueError, TokenIssuer, b"short")
        self.assertRaises(ValueError, self.issuer.issue, "/live/cam1", ("play",))
        self.assertRaises(ValueError, self.issuer.issue, "/live/cam1/main", ("admin",))
        self.assertRaises(ValueError, self.issuer.issue, "/live/c|m/main", ("play",))
