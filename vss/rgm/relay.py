"""
CU to PU communication on a node (flow S401-S407 of docs/architecture.md).

- S401 ``on_cu_request``: a CU's request arrives at the RGM of its own node; the grant
  for the device and action is checked here, before anything is forwarded.
- local hit ``serve_locally``: the PU is in this node's memory database; the request is
  forwarded to the PU under the node's own transaction id and the answer correlated.
- S402 ``ask_central``: the device is not held here; CMS routes it to the home node
  (S403-S406 happen there) and the answer comes back.
- S407 ``answer_cu``: the answer goes back to the CU under the CU's transaction id.

Bodies are decoded once (to read the device id and validate arguments) and then passed
through as bytes: the node never re-encodes what it relays.

Fast path (``fast_cu_request``, docs/performance.md "Signalling relay"): a PTZ_CONTROL
from a registered CU for a PU online on this node, granted and valid, is read straight
from its bytes with one ``struct`` (no typed body), sent on with ``request_cb`` (no
Deferred, no timer of its own) and the PU's answer checked by size before it is passed
back. Anything else, or any doubt, goes the general way below, which gives every error;
so the fast path changes no outcome. tests/test_fastpath.py proves its parser agrees
with construct.

Routed fast path (docs/performance.md "Routing"): the same PTZ_CONTROL for a device homed
on another node, with a cached route and a live link to that node, goes out as a
ROUTE_REQUEST packed with ``struct`` around the raw body (``_fast_routed_request``); on
the home node ``fast_routed`` (``PeerServer.received_frame``) sends it straight to the PU
and wraps the answer with ``struct``. Errors and any doubt take the general path
(``ask_central`` / ``serve_route``); a failed cached route is dropped and CMS asked.
"""

import dataclasses
import math
import struct
from bisect import bisect_left

from twisted.internet import defer

from vss.ops.histogram import LATENCY_BOUNDS, Histogram
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    Empty,
    Error,
    MsgType,
    PtzControl,
    PtzOp,
    PtzStatus,
    Role,
    RouteRequest,
    RouteResponse,
)
from vss.recording import tasks as recording
from vss.rgm.walls import CU_TARGET, WALL_KINDS, WALL_REQUESTS, target

#: the grant action each relayed control message needs (S401)
CONTROL_ACTIONS = {
    MsgType.PTZ_CONTROL: Action.PTZ,
    MsgType.LENS_CONTROL: Action.PTZ,
    MsgType.PRESET: Action.PTZ,
    MsgType.CONFIG_GET: Action.CONFIG,
    MsgType.CONFIG_SET: Action.CONFIG,
    MsgType.RECORD_SETTINGS_GET: Action.RECORD,
    MsgType.RECORD_SETTINGS_SET: Action.RECORD,
    MsgType.RECORD_START: Action.RECORD,
    MsgType.RECORD_STOP: Action.RECORD,
    MsgType.RECORD_STATUS: Action.RECORD,
    MsgType.RECORD_QUERY: Action.VIEW,
}


_PTZ = int(MsgType.PTZ_CONTROL)
_PTZ_GRANT = int(Action.PTZ)
_PTZ_OPS = frozenset(int(op) for op in PtzOp)
_CU = int(Role.CU)
_REGISTERED = "registered"  # vss.rgm.service.State.REGISTERED
#: ``(device_id, channel, op, pan, tilt, zoom, speed, timeout_ms)`` of a well-formed
#: PTZ_CONTROL body with an empty extension block, else None (construct decides)
parse_ptz = codec.tuple_decoder(PtzControl)


def _fixed_body_size(cls):
    """The size of a body of ``cls`` with no extensions when all its fields are of
    fixed size (so any bytes of that size, ending in an empty extension block, are a
    valid body), else None."""
    plan = codec.fast_plan(cls)
    if plan is None or len(plan) != 1 or not isinstance(plan[0], struct.Struct):
        return None
    return plan[0].size + 2


