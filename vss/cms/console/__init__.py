"""
The operator console: MMS in a browser, on the CMS admin listener (``twistd vss-cms
--admin-listen``), beside the admin API it uses.

- ``api.py``: ``ConsoleApi``, the admin API with operators' sessions, roles, the CSRF
  defence and the audit of every change; the routes ``/session``, ``/operators`` and
  ``/audit``.
- ``static/``: the page, plain ES modules and a style sheet shipped in the package
  (read once at start; nothing is fetched from elsewhere, nothing is built). It shares
  the node's web client's base styles and icon (``vss/web/static``: ``base.css``,
  ``favicon.svg``, served under ``/console/web/``) and its way of serving files
  (``vss.web.site``: the same Content-Security-Policy and headers).

``make_console_site(backend, accounts)`` builds the whole site of the admin listener:
``/`` sends a browser to ``/console/``; ``/console/...`` is the page and its files;
``/api/v1/...`` the admin API (``vss.cms.mms``) answered by ``ConsoleApi``.
"""

import os

from twisted.web import resource

from vss.cms import mms
from vss.cms.console.api import ConsoleApi, add_routes
from vss.cms.console.openapi import console_openapi
from vss.redact import Site
from vss.web.site import STATIC as WEB_STATIC
from vss.web.site import load_static, send_static

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PREFIX = "/console"
#: the files of the node's web client the console uses too
SHARED = ("base.css", "favicon.svg")


def console_files(static=STATIC, web_static=WEB_STATIC):
    """{path under /console: (type, bytes)}: the page, its files and the shared ones."""
    files = {}
    for path, found in load_static(static).items():
        files[PREFIX + path] = found
    web = load_static(web_static)
    for name in SHARED:
        files[f"{PREFIX}/web/{name}"] = web[f"/static/{name}"]
    files[PREFIX + "/index.html"] = files[PREFIX + "/"]
    return files


class ConsolePages(resource.Resource):
    """``/console/...``: the files of the page (404 for anything else)."""

    isLeaf = True

    def __init__(self, files):
        super().__init__()
        self.files = files

    def render(self, request):
        path = request.path.decode("latin-1")
        if path == PREFIX:
            return _redirect(request, PREFIX + "/")
        found = self.files.get(path)
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        return send_static(request, found)


class ToConsole(resource.Resource):
    """``/``: a browser is sent to the console."""

    isLeaf = True

    def render(self, request):
        if request.path != b"/":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        return _redirect(request, PREFIX + "/")


def _redirect(request, to):
    request.setResponseCode(302)
    request.setHeader(b"location", to.encode())
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return f"see {to}\n".encode()


def make_console_site(backend, accounts, files=None):
    """The site of the admin listener: the admin API answered by ``ConsoleApi`` (with
    ``accounts``, a ``vss.cms.operators.OperatorAccounts``) and the console's page."""
    api = ConsoleApi(backend, accounts)
    root, v1 = mms.make_admin_resource(backend, api=api)
    add_routes(v1, api)
    v1.putChild(b"openapi.json", ConsoleOpenApi(api))
    root.putChild(b"", ToConsole())
    root.putChild(b"console", ConsolePages(files if files is not None else console_files()))
    site = Site(root, requestFactory=mms.AdminRequest, parsePOSTFormSubmission=False)
    site.noisy = False
    return site


class ConsoleOpenApi(mms.JsonResource):
    def do_GET(self, call):
        return 200, console_openapi(mms.openapi_document())
