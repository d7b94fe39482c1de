"""
The CMS database of static data (``vss.interfaces.IStaticStore``).

Files and roles:

``schema.py``    the numbered migrations (one SQL text, a few per-dialect types)
``sql.py``       everything the backends share: transactions, change log, paging
``sqlite.py``    SQLite (default): one writer connection, WAL, read-only readers
``postgres.py``  PostgreSQL through psycopg2 (imported only when chosen)
``tokens.py``    admin tokens: hashing, states, ``IAdminTokenStore``
``operators.py`` operator accounts of the console, ``IOperatorStore``
``audit.py``     the append-only audit log, ``IAuditStore``
``commit.py``    group commit: the logged writes that wait share one transaction

``make_static_store(spec)`` picks the backend from a spec string:
``sqlite:<path>`` (or a bare path) or ``postgresql://...`` / a libpq DSN
(``host=... dbname=...``). Call ``open()`` on the result before use.
"""

from .sql import GRANT_KEY_SEP, grant_key, split_grant_key
from .sqlite import SQLiteStaticStore
from .tokens import hash_token, new_token

DEFAULT_SPEC = "sqlite:vss-cms.sqlite3"

__all__ = [
    "DEFAULT_SPEC",
    "GRANT_KEY_SEP",
    "grant_key",
    "hash_token",
    "is_postgres",
    "make_static_store",
    "new_token",
    "split_grant_key",
]


def is_postgres(spec):
    """Whether a ``--db`` spec names PostgreSQL (else SQLite)."""
    if spec.startswith(("postgresql://", "postgres://")):
        return True
    # a libpq keyword/value DSN: "host=... dbname=..."
    return "=" in spec and not spec.startswith("sqlite:")


def make_static_store(spec=DEFAULT_SPEC, reactor=None, **kw):
    """A store for ``spec`` (not opened yet). Extra keywords go to the backend, e.g.
    ``clock=`` or, for PostgreSQL, ``schema=``."""
    spec = spec or DEFAULT_SPEC
    if is_postgres(spec):
        # local import: optional dependency, psycopg2, only when PostgreSQL is chosen
        from .postgres import PostgresStaticStore

        return PostgresStaticStore(spec, reactor=reactor, **kw)
    path = spec[len("sqlite:"):] if spec.startswith("sqlite:") else spec
    if not path:
        raise ValueError(f"no database path in {spec!r}")
    return SQLiteStaticStore(path, reactor=reactor, **kw)