_PTZ_STATUS_SIZE = _fixed_body_size(PtzStatus)


def ptz_status_ok(body):
    """True when ``body`` is, for sure, a valid PtzStatus (no decoding needed)."""
    return len(body) == _PTZ_STATUS_SIZE and body[-2:] == b"\x00\x00"


_bisect = bisect_left
_BOUNDS = LATENCY_BOUNDS  # of the histograms rgm.ptz_local and rgm.ptz_remote
_KEEPALIVE = int(MsgType.KEEPALIVE)
_PU = int(Role.PU)
_EMPTY_BODY = b"\x00\x00"
_pack_header = codec.HEADER_STRUCT.pack


def fast_request(rgm, link, frame):
    """The node's fast paths, tried on every request before it is decoded (the hook
    ``received_frame`` of the RGM's link handler); False leaves the frame to the general
    path, ``RGMService.received``."""
    t = frame.type
    if t == _PTZ:
        return fast_cu_request(rgm, link, frame)
    if t == _KEEPALIVE:
        return fast_keepalive(rgm, link, frame)
    return False


def fast_keepalive(rgm, link, frame):
    """A KEEPALIVE request with an empty body, answered as ``RGMService.received`` does
    (an empty response; a registered PU's ``last_seen`` updated) without building a typed
    body or response: the one message an idle link sends. KEEPALIVE is accepted in every
    state of a link, before HELLO too (docs/protocol.md 8)."""
    s = link.session
    if frame.flags or frame.body != _EMPTY_BODY or s is None:
        return False
    link.send_raw(_pack_header(codec.MAGIC, link.version, codec.FLAG_RESPONSE, _KEEPALIVE, 0,
                               frame.txid, 2) + _EMPTY_BODY)
    s = link.session
    if s is not None and s.state == _REGISTERED and s.role == _PU:
        rgm.store.set_state(s.identity, last_seen=rgm.now_ms())
    return True


def _take_txid(rgm, session, txid):
    """Hold a CU's txid in flight for a fast path; False if it is a duplicate or the
    link is at its limit (the general path then answers with the error)."""
    inflight = session.inflight
    if txid in inflight or len(inflight) >= rgm.config.max_in_flight:
        return False
    inflight.add(txid)
    return True


def fast_cu_request(rgm, link, frame):
    """The fast path of S401 + local hit + S407 for PTZ_CONTROL; True if it took the
    request, False to leave it to the general path (which then gives any error)."""
    if frame.type != _PTZ or frame.flags:
        return False
    s = link.session
    if s is None or s.state != _REGISTERED or s.role != _CU:
        return False
    fields = parse_ptz(frame.body)
    if fields is None:
        return False
    device_id, channel, op, pan, tilt, zoom, speed, _timeout = fields
    store = rgm.store
    if not store.actions_for(s.identity, device_id) & _PTZ_GRANT:
        return False
    device = store.get_device(device_id)
    if device is None:
        return False
    channels = device.channels
    if (channels and channel >= channels) or op not in _PTZ_OPS:
        return False
    # NaN fails every comparison, infinities the bounds: both go the general way.
    if not (-1.0 <= pan <= 1.0 and -1.0 <= tilt <= 1.0 and -1.0 <= zoom <= 1.0
            and -1.0 <= speed <= 1.0):
        return False
    if device.home_node not in ("", rgm.node_id):
        return _fast_routed_request(rgm, link, frame, s, device_id)
    pu = rgm.pu_links.get(device_id)
    if pu is None or pu.closed:
        return False
    if not _take_txid(rgm, s, frame.txid):
        return False  # the general path answers DUPLICATE_TXID / TOO_MANY_IN_FLIGHT
    rgm.counters["relayed"] += 1
    pu.request_cb(_PTZ, frame.body, rgm.config.request_timeout, _relayed,
                  (link, frame, device_id, rgm, pu, link.last_rx))
    return True


# -- routed PTZ_CONTROL (docs/performance.md "Routing")

