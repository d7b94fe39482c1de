"""
Frames of the signalling protocol: the header, the encoder and a sans-IO streaming
decoder (docs/protocol.md, "Frame"). No Twisted here.

``FrameDecoder.feed(data)`` returns whole frames (header fields plus the raw body) as
soon as they are complete; the relay path stops there. ``decode_body`` turns a frame's
body into its typed message; ``MessageDecoder`` does both. Errors are returned in-line
as ``ProtocolError`` items, never raised out of ``feed``.

The header has two equal definitions: ``HEADER`` in construct (the normative one) and
``HEADER_STRUCT``, a precompiled ``struct`` used on the hot path. A test proves they
agree on every field.
"""

import struct
from dataclasses import dataclass

from construct import (
    Const,
    ConstructError,
    Int8ub,
    Int16ub,
    Int32ub,
    StreamError,
    Struct,
    TerminatedError,
)

from vss.protocols.codes import ResultCode
from vss.protocols.messages import CATALOGUE, Empty, Error, MsgType

MAGIC = b"VS"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
HEADER_SIZE = 16
#: Largest body a peer accepts unless configured otherwise (1 MiB).
MAX_BODY = 1 << 20

FLAG_RESPONSE = 0x01
FLAG_ERROR = 0x02
FLAG_NOTIFY = 0x04

HEADER = Struct(
    "magic" / Const(MAGIC),
    "version" / Int8ub,
    "flags" / Int8ub,
    "type" / Int16ub,
    "status" / Int16ub,
    "txid" / Int32ub,
    "length" / Int32ub,
)
HEADER_STRUCT = struct.Struct(">2sBBHHII")
assert HEADER_STRUCT.size == HEADER_SIZE == HEADER.sizeof()

_pack_header = HEADER_STRUCT.pack
_unpack_header = HEADER_STRUCT.unpack_from


class ProtocolError(Exception):
    """A frame or body that breaks docs/protocol.md.

    ``code`` is the result code to answer with; ``txid`` and ``type`` are those of the
    offending frame when its header could be read (else None). ``fatal`` errors leave the
    byte stream unusable: the receiver answers, then closes the link.
    """

    def __init__(self, code, message, txid=None, type=None, fatal=True):
        super().__init__(message)
        self.code = ResultCode(code)
        self.message = message
        self.txid = txid
        self.type = type
        self.fatal = fatal

    def __repr__(self):
        return f"ProtocolError({self.code.name}, {self.message!r}, txid={self.txid})"

    def __eq__(self, other):
        return (
            isinstance(other, ProtocolError)
            and (self.code, self.message, self.txid, self.type, self.fatal)
            == (other.code, other.message, other.txid, other.type, other.fatal)
        )

    __hash__ = Exception.__hash__


@dataclass(slots=True)
class Frame:
    """One frame: the header fields and the undecoded body."""

    version: int
    flags: int
    type: int
    status: int
    txid: int
    body: bytes

    @property
    def is_response(self):
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def is_error(self):
        return bool(self.flags & FLAG_ERROR)

    @property
    def is_notify(self):
        return bool(self.flags & FLAG_NOTIFY)


@dataclass(slots=True)
class Message:
    """A decoded frame: header fields plus the typed body."""

    type: int
    flags: int
    status: int
    txid: int
    body: object
    version: int = VERSION

    @property
    def is_response(self):
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def is_error(self):
        return bool(self.flags & FLAG_ERROR)

    @property
    def is_notify(self):
        return bool(self.flags & FLAG_NOTIFY)


# ---------------------------------------------------------------------------
# Encoding

_EMPTY_BODY = b"\x00\x00"  # Empty: no fields, an empty extension block


def encode_body(obj):
    """The body bytes of a typed body object."""
    if type(obj) is Empty and not obj.ext:
        return _EMPTY_BODY
    return obj.compiled.build({n: getattr(obj, n) for n in obj.__slots__})


def encode_frame(type, body, txid=0, flags=0, status=0, version=VERSION, max_body=MAX_BODY):
    """A whole frame from a raw body. Refuses bodies past ``max_body``."""
    if len(body) > max_body:
        raise ValueError(f"body of {len(body)} bytes exceeds the maximum of {max_body}")
    return _pack_header(MAGIC, version, flags, type, status, txid, len(body)) + body


def encode_request(type, obj, txid, version=VERSION):
    return encode_frame(type, encode_body(obj), txid=txid, version=version)


def encode_notify(type, obj, version=VERSION):
    return encode_frame(type, encode_body(obj), txid=0, flags=FLAG_NOTIFY, version=version)


def encode_response(type, obj, txid, version=VERSION):
    return encode_frame(type, encode_body(obj), txid=txid, flags=FLAG_RESPONSE, version=version)


def encode_error(type, txid, code, message="", version=VERSION):
    """An error response to request (type, txid), or with type ERROR if unknown."""
    return encode_frame(
        type,
        encode_body(Error(message=message)),
        txid=txid,
        flags=FLAG_RESPONSE | FLAG_ERROR,
        status=int(code),
        version=version,
    )


