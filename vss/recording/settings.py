"""
Recording settings reach the nodes (passive sync, no restart).

The CMS database holds the recording settings of each (device, channel) (MMS: ``PUT
/devices/{id}/record-settings/{channel}``). Writing them raises the device's version and
logs a device UPSERT in the same transaction, so every node sees a device change through
the ordinary passive sync (S501-S506). The device's HOME node then asks CMS for that
device's settings, one RECORD_SETTINGS_GET per channel over its CMS link (CMS answers it
from its database; ``NOT_FOUND`` when nothing was ever stored for the channel) and hands
them to its recording task manager (``RecordingManager.apply_settings``): CONTINUOUS
starts recording, OFF stops what the settings started, a schedule arms its edges.

- ``device_changed`` (hooked on the CMS link's device changes): a change of a device
  homed here refreshes its settings; a device removed, or moved to another node, has
  what its settings started here stopped (mode OFF).
- ``refresh_all`` (after every (re)connection to CMS, so also after a full reload):
  the settings of every device homed here.

Refreshes of one device never overlap: a change arriving while one is in flight marks
it dirty and it runs once more afterwards, so the last settings written always win.
Settings equal to the ones the manager holds are not applied again (the device's own
reports, active sync, raise its version too). The retention part of the settings
(``retention_days``, ``quota_mb``) is kept in ``held`` for the node's retention pass
(``retention``): days per channel, a node-wide quota.
"""

from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import RecordMode, RecordSettings, Stream
from vss.recording.catalogue import Retention
from vss.recording.tasks import ChannelSettings

CONCURRENCY = 8  # settings requests in flight at once during refresh_all
DEFAULT_RETENTION_DAYS = 7  # a channel without settings (as MMS's default settings)


def off(device_id, channel):
    return RecordSettings(device_id=device_id, channel=channel, mode=int(RecordMode.OFF),
                          stream=int(Stream.MAIN), segment_seconds=0, retention_days=0,
                          quota_mb=0, pre_event_seconds=0, post_event_seconds=0, schedule=[])


class RecordSettingsSync:
    log = Logger()

    def __init__(self, node_id, store, central, manager, default_days=DEFAULT_RETENTION_DAYS,
                 quota_bytes=None):
        self.node_id = node_id
        self.default_days = default_days  # for a channel without settings (None: forever)
        self.quota_bytes = quota_bytes  # the node's own quota, if any
        self.store = store
        self.central = central
        self.manager = manager
        self.held = {}  # (device_id, channel) -> RecordSettings from CMS
        self._busy = {}  # device_id -> True when another refresh is wanted after this one
        self._limit = defer.DeferredSemaphore(CONCURRENCY)
        self.counters = {"fetched": 0, "applied": 0, "unchanged": 0, "failed": 0}

    def homed_here(self, record):
        return record is not None and record.home_node == self.node_id

    def device_changed(self, device_id, old, new):
        if self.homed_here(new):
            if old is None or old.version != new.version or not self.homed_here(old):
                self.refresh(device_id)
            return
        for dc in [dc for dc in self.held if dc[0] == device_id]:
            del self.held[dc]
            self._apply(off(*dc))

    def refresh_all(self):
        ids = [r.device_id for r in self.store.devices() if self.homed_here(r)]
        return defer.DeferredList([self.refresh(d) for d in ids], consumeErrors=True)

    def refresh(self, device_id):
        """Fetch and apply the settings of every channel of a device homed here."""
        if device_id in self._busy:
            self._busy[device_id] = True
            return defer.succeed(None)
        self._busy[device_id] = False

        def again(result):
            if self._busy.pop(device_id, False):
                return self.refresh(device_id)
            return result

        d = self._limit.run(self._fetch, device_id)
        d.addErrback(self._failed, device_id)
        return d.addBoth(again)

    @defer.inlineCallbacks
    def _fetch(self, device_id):
        record = self.store.get_device(device_id)
        if not self.homed_here(record):
            return
        for channel in range(max(1, record.channels)):
            self.counters["fetched"] += 1
            try:
                body = yield self.central.record_settings(device_id, channel)
            except VssError as e:
                if e.code in (ResultCode.NOT_FOUND, ResultCode.UNKNOWN_DEVICE):
                    continue
                raise
            self.held[(device_id, channel)] = body
            yield self._apply(body)

    def _apply(self, body):
        dc = (body.device_id, body.channel)
        new = ChannelSettings.from_record(body)
        current = self.manager.settings.get(dc)
        if current == new or (current is None and new.mode == RecordMode.OFF):
            self.counters["unchanged"] += 1
            return defer.succeed(None)
        self.counters["applied"] += 1
        self.log.info("recording settings of {device} channel {channel}: {mode}",
                      device=body.device_id, channel=body.channel,
                      mode=RecordMode(body.mode).name if body.mode in set(RecordMode)
                      else body.mode)
        return self.manager.apply_settings(body)

    def _failed(self, failure, device_id):
        self.counters["failed"] += 1
        self.log.warn("recording settings of {device} not fetched: {error}",
                      device=device_id, error=failure.getErrorMessage())

    def retention(self):
        """(``Retention``, quota in bytes or None) for the node's retention pass, read
        from the settings held at each pass (a change applies at the next one): each
        channel held keeps its segments its own ``retention_days`` (0: no age limit),
        every other one ``default_days``; the quota is the node's ``quota_bytes`` if set,
        and the SUM of the channels' quotas when every channel held has one (the lower of
        the two when both apply)."""
        days = {dc: s.retention_days for dc, s in self.held.items()}
        quotas = [s.quota_mb for s in self.held.values()]
        quota = None if not quotas or 0 in quotas else sum(quotas) * 1024 * 1024
        if self.quota_bytes:
            quota = self.quota_bytes if quota is None else min(quota, self.quota_bytes)
        return Retention(self.default_days, days), quota
