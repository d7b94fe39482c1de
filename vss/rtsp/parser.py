"""
A sans-IO, bounded RTSP 1.0 (RFC 2326) message parser and response builders.

``MessageParser.feed(data)`` returns the list of whole items found so far, in order:

- ``Request`` (method, uri, version, headers, body) for a server,
- ``Response`` (version, status, reason, headers, body) for a client,
- ``Interleaved`` (channel, data): a ``$``-framed binary frame (RFC 2326 10.12),
- ``ParseError`` (status, reason): the input was malformed; the parser is dead and
  every later ``feed`` returns nothing. The caller answers ``status`` and closes.

Bounds: the start line and headers are at most ``MAX_HEADER`` bytes, a body at most
``MAX_BODY`` bytes (``Content-Length``). Interleaved frames are at most 65535 bytes by
construction. Nothing here raises on bad input and nothing imports Twisted.
"""

from dataclasses import dataclass, field

MAX_HEADER = 8 * 1024
MAX_BODY = 64 * 1024

REASONS = {
    200: "OK",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    457: "Invalid Range",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
}

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _is_token(text):
    return bool(text) and all(ord(c) in _TOKEN_CHARS for c in text)


class Headers:
    """Case-insensitive header map keeping order and repeated fields."""

    __slots__ = ("_items",)

    def __init__(self, items=()):
        self._items = [(k, v) for k, v in items]

    def get(self, name, default=None):
        low = name.lower()
        for k, v in self._items:
            if k.lower() == low:
                return v
        return default

    def get_all(self, name):
        low = name.lower()
        return [v for k, v in self._items if k.lower() == low]

    def __contains__(self, name):
        return self.get(name) is not None

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def items(self):
        return list(self._items)

    def __repr__(self):
        return f"Headers({self._items!r})"


MAX_CSEQ_DIGITS = 10


def valid_cseq(value):
    """True when ``value`` (a CSeq header's text) is an RTSP sequence number, 1*DIGIT
    (RFC 2326 12.17), of at most ``MAX_CSEQ_DIGITS`` digits."""
    return value is not None and 0 < len(value) <= MAX_CSEQ_DIGITS and value.isascii() \
        and value.isdigit()


@dataclass
class Request:
    method: str
    uri: str
    version: str
    headers: Headers
    body: bytes = b""

    @property
    def cseq(self):
        return self.headers.get("CSeq")

    def cseq_problem(self):
        """Why the request's CSeq is not acceptable (it is missing, repeated or not a
        number: answered 400, RFC 2326 12.17), or None."""
        values = self.headers.get_all("CSeq")
        if not values:
            return "Missing CSeq"
        if len(values) > 1:
            return "Repeated CSeq"
        if not valid_cseq(values[0]):
            return "Bad CSeq"
        return None


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: Headers
    body: bytes = b""


@dataclass
class Interleaved:
    channel: int
    data: bytes


@dataclass
class ParseError:
    status: int
    reason: str
    cseq: str | None = field(default=None)


