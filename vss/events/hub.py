"""
The node's event hub (docs/protocol.md 9.7): numbering, the feed, subscriptions and
delivery, locally and across nodes.

Numbers. The home node of a device numbers its events: ``seq`` grows by one per event
and starts, at each start of the node, from the start time in milliseconds times 1000,
so that numbers keep growing across restarts. ``(node_id, seq)`` names an event
everywhere (CMS stores it under that key; an acknowledgement names it).

The feed. Every event the node delivers (its own, and those of other nodes' devices it
receives for its CUs) gets a *feed id* from the same counter (an own event's feed id is
its ``seq``) and goes into a bounded history of the last ``history`` events. A CU resumes
with the last feed id it saw (``resume_after``): what it missed and the history still
holds is sent again, once, and ``gap`` says when the history no longer reaches back.

Across nodes. A CU's subscription that may match a device homed on another node makes
this node subscribe, over a node link (9.5), to that node's own events (resuming after
the last ``seq`` it got from there, so a dropped link loses nothing the other node still
holds, and an event seen twice is dropped); the node keeps such subscriptions while it
runs. Grants are checked here, per CU, on every event.
"""

import re
from collections import deque

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    EventAck,
    EventNotify,
    EventPhase,
    EventQuery,
    EventRaised,
    EventRecord,
    EventSubscribe,
    EventSubscribed,
    MsgType,
    Severity,
)

#: the last events a node keeps for CUs that resume and nodes that subscribe again
HISTORY = 10_000
#: subscriptions one CU link may hold
MAX_SUBSCRIPTIONS = 16
#: devices, groups or types one subscription may name
MAX_FILTER = 64
#: key/value items of one event; lengths of a key and a value
MAX_ITEMS = 16
MAX_KEY = 32
MAX_VALUE = 256
MAX_COMMENT = 512
#: an event type: 1 to 32 of a-z 0-9 . _ -
TYPE_RE = re.compile(r"[a-z0-9._-]{1,32}\Z")
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
REFOLLOW_DELAY = 1.0

_NOTIFY = MsgType.EVENT_NOTIFY
_VIEW = Action.VIEW
_PHASES = frozenset(int(p) for p in EventPhase)
_SEVERITIES = frozenset(int(s) for s in Severity)


def visible(event, query):
    """True when a stored event is one an EVENT_QUERY asks for (the grants aside)."""
    return ((not query.device_id or event.device_id == query.device_id)
            and (not query.type or event.type == query.type)
            and event.node_time >= query.from_time
            and (not query.to_time or event.node_time < query.to_time))


class Filter:
    """One subscription: ``devices`` (a frozenset, or None for every device the user
    may view) and ``types`` (None: every type). Events with a feed id above
    ``covered_from`` that match it were sent on its link (live, or by its replay)."""

    __slots__ = ("devices", "types", "covered_from")

    def __init__(self, devices, types, covered_from):
        self.devices = devices
        self.types = types
        self.covered_from = covered_from

    def matches(self, event):
        return ((self.devices is None or event.device_id in self.devices)
                and (self.types is None or event.type in self.types))


def check_raise(body, channels):
    """A problem with an EVENT_RAISE's fields, or None."""
    if channels and body.channel >= channels:
        return f"channel {body.channel} out of range (device has {channels})"
    if not TYPE_RE.match(body.type):
        return "type must be 1 to 32 of a-z 0-9 . _ -"
    if body.phase not in _PHASES:
        return f"unknown phase {body.phase}"
    if body.severity not in _SEVERITIES:
        return f"unknown severity {body.severity}"
    if len(body.items) > MAX_ITEMS:
        return f"at most {MAX_ITEMS} items"
    for kv in body.items:
        if not kv.key or len(kv.key) > MAX_KEY or len(kv.value) > MAX_VALUE:
            return f"bad item {kv.key[:MAX_KEY]!r} (key 1..{MAX_KEY}, value up to " \
                   f"{MAX_VALUE} characters)"
    return None