_ROUTE = int(MsgType.ROUTE_REQUEST)
_UNKNOWN_DEVICE = int(ResultCode.UNKNOWN_DEVICE)
_INTERNAL_ERROR = int(ResultCode.INTERNAL_ERROR)
#: RouteRequest after its two u16-prefixed strings: hops, inner_type, inner_body length.
_ROUTE_MID = struct.Struct(">BHI")
#: RouteResponse after its u16-prefixed home_node: inner_status, inner_body length.
_ROUTE_ANSWER_MID = struct.Struct(">HI")
_pack_route_mid = _ROUTE_MID.pack
_pack_route_answer_mid = _ROUTE_ANSWER_MID.pack
_unpack_route_mid = _ROUTE_MID.unpack_from
_unpack_route_answer_mid = _ROUTE_ANSWER_MID.unpack_from
_plan = codec.fast_plan(RouteRequest)
assert _plan[:2] == [(2, True), (2, True)] and _plan[2].format == _ROUTE_MID.format[:-1]
assert _plan[3] == (4, False) and len(_plan) == 4
_plan = codec.fast_plan(RouteResponse)
assert _plan[0] == (2, True) and _plan[1].format == ">H" and _plan[2] == (4, False)
assert len(_plan) == 3
del _plan
_fields = {}  # node id -> its u16-prefixed UTF-8 (a few node ids per cluster)


def str_field(text):
    """``text`` as a u16-length-prefixed UTF-8 field (construct's ``Str``); node ids are
    kept once made."""
    field = _fields.get(text)
    if field is None:
        raw = text.encode("utf-8")
        field = struct.pack(">H", len(raw)) + raw
        if len(_fields) < 1024:
            _fields[text] = field
    return field


def pack_route_request(origin_field, device_field, hops, inner_type, inner_body):
    """A RouteRequest body (no extensions) from its already prefixed string fields."""
    return b"".join((origin_field, device_field,
                     _pack_route_mid(hops, inner_type, len(inner_body)), inner_body,
                     _EMPTY_BODY))


def pack_route_response(home_field, inner_status, inner_body):
    """A RouteResponse body (no extensions) from its already prefixed home node."""
    return b"".join((home_field, _pack_route_answer_mid(inner_status, len(inner_body)),
                     inner_body, _EMPTY_BODY))


def parse_route_request(body):
    """``(origin_node, device_id, hops, inner_type, inner_body)`` of a well-formed
    RouteRequest body with an empty extension block, else None (construct decides)."""
    n = len(body)
    if n < 13:
        return None
    p = 2 + ((body[0] << 8) | body[1])
    if n < p + 11:
        return None
    q = p + 2 + ((body[p] << 8) | body[p + 1])
    if n < q + 9:
        return None
    hops, inner_type, size = _unpack_route_mid(body, q)
    r = q + 7
    if n != r + size + 2 or body[n - 2] or body[n - 1]:
        return None
    try:
        origin = str(body[2:p], "utf-8")
        device_id = str(body[p + 2:q], "utf-8")
    except UnicodeDecodeError:
        return None
    return origin, device_id, hops, inner_type, body[r:r + size]


def parse_route_response(body):
    """``(home_node, inner_status, inner_body)`` of a well-formed RouteResponse body with
    an empty extension block, else None (construct decides)."""
    n = len(body)
    if n < 10:
        return None
    p = 2 + ((body[0] << 8) | body[1])
    if n < p + 8:
        return None
    status, size = _unpack_route_answer_mid(body, p)
    r = p + 6
    if n != r + size + 2 or body[n - 2] or body[n - 1]:
        return None
    try:
        home = str(body[2:p], "utf-8")
    except UnicodeDecodeError:
        return None
    return home, status, body[r:r + size]


