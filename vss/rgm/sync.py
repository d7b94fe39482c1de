"""
How a node applies central changes to its in-memory database (S505) without restarts.

``SyncApplier`` keeps the last change-log sequence it applied, in the memory store's
meta and in ``sync.json`` in the node's data directory. The file may lag (with a clock it
is written at most every ``SAVE_DELAY`` seconds, one fsync instead of one per notify):
``restore`` takes the lower of the two, and re-applying from an older sequence is
harmless. Applying is idempotent: a change
at or below that sequence is skipped, and a record older than the one held (by version)
never replaces it, so duplicates and replays are harmless. When a batch does not start
right after the last applied sequence, the caller fetches what lies between (``gap``).

With the memory store (nothing survives the process) the applier also keeps the copy in
the data directory (``vss.rgm.localcopy``: a snapshot and the journal of the changes
applied since), and ``restore`` reads it back at start: the node then serves from it at
once, even while CMS is down, and fetches what it missed.
"""

import json
import os
from dataclasses import replace

from twisted.logger import Logger

from vss.protocols.messages import ChangeKind, ChangeOp, Entity, SyncChange
from vss.rgm import settings
from vss.rgm.localcopy import MIN_COMPACT, LocalCopy

SAVE_DELAY = 0.1  # seconds between writes of sync.json when a clock is given


def ext_seq(ext, tag=1):
    """The u64 an extension block carries under ``tag`` (SyncNotify's PREV_SEQ,
    SyncBatch's SCANNED_SEQ, docs/protocol.md 10), or None."""
    for t, value in ext:
        if t == tag and len(value) == 8:
            return int.from_bytes(value, "big")
    return None


