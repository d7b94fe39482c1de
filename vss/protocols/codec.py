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

Hot paths (docs/performance.md, "Signalling codec" and "Data synchronisation"):
``FrameDecoder.feed`` slices frames straight out of the bytes it is given and copies into
its buffer only an incomplete tail; every body of the catalogue (fixed-size fields,
length-prefixed strings and bytes, nested records, optional records and lists of them,
such as STATIC_PAGE's DeviceRecords or SYNC_NOTIFY's Changes) is encoded and decoded by
code generated from its construct definition. A fast path only handles well-formed input
with an empty extension block; anything else (extensions, errors, odd values) goes
through construct, which stays the definition. tests/test_codec.py proves both paths
agree.
"""

import gc
import struct
from dataclasses import dataclass

from construct import (
    Array,
    Const,
    ConstructError,
    Flag,
    Float32b,
    FocusedSeq,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Rebuild,
    StreamError,
    Struct,
    TerminatedError,
)

from vss.protocols import messages as _messages
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
#: The same header with the magic read as one u16 (0x5653), for the decoder's loop.
_unpack_header_int = struct.Struct(">HBBHHII").unpack_from
_MAGIC_INT = int.from_bytes(MAGIC, "big")


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
    cls = type(obj)
    if cls is Empty and not obj.ext:
        return _EMPTY_BODY
    try:
        fast = _FAST_ENCODERS[cls]
    except KeyError:
        fast = _fast_encoder(cls)
    if fast is not None:
        try:
            data = fast(obj)
        except Exception:  # odd values: construct gives the normative error below
            data = None
        if data is not None:
            return data
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
    flags = frame.flags
    if flags & FLAG_ERROR:
        cls = Error
    else:
        entry = CATALOGUE.get(frame.type)
        cls = None if entry is None else entry[flags & FLAG_RESPONSE]  # FLAG_RESPONSE is 1
        if cls is None:
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
            fast = _FAST_DECODERS[cls]
        except KeyError:
            fast = _fast_decoder(cls)
        obj = None
        if fast is not None:
            try:
                obj = fast(data)
            except Exception:  # any doubt: construct decides, with the normative error
                obj = None
        if obj is None:
            obj = _construct_decode(cls, frame)
            if type(obj) is ProtocolError:
                return obj
    return Message(frame.type, flags, frame.status, frame.txid, obj, frame.version)


def _construct_decode(cls, frame):
    """The body object through the construct definition, or a ``ProtocolError``."""
    try:
        parsed = cls.compiled.parse(frame.body)
        return cls(**{n: parsed[n] for n in cls.__slots__})
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


_EMPTY = Empty()


def _body_error(frame, code, message):
    return ProtocolError(code, message, frame.txid, frame.type, fatal=True)


class FrameDecoder:
    """Splits a byte stream into frames. Bounded: holds at most one header plus one
    body of at most ``max_body`` bytes. After a framing error the stream cannot be
    resynchronised; every later ``feed`` returns the same error. A bad magic is
    reported as soon as a frame's first two bytes are in; the other framing errors
    once its 16-byte header is."""

    def __init__(self, max_body=MAX_BODY, versions=SUPPORTED_VERSIONS):
        self.max_body = max_body
        self.versions = versions
        self._buf = bytearray()
        # bytes the buffered tail needs before a frame can complete (a header, or a
        # header plus its body once the header is known)
        self._need = HEADER_SIZE
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
        if buf:
            buf += data
            if len(buf) < self._need:
                if self._need == HEADER_SIZE and len(buf) >= 2 and buf[:2] != MAGIC:
                    return [self._framing_error(0, None, None, None, None)]
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        out = []
        append = out.append
        unpack = _unpack_header_int
        versions = self.versions
        max_body = self.max_body
        pos = 0
        end = len(data)
        need = HEADER_SIZE
        while end - pos >= HEADER_SIZE:
            magic, version, flags, mtype, status, txid, length = unpack(data, pos)
            if magic != _MAGIC_INT or version not in versions or length > max_body:
                append(self._framing_error(magic, version, mtype, txid, length))
                return out
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                need = HEADER_SIZE + length
                break
            append(Frame(version, flags, mtype, status, txid, data[start:stop]))
            pos = stop
        if pos < end:
            if end - pos >= 2 and need == HEADER_SIZE and (
                    data[pos] != 0x56 or data[pos + 1] != 0x53):
                # BAD_MAGIC is known from a frame's first two bytes: no waiting for the
                # rest of a header that is not there (docs/protocol.md 6).
                append(self._framing_error(0, None, None, None, None))
                return out
            buf += memoryview(data)[pos:]
        self._need = need
        return out

    def _framing_error(self, magic, version, type, txid, length):
        """Latch the error of a bad header and drop everything buffered."""
        self._buf.clear()
        if magic != _MAGIC_INT:
            return self._fail(ResultCode.BAD_MAGIC, "bad magic", None, None)
        if version not in self.versions:
            return self._fail(
                ResultCode.UNSUPPORTED_VERSION, f"unsupported protocol version {version}", txid, type
            )
        return self._fail(
            ResultCode.FRAME_TOO_LARGE,
            f"body of {length} bytes exceeds the maximum of {self.max_body}",
            txid,
            type,
        )

    def _fail(self, code, message, txid, type):
        self.error = ProtocolError(code, message, txid, type, fatal=True)
        return self.error


class MessageDecoder:
    """A ``FrameDecoder`` whose output is typed messages (or ``ProtocolError``). After a
    fatal error (framing or body) the stream is unusable: every later ``feed`` returns
    that error again, like ``FrameDecoder``."""

    def __init__(self, max_body=MAX_BODY, versions=SUPPORTED_VERSIONS):
        self.frames = FrameDecoder(max_body, versions)
        self.error = None

    @property
    def buffered(self):
        return self.frames.buffered

    def feed(self, data):
        if self.error is not None:
            return [self.error]
        out = []
        for item in self.frames.feed(data):
            if type(item) is ProtocolError:
                self.error = item
                out.append(item)
                break
            msg = decode_body(item)
            out.append(msg)
            if type(msg) is ProtocolError and msg.fatal:
                self.error = msg
                self.frames._buf.clear()
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


# ---------------------------------------------------------------------------
# Fast paths, generated from the construct definitions in messages.py.
#
# A body qualifies when every field is a fixed-size integer, float or flag, a u16-prefixed
# string or bytes, a u32-prefixed blob, a nested record, an Optional of a value that
# qualifies, or a List of values that qualify (recursively). The generated decoder returns
# None (or raises) on anything but well-formed input with an empty extension block, and
# the generated encoder returns None (or raises) when the body has extensions or an odd
# value; the caller then uses construct. So the fast paths can only be faster, never
# different.

_FIXED_FORMATS = {id(Int8ub): "B", id(Int16ub): "H", id(Int32ub): "I", id(Int64ub): "Q",
                  id(Float32b): "f", id(Flag): "?"}
_PREFIXED = {id(_messages.Str): (2, True), id(_messages.Bytes): (2, False),
             id(_messages.Blob): (4, False)}
_FAST_DECODERS = {}
_FAST_ENCODERS = {}
_gc_enabled, _gc_disable, _gc_enable = gc.isenabled, gc.disable, gc.enable


@dataclass(frozen=True, slots=True)
class ListPlan:
    """A segment: a u16 count, then that many items, each one value read by ``item``."""

    item: list


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """A segment: a nested record of class ``cls``, its fields read by ``fields``."""

    cls: type
    fields: list


@dataclass(frozen=True, slots=True)
class OptionalPlan:
    """A segment: a presence byte, then (when not 0) one value read by ``value``."""

    value: list


def fast_plan(cls):
    """The fields of body class ``cls`` as a list of segments: a ``struct.Struct`` for a
    run of fixed-size fields, ``(prefix_size, is_text)`` for a length-prefixed field, or a
    ``ListPlan``, ``RecordPlan`` or ``OptionalPlan`` (each holding the plan of what it
    contains); None if some field needs construct."""
    struct_ = getattr(cls, "struct", None)
    if struct_ is None:
        return None
    return _plan([sub for sub in struct_.subcons if sub.name is not None and sub.name != "ext"])


def _plan(fields):
    """The segments reading the values of construct ``fields`` in order, or None."""
    plan, fmt = [], ""
    for con in fields:
        seg = _segment(getattr(con, "subcon", None) if con.name is not None else con)
        if seg is None:
            return None
        if type(seg) is str:
            fmt += seg
            continue
        if fmt:
            plan.append(struct.Struct(">" + fmt))
            fmt = ""
        plan.append(seg)
    if fmt:
        plan.append(struct.Struct(">" + fmt))
    return plan


def _segment(con):
    """A format character for a fixed-size field, else the segment reading one value of
    ``con``; None if construct must read it."""
    code = _FIXED_FORMATS.get(id(con))
    if code is not None:
        return code
    prefixed = _PREFIXED.get(id(con))
    if prefixed is not None:
        return prefixed
    if isinstance(con, _messages._Record):
        rcls = con.cls
        subs = con.subcon.subcons
        if [s.name for s in subs] != list(rcls._fields):
            return None
        fields = _plan(subs)
        return None if fields is None else RecordPlan(rcls, fields)
    if isinstance(con, _messages._Optional):
        present, value = con.subcon.subcons
        if present.name != "present" or present.subcon is not Flag:
            return None
        inner = getattr(value.subcon, "thensubcon", None)
        item = None if inner is None else _plan([inner])
        return None if item is None else OptionalPlan(item)
    if isinstance(con, FocusedSeq) and len(con.subcons) == 2:  # List(sub): PrefixedArray
        count, items = con.subcons
        rebuild = getattr(count, "subcon", None)
        if (count.name != "count" or items.name != "items" or con.parsebuildfrom != "items"
                or not isinstance(rebuild, Rebuild) or rebuild.subcon is not Int16ub
                or not isinstance(items.subcon, Array)):
            return None
        item = _plan([items.subcon.subcon])
        return None if item is None else ListPlan(item)
    return None


class _Source:
    """The lines and names of one generated function."""

    def __init__(self, header):
        self.lines = list(header)
        self.env = {"_new": object.__new__, "_from": int.from_bytes, "_encode": str.encode,
                    "_sequences": (list, tuple)}
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, prefix):
        name = self.name(prefix)
        self.env[name] = value
        return name

    def emit(self, depth, line):
        self.lines.append("    " * depth + line)

    def compile(self, title, fn):
        exec(compile("\n".join(self.lines), title, "exec"), self.env)
        return self.env[fn]


def _values(seg):
    return len(seg.format) - 1 if isinstance(seg, struct.Struct) else 1


def _emit_decode(src, plan, depth):
    """Lines reading the values of ``plan`` from ``data`` at ``p``; their names.

    ``p`` only grows; a read past the end raises (``struct.error``, ``IndexError``) or,
    for a slice, leaves ``p`` past the end, so the final check of the extension block
    fails: a truncated body is never taken."""
    names = []
    for seg in plan:
        if isinstance(seg, struct.Struct):
            vs = [src.name("v") for _ in range(_values(seg))]
            if seg.format == ">B":
                src.emit(depth, f"{vs[0]} = data[p]")
            else:
                src.emit(depth, f"{', '.join(vs)}, = {src.const(seg.unpack_from, '_s')}(data, p)")
            src.emit(depth, f"p += {seg.size}")
            names += vs
        elif isinstance(seg, tuple):
            size, text = seg
            v = src.name("v")
            if size == 2:
                src.emit(depth, "q = p + 2 + ((data[p] << 8) | data[p + 1])")
            else:
                src.emit(depth, f"q = p + {size} + _from(data[p:p + {size}], 'big')")
            get = f"data[p + {size}:q]"
            src.emit(depth, f"{v} = str({get}, 'utf-8')" if text else f"{v} = {get}")
            src.emit(depth, "p = q")
            names.append(v)
        elif isinstance(seg, RecordPlan):
            rcls = seg.cls
            fields = _emit_decode(src, seg.fields, depth)
            v = src.name("r")
            cls_name = src.const(rcls, "_R")
            if set(rcls._fields) <= set(getattr(rcls, "__slots__", ())) and not hasattr(
                    rcls, "__post_init__"):
                # a frozen dataclass: set its slots directly, as its __init__ does
                src.emit(depth, f"{v} = _new({cls_name})")
                for field_name, x in zip(rcls._fields, fields, strict=True):
                    setter = src.const(getattr(rcls, field_name).__set__, "_set")
                    src.emit(depth, f"{setter}({v}, {x})")
            else:
                src.emit(depth, f"{v} = {cls_name}({', '.join(fields)})")
            names.append(v)
        elif isinstance(seg, ListPlan):
            v, c, add = src.name("l"), src.name("c"), src.name("add")
            src.emit(depth, f"{c} = (data[p] << 8) | data[p + 1]")
            src.emit(depth, "p += 2")
            src.emit(depth, f"{v} = []")
            src.emit(depth, f"{add} = {v}.append")
            src.emit(depth, f"for _ in range({c}):")
            (x,) = _emit_decode(src, seg.item, depth + 1)
            src.emit(depth + 1, f"{add}({x})")
            names.append(v)
        else:  # OptionalPlan
            v = src.name("o")
            src.emit(depth, f"{v} = data[p]")
            src.emit(depth, "p += 1")
            src.emit(depth, f"if {v}:")
            (x,) = _emit_decode(src, seg.value, depth + 1)
            src.emit(depth + 1, f"{v} = {x}")
            src.emit(depth, "else:")
            src.emit(depth + 1, f"{v} = None")
            names.append(v)
    return names


def _emit_encode(src, plan, values, depth, parts):
    """Lines writing the values of ``plan``, given as expressions. The byte strings to
    write are added to ``parts`` (expressions) and flushed into ``out`` before a loop or
    a branch; the caller flushes the rest."""
    values = iter(values)
    for seg in plan:
        if isinstance(seg, struct.Struct):
            args = ", ".join(next(values) for _ in range(_values(seg)))
            parts.append(f"{src.const(seg.pack, '_s')}({args})")
        elif isinstance(seg, tuple):
            size, text = seg
            b = src.name("b")
            if text:
                src.emit(depth, f"{b} = _encode({next(values)})")  # str only, as construct
            else:
                src.emit(depth, f"{b} = {next(values)}")
                src.emit(depth, f"if type({b}) is not bytes:")
                src.emit(depth + 1, "return None")
            parts.append(f"len({b}).to_bytes({size}, 'big')")
            parts.append(b)
        elif isinstance(seg, RecordPlan):
            r = src.name("r")
            src.emit(depth, f"{r} = {next(values)}")
            _emit_encode(src, seg.fields, [f"{r}.{n}" for n in seg.cls._fields], depth, parts)
        elif isinstance(seg, ListPlan):
            items, e = src.name("l"), src.name("e")
            src.emit(depth, f"{items} = {next(values)}")
            src.emit(depth, f"if not isinstance({items}, _sequences):  # construct indexes")
            src.emit(depth + 1, "return None")
            parts.append(f"len({items}).to_bytes(2, 'big')")
            _flush(src, parts, depth)
            src.emit(depth, f"for {e} in {items}:")
            inner = []
            _emit_encode(src, seg.item, [e], depth + 1, inner)
            _flush(src, inner, depth + 1)
        else:  # OptionalPlan
            o = src.name("o")
            src.emit(depth, f"{o} = {next(values)}")
            _flush(src, parts, depth)
            src.emit(depth, f"if {o} is None:")
            src.emit(depth + 1, "out.append(b'\\x00')")
            src.emit(depth, "else:")
            inner = ["b'\\x01'"]
            _emit_encode(src, seg.value, [o], depth + 1, inner)
            _flush(src, inner, depth + 1)


def _flush(src, parts, depth):
    """Write the pending ``parts`` into ``out``."""
    if len(parts) == 1:
        src.emit(depth, f"out.append({parts[0]})")
    elif parts:
        src.emit(depth, f"out += ({', '.join(parts)})")
    parts.clear()


def _has_branches(plan):
    return any(isinstance(seg, ListPlan | OptionalPlan)
               or isinstance(seg, RecordPlan) and _has_branches(seg.fields) for seg in plan)


def _generate_decoder(cls, plan, as_tuple=False):
    src = _Source(["def decode(data):", "    if type(data) is not bytes:",
                   "        return None", "    p = 0"])
    src.env["_cls"] = cls
    names = _emit_decode(src, plan, 1)
    src.emit(1, "if data[p:] != b'\\x00\\x00':")
    src.emit(2, "return None")
    if as_tuple:
        src.emit(1, f"return ({', '.join(names)},)")
    else:
        src.emit(1, f"return _cls({', '.join(names)})")
    return src.compile(f"<fast decoder {cls.__name__}>", "decode")


def _fast_decoder(cls):
    """Generate (once) the fast decoder of ``cls``, or None."""
    plan = fast_plan(cls)
    fn = None
    if plan is not None:
        fn = _generate_decoder(cls, plan)
        if _has_branches(plan):
            fn = _pausing_gc(fn)
    _FAST_DECODERS[cls] = fn
    return fn


def tuple_decoder(cls):
    """For a hot path that reads a body's fields without building the record: a
    function of the body's bytes that returns its fields as a tuple (in declaration
    order) when the body is well formed with an empty extension block, else None (the
    caller then asks construct, which says what is wrong). Generated from the same plan
    as the fast decoder, so the two cannot read a body differently; ``cls`` must have
    no lists or optional parts (ValueError)."""
    plan = fast_plan(cls)
    if plan is None or _has_branches(plan):
        raise ValueError(f"{cls.__name__} has no flat fast plan")
    decode = _generate_decoder(cls, plan, as_tuple=True)
    refused = (ValueError, IndexError, struct.error)

    def fields(data):
        try:
            return decode(data)
        except refused:  # short, overlong or not UTF-8: construct decides
            return None

    return fields


#: Bodies from this size up are decoded with the cyclic garbage collector paused.
GC_PAUSE_SIZE = 32 * 1024


def _pausing_gc(decode):
    """``decode`` for bodies with lists: a long one (a reload page of 5,000 records
    creates some 15,000 objects, none in a cycle) is decoded with the cyclic garbage
    collector paused, which would otherwise run many passes over the growing heap
    (docs/performance.md, "Data synchronisation"). Collection resumes right after."""

    def decode_long(data):
        if len(data) < GC_PAUSE_SIZE or not _gc_enabled():
            return decode(data)
        _gc_disable()
        try:
            return decode(data)
        finally:
            _gc_enable()

    return decode_long


def _fast_encoder(cls):
    """Generate (once) the fast encoder of ``cls``, or None."""
    plan = fast_plan(cls)
    fn = None
    if plan is not None:
        src = _Source(["def encode(obj):", "    if obj.ext:", "        return None"])
        parts = []
        if _has_branches(plan):
            src.emit(1, "out = []")
            _emit_encode(src, plan, [f"obj.{n}" for n in cls._fields], 1, parts)
            parts.append("b'\\x00\\x00'")
            _flush(src, parts, 1)
            src.emit(1, "return b''.join(out)")
        else:  # straight code: one join
            _emit_encode(src, plan, [f"obj.{n}" for n in cls._fields], 1, parts)
            parts.append("b'\\x00\\x00'")
            src.emit(1, f"return b''.join(({', '.join(parts)},))")
        fn = src.compile(f"<fast encoder {cls.__name__}>", "encode")
    _FAST_ENCODERS[cls] = fn
    return fn