def _fast_routed_request(rgm, link, frame, s, device_id):
    """S402 by a cached route over a live link to the home node, for a PTZ_CONTROL that
    passed ``fast_cu_request``'s checks: the ROUTE_REQUEST is packed around the raw body
    and sent with ``request_cb``. No cached route, no live link: the general path."""
    central = rgm.central
    home = central.route_cache.get(device_id)
    if home is None or not central.node_endpoints.get(home):
        return False
    peer = central.peers.links.get(home)
    if peer is None or peer.closed:
        return False
    if not _take_txid(rgm, s, frame.txid):
        return False  # the general path answers DUPLICATE_TXID / TOO_MANY_IN_FLIGHT
    rgm.counters["routed"] += 1
    central.counters["routed_direct"] += 1
    body = frame.body
    request = pack_route_request(str_field(central.node_id),
                                 body[:2 + ((body[0] << 8) | body[1])], 1, _PTZ, body)
    peer.request_cb(_ROUTE, request, None, _routed,
                    (rgm, link, frame, device_id, home, peer, link.last_rx))
    return True


def _routed(context, result):
    """The home node's ROUTE_RESPONSE (or the failure) to a fast routed request, unwrapped
    back to the CU (S407). Anything but a plain answer is what ``PeerLinks.route`` would
    have failed with: the cached route is dropped and CMS asked, as on the general path."""
    rgm, link, frame, device_id, home, peer, t0 = context
    if type(result) is codec.Frame:
        answer = parse_route_response(result.body) if not result.status else None
        if answer is not None and answer[1] != _UNKNOWN_DEVICE:
            link.session.inflight.discard(frame.txid)
            link.send_raw_response(_PTZ, frame.txid, answer[1], answer[2])
            cells = rgm.ptz_remote
            if cells is not None:
                dt = peer.last_rx - t0
                cells[_bisect(_BOUNDS, dt)] += 1
                cells[-1] += dt
            return
        try:  # any doubt: read it as PeerLinks.route does
            routed = peer.decode_response(result).body
            if routed.inner_status == ResultCode.UNKNOWN_DEVICE:
                raise VssError(ResultCode.UNKNOWN_DEVICE, "not homed there any more")
        except VssError as e:
            result = e
        else:
            link.session.inflight.discard(frame.txid)
            link.send_raw_response(_PTZ, frame.txid, routed.inner_status, routed.inner_body)
            return
    elif result.code == ResultCode.TIMEOUT:
        rgm.counters["timeouts"] += 1
    d = defer.maybeDeferred(rgm.central.route_missed, device_id, home, str(result), _PTZ,
                            frame.body)
    session, txid = link.session, frame.txid

    def release(outcome):
        session.inflight.discard(txid)
        return outcome

    d.addBoth(release)
    d.addCallbacks(lambda answer: answer_cu(link, _PTZ, txid, *answer),
                   lambda f: link.send_failure(frame, f))


def fast_routed(rgm, link, frame):
    """S404-S405 on the home node for a ROUTE_REQUEST (from a node with a cached route)
    carrying a PTZ_CONTROL for a PU online here: straight to the PU's ``request_cb``, its
    answer wrapped in the RouteResponse ``serve_route`` would give. False leaves the frame
    to the general path."""
    routed = parse_route_request(frame.body)
    if routed is None or routed[3] != _PTZ:
        return False
    device_id = routed[1]
    record = rgm.store.get_device(device_id)
    if record is None or record.home_node not in ("", rgm.node_id):
        return False
    pu = rgm.pu_links.get(device_id)
    if pu is None or pu.closed:
        return False
    rgm.counters["relayed"] += 1
    pu.request_cb(_PTZ, routed[4], rgm.config.request_timeout, _served,
                  (rgm, link, frame.txid, device_id, pu))
    return True


def _served(context, result):
    """The PU's answer (or failure) to a fast routed request, as ``serve_route``'s
    RouteResponse, back to the node that sent it."""
    rgm, link, txid, device_id, pu = context
    if type(result) is codec.Frame:
        status = result.status
        body = result.body
        if status or not ptz_status_ok(body):
            msg = codec.decode_body(result)
            if type(msg) is codec.ProtocolError:
                pu.bad_response(msg, result)
                status = _INTERNAL_ERROR
                body = _error_body(f"the device answered badly: {msg.message}")
    else:
        if result.code == ResultCode.SESSION_CLOSED:
            result = VssError(ResultCode.DEVICE_OFFLINE, f"{device_id} went offline")
        status = int(result.code)
        body = _error_body(result.message)
    link.send_raw_response(_ROUTE, txid, 0,
                           pack_route_response(str_field(rgm.node_id), status, body))


