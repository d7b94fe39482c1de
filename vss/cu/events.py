"""
``vssctl events`` and ``vssctl ack``: the events and alarms of the devices a user may
view (docs/protocol.md 9.7).

- ``vssctl events [--device D] [--type T] [--from TIME] [--to TIME] [--limit N]`` lists
  the stored events, newest first, with who acknowledged them;
- ``vssctl events --follow [--device D] [--type T]`` shows them live, one line each; when
  the link drops it logs in again and resumes after the last event it showed, so an
  event is shown once and none the node still holds is missed;
- ``vssctl ack NODE/SEQ DEVICE [--comment TEXT]`` acknowledges one.
"""

import datetime
import json
import sys

from twisted.internet import defer, task
from twisted.internet.error import ConnectError
from twisted.python import usage

from vss.client import SignallingClient
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.jsonrec import plain
from vss.protocols.messages import (
    CuKind,
    EventAck,
    EventPhase,
    EventQuery,
    EventSubscribe,
    MsgType,
    RecordSettingsGet,
    Role,
    Severity,
)

#: answers that trying again would not change
_FOR_GOOD = (ResultCode.FORBIDDEN, ResultCode.INVALID_ARGUMENT, ResultCode.AUTH_FAILED,
             ResultCode.NOT_SUPPORTED, ResultCode.LIMIT_REACHED)


def _name(enum, value):
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _iso_ms(ms):
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def event_line(event, acked_by="", acked_at=0, comment=""):
    """One readable line for an event."""
    items = " ".join(f"{kv.key}={kv.value}" for kv in event.items)
    line = (f"{_iso_ms(event.node_time)}  {event.device_id} ch{event.channel}  {event.type} "
            f"{_name(EventPhase, event.phase)}  {_name(Severity, event.severity)}"
            f"{'  ' + items if items else ''}  [{event.node_id}/{event.seq}]")
    if acked_by:
        line += f"  acked by {acked_by} at {_iso_ms(acked_at)}"
        if comment:
            line += f": {comment}"
    return line


def event_json(event, **extra):
    out = plain(event)
    out["phase"] = _name(EventPhase, event.phase).lower()
    out["severity"] = _name(Severity, event.severity).lower()
    out["id"] = f"{event.node_id}/{event.seq}"
    out.update(extra)
    return out


def query_body(sub):
    return EventQuery(device_id=sub["device"] or "", type=sub["type"] or "",
                      from_time=sub["from_ms"], to_time=sub["to_ms"], limit=sub["limit"],
                      username="")


def render_events(body, as_json):
    if as_json:
        return json.dumps({"events": [event_json(e.event, acked_by=e.acked_by,
                                                 acked_at=e.acked_at, comment=e.comment)
                                      for e in body.events],
                           "truncated": body.truncated}, indent=1, sort_keys=True)
    lines = [event_line(e.event, e.acked_by, e.acked_at, e.comment) for e in body.events]
    lines.append(f"{len(body.events)} event(s)" + (" (more: narrow the range or raise "
                                                    "--limit)" if body.truncated else ""))
    return "\n".join(lines)


def parse_event_id(text):
    """``(node_id, seq)`` from ``NODE/SEQ``."""
    node, _, seq = text.rpartition("/")
    if not node or not seq.isdigit():
        raise usage.UsageError(f"{text!r} is not an event id (NODE/SEQ, as listed)")
    return node, int(seq)


def ack_body(sub):
    node, seq = parse_event_id(sub["event"])
    return EventAck(node_id=node, seq=seq, device_id=sub["device"], username="",
                    comment=sub["comment"] or "")


def render_ack(body, as_json):
    if as_json:
        return json.dumps(plain(body), indent=1, sort_keys=True)
    return f"{body.node_id}/{body.seq} acknowledged by {body.acked_by} at " \
           f"{_iso_ms(body.acked_at)}"


@defer.inlineCallbacks
def follow(reactor, opts, password, out, connect_when_ready, err=None):
    """``vssctl events --follow``: subscribe, print each event as it comes; when the link
    drops, log in again and resume after the last feed id shown. Ends after ``--count``
    events when given (else runs until interrupted)."""
    err = err or sys.stderr
    sub = opts.subOptions
    as_json = opts["json"]
    shown = {"last": sub["resume-after"] or 0, "count": 0}
    done = defer.Deferred()
    wanted = sub["count"]

    def on_notify(msg):
        if msg.type != MsgType.EVENT_NOTIFY:
            return
        feed_id, event = msg.body.feed_id, msg.body.event
        if feed_id <= shown["last"]:
            return  # shown already (never twice)
        shown["last"] = feed_id
        shown["count"] += 1
        if as_json:
            out.write(json.dumps(event_json(event, feed_id=feed_id), sort_keys=True) + "\n")
        else:
            out.write(event_line(event) + "\n")
        out.flush()
        if wanted and shown["count"] >= wanted and not done.called:
            done.callback(None)

    delay = 0.5
    while not done.called:
        client = SignallingClient(Role.CU, opts["user"], password, kind=CuKind.MOC,
                                  on_notify=on_notify)
        try:
            yield connect_when_ready(reactor, opts, client, err)
            answer = (yield client.request(MsgType.EVENT_SUBSCRIBE, EventSubscribe(
                devices=[sub["device"]] if sub["device"] else [], groups=[],
                types=[sub["type"]] if sub["type"] else [],
                resume_after=shown["last"]))).body
        except VssError as e:
            if client.link is not None:
                client.link.close()
            if e.code in _FOR_GOOD:
                raise
            print(f"vssctl: {e.message}; trying again in {delay:.1f} s", file=err, flush=True)
            yield task.deferLater(reactor, delay, lambda: None)
            delay = min(delay * 2, 8.0)
            continue
        except (ConnectError, OSError) as e:
            print(f"vssctl: cannot reach {opts['node']} ({e}); trying again in {delay:.1f} s",
                  file=err, flush=True)
            yield task.deferLater(reactor, delay, lambda: None)
            delay = min(delay * 2, 8.0)
            continue
        delay = 0.5
        if answer.gap:
            print("vssctl: some events were missed (the node's history no longer reaches "
                  "back); `vssctl events` lists them", file=err, flush=True)
        lost = client.lost
        yield defer.DeferredList([lost, done], fireOnOneCallback=True, consumeErrors=True)
        if done.called:
            if client.link is not None:
                client.link.close()
            break
        print("vssctl: the link to the node dropped; resuming", file=err, flush=True)
        yield task.deferLater(reactor, delay, lambda: None)


@defer.inlineCallbacks
def event_start(client, sub):
    """``(event, pre_event_seconds)`` of ``vssctl playback --event``: the stored event and
    its channel's pre-event seconds (5 when the user may not read the settings)."""
    node, seq = parse_event_id(sub["event"])
    answer = (yield client.request(MsgType.EVENT_QUERY, EventQuery(
        device_id=sub["device"], type="", from_time=0, to_time=0, limit=1000,
        username=""))).body
    found = [e.event for e in answer.events if (e.event.node_id, e.event.seq) == (node, seq)]
    if not found:
        raise VssError(ResultCode.NOT_FOUND, f"no event {node}/{seq} of {sub['device']} "
                       "among its last 1000 (vssctl events --device lists them)")
    event = found[0]
    pre = 5
    try:
        settings = (yield client.request(MsgType.RECORD_SETTINGS_GET, RecordSettingsGet(
            device_id=event.device_id, channel=event.channel))).body
        pre = settings.pre_event_seconds
    except VssError:
        pass
    return event, pre
