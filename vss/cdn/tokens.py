"""
Short-lived stream tokens: the CDN module issues them, the streaming server checks them.

A token is ``<payload>.<signature>``, both URL-safe base64 without padding. The payload
is ``v1|<path>|<methods>|<expiry>|<id>`` where path is ``/live/<device>/<stream>``,
methods a comma list of ``play`` / ``publish`` / ``record`` and expiry whole seconds of
the injected clock. ``record`` goes with ``play`` in the tokens of the node's own
recording children: they read a live stream at their own pace, so the streaming server
does not keep them within the live lag bound (``vss.rtsp.fanout.LagWatch``). The signature is HMAC-SHA256 of the payload with the node secret.

A token is only needed to *start* a session (DESCRIBE, SETUP, ANNOUNCE, RECORD, PLAY
without a session): the server does not cut a session that is already playing when the
token expires.
"""

import base64
import hashlib
import hmac
import os

from zope.interface import implementer

from vss.interfaces import IStreamAuthorizer

METHODS = ("play", "publish", "record")
DEFAULT_TTL = 60


def _b64e(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text):
    text = text.encode("ascii") if isinstance(text, str) else text
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _check_path(path):
    parts = path.split("/")
    if len(parts) != 4 or parts[0] or parts[1] != "live" or not parts[2] or not parts[3]:
        raise ValueError(f"not a stream path: {path!r}")
    if "|" in path:
        raise ValueError("'|' is not allowed in a stream path")


class TokenIssuer:
    """Signs tokens for one node secret. ``clock`` provides ``seconds()``."""

    def __init__(self, secret, clock=None, ttl=DEFAULT_TTL):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if len(secret) < 16:
            raise ValueError("the node secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock
        self.ttl = ttl

    def _now(self):
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock.seconds()

    def issue(self, path, methods=("play",), ttl=None):
        """A token allowing ``methods`` on ``path`` for ``ttl`` seconds from now."""
        _check_path(path)
        methods = tuple(methods)
        if not methods or any(m not in METHODS for m in methods):
            raise ValueError(f"methods must be among {METHODS}")
        expiry = int(self._now() + (self.ttl if ttl is None else ttl))
        token_id = _b64e(os.urandom(9))
        payload = f"v1|{path}|{','.join(methods)}|{expiry}|{token_id}".encode()
        sig = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return f"{_b64e(payload)}.{_b64e(sig)}"

    def verify(self, token, path, method):
        """(True, info) or (False, reason). ``info`` is a dict: path, device, stream,
        methods, expiry, id."""
        if not token or not isinstance(token, str) or len(token) > 1024:
            return False, "missing token"
        p64, sep, s64 = token.partition(".")
        if not sep:
            return False, "malformed token"
        try:
            payload = _b64d(p64)
            sig = _b64d(s64)
        except (ValueError, UnicodeEncodeError):
            return False, "malformed token"
        good = hmac.new(self._secret, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(good, sig):
            return False, "bad signature"
        try:
            version, tpath, methods, expiry, token_id = payload.decode("utf-8").split("|")
            expiry = int(expiry)
        except ValueError:
            return False, "malformed token"
        if version != "v1":
            return False, "unknown token version"
        if tpath != path:
            return False, "token for another path"
        methods = methods.split(",")
        if method not in methods:
            return False, f"token does not allow {method}"
        if self._now() >= expiry:
            return False, "token expired"
        _, _, device, stream = tpath.split("/")
        return True, {"path": tpath, "device": device, "stream": stream,
                      "methods": tuple(methods), "expiry": expiry, "id": token_id}


@implementer(IStreamAuthorizer)
class TokenAuthorizer:
    """The streaming server's ``IStreamAuthorizer`` over a ``TokenIssuer``'s secret."""

    def __init__(self, issuer):
        self.issuer = issuer

    def check(self, token, path, method):
        return self.issuer.verify(token, path, method)