def _error_body(message):
    return codec.encode_body(Error(message=message))


def _relayed(context, result):
    """The PU's answer (or failure) to a fast-path request, back to the CU (S407). Its
    latency (the CU's bytes read to the PU's answer read: two reads of the links'
    ``last_rx``, no clock call) goes to ``rgm.ptz_local`` when metrics are on."""
    link, frame, device_id, rgm, pu, t0 = context
    link.session.inflight.discard(frame.txid)
    if type(result) is codec.Frame:
        cells = rgm.ptz_local
        if cells is not None:
            dt = pu.last_rx - t0
            cells[_bisect(_BOUNDS, dt)] += 1
            cells[-1] += dt
        status = result.status
        body = result.body
        if status or not ptz_status_ok(body):
            msg = codec.decode_body(result)
            if type(msg) is codec.ProtocolError:
                pu.bad_response(msg, result)
                return link.send_failure(frame, VssError(
                    ResultCode.INTERNAL_ERROR, f"the device answered badly: {msg.message}"))
        link.send_raw_response(_PTZ, frame.txid, status, body)
        return
    if result.code == ResultCode.SESSION_CLOSED:
        result = VssError(ResultCode.DEVICE_OFFLINE, f"{device_id} went offline")
    elif result.code == ResultCode.TIMEOUT:
        rgm.counters["timeouts"] += 1
    link.send_failure(frame, result)


def on_cu_request(rgm, link, frame, msg):
    """S401: a request from a registered CU."""
    t = frame.type
    s = link.session
    if frame.flags & codec.FLAG_NOTIFY:
        return
    action = CONTROL_ACTIONS.get(t)
    if action is not None or t == MsgType.MEDIA_OPEN:
        # Every relayed request holds its txid until answered (docs/protocol.md 8.6).
        if frame.txid in s.inflight:
            return link.send_error(t, frame.txid, ResultCode.DUPLICATE_TXID)
        if len(s.inflight) >= rgm.config.max_in_flight:
            return link.send_error(t, frame.txid, ResultCode.TOO_MANY_IN_FLIGHT)
    if action is not None:
        device_id = msg.body.device_id
        if not rgm.store.actions_for(s.identity, device_id) & action:
            return link.send_error(t, frame.txid, ResultCode.FORBIDDEN,
                                   f"{s.identity} may not {action.name.lower()} {device_id}")
        record = rgm.store.get_device(device_id)
        if t == MsgType.RECORD_QUERY:  # the catalogue across nodes (vss.recording.archive)
            if rgm.archive is None:
                return link.send_error(t, frame.txid, ResultCode.NOT_SUPPORTED,
                                       "this node has no recording catalogue")
            d = defer.maybeDeferred(rgm.archive.query, msg.body, s.identity)  # the bytes
            _hold(s, frame.txid, d)
            d.addCallbacks(lambda data: link.send_raw_response(t, frame.txid, 0, data),
                           lambda f: link.send_failure(frame, f))
            return
        if t in recording.REQUESTS:  # this node's recording task manager, not the PU
            d = recording.serve_request(rgm.recordings, s.identity, t, msg.body, record)
            _hold(s, frame.txid, d)
            d.addCallbacks(lambda body: link.send_response(t, frame.txid, body),
                           lambda f: link.send_failure(frame, f))
            return
        problem = validate(t, msg.body, record)
        if problem:
            return link.send_error(t, frame.txid, ResultCode.INVALID_ARGUMENT, problem)
        if record is not None and record.home_node in ("", rgm.node_id):
            d = serve_locally(rgm, device_id, t, frame.body)
            route = "local"
        else:
            d = ask_central(rgm, device_id, t, frame.body)
            route = "remote"
        _hold(s, frame.txid, d)
        _measure(rgm, d, t, route, link.last_rx)
        d.addCallbacks(
            lambda result: answer_cu(link, t, frame.txid, *result),
            lambda f: link.send_failure(frame, f),
        )
        return
    if t == MsgType.DEVICE_LIST:
        body = rgm.device_list(s.identity, msg.body.cursor, msg.body.limit)
        return link.send_response(t, frame.txid, body)
    if t in _CRED_REQUESTS:  # stream credentials (vss.streamcreds): this node and CMS
        if rgm.credentials is None:
            return link.send_error(t, frame.txid, ResultCode.NOT_SUPPORTED,
                                   "stream credentials need the central platform")
        d = defer.maybeDeferred(rgm.credentials.handle, link, s.identity, t, msg.body)
        _hold(s, frame.txid, d)
        d.addCallbacks(lambda body: link.send_response(t, frame.txid, body),
                       lambda f: link.send_failure(frame, f))
        return
    if t in _EVENT_REQUESTS:  # events and alarms (vss.events)
        return _event_request(rgm, link, frame, msg)
    if t in WALL_REQUESTS:  # TV walls and decoders (vss.rgm.walls), on any node
        return _wall_request(rgm, link, frame, msg)
    if t in (MsgType.MEDIA_OPEN, MsgType.MEDIA_CLOSE):
        if rgm.cdn is None:
            return link.send_error(t, frame.txid, ResultCode.NOT_SUPPORTED,
                                   "this node has no streaming server")
        d = defer.maybeDeferred(rgm.cdn.handle, s, t, msg.body)
        _hold(s, frame.txid, d)
        d.addCallbacks(lambda body: link.send_response(t, frame.txid, body),
                       lambda f: link.send_failure(frame, f))
        return
    link.send_error(t, frame.txid, ResultCode.UNEXPECTED_MESSAGE,
                    f"{codec.message_name(t)} is not a CU request")


