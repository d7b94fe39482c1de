"""
The copy of the static data that a node run with the memory store keeps in its data
directory, so that after a restart (even while CMS is down) it serves logins, grants and
device lists from what it last synchronised, and catches up from CMS when it can
(docs/consistency.md, "What each node holds").

Two files, both 0600 (they hold SCRAM verifiers), written in the signalling protocol's
own binary encoding (frames of ``vss.protocols.codec``, so a record on disk is exactly
a record on the wire, and encoding costs a few microseconds a record):

``static.snapshot``
    the whole copy at one applied sequence: STATIC_PULL response frames (``StaticPage``
    bodies of at most ``PAGE`` records, each naming the sequence). Written whole, to a
    temporary file that is fsynced and renamed over the old one: after a full reload
    from CMS, and when the journal has grown as large as the copy (so its cost, spread
    over the changes, stays bounded).
``static.journal``
    the change-log entries applied since: one SYNC_FETCH response frame (``SyncBatch``)
    per applied batch, appended; the caller flushes (one fsync for many batches, see
    ``SyncApplier``) before it records the new sequence in ``sync.json``.

The node's own PUs' configuration and presets (``vss.rgm.settings``) travel in both
files as SYNC_CHANGE request frames (``SyncChange`` bodies: device, channel, CONFIG or
PRESET, items): in the snapshot every one held, in the journal each change a PU reported.

``read`` gives back the snapshot's records and sequence and the journal's batches in
order; a torn frame at the end of the journal (a crash while appending) and entries
the snapshot already holds are harmless, since the applier skips what it already
applied. Nothing here holds a secret in clear: only verifiers, as in memory.
"""

import os

from vss.protocols import codec
from vss.protocols.messages import KV, Entity, MsgType, StaticPage, SyncBatch, SyncChange

SNAPSHOT = "static.snapshot"
JOURNAL = "static.journal"
#: records per snapshot frame (far below the 65,535 of a list and below 1 MiB a frame)
PAGE = 2000
#: the journal is folded into a new snapshot when it holds this many changes and at
#: least as many as the copy has records
MIN_COMPACT = 10_000
#: frames read back may be this large (written by this module only)
MAX_FRAME_BODY = 64 << 20

_RESPONSE = codec.FLAG_RESPONSE


def _setting_frame(device_id, channel, kind, items):
    body = SyncChange(node_id="", change_id=0, device_id=device_id, channel=channel,
                      change=int(kind), timestamp=0,
                      items=[KV(key=str(k), value=str(v)) for k, v in items.items()],
                      base_version=0)
    return codec.encode_frame(MsgType.SYNC_CHANGE, codec.encode_body(body),
                              max_body=MAX_FRAME_BODY)


