"""
The browser client on the node's HTTP listener (``--http-listen``; TLS with an
``ssl:`` endpoint): one listener, one site, whose root resource sends

- ``/`` the page, ``/wall`` the page of a TV wall's screen, ``/static/<file>`` its files (``vss/web/static``, shipped in the
  package; read once at start, nothing fetched from elsewhere: plain ES modules, no
  build step),
- ``/ws/cu`` the CU link over a WebSocket (``vss.web.signalling``),
- ``/media/live/<device>/<stream>?token=`` a browser's media (``vss.web.media``),
- ``/hls/live/<device>/<stream>/index.m3u8?token=`` the same stream as HLS with
  fragmented MP4, and its media playlist and segments (``vss.web.hls``),
- everything else to the resource it was given as ``fallback`` (the export download,
  which keeps its own rules: ``GET /export?token=`` only, 404 else).

Every page answer carries a Content-Security-Policy that allows this origin only (no
inline script, no other host), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` (the tokens of media URLs never leak in a Referer) and no caching of the
page itself.
"""

import mimetypes
import os

from autobahn.twisted.resource import WebSocketResource
from twisted.application import service
from twisted.web import resource

from vss.web.hls import PREFIX as HLS_PREFIX
from vss.web.hls import HlsService
from vss.web.media import PREFIX as MEDIA_PREFIX
from vss.web.media import MediaService
from vss.web.signalling import signalling_factory

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".ico": "image/x-icon", ".json": "application/json"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "media-src 'self' blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def load_static(root=STATIC):
    """{"/static/<relative path>": (content type, bytes)} of every file under ``root``,
    ``/`` for ``index.html`` and ``/wall`` for ``wall.html``."""
    files = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            ext = os.path.splitext(name)[1].lower()
            kind = TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            with open(full, "rb") as f:
                files["/static/" + rel] = (kind, f.read())
    if "/static/index.html" in files:
        files["/"] = files["/static/index.html"]
    if "/static/wall.html" in files:  # a TV wall's screen (docs/protocol.md 9.9)
        files["/wall"] = files["/static/wall.html"]
    return files


def send_static(request, found):
    """Answer ``request`` with one file of ``load_static`` (``(type, bytes)``): GET and
    HEAD only, with the security headers, revalidated on every load."""
    if request.method not in (b"GET", b"HEAD"):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, HEAD")
        return b"method not allowed\n"
    kind, body = found
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)
    request.setHeader(b"content-type", kind.encode())
    request.setHeader(b"cache-control", b"no-cache")
    return body


class WebRoot(resource.Resource):
    """The node's HTTP root with the browser client (see the module docstring)."""

    isLeaf = True

    def __init__(self, files, signalling, media, hls, fallback):
        super().__init__()
        self.files = files
        self.signalling = signalling
        self.media = media
        self.hls = hls
        self.fallback = fallback

    def render(self, request):
        path = request.path.decode("latin-1")
        if path == "/ws/cu":
            return self.signalling.render(request)
        if path.startswith(MEDIA_PREFIX + "/"):
            return self.media.render(request)
        if path.startswith(HLS_PREFIX + "/"):
            return self.hls.render(request)
        if path == "/index.html":
            path = "/"
        found = self.files.get(path)
        if found is None:
            return self.fallback.render(request)
        return send_static(request, found)


class WebClient(service.Service):
    """The browser client of a node: the media side (packagers, viewers) and the HTTP
    root resource that serves the page, the CU link and the media over WebSockets.
    ``rtsp`` is the node's SS, ``links`` the RGM's CU link factory."""

    name = "web"

    def __init__(self, rtsp, links, clock, static=STATIC):
        self.media = MediaService(rtsp, clock)
        self.hls = HlsService(self.media, clock)
        self.files = load_static(static)
        self.links = links

    def resource(self, fallback):
        """The root resource of the node's HTTP site, ``fallback`` answering what is
        not the client's (the export)."""
        return WebRoot(self.files, WebSocketResource(signalling_factory(self.links)),
                       WebSocketResource(self.media.factory()), self.hls, fallback)

    def stopService(self):
        self.hls.stop()
        self.media.stop()
        return super().stopService()

    def status(self):
        return {**self.media.status(), "hls": self.hls.status()}
