"""
``MemoryCentral``: an in-process implementation of ``ICentral`` for tests and for a node
run without a central platform. It holds static records and, for the routing tests,
the in-process RGM services of other nodes (S403-S406 then happen in this process).
"""

import json
import time
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from vss.events.hub import visible
from vss.interfaces import ICentral
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.jsonrec import from_json, to_json
from vss.protocols.listing import encode_parts, merge_parts, parse_body
from vss.protocols.messages import (
    CU_TARGET,
    EXT_HOME_EPOCH,
    AuditAck,
    AuditKind,
    Entity,
    EventAcked,
    EventEntry,
    EventReportAck,
    Events,
    MsgType,
    NodeRoute,
    RegInfo,
    Role,
    Route,
    StaticPage,
    SyncAck,
)
from vss.rgm import relay
from vss.rgm.routes import NoRouteCache


@implementer(ICentral)
class MemoryCentral:
    log = Logger()

    def __init__(self):
        self.devices = {}
        self.users = {}
        self.grants = {}  # (principal, device_id) -> GrantRecord
        self.nodes = {}  # node_id -> RGMService (in-process) or None when down
        self.changes = []
        self.routed = []
        self.online = {}
        self.available = True
        self.synced = True  # False: the node answers logins NOT_READY
        self.audit_reports = deque(maxlen=100)  # the latest, for tests
        #: (node_id, seq) -> [EventRecord, acked_by, acked_at, comment]: the events a
        #: standalone node keeps in memory (the latest ``max_events``)
        self.events = {}
        self.max_events = 10_000
        self.clock = None  # for the time of an acknowledgement; None: the reactor's
        #: (device_id, channel) -> RecordSettings: what RECORD_SETTINGS_GET answers
        self.record_settings_held = {}
        self.asked_settings = []  # (device_id, channel) asked, for tests
        # the rest of ICentral: nothing to route to directly, no catch-up to announce
        self.device_listeners = []
        self.connected_listeners = []
        self.access_listeners = []
        self.nodes_listeners = []
        self.local_recordings = None
        self.route_cache = NoRouteCache()
        self.node_endpoints = {}
        self.peers = None
        self.counters = {"cms_requests": 0, "routed_direct": 0}

    # -- set-up helpers

    @classmethod
    def from_file(cls, path):
        """A central holding the records of a static-data JSON file (see ``save``)."""

        with open(path, encoding="utf-8") as f:
            data = from_json(json.load(f))
        central = cls()
        for record in data.get("devices", []):
            central.add_device(record)
        for record in data.get("users", []):
            central.add_user(record)
        for record in data.get("grants", []):
            central.add_grant(record)
        return central

    def save(self, path):
        """Write the records as a static-data file for ``vss-node --static``."""

        data = {
            "devices": [to_json(r) for r in self.devices.values()],
            "users": [to_json(r) for r in self.users.values()],
            "grants": [to_json(r) for r in self.grants.values()],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)

    def add_device(self, record):
        self.devices[record.device_id] = record

    def add_user(self, record):
        self.users[record.username] = record

    def set_record_settings(self, record):
        """Hold a ``RecordSettings`` for its (device, channel)."""
        self.record_settings_held[(record.device_id, record.channel)] = record

    def add_grant(self, record):
        self.grants[(record.principal, record.device_id)] = record

    def _check(self):
        if not self.available:
            raise VssError(ResultCode.CENTRAL_UNAVAILABLE)

    def _grants_of(self, user):
        principals = {f"user:{user.username}"} | {f"group:{g}" for g in user.groups}
        return [g for (p, _), g in self.grants.items() if p in principals]

    # -- ICentral

    def registration_info(self, identity, role):
        self._check()
        if role == Role.PU:
            record = self.devices.get(identity)
            if record is None:
                return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE))
            return defer.succeed(RegInfo(home_node=record.home_node, device=record, user=None,
                                         grants=[]))
        record = self.users.get(identity)
        if record is None:
            return defer.fail(VssError(ResultCode.AUTH_FAILED))
        grants = self._grants_of(record)
        page = RegInfo(home_node="", device=None, user=record, grants=grants)
        return defer.succeed(page)

    def pull_static(self, entity, cursor, limit):
        self._check()
        if entity == Entity.DEVICE:
            keys = sorted(k for k in self.devices if k > cursor)[:limit]
            items = [self.devices[k] for k in keys]
            return defer.succeed(StaticPage(entity=entity, devices=items, users=[], grants=[],
                                            next_cursor=keys[-1] if len(keys) == limit else "",
                                            seq=len(self.changes)))
        if entity == Entity.USER:
            keys = sorted(k for k in self.users if k > cursor)[:limit]
            return defer.succeed(StaticPage(entity=entity, devices=[], grants=[],
                                            users=[self.users[k] for k in keys],
                                            next_cursor=keys[-1] if len(keys) == limit else "",
                                            seq=len(self.changes)))
        keys = sorted(k for k in self.grants if "|".join(k) > cursor)[:limit]
        return defer.succeed(StaticPage(entity=entity, devices=[], users=[],
                                        grants=[self.grants[k] for k in keys],
                                        next_cursor="|".join(keys[-1]) if len(keys) == limit
                                        else "", seq=len(self.changes)))

    def route(self, device_id, inner_type, inner_body):
        """S403: find the home node and hand the request to its RGM-N."""

        self._check()
        self.routed.append((device_id, inner_type))
        if device_id.startswith(CU_TARGET):  # a wall: the node it is logged in to
            wall_id = device_id[len(CU_TARGET):]
            for rgm_n in self.nodes.values():
                if rgm_n is not None and rgm_n.walls.here(wall_id):
                    return relay.serve_wall(rgm_n, device_id, inner_type, inner_body)
            return defer.fail(VssError(ResultCode.WALL_OFFLINE,
                                       f"wall {wall_id} is not logged in to any node"))
        record = self.devices.get(device_id)
        if record is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id}"))
        rgm_n = self.nodes.get(record.home_node)
        if rgm_n is None:
            return defer.fail(VssError(ResultCode.HOME_NODE_DOWN,
                                       f"node {record.home_node} is down"))
        return relay.serve_locally(rgm_n, device_id, inner_type, inner_body)

    def lookup_node(self, node_id):
        """A node of ``nodes`` (its RGM in this process, None when down). In-process
        nodes have no signalling address: another node cannot link to them."""
        if not self.available:
            return defer.fail(VssError(ResultCode.CENTRAL_UNAVAILABLE))
        if node_id not in self.nodes:
            return defer.fail(VssError(ResultCode.UNKNOWN_NODE, f"no node {node_id!r}"))
        return defer.succeed(NodeRoute(node_id=node_id, signalling="", media="",
                                       node_up=self.nodes[node_id] is not None))

    def home_of(self, device_id):
        """A ``Route`` from the records (in-process nodes have no PU address)."""
        if not self.available:
            return defer.fail(VssError(ResultCode.CENTRAL_UNAVAILABLE))
        record = self.devices.get(device_id)
        if record is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE, f"no device {device_id}"))
        return defer.succeed(Route(
            device_id=device_id, home_node=record.home_node, signalling="", media="",
            node_up=self.nodes.get(record.home_node) is not None,
            ext=((EXT_HOME_EPOCH, record.version.to_bytes(8, "big")),)))

    def node_addresses(self):
        return []

    def presence(self, device_id, online):
        self.online[device_id] = online
        for rgm in self.nodes.values():
            if rgm is None:  # a node that is down
                continue
            record = rgm.store.get_device(device_id)
            if record is not None and record.home_node != rgm.node_id:
                rgm.store.set_state(device_id, online=online)

    def synchronised(self):
        return self.synced

    def store_credential(self, record):
        return defer.fail(VssError(ResultCode.NOT_SUPPORTED, "stream credentials need the "
                                   "central platform"))

    def revoke_credential(self, cred_id, username):
        return defer.fail(VssError(ResultCode.NOT_SUPPORTED, "stream credentials need the "
                                   "central platform"))

    def report_audit(self, report):
        """Without a central audit log, a standalone node logs each event."""
        self.audit_reports.append(report)
        for e in report.events:
            self.log.info("audit: {kind} of {device} channel {channel} by {user} from "
                          "{peer} ({via})", kind=AuditKind(e.kind).name.lower()
                          if e.kind in iter(AuditKind) else e.kind, device=e.device_id,
                          channel=e.channel, user=e.username, peer=e.peer, via=e.via)
        return defer.succeed(AuditAck(batch=report.batch, stored=len(report.events)))

    # -- events (a standalone node keeps them here, in memory)

    def report_events(self, report):
        for e in report.events:
            self.events.setdefault((e.node_id, e.seq), [e, "", 0, ""])
        while len(self.events) > self.max_events:
            del self.events[next(iter(self.events))]
        return defer.succeed(EventReportAck(batch=report.batch, stored=len(report.events)))

    def ack_event(self, ack):
        kept = self.events.get((ack.node_id, ack.seq))
        if kept is None or kept[0].device_id != ack.device_id:
            return defer.fail(VssError(ResultCode.NOT_FOUND, f"no event {ack.node_id}/"
                                       f"{ack.seq} of {ack.device_id}"))
        if kept[1]:
            return defer.fail(VssError(ResultCode.CONFLICT, f"acknowledged by {kept[1]}"))
        now = self.clock.seconds() if self.clock is not None else time.time()
        kept[1:] = [ack.username, int(now * 1000), ack.comment]
        return defer.succeed(EventAcked(node_id=ack.node_id, seq=ack.seq,
                                        acked_by=kept[1], acked_at=kept[2]))

    def query_events(self, query):
        out = []
        for e, by, at, comment in sorted(self.events.values(),
                                         key=lambda k: (-k[0].node_time, k[0].seq)):
            if visible(e, query) and self._may_view(query.username, e.device_id):
                out.append(EventEntry(event=e, acked_by=by, acked_at=at, comment=comment))
        limit = query.limit or 100
        return defer.succeed(Events(events=out[:limit], truncated=len(out) > limit))

    def record_settings(self, device_id, channel):
        """The settings put in ``record_settings_held`` (``set_record_settings``), else
        NOT_FOUND, as CMS answers for a channel nothing was ever stored for."""
        self.asked_settings.append((device_id, channel))
        held = self.record_settings_held.get((device_id, channel))
        if held is None:
            return defer.fail(VssError(ResultCode.NOT_FOUND, f"no record settings of "
                                       f"{device_id} channel {channel}"))
        return defer.succeed(held)

    @defer.inlineCallbacks
    def query_recordings(self, body, timeout=None):
        """The catalogue across nodes is this node's own (``local_recordings``), as a
        RECORD_QUERY response frame; CENTRAL_UNAVAILABLE before the node's archive
        exists."""
        if self.local_recordings is None:
            raise VssError(ResultCode.CENTRAL_UNAVAILABLE, "no catalogue to ask")
        answer = parse_body((yield self.local_recordings(body)))
        merged = encode_parts(merge_parts(body.from_time, body.to_time, [answer]))
        return codec.Frame(codec.VERSION, codec.FLAG_RESPONSE, int(MsgType.RECORD_QUERY), 0,
                           0, merged)

    def status(self):
        return {"connected": self.available, "routes_cached": 0,
                "held": {"devices": len(self.devices), "users": len(self.users),
                         "grants": len(self.grants)}, **self.counters}

    def _may_view(self, username, device_id):
        user = self.users.get(username)
        principals = {"user:" + username} | {"group:" + g for g in (user.groups if user
                                                                      else ())}
        return any(g.actions & 1 for (p, d), g in self.grants.items()
                   if d == device_id and p in principals)

    def report_change(self, change):
        self._check()
        self.changes.append(change)
        return defer.succeed(SyncAck(change_id=change.change_id, seq=len(self.changes),
                                     applied=True))
