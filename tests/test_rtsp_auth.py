"""Basic and Digest (RFC 2617) authentication, both sides."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from vss.rtsp.auth import DigestClient, DigestServer, basic_header, md5hex, parse_challenge


class DigestTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(5000)
        self.server = DigestServer({"admin": "s3cret"}, self.clock, realm="cam")

    def client(self, password="s3cret"):
        scheme, params = parse_challenge(self.server.challenges()[0])
        self.assertEqual(scheme, "digest")
        return DigestClient("admin", password, params)

    def test_rfc2617_example(self):
        # RFC 2617 3.5: the response for "Mufasa" / "Circle Of Life"
        c = DigestClient("Mufasa", "Circle Of Life", {
            "realm": "testrealm@host.com", "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "qop": "auth,auth-int", "opaque": "5ccc069c403ebaf9f0171e9517f40e41"})
        ha1 = md5hex("Mufasa:testrealm@host.com:Circle Of Life")
        ha2 = md5hex("GET:/dir/index.html")
        header = c.header("GET", "/dir/index.html")
        cnonce = header.split('cnonce="')[1].split('"')[0]
        expect = md5hex(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:{cnonce}:auth:{ha2}")
        self.assertIn(f'response="{expect}"', header)
        self.assertIn('opaque="5ccc069c403ebaf9f0171e9517f40e41"', header)

    def test_round_trip(self):
        c = self.client()
        uri = "rtsp://h/live/a/main"
        self.assertEqual(self.server.check(c.header("DESCRIBE", uri), "DESCRIBE", uri), "admin")
        self.assertEqual(self.server.check(c.header("SETUP", uri), "SETUP", uri), "admin")

    def test_wrong_password_method_or_uri(self):
        uri = "rtsp://h/live/a/main"
        self.assertIsNone(self.server.check(self.client("x").header("PLAY", uri), "PLAY", uri))
        header = self.client().header("PLAY", uri)
        self.assertIsNone(self.server.check(header, "RECORD", uri))
        self.assertIsNone(self.server.check(header, "PLAY", "rtsp://h/live/b/main"))

    def test_stale_or_forged_nonce(self):
        c = self.client()
        self.clock.advance(301)
        self.assertIsNone(self.server.check(c.header("PLAY", "u"), "PLAY", "u"))
        c.nonce = "5300:" + "0" * 24
        self.assertIsNone(self.server.check(c.header("PLAY", "u"), "PLAY", "u"))

    def test_basic(self):
        self.assertEqual(self.server.check(basic_header("admin", "s3cret"), "PLAY"), "admin")
        self.assertIsNone(self.server.check(basic_header("admin", "nope"), "PLAY"))
        self.assertIsNone(self.server.check("Basic !!!", "PLAY"))
        self.assertIsNone(self.server.check(None, "PLAY"))