class SyncApplier:
    log = Logger()

    def __init__(self, store, node_id, data_dir=None, on_device_change=None, on_user_change=None,
                 clock=None, on_access_change=None, local_copy=False):
        self.store = store
        self.clock = clock
        self._save_call = None
        self.node_id = node_id
        self.path = os.path.join(data_dir, "sync.json") if data_dir else None
        self.on_device_change = on_device_change
        self.on_user_change = on_user_change
        #: called once after a batch that changed a user, a grant or a stream credential
        #: (who may play what: the node checks the sessions of stream credentials again)
        self.on_access_change = on_access_change
        self._access_changed = False
        self.applied_seq = 0
        self.applied_count = 0
        #: the memory store's copy on disk (``vss.rgm.localcopy``), or None
        self.local = LocalCopy(data_dir) if local_copy and data_dir else None
        self._quiet = False  # replaying the local copy: no callbacks
        self.on_applied = None  # f(applied_seq) after each batch applied

    def restore(self):
        """The applied sequence to resume from, or None when there is nothing synced to
        serve from (reload everything): the store's own (Redis), else the local copy of
        the memory store, read back into the store."""
        meta = self.store.get_meta("applied_seq")
        if meta is None and self.local is not None:
            meta = self._restore_local()
        if meta is None:
            return None
        seq = int(meta)
        if self.path and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                seq = min(seq, int(json.load(f).get("applied_seq", 0)))
        self.applied_seq = seq
        self.store.set_meta("applied_seq", seq)
        return seq

    def _restore_local(self):
        try:
            saved = self.local.read()
        except (OSError, ValueError) as e:
            self.log.error("the local copy of the static data cannot be read ({error}); "
                           "the node reloads from CMS", error=str(e))
            return None
        if saved is None:
            return None
        seq, devices, users, grants, credentials, entries = saved
        store = self.store
        for r in devices:
            store.put_device(r)
        for r in users:
            store.put_user(r)
        for r in grants:
            store.put_grant(r)
        for r in credentials:
            store.put_credential(r)
        self.applied_seq = seq
        self._quiet = True
        try:
            for entry in entries:
                if isinstance(entry, SyncChange):
                    settings.apply(store, entry.device_id, entry.channel,
                                   ChangeKind(entry.change),
                                   {kv.key: kv.value for kv in entry.items})
                    continue
                for c in entry:
                    if c.seq > self.applied_seq:
                        self.apply_one(c)
                        self.applied_seq = c.seq
        finally:
            self._quiet = False
            self._access_changed = False  # nothing was open to check yet
        self.log.info("restored the local copy: {devices} devices, {users} users, {grants} "
                      "grants, {creds} stream credentials at sequence {seq}",
                      devices=len(store.devices()), users=len(store.users()),
                      grants=len(store.grants()), creds=len(store.credentials()),
                      seq=self.applied_seq)
        return self.applied_seq

    def gap(self, changes):
        """True if ``changes`` do not follow the last applied sequence directly."""
        return bool(changes) and changes[0].seq > self.applied_seq + 1

    def apply(self, changes, upto=None):
        """S505: apply changes in order; returns the new applied sequence."""
        applied = []
        for c in changes:
            if c.seq <= self.applied_seq:
                continue
            self.apply_one(c)
            self.applied_seq = c.seq
            self.applied_count += 1
            applied.append(c)
        if applied and self.local is not None:
            self.local.append(applied)
        if upto is not None and upto > self.applied_seq:
            self.applied_seq = upto
        self.save()
        if self._access_changed:
            self._access_changed = False
            if self.on_access_change is not None:
                self.on_access_change()
        return self.applied_seq

    def apply_one(self, c):
        store = self.store
        if c.entity in (Entity.USER, Entity.GRANT, Entity.CREDENTIAL):
            self._access_changed = True
        if c.entity == Entity.CREDENTIAL:
            held = store.get_credential(c.key)
            if c.op == ChangeOp.DELETE:
                if held is not None and held.version < c.version:
                    store.remove_credential(c.key)
            elif c.credential is not None and (held is None or
                                               held.version <= c.credential.version):
                store.put_credential(c.credential)
            return
        if c.entity == Entity.DEVICE:
            held = store.get_device(c.key)
            if c.op == ChangeOp.DELETE:
                if held is not None and held.version < c.version:
                    store.remove_device(c.key)
                    self._device_changed(c.key, held, None)
            elif c.device is not None and (held is None or held.version <= c.device.version):
                if held is not None and not c.device.verifier.stored_key \
                        and held.verifier.stored_key and c.device.home_node == held.home_node:
                    # keep the verifier of a device that stays homed here

                    record = replace(c.device, verifier=held.verifier)
                else:
                    record = c.device
                store.put_device(record)
                self._device_changed(c.key, held, record)
        elif c.entity == Entity.USER:
            held = store.get_user(c.key)
            if c.op == ChangeOp.DELETE:
                if held is not None and held.version < c.version:
                    store.remove_user(c.key)
                    self._user_changed(c.key, None)
            elif c.user is not None and (held is None or held.version <= c.user.version):
                store.put_user(c.user)
                self._user_changed(c.key, c.user)
        elif c.entity == Entity.GRANT:
            # Grants are applied in log order; the sequence check above is their guard.
            principal, _, device_id = c.key.partition("|")
            if c.op == ChangeOp.DELETE:
                store.remove_grant(principal, device_id)
            elif c.grant is not None:
                store.put_grant(c.grant)

    def _device_changed(self, device_id, old, new):
        if self.on_device_change is not None and not self._quiet:
            self.on_device_change(device_id, old, new)

    def _user_changed(self, username, new):
        if self.on_user_change is not None and not self._quiet:
            self.on_user_change(username, new)

    def snapshot(self):
        """Write the whole copy to the local copy's snapshot (after a full reload, or
        when its journal has grown as large as the copy)."""
        if self.local is None:
            return
        store = self.store
        devices = store.devices()
        held = [(r.device_id, channel, kind, items) for r in devices
                if r.home_node == self.node_id
                for channel, kind, items in settings.held(store, r.device_id)]
        self.local.write_snapshot(self.applied_seq, devices, store.users(), store.grants(),
                                  store.credentials(), held)

    def note_setting(self, device_id, channel, kind, items):
        """A PU of this node reported its configuration or presets (S602): kept with
        the local copy, so a restart of the memory store restores them."""
        if self.local is None:
            return
        self.local.append_setting(device_id, channel, kind, items)
        self._schedule_write()

    def save(self):
        self.store.set_meta("applied_seq", self.applied_seq)
        self._schedule_write()
        if self.on_applied is not None:
            self.on_applied(self.applied_seq)

    def _schedule_write(self):
        if not self.path:
            return
        if self.clock is None:
            self._write_file()
        elif self._save_call is None:
            self._save_call = self.clock.callLater(SAVE_DELAY, self._write_file)

    def close(self):
        """Write a pending ``sync.json`` (and the local copy's journal) now."""
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
            self._write_file()
        if self.local is not None:
            self.local.close()

    def _write_file(self):
        self._save_call = None
        if self.local is not None:
            # The journal first: sync.json never names a sequence the copy lacks.
            self.local.flush()
            if self.local.journaled >= MIN_COMPACT:
                store = self.store
                if self.local.wants_snapshot(len(store.devices()) + len(store.users())
                                             + len(store.grants())
                                             + len(store.credentials())):
                    self.snapshot()
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"applied_seq": self.applied_seq, "node_id": self.node_id}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
