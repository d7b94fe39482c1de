"""
A DVR's own footage, through the node it is logged in to.

- Listing: the node's answer to a RECORD_QUERY (``NodeArchive.local``) for a DVR logged in
  here also holds what the DVR answers to the same RECORD_QUERY (node->PU, at most
  ``PU_TIMEOUT`` s), its segments marked as on the device: ``node_id`` is
  ``dvr:<device id>``. CMS merges it with the other nodes' answers as usual.
- Playback: MEDIA_OPEN ``purpose=PLAYBACK`` of a DVR logged in here, at a time this node's
  catalogue holds no segment for, asks the DVR to publish from ``start_time``
  (MEDIA_START with that ``start_time``) onto a path of this node's SS,
  ``/live/<device>/pb-dvr-<random id>``, with a publish-only token; the CU gets a play URL
  for that path, as for live video. With no viewer for ``linger`` seconds the source is
  closed and the DVR's publishing connection with it (which ends its publisher).
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import MediaStart, MsgType, PuKind, Recordings, RecordSegment
from vss.recording.segments import stream_name

log = Logger()

MARK = "dvr:"
PREFIX = "pb-dvr-"  # a playback path of the SS (it plays and publishes /live/<d>/pb-*)
PU_TIMEOUT = 1.5  # within CMS's 2 s wait for a node's answer


def is_dvr(record):
    return record is not None and record.kind == PuKind.DVR


def mark(device_id):
    return f"{MARK}{device_id}"


@defer.inlineCallbacks
def device_recordings(pu_links, store, body, timeout=PU_TIMEOUT):
    """The DVR's own ``Recordings`` of the query, marked as on the device; None when the
    device is not a DVR logged in here, or it did not answer."""
    if pu_links is None or not is_dvr(store.get_device(body.device_id)):
        return None
    link = pu_links.get(body.device_id)
    if link is None:
        return None
    try:
        answer = (yield link.request(MsgType.RECORD_QUERY, body, timeout=timeout)).body
    except VssError as e:
        log.info("recordings of the DVR {device}: {error}", device=body.device_id,
                 error=e.message)
        return None
    where = mark(body.device_id)
    segments = [RecordSegment(start=s.start, end=s.end, bytes=s.bytes, node_id=where)
                for s in answer.segments]
    return Recordings(segments=segments, gaps=answer.gaps, missing=[], exports=[],
                      truncated=answer.truncated)


@defer.inlineCallbacks
def wants_playback(cdn, body):
    """True if a PLAYBACK MEDIA_OPEN goes to the DVR: a DVR logged in here, and no
    segment of this node's catalogue at ``start_time``."""
    record = cdn.store.get_device(body.device_id)
    if not is_dvr(record) or body.device_id not in cdn.rgm.pu_links:
        return False
    if cdn.playback is None:
        return True

    start = int(body.start_time)
    listing = yield cdn.playback.catalogue.list(body.device_id,
                                                stream_name(body.channel, body.stream),
                                                start, start + 1)
    return not any(s.start_ms <= start < s.end_ms for s in listing["segments"])


@defer.inlineCallbacks
def open_playback(cdn, body):
    """Ask the DVR to publish from ``start_time``; the CU's ``MediaUrl``."""
    link = cdn.rgm.pu_links.get(body.device_id)
    if link is None:
        raise VssError(ResultCode.DEVICE_OFFLINE, f"{body.device_id} is offline")
    path = f"/live/{body.device_id}/{PREFIX}{os.urandom(8).hex()}"
    token = cdn.issuer.issue(path, ["publish"])
    start = MediaStart(device_id=body.device_id, channel=body.channel, stream=body.stream,
                       publish_url=f"{cdn.media_base}{path}?token={token}",
                       start_time=int(body.start_time))
    cdn.origins[path] = ("dvr", body.device_id)
    try:
        yield link.request(MsgType.MEDIA_START, start)
        source = yield cdn._wait(path)
    except Exception:
        cdn.origins.pop(path, None)
        close_publisher(cdn.rtsp, path)
        raise
    cdn.source_idle(source)  # stopped if no viewer comes
    cdn.counters["dvr_playbacks"] = cdn.counters.get("dvr_playbacks", 0) + 1
    log.info("DVR playback {path} from {at}", path=path, at=body.start_time)
    return cdn.play_url(path)


def close_publisher(rtsp, path):
    """Close the publishing connection(s) of ``path`` (the DVR's publisher then ends)."""
    for s in list(rtsp.sessions.values()):
        if s.path == path and s.role == "publish" and s.conn is not None:
            s.conn.close()
