"""
HTTP Basic and Digest (RFC 2617, MD5) authentication for RTSP, both sides, sans-IO.
"""

import base64
import hashlib
import hmac
import os


def md5hex(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def parse_challenge(value):
    """'Digest realm="x", nonce="y"' -> ('digest', {'realm': 'x', 'nonce': 'y'})."""
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), parse_auth_params(rest)


def parse_auth_params(text):
    out = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,\t":
            i += 1
        j = text.find("=", i)
        if j < 0:
            break
        key = text[i:j].strip().lower()
        i = j + 1
        if i < n and text[i] == '"':
            k = i + 1
            buf = []
            while k < n and text[k] != '"':
                if text[k] == "\\" and k + 1 < n:
                    k += 1
                buf.append(text[k])
                k += 1
            out[key] = "".join(buf)
            i = k + 1
        else:
            k = text.find(",", i)
            k = n if k < 0 else k
            out[key] = text[i:k].strip()
            i = k
    return out


def basic_header(username, password):
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class DigestClient:
    """Answers a Digest challenge for successive requests (nonce count kept)."""

    def __init__(self, username, password, challenge):
        self.username = username
        self.password = password
        self.realm = challenge.get("realm", "")
        self.nonce = challenge.get("nonce", "")
        self.opaque = challenge.get("opaque")
        qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
        self.qop = "auth" if "auth" in qops else None
        algorithm = challenge.get("algorithm", "MD5")
        if algorithm.upper() != "MD5":
            raise ValueError(f"unsupported digest algorithm {algorithm}")
        self.nc = 0

    def header(self, method, uri):
        ha1 = md5hex(f"{self.username}:{self.realm}:{self.password}")
        ha2 = md5hex(f"{method}:{uri}")
        parts = [f'username="{self.username}"', f'realm="{self.realm}"',
                 f'nonce="{self.nonce}"', f'uri="{uri}"']
        if self.qop:
            self.nc += 1
            nc = f"{self.nc:08x}"
            cnonce = os.urandom(8).hex()
            resp = md5hex(f"{ha1}:{self.nonce}:{nc}:{cnonce}:{self.qop}:{ha2}")
            parts += [f"qop={self.qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            resp = md5hex(f"{ha1}:{self.nonce}:{ha2}")
        parts.append(f'response="{resp}"')
        if self.opaque is not None:
            parts.append(f'opaque="{self.opaque}"')
        parts.append("algorithm=MD5")
        return "Digest " + ", ".join(parts)


class DigestServer:
    """Checks Basic or Digest credentials against ``users`` (name -> password), or,
    Digest only, against ``ha1_for`` (name -> HA1 as 32 hex digits, or None): a server
    that keeps no password (stream credentials, ``vss.streamcreds``).

    Nonces are stateless: ``<time>:<hmac>`` with the server's random key, valid for
    ``nonce_ttl`` seconds of the injected clock."""

    def __init__(self, users, clock, realm="vss", nonce_ttl=300, allow_basic=True,
                 ha1_for=None):
        self.users = dict(users or {})
        self.ha1_for = ha1_for
        if ha1_for is not None:
            allow_basic = False  # Basic needs the password itself
        self.clock = clock
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.allow_basic = allow_basic
        self._key = os.urandom(16)

    def _nonce(self, stamp):
        mac = hmac.new(self._key, str(stamp).encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}:{mac}"

    def challenges(self):
        """WWW-Authenticate header values."""
        out = [f'Digest realm="{self.realm}", nonce="{self._nonce(int(self.clock.seconds()))}"'
               ', algorithm=MD5, qop="auth"']
        if self.allow_basic:
            out.append(f'Basic realm="{self.realm}"')
        return out

    def check(self, header, method, uri=None):
        """The user name if ``header`` (Authorization value) is valid for ``method``
        (and, for Digest, the request ``uri`` when given), else None."""
        if not header:
            return None
        scheme, _, rest = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self.allow_basic:
            try:
                name, _, pw = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            good = self.users.get(name)
            if good is not None and hmac.compare_digest(good.encode(), pw.encode()):
                return name
            return None
        if scheme != "digest":
            return None
        p = parse_auth_params(rest)
        name = p.get("username")
        nonce = p.get("nonce", "")
        if name is None or p.get("realm") != self.realm or "response" not in p:
            return None
        if p.get("algorithm", "MD5").upper() != "MD5":
            return None
        if uri is not None and p.get("uri") != uri:
            return None
        stamp, _, _ = nonce.partition(":")
        # Client text is compared as bytes: compare_digest refuses non-ASCII str.
        if not (stamp.isascii() and stamp.isdigit()) or not hmac.compare_digest(
                self._nonce(int(stamp)).encode(), nonce.encode("utf-8")):
            return None
        if self.clock.seconds() - int(stamp) > self.nonce_ttl:
            return None
        if self.ha1_for is not None:
            ha1 = self.ha1_for(name)
        else:
            good = self.users.get(name)
            ha1 = None if good is None else md5hex(f"{name}:{self.realm}:{good}")
        if ha1 is None:
            return None
        ha2 = md5hex(f"{method}:{p.get('uri', '')}")
        if p.get("qop"):
            expect = md5hex(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:"
                            f"{p['qop']}:{ha2}")
        else:
            expect = md5hex(f"{ha1}:{nonce}:{ha2}")
        if hmac.compare_digest(expect.encode(), p["response"].encode("utf-8")):
            return name
        return None
