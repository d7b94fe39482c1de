"""
The audit log, as the CMS database keeps it: append-only.

One entry per thing an auditor may ask about later:

- ``change``: a request that changes the platform, through the admin API, ``vss-admin``
  or the console (who: ``token:<name>#<id>`` or ``operator:<name>``; from where: the
  client's address; what: the method and route, the record before and after, secrets
  masked; the HTTP status, refusals included);
- ``login``, ``logout``: an operator's console session (refused logins too);
- ``live``, ``playback``, ``export``: media a user started on a node (who:
  ``user:<name>``; the camera, the footage's time range, the client's address and the
  node), reported by the nodes in batches (AUDIT_REPORT, docs/protocol.md);
- ``lost``: a node had to drop media entries it could not deliver (how many).

Nothing here changes or removes an entry: the store has no such call, the admin API no
such route, and the database refuses it (triggers on ``audit_log``).
``IAuditStore`` is what the SQL stores offer; ``AuditSql`` implements it for
``vss.cms.store.sql.SqlStaticStore``.
"""

import json
from typing import NamedTuple

from twisted.internet.defer import fail, succeed
from zope.interface import Interface

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError

KINDS = ("change", "login", "logout", "live", "playback", "export", "lost")
#: longest text kept in a field (a longer one is cut)
MAX_FIELD = 512
#: largest ``detail`` kept, as JSON
MAX_DETAIL = 64 * 1024

_COLS = "id, at, kind, actor, source, node_id, action, target, status, detail_json"


class AuditEntry(NamedTuple):
    """One entry. ``id`` is 0 until stored; ``at`` in ms since the epoch."""

    id: int
    at: int
    kind: str
    actor: str
    source: str
    node_id: str
    action: str
    target: str
    status: int
    detail: dict


def entry(at, kind, actor, source="", node_id="", action="", target="", status=0,
          detail=None):
    """A new ``AuditEntry`` (not stored yet)."""
    return AuditEntry(0, int(at), kind, actor, source, node_id, action, target,
                      int(status), detail or {})


class IAuditStore(Interface):
    """The append-only audit log. Every method returns a Deferred."""

    def append_audit(entries):
        """Store ``AuditEntry`` items (their ``id`` is ignored) in one transaction.
        Deferred list of their new ids, in order."""

    def list_audit(cursor="", limit=100, kinds=None, actor=None, target=None, since=None,
                   until=None, node_id=None, text=None):
        """Deferred (entries newest first, next_cursor; '' on the last page).
        ``kinds``: a list of kinds; ``actor``, ``target``, ``text`` (anywhere, detail
        included): parts of the text, any case; ``since``/``until``: ms, ``at`` in
        [since, until); ``node_id``: exact."""


def _cut(text):
    text = str(text or "")
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD - 1] + "\u2026"


def _detail_json(detail):
    text = json.dumps(detail or {}, sort_keys=True, default=str)
    if len(text) > MAX_DETAIL:
        text = json.dumps({"truncated": True, "size": len(text)})
    return text


def _like(text):
    """A LIKE pattern matching ``text`` anywhere (its wildcards escaped with ``\\``)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _audit(row):
    try:
        detail = json.loads(row[9])
    except ValueError:
        detail = {}
    return AuditEntry(int(row[0]), int(row[1]), row[2], row[3], row[4], row[5], row[6],
                      row[7], int(row[8]), detail)


class AuditSql:
    """``IAuditStore`` for ``SqlStaticStore`` (uses its ``_run``, ``_read``, ``_x``,
    ``_wpool``, ``dialect``)."""

    def append_audit(self, entries):
        rows = []
        for e in entries:
            if e.kind not in KINDS:
                return fail(VssError(ResultCode.INVALID_ARGUMENT,
                                     f"unknown audit kind {e.kind!r}"))
            rows.append((int(e.at), e.kind, _cut(e.actor), _cut(e.source), _cut(e.node_id),
                         _cut(e.action), _cut(e.target), int(e.status),
                         _detail_json(e.detail)))
        if not rows:
            return succeed([])
        return self._run(self._wpool, self._append_audit, rows)

    def _append_audit(self, cur, rows):
        self.dialect.begin_write(cur)
        ids = []
        for row in rows:
            ids.append(self._x(
                cur, "INSERT INTO audit_log (at, kind, actor, source, node_id, action, target,"
                " status, detail_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                row).fetchone()[0])
        return [int(i) for i in ids]

    def list_audit(self, cursor="", limit=100, kinds=None, actor=None, target=None,
                   since=None, until=None, node_id=None, text=None):
        limit = int(limit)
        if limit < 1:
            return fail(VssError(ResultCode.INVALID_ARGUMENT, "limit must be positive"))
        if cursor and not str(cursor).isdigit():
            return fail(VssError(ResultCode.INVALID_ARGUMENT, "bad cursor"))
        where, params = [], []
        if cursor:
            where.append("id < ?")
            params.append(int(cursor))
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        for column, value in (("actor", actor), ("target", target)):
            if value:
                where.append(f"LOWER({column}) LIKE ? ESCAPE '\\'")
                params.append(_like(value))
        if text:
            where.append("(LOWER(actor) LIKE ? ESCAPE '\\' OR LOWER(target) LIKE ? ESCAPE '\\'"
                         " OR LOWER(action) LIKE ? ESCAPE '\\' OR LOWER(source) LIKE ?"
                         " ESCAPE '\\' OR LOWER(detail_json) LIKE ? ESCAPE '\\')")
            params.extend([_like(text)] * 5)
        if since is not None:
            where.append("at >= ?")
            params.append(int(since))
        if until is not None:
            where.append("at < ?")
            params.append(int(until))
        if node_id:
            where.append("node_id = ?")
            params.append(node_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._read(self._list_audit, clause, params, limit)

    def _list_audit(self, cur, clause, params, limit):
        rows = self._x(cur, f"SELECT {_COLS} FROM audit_log {clause} ORDER BY id DESC LIMIT ?",
                       (*params, limit + 1)).fetchall()
        entries = [_audit(r) for r in rows[:limit]]
        return entries, (str(entries[-1].id) if len(rows) > limit else "")