_EVENT_REQUESTS = frozenset((MsgType.EVENT_SUBSCRIBE, MsgType.EVENT_UNSUBSCRIBE,
                             MsgType.EVENT_ACK, MsgType.EVENT_QUERY))


def _event_request(rgm, link, frame, msg):
    """EVENT_SUBSCRIBE, EVENT_UNSUBSCRIBE, EVENT_ACK, EVENT_QUERY from a CU: served by
    the node's event hub (the last two with CMS)."""
    t = frame.type
    s = link.session
    hub = rgm.events
    if hub is None:
        return link.send_error(t, frame.txid, ResultCode.NOT_SUPPORTED,
                               "this node keeps no events")
    try:
        if t == MsgType.EVENT_SUBSCRIBE:
            answer, replay = hub.subscribe(link, msg.body)
            link.send_response(t, frame.txid, answer)
            for note in replay:  # what the CU missed, after the answer
                link.send_raw(note)
            return
        if t == MsgType.EVENT_UNSUBSCRIBE:
            hub.unsubscribe(link, msg.body.subscription)
            return link.send_response(t, frame.txid, Empty())
    except VssError as e:
        return link.send_failure(frame, e)
    if frame.txid in s.inflight:
        return link.send_error(t, frame.txid, ResultCode.DUPLICATE_TXID)
    if len(s.inflight) >= rgm.config.max_in_flight:
        return link.send_error(t, frame.txid, ResultCode.TOO_MANY_IN_FLIGHT)
    d = (hub.ack if t == MsgType.EVENT_ACK else hub.query)(s.identity, msg.body)
    _hold(s, frame.txid, d)
    d.addCallbacks(lambda body: link.send_response(t, frame.txid, body),
                   lambda f: link.send_failure(frame, f))


