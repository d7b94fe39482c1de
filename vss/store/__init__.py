"""
The RGM's in-memory database (``vss.interfaces.IMemoryStore``) and its backends.

- ``memory.py``: ``MemoryStore``, plain dicts in the RGM process (the default).
- ``redis.py``: ``RedisStore``, the same memory mirrored to Redis so that a node's
  dynamic state survives a restart of its RGM process. The only module importing
  txredisapi; it is imported only when a ``redis://`` store is chosen.

``make_store`` turns the node's ``store`` setting into a backend.
"""

from vss.store.memory import MemoryStore

__all__ = ["MemoryStore", "make_store"]


def make_store(spec, node_id, reactor=None):
    """A new, not yet loaded ``IMemoryStore`` for ``spec``: ``"memory"`` or a
    ``redis://host:port/db`` URL. Call ``load()`` on it before use."""
    spec = (spec or "memory").strip()
    if spec == "memory":
        return MemoryStore()
    if spec.startswith("redis://"):
        from vss.store.redis import RedisStore

        return RedisStore(spec, node_id, reactor=reactor)
    raise ValueError(f"unknown store {spec!r}: expected 'memory' or a redis:// URL")