class EventHub(service.Service):
    """``central`` is the node's ``ICentral``; with a CMS link (``peers`` not None) the
    hub subscribes to other nodes' feeds. ``reporter`` (``EventReporter``) takes the
    events numbered here to CMS; ``rules`` (``EventRules``) acts on them."""

    log = Logger()
    name = "events"

    def __init__(self, node_id, store, central, clock, reporter=None, rules=None,
                 history=HISTORY, peers=None):
        self.node_id = node_id
        self.store = store
        self.central = central
        self.clock = clock
        self.reporter = reporter
        self.rules = rules
        self.peers = peers
        self.head = int(clock.seconds() * 1000) * 1000
        self.history = deque(maxlen=history)  # (feed_id, EventRecord, EVENT_NOTIFY frame)
        self.subs = {}  # CU link -> {subscription id: Filter}
        self.peer_links = set()  # node links subscribed to this node's own events
        self.remote = {}  # node id -> {"link", "retry", "delay"}: our subscriptions there
        self.remote_seen = {}  # node id -> the last seq received from it
        self._next_sub = 0
        self._refollow = None
        self.counters = {"raised": 0, "delivered": 0, "remote_received": 0,
                         "duplicates": 0, "replayed": 0, "refused": 0}
        if peers is not None:
            peers.event_listeners.append(self)

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    def stopService(self):
        if self._refollow is not None and self._refollow.active():
            self._refollow.cancel()
        for state in self.remote.values():
            if state["retry"] is not None and state["retry"].active():
                state["retry"].cancel()
            state["retry"] = None
        self.remote.clear()
        return super().stopService()

    # -- events of the devices homed here

    def on_raise(self, device_id, body):
        """EVENT_RAISE from the PU ``device_id``: an ``EventRaised`` or VssError."""
        if body.device_id != device_id:
            self.counters["refused"] += 1
            raise VssError(ResultCode.FORBIDDEN, f"{device_id} may raise events of itself "
                           f"only, not of {body.device_id}")
        record = self.store.get_device(device_id)
        problem = check_raise(body, record.channels if record is not None else 0)
        if problem:
            self.counters["refused"] += 1
            raise VssError(ResultCode.INVALID_ARGUMENT, problem)
        event = self.raise_event(device_id, body.channel, body.type, body.phase,
                                 body.severity, body.pu_time, list(body.items))
        return EventRaised(node_id=self.node_id, seq=event.seq)

    def raise_event(self, device_id, channel, type, phase=EventPhase.PULSE,
                    severity=Severity.INFO, pu_time=0, items=()):
        """Number an event of a device homed here, deliver it, report it to CMS and run
        its rules. Returns the ``EventRecord``. Also the node's own events (a PU going
        offline, a recording failing, a disk filling)."""
        self.head += 1
        now = self.now_ms()
        event = EventRecord(node_id=self.node_id, seq=self.head, device_id=device_id,
                            channel=channel, type=type, phase=int(phase),
                            severity=int(severity), pu_time=pu_time or now, node_time=now,
                            items=list(items))
        self.counters["raised"] += 1
        note = self._deliver(self.head, event)
        for link in list(self.peer_links):
            link.send_raw(note)  # an own event's feed id is its seq: the same frame
        if self.reporter is not None:
            self.reporter.add(event)
        if self.rules is not None:
            self.rules.on_event(event)
        return event

    def _deliver(self, feed_id, event):
        note = codec.encode_notify(_NOTIFY, EventNotify(feed_id=feed_id, event=event))
        self.history.append((feed_id, event, note))
        actions_for = self.store.actions_for
        device_id = event.device_id
        for link, subs in self.subs.items():
            for f in subs.values():
                if f.matches(event):
                    if actions_for(link.session.identity, device_id) & _VIEW:
                        link.send_raw(note)
                        self.counters["delivered"] += 1
                    break
        return note

    # -- CU subscriptions

    def subscribe(self, link, body):
        """EVENT_SUBSCRIBE from a CU: ``(EventSubscribed, [frames to send after it])``
        or VssError."""
        user = link.session.identity
        subs = self.subs.get(link, {})
        for name, values in (("devices", body.devices), ("groups", body.groups),
                             ("types", body.types)):
            if len(values) > MAX_FILTER:
                raise VssError(ResultCode.INVALID_ARGUMENT,
                               f"at most {MAX_FILTER} {name} per subscription")
            if any(not v or len(v) > 64 for v in values):
                raise VssError(ResultCode.INVALID_ARGUMENT, f"an empty or long name in {name}")
        if len(subs) >= MAX_SUBSCRIPTIONS:
            raise VssError(ResultCode.LIMIT_REACHED,
                           f"at most {MAX_SUBSCRIPTIONS} subscriptions per link")
        for device_id in body.devices:
            if not self.store.actions_for(user, device_id) & _VIEW:
                raise VssError(ResultCode.FORBIDDEN, f"{user} may not view {device_id}")
        devices = None
        if body.devices or body.groups:
            devices = set(body.devices)
            groups = {"group:" + g for g in body.groups}
            if groups:
                devices.update(g.device_id for g in self.store.grants()
                               if g.principal in groups)
            devices = frozenset(devices)
        types = frozenset(body.types) if body.types else None
        resume = body.resume_after
        f = Filter(devices, types, resume if resume else self.head)
        notes = []
        gap = False
        if resume:
            gap = resume < self.head and (not self.history or self.history[0][0] > resume + 1)
            for feed_id, event, note in self.history:
                if feed_id <= resume or not f.matches(event):
                    continue
                if any(g.matches(event) and feed_id > g.covered_from for g in subs.values()):
                    continue  # this link had it already
                if self.store.actions_for(user, event.device_id) & _VIEW:
                    notes.append(note)
        self._next_sub += 1
        subs[self._next_sub] = f
        self.subs[link] = subs
        self.counters["replayed"] += len(notes)
        self._follow(user, devices)
        return EventSubscribed(subscription=self._next_sub, head=self.head,
                               replayed=len(notes), gap=gap), notes

    def unsubscribe(self, link, subscription):
        subs = self.subs.get(link)
        if not subs or subscription not in subs:
            raise VssError(ResultCode.NOT_FOUND, f"no subscription {subscription} on this link")
        del subs[subscription]
        if not subs:
            del self.subs[link]

    def cu_gone(self, link):
        self.subs.pop(link, None)

    # -- acknowledgements and the stored events (CMS)

    def ack(self, user, body):
        """EVENT_ACK from a CU: checked here (VIEW on the device; the device of an event
        the feed holds), stored by CMS with who and when. Deferred ``EventAcked``."""
        if not self.store.actions_for(user, body.device_id) & _VIEW:
            return defer.fail(VssError(ResultCode.FORBIDDEN,
                                       f"{user} may not view {body.device_id}"))
        if len(body.comment) > MAX_COMMENT or not body.node_id or not body.seq:
            return defer.fail(VssError(ResultCode.INVALID_ARGUMENT, "an event's node_id and "
                                       f"seq, and a comment of at most {MAX_COMMENT} "
                                       "characters"))
        for _feed_id, event, _note in self.history:
            if event.seq == body.seq and event.node_id == body.node_id:
                if event.device_id != body.device_id:
                    return defer.fail(VssError(ResultCode.INVALID_ARGUMENT,
                                               "the event is not of that device"))
                break
        return defer.maybeDeferred(self.central.ack_event, EventAck(
            node_id=body.node_id, seq=body.seq, device_id=body.device_id, username=user,
            comment=body.comment))

    def query(self, user, body):
        """EVENT_QUERY from a CU: the stored events, of devices the user may view
        (CMS checks the grants when no device is named). Deferred ``Events``."""
        if body.device_id and not self.store.actions_for(user, body.device_id) & _VIEW:
            return defer.fail(VssError(ResultCode.FORBIDDEN,
                                       f"{user} may not view {body.device_id}"))
        if body.to_time and body.from_time > body.to_time:
            return defer.fail(VssError(ResultCode.INVALID_ARGUMENT, "from_time after to_time"))
        if body.limit > 1000:
            return defer.fail(VssError(ResultCode.INVALID_ARGUMENT, "limit at most 1000"))
        return defer.maybeDeferred(self.central.query_events, EventQuery(
            device_id=body.device_id, type=body.type, from_time=body.from_time,
            to_time=body.to_time, limit=body.limit or 100, username=user))

    # -- other nodes' events (the subscribing side)

    def _follow(self, user, devices):
        """Subscribe to the feeds of the nodes where the devices the subscription may
        match are homed."""
        if self.peers is None:
            return
        if devices is None:
            devices = [d for d, a in self.store.granted_devices(user).items() if a & _VIEW]
        for device_id in devices:
            record = self.store.get_device(device_id)
            home = record.home_node if record is not None else ""
            if home and home != self.node_id and home not in self.remote:
                self.remote[home] = {"link": None, "retry": None, "delay": RETRY_FIRST}
                self._connect(home)

    def refollow(self, *_changed):
        """Grants or devices changed (a camera newly granted, or moved to another node):
        follow the nodes the subscriptions may now need, once for a burst of changes (a
        bulk import is thousands of device changes), ``REFOLLOW_DELAY`` seconds later."""
        if self._refollow is None or not self._refollow.active():
            self._refollow = self.clock.callLater(REFOLLOW_DELAY, self._refollow_now)

    def _refollow_now(self):
        self._refollow = None
        for link, subs in list(self.subs.items()):
            for f in subs.values():
                self._follow(link.session.identity, f.devices)

    def _connect(self, node_id):
        state = self.remote.get(node_id)
        if state is None:
            return None
        state["retry"] = None
        endpoint = self.central.node_endpoints.get(node_id)
        if endpoint:
            d = defer.succeed(endpoint)
        else:
            d = self.central.lookup_node(node_id).addCallback(
                lambda r: r.signalling if r.node_up else "")

        def link_to(endpoint):
            if not endpoint:
                raise VssError(ResultCode.HOME_NODE_DOWN, f"node {node_id} is down")
            return self.peers.link_to(node_id, endpoint)

        def subscribe(link):
            resume = self.remote_seen.get(node_id, 0)
            return link.request(MsgType.EVENT_SUBSCRIBE, EventSubscribe(
                devices=[], groups=[], types=[], resume_after=resume)).addCallback(
                lambda msg: (link, msg.body))

        def subscribed(result):
            link, answer = result
            if self.remote.get(node_id) is not state:
                return
            state["link"] = link
            state["delay"] = RETRY_FIRST
            self.log.info("following the events of node {node} ({replayed} missed ones "
                          "sent again)", node=node_id, replayed=answer.replayed)

        def failed(f):
            if self.remote.get(node_id) is not state:
                return
            self.log.info("cannot follow the events of node {node} yet: {error}",
                          node=node_id, error=f.getErrorMessage())
            self._retry(node_id, state)

        d.addCallback(link_to).addCallback(subscribe).addCallbacks(subscribed, failed)
        return d

    def _retry(self, node_id, state):
        if state["retry"] is None and self.running:
            delay = state["delay"]
            state["delay"] = min(RETRY_MAX, delay * 2)
            state["retry"] = self.clock.callLater(delay, self._connect, node_id)

    def peer_link_lost(self, node_id, link):
        """A node link went down: follow that node's events again (resuming)."""
        state = self.remote.get(node_id)
        if state is not None and state["link"] is link:
            state["link"] = None
            self._retry(node_id, state)

    def peer_event(self, node_id, body):
        """EVENT_NOTIFY from a node we follow: its own event, delivered here once."""
        event = body.event
        if event.node_id != node_id:
            return
        if event.seq <= self.remote_seen.get(node_id, 0):
            self.counters["duplicates"] += 1
            return
        self.remote_seen[node_id] = event.seq
        self.counters["remote_received"] += 1
        self.head += 1
        self._deliver(self.head, event)

    # -- this node's events to the nodes that follow them (the serving side)

    def peer_subscribe(self, link, body):
        """EVENT_SUBSCRIBE on a node link: ``(EventSubscribed, frames)``; the node then
        gets every event numbered here, first those after ``resume_after`` the history
        still holds."""
        resume = body.resume_after
        notes = []
        gap = False
        if resume:
            gap = resume < self.head and (not self.history or self.history[0][0] > resume + 1)
            notes = [n for f, e, n in self.history if f > resume and e.node_id == self.node_id]
        self.peer_links.add(link)
        return EventSubscribed(subscription=0, head=self.head, replayed=len(notes),
                               gap=gap), notes

    def peer_gone(self, link):
        self.peer_links.discard(link)

    def status(self):
        return {**self.counters, "head": self.head, "history": len(self.history),
                "subscribed_links": len(self.subs), "following": sorted(self.remote),
                "followers": len(self.peer_links)}
