"""
The RGM's in-memory database (``vss.interfaces.IMemoryStore``) and its backends.

- ``memory.py``: ``MemoryStore``, plain dicts in the RGM process (the default).
- ``redis.py``: ``RedisStore``, the same memory mirrored to Redis so that a node's
  dynamic state survives a restart of its RGM process, over TCP (``redis://``) or TLS
  (``rediss://``). The only module importing txredisapi; it is imported only when a
  Redis store is chosen.
- ``redislink.py``: the link to Redis apart from the store: URL, password file, TLS
  options, and a handshake of its own that names why Redis cannot be used
  (``StoreUnavailable``). No txredisapi: the daemons import it to name that error.

``make_store`` turns the node's ``store`` settings into a backend.
"""

from vss.store.memory import MemoryStore
from vss.store.redislink import parse_url, read_password, tls_options

__all__ = ["MemoryStore", "make_store"]


def make_store(spec, node_id, reactor=None, ca_file="", cert_file="", key_file="",
               password_file=""):
    """A new, not yet loaded ``IMemoryStore`` for ``spec``: ``"memory"``, a
    ``redis://host:port/db`` or a ``rediss://host:port/db`` (TLS) URL. Call ``load()``
    on it before use.

    For Redis: ``ca_file`` holds the certificates the server's must verify against
    (default: the system's), ``cert_file``/``key_file`` the client certificate, both
    for ``rediss://`` only; ``password_file`` the password (``AUTH``). Files that cannot
    be read raise ValueError naming the option.
    """
    spec = (spec or "memory").strip()
    tls_files = ca_file or cert_file or key_file
    if spec == "memory":
        if tls_files or password_file:
            raise ValueError("--store-ca, --store-cert, --store-key and --store-password-file"
                             " apply to a Redis store only")
        return MemoryStore(clock=reactor)
    if spec.startswith(("redis://", "rediss://")):
        # local import: optional dependency, txredisapi, only with a Redis store
        from vss.store.redis import RedisStore

        params = parse_url(spec)
        tls = None
        if params["tls"]:
            tls = tls_options(params["host"], ca_file or None, cert_file or None,
                              key_file or None)
        elif tls_files:
            raise ValueError("--store-ca, --store-cert and --store-key need a rediss:// URL")
        password = read_password(password_file) if password_file else None
        return RedisStore(spec, node_id, reactor=reactor, password=password, tls=tls)
    raise ValueError(f"unknown store {spec!r}: expected 'memory', a redis:// or a rediss:// URL")
