"""
The durable outbox of a node's PU-originated changes (S603): a change is written to
``outbox.jsonl`` in the data directory (fsynced) before it is sent to CMS, and leaves it
only when CMS has acknowledged it (S605). After a crash or a CMS outage every change
still in the outbox is sent again, in order.

A change is stamped with its base version (the version of the device the node held) the
first time it is sent, and the stamp is journalled (``sent``): a resend carries the same
base, so a change CMS applied but whose acknowledgement was lost is refused as stale
rather than applied a second time over later changes.

The file is an append-only journal of ``add`` and ``ack`` lines, rewritten compactly
when everything in it is acknowledged or it grows large. Writes made in one reactor turn
share one fsync.
"""

import json
import os
from dataclasses import replace

from vss.protocols.jsonrec import from_json, to_json

COMPACT_BYTES = 1 << 20


class Outbox:
    def __init__(self, path, clock=None):
        self.path = path
        self.clock = clock
        self.pending = {}  # change_id -> SyncChange, in insertion order
        self.sent_ids = set()  # pending changes already stamped with their base version
        self.last_id = 0
        self._buffer = []
        self._flush_call = None
        self._load()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _load(self):
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # a torn last line after a crash: everything before it stands
                if entry.get("op") == "add":
                    change = from_json(entry["change"])
                    self.pending[change.change_id] = change
                    self.last_id = max(self.last_id, change.change_id)
                elif entry.get("op") == "sent":
                    change = self.pending.get(entry["id"])
                    if change is not None:
                        self.pending[change.change_id] = replace(change,
                                                                 base_version=entry["base"])
                        self.sent_ids.add(change.change_id)
                elif entry.get("op") == "ack":
                    self.pending.pop(entry["id"], None)
                    self.sent_ids.discard(entry["id"])
                    self.last_id = max(self.last_id, entry["id"])
                elif entry.get("op") == "base":
                    self.last_id = max(self.last_id, entry["last_id"])
        self._rewrite()

    def next_id(self):
        self.last_id += 1
        return self.last_id

    def add(self, change):
        self.pending[change.change_id] = change
        self._write({"op": "add", "change": to_json(change)})

    def sent(self, change):
        """``change`` goes to CMS for the first time, stamped with its base version."""
        self.pending[change.change_id] = change
        self.sent_ids.add(change.change_id)
        self._write({"op": "sent", "id": change.change_id, "base": change.base_version})

    def ack(self, change_id):
        self.sent_ids.discard(change_id)
        if self.pending.pop(change_id, None) is not None:
            self._write({"op": "ack", "id": change_id})

    def _write(self, entry):
        self._buffer.append(json.dumps(entry, separators=(",", ":")))
        if self.clock is None:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()  # called early: the journal is written now
        self._flush_call = None
        if not self._buffer:
            return
        self._file.write("\n".join(self._buffer) + "\n")
        self._buffer = []
        self._file.flush()
        os.fsync(self._file.fileno())
        if not self.pending or self._file.tell() > COMPACT_BYTES:
            self._file.close()
            self._rewrite()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _rewrite(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"op": "base", "last_id": self.last_id}) + "\n")
            for change in self.pending.values():
                f.write(json.dumps({"op": "add", "change": to_json(change)},
                                   separators=(",", ":")) + "\n")
                if change.change_id in self.sent_ids:
                    f.write(json.dumps({"op": "sent", "id": change.change_id,
                                        "base": change.base_version}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self):
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.flush()
        self._file.close()
