"""
No secret in a log: ``vss.redact`` on hand-written URLs and messages, and the access log
of ``vss.redact.Site`` (every HTTP listener of the node and of CMS) over real TCP.
"""

import os
import socket

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web import resource

from vss.redact import REDACTED, Site, redact


class RedactTests(unittest.SynchronousTestCase):
    def test_secret_parameters_lose_their_value(self):
        for text, shown in [
            ("/export?token=eDF8Y2FtMXww.Zm9v", "/export?token=REDACTED"),
            ("/export?token=a.b&x=1", "/export?token=REDACTED&x=1"),
            ("/e?x=1&Access_Token=a;password=b&pwd=c&api_key=d&sig=e&Session=f&cred=g",
             "/e?x=1&Access_Token=REDACTED;password=REDACTED&pwd=REDACTED&api_key=REDACTED"
             "&sig=REDACTED&Session=REDACTED&cred=REDACTED"),
            ("/e?to%6Ben=abc", "/e?to%6Ben=REDACTED"),  # an encoded name
            ("/e?x=1?token=abc&y=2", "/e?x=1?token=REDACTED&y=2"),  # a '?' in a value
            ("rtsp://h:1/live/a/main?token=x.y/trackID=0", "rtsp://h:1/live/a/main?token=REDACTED"),
            ("rtsp://admin:hunter2@cam:554/s?key=abc", "rtsp://admin:REDACTED@cam:554/s?key=REDACTED"),
            ("cannot open 'rtsp://127.0.0.1:9/live/a/main?token=abc.def': refused",
             "cannot open 'rtsp://127.0.0.1:9/live/a/main?token=REDACTED': refused"),
            ('{"message":"x: rtsp://h/live/a/main?token=t1"}',
             '{"message":"x: rtsp://h/live/a/main?token=REDACTED"}'),
        ]:
            self.assertEqual(redact(text), shown, text)
            self.assertEqual(redact(text.encode()), shown.encode(), text)

    def test_what_is_not_a_secret_is_left_alone(self):
        for text in ("/api/v1/devices?limit=50&cursor=abc", "rtsp://user@cam/s", "/export",
                     "/e?token=", "/e?token", "no url here", "a=b c=d"):
            self.assertEqual(redact(text), text)


class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"


def get(port, target, referer):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nReferer: {referer}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


class AccessLogTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_the_access_log_shows_no_token(self):
        log_path = os.path.abspath(self.mktemp())
        site = Site(Page(), logPath=log_path)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        secret = "c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"
        reply = yield threads.deferToThread(
            get, port.getHost().port, f"/export?token={secret}&page=2",
            f"http://u:pw-{secret}@portal/view?session={secret}")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply)
        site._logFile.flush()
        with open(log_path) as f:
            text = f.read()
        self.assertIn(f'"GET /export?token={REDACTED}&page=2 HTTP/1.1" 200', text)
        self.assertIn(f'"http://u:{REDACTED}@portal/view?session={REDACTED}"', text)
        self.assertNotIn(secret, text)
        self.assertTrue(site.displayTracebacks is False)
