"""
Records and bodies of ``vss.protocols.messages`` as JSON-able values, and back.

Used where records are kept as text: a standalone node's static-data file, JSON output
of the command-line tools, the admin API. Bytes become ``{"$b64": ...}``; a record
becomes a dict with a ``"$type"`` naming its class, so nested records come back typed.
"""

import base64

from vss.protocols import messages


def to_json(value):
    if hasattr(value, "_fields"):
        out = {"$type": type(value).__name__}
        for name in value._fields:
            out[name] = to_json(getattr(value, name))
        return out
    if isinstance(value, bytes | bytearray):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value):
    if isinstance(value, dict):
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
        if "$type" in value:
            cls = getattr(messages, value["$type"], None)
            if cls is None or not hasattr(cls, "_fields"):
                raise ValueError(f"unknown record type {value['$type']!r}")
            # a field added later with a default (GrantRecord.expires) may be absent
            return cls(**{n: from_json(value[n]) for n in cls._fields if n in value})
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def plain(value):
    """A readable JSON-able form for people (no ``$type``; bytes as hex)."""
    if hasattr(value, "_fields"):
        return {n: plain(getattr(value, n)) for n in value._fields}
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