class MessageParser:
    """Incremental parser of one direction of an RTSP connection.

    ``kind`` is ``"request"`` (server side) or ``"response"`` (client side).
    """

    def __init__(self, kind="request", max_header=MAX_HEADER, max_body=MAX_BODY):
        if kind not in ("request", "response"):
            raise ValueError(kind)
        self.kind = kind
        self.max_header = max_header
        self.max_body = max_body
        self._buf = bytearray()
        self._dead = False
        self._pending = None  # (head item, body length) while waiting for a body

    @property
    def dead(self):
        return self._dead

    def buffered(self):
        """Bytes held while waiting for the rest of an item (bounded)."""
        return len(self._buf)

    def feed(self, data):
        if self._dead:
            return []
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while pos < end:
            if self._pending is not None:
                item, length = self._pending
                if end - pos < length:
                    break
                item.body = bytes(buf[pos:pos + length])
                pos += length
                self._pending = None
                out.append(item)
                continue
            if buf[pos] == 0x24:  # '$' interleaved frame
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if end - pos < 4 + length:
                    break
                out.append(Interleaved(buf[pos + 1], bytes(buf[pos + 4:pos + 4 + length])))
                pos += 4 + length
                continue
            if buf[pos] in (0x0D, 0x0A):  # tolerate stray line ends between messages
                pos += 1
                continue
            # The head ends at its first empty line, whichever line ends are used (CRLF,
            # or bare LF): the earliest of the two forms, so that a message parses the
            # same whether it arrives whole or in pieces.
            limit = min(end, pos + self.max_header + 4)
            crlf = buf.find(b"\n\r\n", pos, limit)
            lf = buf.find(b"\n\n", pos, limit)
            if crlf < 0 and lf < 0:
                if end - pos > self.max_header:
                    out.append(self._fail(400, "Header Too Large"))
                    return out
                break
            if lf < 0 or 0 <= crlf < lf:
                head_end, next_pos = crlf, crlf + 3
            else:
                head_end, next_pos = lf, lf + 2
            if head_end > pos and buf[head_end - 1] == 0x0D:
                head_end -= 1
            if head_end - pos > self.max_header:
                out.append(self._fail(400, "Header Too Large"))
                return out
            item = self._parse_head(bytes(buf[pos:head_end]))
            pos = next_pos
            if isinstance(item, ParseError):
                out.append(item)
                self._dead = True
                self._buf = bytearray()
                return out
            length = item.headers.get("Content-Length")
            if length is not None:
                length = length.strip()
                if not (length.isascii() and length.isdigit()) or len(length) > 9:
                    out.append(self._fail(400, "Bad Content-Length", item))
                    return out
                length = int(length)
                if length > self.max_body:
                    out.append(self._fail(413, REASONS[413], item))
                    return out
                if length:
                    self._pending = (item, length)
                    continue
            out.append(item)
        if pos:
            del buf[:pos]
        return out

    def _fail(self, status, reason, item=None):
        self._dead = True
        self._buf = bytearray()
        self._pending = None
        cseq = item.headers.get("CSeq") if item is not None else None
        return ParseError(status, reason, cseq)

    def _parse_head(self, head):
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            return ParseError(400, "Bad Encoding")
        lines = text.replace("\r\n", "\n").split("\n")
        start = lines[0]
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t":  # obsolete line folding
                if not headers:
                    return ParseError(400, "Bad Header")
                k, v = headers[-1]
                headers[-1] = (k, v + " " + line.strip())
                continue
            name, sep, value = line.partition(":")
            if not sep or not _is_token(name):
                return ParseError(400, "Bad Header")
            headers.append((name, value.strip()))
        hdrs = Headers(headers)
        parts = start.split(" ")
        if self.kind == "request":
            if len(parts) != 3 or not parts[0] or not parts[1]:
                return ParseError(400, "Bad Request Line", hdrs.get("CSeq"))
            method, uri, version = parts
            if not _is_token(method):
                return ParseError(400, "Bad Method", hdrs.get("CSeq"))
            if not version.startswith("RTSP/"):
                return ParseError(400, "Bad Request Line", hdrs.get("CSeq"))
            if version != "RTSP/1.0":
                return ParseError(505, REASONS[505], hdrs.get("CSeq"))
            return Request(method, uri, version, hdrs)
        if len(parts) < 2 or not parts[0].startswith("RTSP/") or not parts[1].isascii() \
                or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            return ParseError(400, "Bad Status Line")
        return Response(parts[0], int(parts[1]), " ".join(parts[2:]), hdrs)


def build_response(status, headers=(), body=b"", reason=None):
    """Bytes of an RTSP/1.0 response. ``headers`` is a sequence of (name, value) pairs;
    Content-Length is added when there is a body."""
    lines = [f"RTSP/1.0 {status} {reason or REASONS.get(status, 'Unknown')}"]
    for k, v in headers:
        lines.append(f"{k}: {v}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def build_request(method, uri, headers=(), body=b""):
    """Bytes of an RTSP/1.0 request."""
    lines = [f"{method} {uri} RTSP/1.0"]
    for k, v in headers:
        lines.append(f"{k}: {v}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def build_interleaved(channel, data):
    """Bytes of one ``$``-framed binary frame."""
    n = len(data)
    if n > 0xFFFF:
        raise ValueError("interleaved frame too long")
    return bytes((0x24, channel, n >> 8, n & 0xFF)) + data


def parse_params(value):
    """'a;b=c;d' -> {'a': None, 'b': 'c', 'd': None} (keys lower-cased)."""
    out = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        out[k.strip().lower()] = v.strip() if sep else None
    return out


def parse_transport(value):
    """The list of transport specs of a Transport header, each a dict with 'spec'
    (e.g. 'RTP/AVP/TCP') and lower-cased parameters."""
    specs = []
    for one in value.split(","):
        one = one.strip()
        if not one:
            continue
        spec, _, rest = one.partition(";")
        params = parse_params(rest)
        params["spec"] = spec.strip().upper()
        specs.append(params)
    return specs


def parse_range(value):
    """'0-1' -> (0, 1); '5' -> (5, 6); None if malformed."""
    if value is None:
        return None
    a, sep, b = value.partition("-")
    try:
        lo = int(a)
        hi = int(b) if sep and b else lo + 1
    except ValueError:
        return None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        return None
    return lo, hi
