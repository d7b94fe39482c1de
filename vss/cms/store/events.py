"""
Events and alarms as the CMS database keeps them (migration 7): ``events``, one row per
event under the ``(node_id, seq)`` its home node gave it (a report sent twice stores
nothing twice), and ``event_acks``, an operator's acknowledgement of one (who, when, a
comment). Old rows go with ``purge_events`` (the retention, ``--event-retention-days``).

``IEventStore`` is what the SQL stores offer; ``EventSql`` implements it for
``vss.cms.store.sql.SqlStaticStore``.
"""

import json

from twisted.internet.defer import fail, succeed
from zope.interface import Interface

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import KV, EventEntry, EventRecord

_COLS = ("e.node_id, e.seq, e.device_id, e.channel, e.type, e.phase, e.severity, e.pu_time,"
         " e.node_time, e.items_json, a.acked_by, a.acked_at, a.comment")


class IEventStore(Interface):
    """Every method returns a Deferred."""

    def store_events(events):
        """Store ``EventRecord`` items in one transaction; those stored already are
        skipped. Deferred count of new rows."""

    def ack_event(node_id, seq, device_id, username, at, comment):
        """Deferred ``EventEntry`` as acknowledged; NOT_FOUND for an event not stored (or
        of another device), CONFLICT for one acknowledged already."""

    def list_events(username=None, device_id="", type="", since=0, until=0, limit=100):
        """Deferred (list of ``EventEntry`` newest first, truncated). ``username``: only
        the devices that user may view now (None: every device)."""

    def purge_events(before):
        """Remove the events (and their acknowledgements) older than ``before`` (ms).
        Deferred count removed."""


def _entry(row):
    try:
        items = [KV(key=str(k), value=str(v)) for k, v in json.loads(row[9])]
    except (ValueError, TypeError):
        items = []
    event = EventRecord(node_id=row[0], seq=int(row[1]), device_id=row[2],
                        channel=int(row[3]), type=row[4], phase=int(row[5]),
                        severity=int(row[6]), pu_time=int(row[7]), node_time=int(row[8]),
                        items=items)
    return EventEntry(event=event, acked_by=row[10] or "", acked_at=int(row[11] or 0),
                      comment=row[12] or "")


class EventSql:
    """``IEventStore`` for ``SqlStaticStore`` (uses its ``_run``, ``_read``, ``_x``,
    ``_wpool``, ``dialect``, ``_get_user``, ``_now_ms``)."""

    def store_events(self, events):
        rows = [(e.node_id, int(e.seq), e.device_id, int(e.channel), e.type, int(e.phase),
                 int(e.severity), int(e.pu_time), int(e.node_time),
                 json.dumps([[kv.key, kv.value] for kv in e.items]))
                for e in events]
        if not rows:
            return succeed(0)
        return self._run(self._wpool, self._store_events, rows)

    def _store_events(self, cur, rows):
        self.dialect.begin_write(cur)
        stored = 0
        for row in rows:
            cur_ = self._x(cur, "INSERT INTO events (node_id, seq, device_id, channel, type,"
                           " phase, severity, pu_time, node_time, items_json) VALUES"
                           " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, seq) DO"
                           " NOTHING", row)
            stored += max(0, cur_.rowcount)
        return stored

    def ack_event(self, node_id, seq, device_id, username, at, comment):
        return self._run(self._wpool, self._ack_event, node_id, int(seq), device_id,
                         username, int(at), comment)

    def _ack_event(self, cur, node_id, seq, device_id, username, at, comment):
        self.dialect.begin_write(cur)
        row = self._x(cur, "SELECT device_id FROM events WHERE node_id = ? AND seq = ?",
                      (node_id, seq)).fetchone()
        if row is None or row[0] != device_id:
            raise VssError(ResultCode.NOT_FOUND, f"no stored event {node_id}/{seq} of "
                           f"{device_id} (a new event is stored within seconds)")
        done = self._x(cur, "SELECT acked_by FROM event_acks WHERE node_id = ? AND seq = ?",
                       (node_id, seq)).fetchone()
        if done is not None:
            raise VssError(ResultCode.CONFLICT, f"acknowledged already by {done[0]}")
        self._x(cur, "INSERT INTO event_acks (node_id, seq, device_id, acked_by, acked_at,"
                " comment) VALUES (?, ?, ?, ?, ?, ?)",
                (node_id, seq, device_id, username, at, comment))
        return _entry(self._x(cur, f"SELECT {_COLS} FROM events e LEFT JOIN event_acks a ON"
                              " a.node_id = e.node_id AND a.seq = e.seq WHERE e.node_id = ?"
                              " AND e.seq = ?", (node_id, seq)).fetchone())

    def list_events(self, username=None, device_id="", type="", since=0, until=0,
                    limit=100):
        limit = int(limit)
        if not 1 <= limit <= 1000:
            return fail(VssError(ResultCode.INVALID_ARGUMENT, "limit must be 1..1000"))
        return self._read(self._list_events, username, device_id, type, int(since or 0),
                          int(until or 0), limit)

    def _list_events(self, cur, username, device_id, type, since, until, limit):
        where, params = [], []
        if username is not None:
            user = self._get_user(cur, username)
            if user is None:
                return [], False
            principals = ["user:" + user.username] + ["group:" + g for g in user.groups]
            where.append("e.device_id IN (SELECT device_id FROM grants WHERE principal IN"
                         f" ({', '.join('?' * len(principals))}) AND (actions & 1) = 1 AND"
                         " (expires = 0 OR expires > ?))")
            params.extend(principals)
            params.append(self._now_ms())
        if device_id:
            where.append("e.device_id = ?")
            params.append(device_id)
        if type:
            where.append("e.type = ?")
            params.append(type)
        if since:
            where.append("e.node_time >= ?")
            params.append(since)
        if until:
            where.append("e.node_time < ?")
            params.append(until)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._x(cur, f"SELECT {_COLS} FROM events e LEFT JOIN event_acks a ON"
                       f" a.node_id = e.node_id AND a.seq = e.seq {clause}"
                       " ORDER BY e.node_time DESC, e.seq DESC LIMIT ?",
                       (*params, limit + 1)).fetchall()
        return [_entry(r) for r in rows[:limit]], len(rows) > limit

    def purge_events(self, before):
        return self._run(self._wpool, self._purge_events, int(before))

    def _purge_events(self, cur, before):
        self.dialect.begin_write(cur)
        self._x(cur, "DELETE FROM event_acks WHERE EXISTS (SELECT 1 FROM events e WHERE"
                " e.node_id = event_acks.node_id AND e.seq = event_acks.seq AND"
                " e.node_time < ?)", (before,))
        return max(0, self._x(cur, "DELETE FROM events WHERE node_time < ?",
                              (before,)).rowcount)