def _wall_request(rgm, link, frame, msg):
    """A WALL_* request from a CU: a wall about itself, or an operator driving a wall
    (the WALL grant on ``cu:<wall>``, checked here). Served here when the wall is logged
    in to this node, else routed to its node like a request for a PU homed elsewhere
    (S402-S407: the route cache, CMS when the route is not known)."""
    t = frame.type
    s = link.session
    body = msg.body
    is_wall = s.kind in WALL_KINDS
    if t == MsgType.WALL_REPORT:
        if not is_wall:
            return link.send_error(t, frame.txid, ResultCode.NOT_A_WALL,
                                   f"{s.identity} did not register as a wall or decoder")
        try:
            rgm.walls.report(s.identity, body)
        except VssError as e:
            return link.send_failure(frame, e)
        return link.send_response(t, frame.txid, Empty())
    wall_id = body.wall_id or s.identity
    own = wall_id == s.identity
    if not body.wall_id and not is_wall:
        return link.send_error(t, frame.txid, ResultCode.NOT_A_WALL,
                               f"{s.identity} did not register as a wall or decoder")
    if not own and not rgm.store.actions_for(s.identity, target(wall_id)) & Action.WALL:
        return link.send_error(t, frame.txid, ResultCode.FORBIDDEN,
                               f"{s.identity} may not drive wall {wall_id}")
    if frame.txid in s.inflight:
        return link.send_error(t, frame.txid, ResultCode.DUPLICATE_TXID)
    if len(s.inflight) >= rgm.config.max_in_flight:
        return link.send_error(t, frame.txid, ResultCode.TOO_MANY_IN_FLIGHT)
    if not body.wall_id:
        body = dataclasses.replace(body, wall_id=wall_id)
    if rgm.walls.here(wall_id):
        d = defer.maybeDeferred(rgm.walls.serve, t, body, own and is_wall)
        d.addCallback(lambda state: (0, codec.encode_body(state)))
    else:
        raw = frame.body if body is msg.body else codec.encode_body(body)
        d = ask_central(rgm, target(wall_id), t, raw)
    _hold(s, frame.txid, d)

    def answered(result):
        status, inner = result
        if status == ResultCode.UNKNOWN_DEVICE:  # it left the node the route named
            return link.send_error(t, frame.txid, ResultCode.WALL_OFFLINE,
                                   f"wall {wall_id} is not logged in to any node")
        answer_cu(link, t, frame.txid, status, inner)

    d.addCallbacks(answered, lambda f: link.send_failure(frame, f))


def serve_wall(rgm, key, inner_type, inner_body):
    """S404-S405 for a CU target ``cu:<wall>`` on the node the wall is logged in to: the
    command, authorised by the operator's node, is served by the wall registry. Fires
    with (status, body bytes); UNKNOWN_DEVICE when the wall is not here (any more), so
    the asking node drops its route and asks CMS."""
    wall_id = key[len(CU_TARGET):]
    if inner_type not in WALL_REQUESTS or inner_type == MsgType.WALL_REPORT:
        return defer.fail(VssError(ResultCode.UNEXPECTED_MESSAGE,
                                   f"{codec.message_name(inner_type)} is not for a wall"))
    msg = codec.decode_body(codec.Frame(codec.VERSION, 0, inner_type, 0, 0, inner_body))
    if isinstance(msg, codec.ProtocolError):
        return defer.fail(VssError(msg.code, msg.message))
    if msg.body.wall_id != wall_id:
        return defer.fail(VssError(ResultCode.INVALID_ARGUMENT,
                                   "the command names another wall than its route"))
    if not rgm.walls.here(wall_id):
        return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE,
                                   f"wall {wall_id} is not logged in to {rgm.node_id}"))
    d = defer.maybeDeferred(rgm.walls.serve, inner_type, msg.body)
    return d.addCallback(lambda state: (0, codec.encode_body(state)))