def encode_message(msg):
    return encode_frame(
        msg.type, encode_body(msg.body), msg.txid, msg.flags, msg.status, msg.version
    )


# ---------------------------------------------------------------------------
# Decoding


def body_class(type, flags):
    """The body class of a frame, or raise ``KeyError`` for an unknown type."""
    if flags & FLAG_ERROR:
        return Error
    request, response = CATALOGUE[type]
    if flags & FLAG_RESPONSE:
        if response is None:
            raise KeyError(type)
        return response
    return request


def decode_body(frame):
    """The typed message of a frame, or a ``ProtocolError`` (never raises)."""
    try:
        cls = body_class(frame.type, frame.flags)
    except (KeyError, ValueError):
        return ProtocolError(
            ResultCode.UNKNOWN_MESSAGE,
            f"unknown message type 0x{frame.type:04x}",
            frame.txid,
            frame.type,
            fatal=False,
        )
    data = frame.body
    if cls is Empty and data == _EMPTY_BODY:
        obj = _EMPTY
    else:
        try:
            parsed = cls.compiled.parse(data)
            obj = cls(**{n: parsed[n] for n in cls.__slots__})
        except UnicodeDecodeError as e:
            return _body_error(frame, ResultCode.BAD_UTF8, f"invalid UTF-8: {e.reason}")
        except TerminatedError:
            return _body_error(frame, ResultCode.TRAILING_BYTES, "bytes left over after the body")
        except (StreamError, struct.error):
            return _body_error(frame, ResultCode.TRUNCATED_BODY, "body shorter than its fields")
        except (ConstructError, ValueError, TypeError, OverflowError) as e:
            if isinstance(e.__context__, UnicodeDecodeError) or "decode" in str(e):
                return _body_error(frame, ResultCode.BAD_UTF8, "invalid UTF-8")
            return _body_error(frame, ResultCode.MALFORMED_BODY, f"malformed body: {e}")
    return Message(frame.type, frame.flags, frame.status, frame.txid, obj, frame.version)


_EMPTY = Empty()


def _body_error(frame, code, message):
    return ProtocolError(code, message, frame.txid, frame.type, fatal=True)


class FrameDecoder:
    """Splits a byte stream into frames. Bounded: holds at most one header plus one
    body of at most ``max_body`` bytes. After a framing error the stream cannot be
    resynchronised; every later ``feed`` returns the same error."""

    def __init__(self, max_body=MAX_BODY, versions=SUPPORTED_VERSIONS):
        self.max_body = max_body
        self.versions = versions
        self._buf = bytearray()
        self.error = None

    @property
    def buffered(self):
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf)

    def feed(self, data):
        """Append ``data``; return the list of frames now complete, and at most one
        trailing ``ProtocolError`` if the stream broke."""
        if self.error is not None:
            return [self.error]
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        max_body = self.max_body
        while end - pos >= HEADER_SIZE:
            magic, version, flags, type, status, txid, length = _unpack_header(buf, pos)
            if magic != MAGIC:
                out.append(self._fail(ResultCode.BAD_MAGIC, "bad magic", None, None))
                break
            if version not in self.versions:
                out.append(
                    self._fail(
                        ResultCode.UNSUPPORTED_VERSION,
                        f"unsupported protocol version {version}",
                        txid,
                        type,
                    )
                )
                break
            if length > max_body:
                out.append(
                    self._fail(
                        ResultCode.FRAME_TOO_LARGE,
                        f"body of {length} bytes exceeds the maximum of {max_body}",
                        txid,
                        type,
                    )
                )
                break
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            out.append(Frame(version, flags, type, status, txid, bytes(buf[start:stop])))
            pos = stop
        if self.error is not None:
            buf.clear()
        elif pos:
            del buf[:pos]
        return out

    def _fail(self, code, message, txid, type):
        self.error = ProtocolError(code, message, txid, type, fatal=True)
        return self.error


class MessageDecoder:
    """A ``FrameDecoder`` whose output is typed messages (or ``ProtocolError``)."""

    def __init__(self, max_body=MAX_BODY, versions=SUPPORTED_VERSIONS):
        self.frames = FrameDecoder(max_body, versions)

    @property
    def buffered(self):
        return self.frames.buffered

    def feed(self, data):
        out = []
        for item in self.frames.feed(data):
            if isinstance(item, ProtocolError):
                out.append(item)
                break
            msg = decode_body(item)
            out.append(msg)
            if isinstance(msg, ProtocolError) and msg.fatal:
                break
        return out


def decode_header(data):
    """The header fields of ``data[:16]`` as a dict, through the construct definition."""
    c = HEADER.parse(data[:HEADER_SIZE])
    return {k: c[k] for k in ("version", "flags", "type", "status", "txid", "length")}


def message_name(type):
    try:
        return MsgType(type).name
    except ValueError:
        return f"0x{type:04x}"
