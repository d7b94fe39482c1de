"""
Secrets never reach a log line. A URL's query parameters that carry one (the name holds
``token``, ``secret``, ``pass``, ``pwd``, ``key``, ``sig``, ``auth``, ``cred`` or
``session``, in any case, percent-encoded or not) keep their name and lose their value,
and the password of a URL's user part is dropped:

    /export?token=eDF8Y2FtMXww.Zm9v&x=1    ->  /export?token=REDACTED&x=1
    rtsp://admin:hunter2@cam/live?key=abc  ->  rtsp://admin:REDACTED@cam/live?key=REDACTED

``redact(text)`` does it anywhere in a text (a URL, a request target, an error message
that quotes a URL), ``str`` or ``bytes``. ``Site`` is the ``twisted.web`` site every HTTP
listener of the node and of CMS uses: its access log line (the combined log format of
``twisted.web``) shows the request target and the ``Referer`` redacted.
"""

import re
from urllib.parse import unquote

from twisted.web import http, server
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

REDACTED = "REDACTED"
SECRET_NAME = re.compile(r"token|secret|pass|pwd|key|sig|auth|cred|session", re.IGNORECASE)
# one query parameter: the separator before it, its name, its value
_PARAM = re.compile(r"([?&;])([^=&;#?\s'\"<>]*)=([^&;#\s'\"<>]*)")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@?#'\"<>]*):[^/\s@?#'\"<>]*@")


def _param(match):
    sep, name, value = match.groups()
    if value and SECRET_NAME.search(unquote(name.replace("+", " "))):
        return f"{sep}{name}={REDACTED}"
    return f"{sep}{name}={_PARAM.sub(_param, value)}"  # '?x=1?token=...': look inside


def redact(text):
    """``text`` (str or bytes) with the secrets of the URLs in it replaced by
    ``REDACTED`` (see the module docstring)."""
    if isinstance(text, bytes | bytearray):
        return redact(bytes(text).decode("latin-1")).encode("latin-1")
    if "=" in text:
        text = _PARAM.sub(_param, text)
    if "@" in text:
        text = _USERINFO.sub(rf"\1:{REDACTED}@", text)
    return text


class _Shown:
    """A request as its access log line shows it: target and Referer redacted."""

    def __init__(self, request):
        self._request = request
        self.uri = redact(request.uri or b"")

    def getHeader(self, name):
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact(value)
        return value

    def __getattr__(self, name):
        return getattr(self._request, name)


@provider(IAccessLogFormatter)
def access_log_line(timestamp, request):
    """The combined log format line of ``request`` with its secrets redacted."""
    return http.combinedLogFormatter(timestamp, _Shown(request))


class Site(server.Site):
    """A ``twisted.web`` site whose access log never shows a secret (``redact``) and
    whose error pages never show a traceback."""

    displayTracebacks = False

    def __init__(self, resource, **kwargs):
        kwargs.setdefault("logFormatter", access_log_line)
        super().__init__(resource, **kwargs)