def _open_private(path, flags):
    """``os.open`` with mode 0600 whatever the umask (and fixed if it existed)."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class LocalCopy:
    """The snapshot and journal of one node's data directory."""

    def __init__(self, data_dir):
        self.snapshot_path = os.path.join(data_dir, SNAPSHOT)
        self.journal_path = os.path.join(data_dir, JOURNAL)
        self._journal = None  # file object, opened on first append
        self._buffer = []
        self.journaled = 0  # changes in the journal since the snapshot

    # -- reading back

    def read(self):
        """(seq, devices, users, grants, credentials, entries) of what was saved, or None
        without a snapshot. ``entries`` in the order they were saved: ``list`` of ``Change`` (an
        applied batch) or a ``SyncChange`` (a PU's configuration or presets), the
        snapshot's settings first."""
        if not os.path.exists(self.snapshot_path):
            return None
        seq = None
        devices, users, grants, credentials, entries = [], [], [], [], []
        for msg in self._frames(self.snapshot_path, strict=True):
            if msg.type == MsgType.SYNC_CHANGE:
                entries.append(msg.body)
                continue
            page = msg.body
            seq = page.seq
            devices.extend(page.devices)
            users.extend(page.users)
            grants.extend(page.grants)
            credentials.extend(page.credentials)
        if seq is None:
            return None
        self.journaled = 0
        if os.path.exists(self.journal_path):
            for msg in self._frames(self.journal_path):
                if msg.type == MsgType.SYNC_CHANGE:
                    entries.append(msg.body)
                    self.journaled += 1
                else:
                    entries.append(msg.body.changes)
                    self.journaled += len(msg.body.changes)
        return seq, devices, users, grants, credentials, entries

    def _frames(self, path, strict=False):
        with open(path, "rb") as f:
            data = f.read()
        decoder = codec.FrameDecoder(max_body=MAX_FRAME_BODY)
        frames = decoder.feed(data)
        out = []
        for frame in frames:
            if isinstance(frame, codec.ProtocolError):
                if strict:
                    raise ValueError(f"{path}: {frame.message}")
                break  # a damaged tail: what came before it stands
            msg = codec.decode_body(frame)
            if isinstance(msg, codec.ProtocolError):
                if strict:
                    raise ValueError(f"{path}: {msg.message}")
                break
            out.append(msg)
        if strict and decoder.buffered:
            raise ValueError(f"{path}: truncated")
        return out

    # -- writing

    def write_snapshot(self, seq, devices, users, grants, credentials=(), settings=()):
        """Replace the snapshot with these records at ``seq`` (and ``settings``: (device
        id, channel, ChangeKind, items) of the node's own PUs) and empty the journal."""
        tmp = self.snapshot_path + ".tmp"
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as f:
            for entity, records, name in ((Entity.DEVICE, devices, "devices"),
                                          (Entity.USER, users, "users"),
                                          (Entity.GRANT, grants, "grants"),
                                          (Entity.CREDENTIAL, list(credentials),
                                           "credentials")):
                for start in range(0, max(1, len(records)), PAGE):
                    page = {"devices": [], "users": [], "grants": [], "credentials": []}
                    page[name] = records[start:start + PAGE]
                    body = StaticPage(entity=int(entity), next_cursor="", seq=seq, **page)
                    f.write(codec.encode_frame(MsgType.STATIC_PULL, codec.encode_body(body),
                                               flags=_RESPONSE, max_body=MAX_FRAME_BODY))
            for setting in settings:
                f.write(_setting_frame(*setting))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        self._close_journal()
        self._buffer = []
        fd = _open_private(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.fsync(fd)
        os.close(fd)
        self.journaled = 0

    def append(self, changes):
        """Journal applied changes (written by the next ``flush``)."""
        for start in range(0, len(changes), PAGE):
            part = changes[start:start + PAGE]
            body = SyncBatch(changes=part, head_seq=part[-1].seq, reload_required=False)
            self._buffer.append(codec.encode_frame(
                MsgType.SYNC_FETCH, codec.encode_body(body), flags=_RESPONSE,
                max_body=MAX_FRAME_BODY))
        self.journaled += len(changes)

    def append_setting(self, device_id, channel, kind, items):
        """Journal a PU's configuration (CONFIG: items merged) or presets (PRESET: every
        preset) change (written by the next ``flush``)."""
        self._buffer.append(_setting_frame(device_id, channel, kind, items))
        self.journaled += 1

    def flush(self):
        """Write and fsync what was appended since the last flush."""
        if not self._buffer:
            return
        if self._journal is None:
            fd = _open_private(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self._journal = os.fdopen(fd, "ab")
        self._journal.write(b"".join(self._buffer))
        self._buffer = []
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def wants_snapshot(self, records):
        """True when the journal should be folded into a new snapshot (it holds as many
        changes as the copy has records, and at least ``MIN_COMPACT``)."""
        return self.journaled >= max(MIN_COMPACT, records)

    def close(self):
        self.flush()
        self._close_journal()

    def _close_journal(self):
        if self._journal is not None:
            self._journal.close()
            self._journal = None