def _measure(rgm, d, t, route, t0):
    """Count a relayed request's latency (when metrics are on) and its timeout."""
    latency = rgm.latency

    def answered(result):
        if latency is not None:
            hist = latency.get((t, route))
            if hist is None:
                hist = latency[t, route] = Histogram()
            hist.observe(rgm.clock.seconds() - t0)
        return result

    def failed(f):
        if f.check(VssError) and f.value.code == ResultCode.TIMEOUT:
            rgm.counters["timeouts"] += 1
        return f

    d.addCallbacks(answered, failed)


_CRED_REQUESTS = frozenset((MsgType.CRED_CREATE, MsgType.CRED_LIST, MsgType.CRED_REVOKE))


def _hold(session, txid, d):
    """Keep ``txid`` in flight for the CU until ``d`` fires."""
    session.inflight.add(txid)

    def release(result):
        session.inflight.discard(txid)
        return result

    d.addBoth(release)


def serve_locally(rgm, device_id, type, body):
    """The PU is homed here: forward to it (S404-S405 on the home node). Fires with
    (status, response body bytes)."""
    pu = rgm.pu_links.get(device_id)
    if pu is None:
        return defer.fail(VssError(ResultCode.DEVICE_OFFLINE, f"{device_id} is offline"))
    rgm.counters["relayed"] += 1
    d = pu.request_raw(type, body, rgm.config.request_timeout)
    return d.addCallbacks(_checked_response, _pu_gone, callbackArgs=(pu,),
                          errbackArgs=(device_id,))


def _pu_gone(failure, device_id):
    """A PU whose link dropped with the request in flight is, for the CU, offline."""
    failure.trap(VssError)
    if failure.value.code == ResultCode.SESSION_CLOSED:
        raise VssError(ResultCode.DEVICE_OFFLINE, f"{device_id} went offline")
    return failure


def _checked_response(frame, pu):
    """A PU's answer is validated before it is passed on, so a broken PU can never make
    a CU's decoder drop its link; a PU whose answer does not decode is told so and its
    link closed (a body error is fatal: docs/protocol.md 6)."""
    msg = codec.decode_body(frame)
    if isinstance(msg, codec.ProtocolError):
        pu.bad_response(msg, frame)
        raise VssError(ResultCode.INTERNAL_ERROR, f"the device answered badly: {msg.message}")
    return frame.status, frame.body


def ask_central(rgm, device_id, type, body):
    """S402: the device is not held here; CMS finds its home node."""
    rgm.counters["routed"] += 1
    return defer.maybeDeferred(rgm.central.route, device_id, type, body)


def answer_cu(link, type, txid, status, body):
    """S407: the answer goes back to the CU under its own transaction id."""
    link.send_raw_response(type, txid, status, body)


def validate(type, body, device):
    """A problem with the request's arguments, or None. Checked on the node so that no
    PU ever sees an out-of-range value."""
    channels = device.channels if device is not None else None
    if channels is not None and channels and body.channel >= channels:
        return f"channel {body.channel} out of range (device has {channels})"
    if type == MsgType.PTZ_CONTROL:
        if body.op not in _PTZ_OPS:
            return f"unknown PTZ op {body.op}"
        for name in ("pan", "tilt", "zoom", "speed"):
            v = getattr(body, name)
            if not math.isfinite(v) or not -1.0 <= v <= 1.0:
                return f"{name} must be within [-1, 1]"
    elif type == MsgType.LENS_CONTROL:
        if body.focus > 4 or body.iris > 4:
            return "unknown focus or iris op"
        if not math.isfinite(body.speed) or not 0.0 <= body.speed <= 1.0:
            return "speed must be within [0, 1]"
    elif type == MsgType.PRESET:
        if body.op not in (1, 2, 3, 4):
            return f"unknown preset op {body.op}"
        if body.op != 4 and not 1 <= body.preset <= 255:
            return "preset must be within 1..255"
    elif type == MsgType.CONFIG_SET:
        if not body.items:
            return "no items to set"
        for kv in body.items:
            if not kv.key or len(kv.key) > 64 or len(kv.value) > 1024:
                return f"bad config item {kv.key[:64]!r}"
    return None
