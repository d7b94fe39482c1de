"""
The node's link to the central platform: the real ``ICentral``.

One long-lived, reconnecting link to CMS (``Reconnector``: backoff with jitter). At start
the node takes up what it synchronised before (``restore``: the Redis store, or the copy
the memory store keeps in the data directory), so it serves at once, CMS up or not. On
every (re)connection it logs in with the cluster secret, registers (NODE_REGISTER), and
catches up: a full static reload when it holds nothing synced (or the change log no
longer reaches back far enough), else the changes after its last applied sequence. Then
it resends what its outbox still holds.

Over the same link CMS sends the node SYNC_NOTIFY (S504, applied by ``SyncApplier``:
S505-S506) and ROUTE_REQUEST for its own PUs (S403, answered through the RGM: S404-S406).

Routing from this node (S402) goes through CMS; the home node learned on the way is
cached and later requests go straight to it over a node-to-node link (``PeerLinks``),
asking CMS again only on a miss or when the device moves home.
"""

import itertools
import os
import random
from dataclasses import replace

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vss.interfaces import ICentral
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory, check_response
from vss.protocols.listing import encode_recordings  # a long body: no construct
from vss.protocols.messages import (
    CU_TARGET,
    EXT_PU_ADDRESS,
    ChangeKind,
    CredRevoke,
    CredState,
    Empty,
    Entity,
    Heartbeat,
    MsgType,
    NodeLookup,
    NodeRegister,
    RecordSettingsGet,
    RegInfoRequest,
    RouteLookup,
    RouteRequest,
    SsReport,
    StateChange,
    StaticPull,
    SyncComplete,
    SyncFetch,
)
from vss.protocols.reconnect import Reconnector
from vss.rgm import settings
from vss.rgm.outbox import Outbox
from vss.rgm.peers import PEER_MAX_IN_FLIGHT, PeerLinks, node_login, serve_route
from vss.rgm.sync import SyncApplier, ext_seq

AGENT = "vss-node/0.1"
#: how long a first registration waits for the change stream to bring its records
REG_WAIT = 10.0
PAGE = 5000
#: First and largest delay before the outbox is sent again after CMS failed to write.
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
#: What CMS answers to refuse a PU change for good, and why: a central change crossed it
#: (docs/consistency.md, "The conflict rule"), or the change is malformed. The change
#: leaves the outbox, logged with the reason. Every other failure (DB_UNAVAILABLE,
#: TIMEOUT, INTERNAL_ERROR, a code this node does not know...) keeps it for a resend.
REFUSALS = {
    ResultCode.UNKNOWN_DEVICE: "the device was removed centrally",
    ResultCode.FORBIDDEN: "the device is homed on another node now",
    ResultCode.STALE_CHANGE: "a central change of the device crossed it",
    ResultCode.INVALID_ARGUMENT: "CMS cannot take it as it is",
}


@implementer(ICentral)
class CmsLink(service.Service):
    log = Logger()

    def __init__(self, node_id, endpoint, cluster_secret, store, reactor, data_dir=None,
                 clock=None, advertise=None, local_copy=False, link_tls=None,
                 allow_plaintext=False, cms_names=(), pu_address=None):
        self.node_id = node_id
        self.cms_names = list(cms_names)  # the CMS addresses as given, for logs
        # links to other nodes: mutual TLS with this (a vss.tls.LinkTLS), or plaintext
        # to loopback only unless allowed
        self.link_tls = link_tls
        self.allow_plaintext = allow_plaintext
        self.endpoint = endpoint
        self.cluster_secret = cluster_secret
        self.store = store
        self.reactor = reactor
        self.clock = clock or reactor
        self.advertise = advertise or (lambda: ("", "", 0))
        self.pu_address = pu_address or (lambda: "")  # where PUs reach this node
        self.nodes = []  # NodeAddress of the up nodes, as CMS named them last (NODE_LIST)
        self.nodes_listeners = []  # f(NodeList) when CMS names them anew
        self.rgm = None  # set by the node once its RGM exists
        self.device_listeners = []  # f(device_id, old, new) after each device change
        self.connected_listeners = []  # f() after each (re)connection's catch-up
        self.access_listeners = []  # f() after users, grants or stream credentials changed
        self.local_recordings = None  # f(RecordQuery) -> Deferred(Recordings or bytes): CMS asks
        self.link = None
        self.applier = SyncApplier(store, node_id, data_dir, on_device_change=self._device_changed,
                                   on_user_change=self._user_changed, clock=self.clock,
                                   on_access_change=self._access_changed,
                                   local_copy=local_copy)
        self.outbox = Outbox(os.path.join(data_dir, "outbox.jsonl"), self.clock) if data_dir \
            else None
        self.peers = PeerLinks(self)
        self.route_cache = {}  # device_id -> home node id
        self.node_endpoints = {}  # node id -> signalling endpoint
        self.catching_up = False
        self._queued = []
        self._heartbeat = None
        self._sending = False
        self._acked_seq = 0  # the log sequence of the last change CMS applied for us
        self._last_head = 0  # the head sequence the last heartbeat answer named
        self._fetching = False
        self._restored = False
        self._retry_call = None  # the next send of the outbox after a failure
        self._retry_delay = RETRY_FIRST
        self._refetch = False  # a change was refused as stale: fetch before the next
        self.ready = defer.Deferred()  # fires after the first catch-up
        self._seq_waiters = []  # (seq, Deferred) fired once that sequence is applied
        self.applier.on_applied = self._applied
        self.counters = {"cms_requests": 0, "routed_via_cms": 0, "routed_direct": 0,
                         "reloads": 0, "fetches": 0, "notifies": 0, "refused_changes": 0,
                         "change_retries": 0}
        self.head_seq = 0  # the latest head sequence CMS named (lag: head - applied)
        self.sync_errors = 0  # link set-ups, fetches, applies and changes that failed
        self.last_sync_error = 0.0  # when the last of them happened (clock seconds)
        self._client = None

    # -- service

    def startService(self):
        super().startService()
        # one CMS, or every CMS of a site (a list): the link moves to the active one
        given = self.endpoint if isinstance(self.endpoint, (list, tuple)) else [self.endpoint]
        targets = [endpoints.clientFromString(self.reactor, e) if isinstance(e, str) else e
                   for e in given]
        self._client = Reconnector(
            targets if len(targets) > 1 else targets[0],
            LinkFactory(self, self.clock, request_timeout=30.0,
                        max_in_flight=PEER_MAX_IN_FLIGHT),
            self._on_connect, self.clock, initial=0.5, max_delay=10.0, name="link to CMS",
            names=self.cms_names or [e for e in given if isinstance(e, str)])
        self._client.start()

    def stopService(self):
        super().stopService()
        self._stop_heartbeat()
        self._cancel_retry()
        self.applier.close()
        self.peers.close()
        if self.outbox is not None:
            self.outbox.close()
        if self._client is not None:
            return self._client.stop()

    # -- connection

    @defer.inlineCallbacks
    def _on_connect(self, link):
        try:
            yield node_login(link, self.node_id, self.cluster_secret)
            signalling, media, capacity = self.advertise()
            self.restore()
            reg = (yield link.request(MsgType.NODE_REGISTER, NodeRegister(
                node_id=self.node_id, signalling=signalling, media=media, capacity=capacity,
                applied_seq=self.applier.applied_seq,
                ext=((EXT_PU_ADDRESS, self.pu_address().encode()),)
                if self.pu_address() else ()))).body
            self.link = link
            self._saw_head(reg.head_seq)
            self._start_heartbeat(link, reg.heartbeat_interval)
            yield self.catch_up(reg.head_seq)
            self.log.info("node {node} synchronised with CMS at sequence {seq}",
                          node=self.node_id, seq=self.applier.applied_seq)
            self.clock.callLater(0, self._connected)
        except Exception as e:
            self.sync_failed()
            self.log.warn("CMS link setup failed: {error}", error=str(e))
            self.link = None
            link.abort()
            raise

    def restore(self):
        """Take up what the node synchronised before it stopped (the Redis store's
        sequence, or the memory store's local copy), once, before serving: the node is
        then ready at once (``synchronised``) and fetches only what it missed."""
        if not self._restored:
            self._restored = True
            self.applier.restore()

    def _connected(self):
        if not self.ready.called:
            self.ready.callback(self)
        if self.rgm is not None:
            for device_id in list(self.rgm.pu_links):
                self.presence(device_id, True)
            for wall_id in [w for w in self.rgm.walls.walls if self.rgm.walls.here(w)]:
                self.presence(CU_TARGET + wall_id, True)  # where the node's walls are
        self._cancel_retry()  # a new link: send at once
        self._retry_delay = RETRY_FIRST
        self._send_outbox()
        for listener in self.connected_listeners:
            listener()

    def synchronised(self):
        """A copy to serve from: restored at start (the Redis store, or the memory
        store's local copy) or loaded from CMS."""
        return self.store.get_meta("applied_seq") is not None

    def presence(self, device_id, online):
        if self.link is not None:
            self.link.send_notify(MsgType.STATE_CHANGE, StateChange(
                device_id=device_id, channel=0,
                change=int(ChangeKind.ONLINE if online else ChangeKind.OFFLINE),
                timestamp=int(self.clock.seconds() * 1000), items=[]))

    def on_presence(self, change):
        """Another node's PU came online or went offline."""
        record = self.store.get_device(change.device_id)
        if record is not None and record.home_node in ("", self.node_id):
            return  # our own PUs' presence is ours to know
        online = change.change == ChangeKind.ONLINE
        self.store.set_state(change.device_id, online=online)
        if self.rgm is not None:
            self.rgm.publish_state(change.device_id, ChangeKind(change.change), [])

    def linkUp(self, link):
        pass

    def linkDown(self, link, reason):
        if self._client is not None:
            self._client.lost(link)
        if self.link is link:
            self.link = None
            self._stop_heartbeat()
            self.log.info("link to CMS lost; reconnecting")

    def _start_heartbeat(self, link, interval):
        self._stop_heartbeat()
        self._heartbeat = task.LoopingCall(self._beat, link)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(max(1, interval), now=False)

    def _stop_heartbeat(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None

    def load(self):
        """What this node reports in its heartbeat: PUs, CUs, live streams, the process's
        CPU (per mille of one core) and the media bandwidth it sends, since the last one."""
        rgm = self.rgm
        now = self.clock.seconds()
        cpu = sum(os.times()[:2])
        sources = rgm.cdn.rtsp.sources.values() if rgm is not None and rgm.cdn else ()
        sent = sum(s.bytes * max(1, len(s.readers)) for s in sources)
        last = getattr(self, "_last_load", None)
        self._last_load = (now, cpu, sent)
        cpu_permille = kbps = 0
        if last is not None and now > last[0]:
            cpu_permille = int(min(65535, 1000 * (cpu - last[1]) / (now - last[0])))
            kbps = int(max(0, sent - last[2]) * 8 / 1000 / (now - last[0]))
        return {"pus": len(rgm.pu_links) if rgm else 0, "cus": len(rgm.cu_links) if rgm else 0,
                "streams": len(sources), "cpu_permille": max(0, cpu_permille),
                "bandwidth_kbps": min(kbps, 2**32 - 1)}

    def _beat(self, link):
        load = self.load()  # the node process and its own SS
        servers = self._servers(load)
        # the node's bandwidth is what all its streaming servers send (its workers too)
        total = dict(load, bandwidth_kbps=min(2**32 - 1, sum(s.bandwidth_kbps for s in servers)))
        body = Heartbeat(applied_seq=self.applier.applied_seq, **(total if servers else load))
        d = link.request(MsgType.NODE_HEARTBEAT, body)
        d.addCallback(lambda msg: self._check_head(msg.body.head_seq))
        d.addErrback(lambda f: None)
        if servers:  # with each heartbeat, each streaming server's load, for MDP
            link.request(MsgType.SS_REPORT, SsReport(servers=servers)).addErrback(
                lambda f: None)

    def _servers(self, load):
        cdn = self.rgm.cdn if self.rgm is not None else None
        return cdn.servers(self.advertise()[1], load) if cdn is not None else []

    def _saw_head(self, head):
        if head > self.head_seq:
            self.head_seq = head

    def sync_failed(self):
        """Count a failed step of synchronisation (for ``/metrics``)."""
        self.sync_errors += 1
        self.last_sync_error = self.clock.seconds()

    def _check_head(self, head):
        """Anti-entropy: the heartbeat's answer names CMS's head sequence. A node still
        short of the head the previous heartbeat named (a change written without a
        notify reaching it, while its link stayed up) fetches what it lacks instead of
        waiting for the next change to show the gap. Returns the fetch or None."""
        self._saw_head(head)
        due, self._last_head = self._last_head, head
        if due > self.applier.applied_seq and not self.catching_up and not self._fetching \
                and self.link is not None:
            self._fetching = True
            self.log.info("behind CMS (applied {applied}, head {head}): fetching",
                          applied=self.applier.applied_seq, head=due)

            def done(result):
                self._fetching = False
                if isinstance(result, Failure):
                    self.sync_failed()
                return result

            return self.fetch().addBoth(done)
        return None

    def _request(self, type, body, timeout=None):
        if self.link is None:
            return defer.fail(VssError(ResultCode.CENTRAL_UNAVAILABLE, "no link to CMS"))
        self.counters["cms_requests"] += 1
        return self.link.request(type, body, timeout)

    # -- catching up: reload or fetch

    @defer.inlineCallbacks
    def catch_up(self, head_seq):
        self.catching_up = True
        try:
            if self.applier.applied_seq == 0 and self.store.get_meta("applied_seq") is None:
                yield self.reload(head_seq)
            yield self.fetch()
        finally:
            self.catching_up = False
        queued, self._queued = self._queued, []
        for changes, head, prev in queued:
            yield self._apply_notified(changes, head, prev)

    @defer.inlineCallbacks
    def reload(self, head_seq):
        """Pull all static data, paged, and make memory equal to it (records absent
        from CMS are dropped). Changes after ``head_seq`` come by fetch."""
        self.counters["reloads"] += 1
        started = self.clock.seconds()
        seen = {Entity.DEVICE: set(), Entity.USER: set(), Entity.GRANT: set(),
                Entity.CREDENTIAL: set()}

        entities = (Entity.DEVICE, Entity.USER, Entity.GRANT, Entity.CREDENTIAL)
        # every entity's pages are asked for at once, each page as soon as the one
        # before it arrives: CMS reads and encodes them (on several database
        # connections) while this node stores the ones that came
        pages = {entity: self._pull_pages(entity) for entity in entities}
        try:
            for entity in entities:
                for i in itertools.count():
                    page = (yield pages[entity][i]).body
                    for r in page.devices:
                        self.store.put_device(r)
                        seen[entity].add(r.device_id)
                    for r in page.users:
                        self.store.put_user(r)
                        seen[entity].add(r.username)
                    for r in page.grants:
                        self.store.put_grant(r)
                        seen[entity].add((r.principal, r.device_id))
                    for r in page.credentials:
                        self.store.put_credential(r)
                        seen[entity].add(r.cred_id)
                    if not page.next_cursor:
                        break
        except BaseException:
            for chain in pages.values():
                for d in chain:
                    d.addErrback(lambda f: None)  # the reload fails with the first failure
            raise
        for r in self.store.devices():
            if r.device_id not in seen[Entity.DEVICE]:
                self.store.remove_device(r.device_id)
        for r in self.store.users():
            if r.username not in seen[Entity.USER]:
                self.store.remove_user(r.username)
        for g in self.store.grants():
            if (g.principal, g.device_id) not in seen[Entity.GRANT]:
                self.store.remove_grant(g.principal, g.device_id)
        for c in self.store.credentials():
            if c.cred_id not in seen[Entity.CREDENTIAL]:
                self.store.remove_credential(c.cred_id)
        self.applier.applied_seq = head_seq
        self.applier.save()
        self.applier.snapshot()
        self.route_cache.clear()
        self.log.info("reloaded {devices} devices, {users} users, {grants} grants, {creds} "
                      "stream credentials in {s:.2f} s", devices=len(seen[Entity.DEVICE]),
                      users=len(seen[Entity.USER]), grants=len(seen[Entity.GRANT]),
                      creds=len(seen[Entity.CREDENTIAL]), s=self.clock.seconds() - started)
        self._access_changed()

    def _pull_pages(self, entity):
        """STATIC_PULL every page of ``entity``, each as soon as the one before it
        arrives: a list of Deferreds of the responses, in order, that grows as they
        come (the next page's is there before a page's own callbacks run)."""
        chain = []

        def pull(cursor):
            d = self._request(MsgType.STATIC_PULL, StaticPull(
                entity=entity, cursor=cursor, limit=PAGE), 60.0)
            chain.append(d.addCallback(arrived))

        def arrived(response):
            if response.body.next_cursor:
                pull(response.body.next_cursor)
            return response

        pull("")
        return chain

    @defer.inlineCallbacks
    def fetch(self):
        """Apply every change after the last applied sequence."""
        while True:
            self.counters["fetches"] += 1
            after = self.applier.applied_seq
            batch = (yield self._request(MsgType.SYNC_FETCH, SyncFetch(
                after_seq=after, limit=PAGE), 60.0)).body
            self._saw_head(batch.head_seq)
            if batch.reload_required:
                yield self.reload(batch.head_seq)
                continue
            scanned = ext_seq(batch.ext)
            if scanned is None:  # a CMS that sends every change to every node
                self.applier.apply(batch.changes)
                if not batch.changes or self.applier.applied_seq >= batch.head_seq:
                    return
                continue
            # every change of this node's share up to ``scanned`` is in the batch
            self.applier.apply(batch.changes, upto=scanned)
            if scanned >= batch.head_seq or scanned <= after:
                return

    # -- what CMS sends

    def received(self, link, frame, msg):
        t = frame.type
        if frame.flags & codec.FLAG_NOTIFY:
            if t == MsgType.STATE_CHANGE:
                self.on_presence(msg.body)
            elif t == MsgType.NODE_LIST:
                self.on_node_list(msg.body)
            return
        if t == MsgType.KEEPALIVE:
            link.send_response(t, frame.txid, Empty())
            return
        if t == MsgType.SYNC_NOTIFY:
            d = self.on_sync_notify(msg.body)
        elif t == MsgType.ROUTE_REQUEST and self.rgm is not None:
            d = serve_route(self.rgm, msg.body)
        elif t == MsgType.RECORD_QUERY and self.local_recordings is not None:
            d = defer.maybeDeferred(self.local_recordings, msg.body)
            d.addCallback(lambda r: r if isinstance(r, bytes) else encode_recordings(r))
            d.addCallbacks(lambda data: link.send_raw_response(t, frame.txid, 0, data),
                           lambda f: link.send_failure(frame, f))
            return
        else:
            link.send_error(t, frame.txid, ResultCode.UNEXPECTED_MESSAGE)
            return
        d.addCallbacks(lambda body: link.send_response(t, frame.txid, body),
                       lambda f: link.send_failure(frame, f))

    def on_sync_notify(self, body):
        """S504 arrives; S505 apply; S506 answer SyncComplete."""
        self.counters["notifies"] += 1
        self._saw_head(body.head_seq)
        prev = ext_seq(body.ext)
        if self.catching_up:
            self._queued.append((list(body.changes), body.head_seq, prev))
            return defer.succeed(SyncComplete(node_id=self.node_id,
                                              applied_seq=self.applier.applied_seq))
        d = self._apply_notified(list(body.changes), body.head_seq, prev)

        def failed(f):
            self.sync_failed()
            return f

        return d.addCallbacks(
            lambda _: SyncComplete(node_id=self.node_id, applied_seq=self.applier.applied_seq),
            failed)

    @defer.inlineCallbacks
    def _apply_notified(self, changes, head, prev=None):
        """A notify naming PREV_SEQ holds every change of this node's share after it up
        to ``head``: the node fetches first if it has not reached ``prev`` (it missed
        one), then moves to ``head``. Without PREV_SEQ (every change to every node) a
        gap in the sequences shows a miss."""
        if prev is None:
            if self.applier.gap(changes):
                yield self.fetch()
            self.applier.apply(changes)
            return
        if prev > self.applier.applied_seq:
            yield self.fetch()
        self.applier.apply(changes, upto=head if prev <= self.applier.applied_seq else None)

    def _device_changed(self, device_id, old, new):
        """A moved or removed device: forget its route; a renamed one: show the name."""
        if new is None or old is None or old.home_node != new.home_node:
            self.route_cache.pop(device_id, None)
        if new is not None and self.rgm is not None:
            state = self.store.get_state(device_id)
            if state.get("name") and old is not None and old.name != new.name:
                self.store.set_state(device_id, name=new.name)
        if self.rgm is not None and new is not None and new.home_node not in ("", self.node_id):
            link = self.rgm.pu_links.get(device_id)
            if link is not None:
                link.close(ResultCode.SESSION_CLOSED, f"moved to node {new.home_node}")
        if self.rgm is not None and new is None:
            link = self.rgm.pu_links.get(device_id)
            if link is not None:
                link.close(ResultCode.SESSION_CLOSED, "device removed")
        for listener in self.device_listeners:
            listener(device_id, old, new)

    def _access_changed(self):
        for listener in self.access_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener never stops the sync
                self.log.failure("access listener failed")

    def _user_changed(self, username, new):
        """A removed or disabled user's sessions end; a new password takes effect at the
        next login."""
        if self.rgm is not None and (new is None or not new.enabled):
            self.rgm.end_sessions_of(username, "account removed" if new is None
                                     else "account disabled")

    # -- ICentral

    def registration_info(self, identity, role):
        """REG_INFO: a first registration here. CMS answers once the records it makes
        this node hold are in the change stream (READ_SEQ): the node waits until it has
        applied that far and serves them from its copy, never from the answer, which a
        later change (a removal) may already have overtaken."""

        def answered(msg):
            info = msg.body
            seq = ext_seq(info.ext)
            if seq is None:
                return info
            bare = replace(info, device=None, user=None, grants=[])
            return self.wait_applied(seq).addCallback(lambda _: bare)

        return self._request(MsgType.REG_INFO, RegInfoRequest(identity=identity, role=int(role))) \
            .addCallback(answered)

    def wait_applied(self, seq, timeout=REG_WAIT):
        """A Deferred fired once the copy has applied ``seq`` (CENTRAL_UNAVAILABLE after
        ``timeout`` s: the stream did not get that far, a link lost meanwhile)."""
        if self.applier.applied_seq >= seq:
            return defer.succeed(None)
        d = defer.Deferred()
        entry = (seq, d)
        self._seq_waiters.append(entry)

        def late():
            if entry in self._seq_waiters:
                self._seq_waiters.remove(entry)
                d.errback(VssError(ResultCode.CENTRAL_UNAVAILABLE,
                                   f"the change stream did not reach {seq} in {timeout} s"))

        call = self.clock.callLater(timeout, late)
        return d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])

    def _applied(self, seq):
        if not self._seq_waiters:
            return
        due = [e for e in self._seq_waiters if e[0] <= seq]
        for e in due:
            self._seq_waiters.remove(e)
            e[1].callback(None)

    def store_credential(self, record):
        """CRED_STORE: CMS stores a stream credential of one of this node's users."""
        return self._request(MsgType.CRED_STORE, CredState(credential=record)).addCallback(
            lambda msg: msg.body.credential)

    def revoke_credential(self, cred_id, username):
        """CRED_REVOKE: ``username`` revokes one of their stream credentials."""
        return self._request(MsgType.CRED_REVOKE, CredRevoke(
            cred_id=cred_id, username=username)).addCallback(lambda msg: msg.body.credential)

    def report_audit(self, report):
        """AUDIT_REPORT: CMS keeps the media users started here in its audit log."""
        return self._request(MsgType.AUDIT_REPORT, report).addCallback(lambda msg: msg.body)

    def report_events(self, report):
        """EVENT_REPORT: CMS stores the events numbered here (vss.events.report)."""
        return self._request(MsgType.EVENT_REPORT, report).addCallback(lambda msg: msg.body)

    def ack_event(self, ack):
        """EVENT_ACK: CMS stores an operator's acknowledgement of an event."""
        return self._request(MsgType.EVENT_ACK, ack).addCallback(lambda msg: msg.body)

    def query_events(self, query):
        """EVENT_QUERY: the events CMS stores, of devices the user may view."""
        return self._request(MsgType.EVENT_QUERY, query).addCallback(lambda msg: msg.body)

    def record_settings(self, device_id, channel):
        """The recording settings CMS holds for a channel (RECORD_SETTINGS_GET)."""
        return self._request(MsgType.RECORD_SETTINGS_GET, RecordSettingsGet(
            device_id=device_id, channel=channel)).addCallback(lambda msg: msg.body)

    def query_recordings(self, body, timeout=None):
        """RECORD_QUERY: CMS asks every node and merges their catalogues. Fires with the
        raw response frame (an error status raises VssError): the node passes the
        merged listing on to its CU as it came."""
        if self.link is None:
            return defer.fail(VssError(ResultCode.CENTRAL_UNAVAILABLE, "no link to CMS"))
        self.counters["cms_requests"] += 1
        return self.link.request_raw(MsgType.RECORD_QUERY, codec.encode_body(body),
                                     timeout).addCallback(check_response)

    def pull_static(self, entity, cursor, limit):
        return self._request(MsgType.STATIC_PULL, StaticPull(entity=entity, cursor=cursor,
                                                             limit=limit)) \
            .addCallback(lambda msg: msg.body)

    def route(self, device_id, inner_type, inner_body):
        """S402, with the route cache: straight to the home node when it is known."""
        home = self.route_cache.get(device_id)
        if home is not None:
            endpoint = self.node_endpoints.get(home)
            if endpoint:
                self.counters["routed_direct"] += 1
                d = self.peers.route(home, endpoint, device_id, inner_type, inner_body)
                return d.addErrback(lambda f: self.route_missed(
                    device_id, home, f.getErrorMessage(), inner_type, inner_body))
        return self._route_via_cms(device_id, inner_type, inner_body)

    def route_missed(self, device_id, home, error, inner_type, inner_body):
        """The cached route to ``home`` failed (``error``): forget it and ask CMS."""
        self.route_cache.pop(device_id, None)
        self.log.info("direct route to {node} for {device} failed ({error}); asking CMS",
                      node=home, device=device_id, error=error)
        return self._route_via_cms(device_id, inner_type, inner_body)

    def _route_via_cms(self, device_id, inner_type, inner_body):
        self.counters["routed_via_cms"] += 1
        d = self._request(MsgType.ROUTE_REQUEST, RouteRequest(
            origin_node=self.node_id, device_id=device_id, hops=0, inner_type=inner_type,
            inner_body=inner_body))

        def answered(msg):
            body = msg.body
            if body.inner_status != ResultCode.UNKNOWN_DEVICE and body.home_node:
                self._learn_route(device_id)
            return body.inner_status, body.inner_body

        return d.addCallback(answered)

    def _learn_route(self, device_id):
        if device_id in self.route_cache:
            return

        def learned(msg):
            r = msg.body
            if r.node_up and r.signalling and r.home_node != self.node_id:
                self.node_endpoints[r.home_node] = r.signalling
                self.route_cache[device_id] = r.home_node

        self._request(MsgType.ROUTE_LOOKUP, RouteLookup(device_id=device_id)).addCallbacks(
            learned, lambda f: None)

    def on_node_list(self, body):
        """CMS names the up nodes' PU addresses (a node came or went): the node passes
        them on to its PUs."""
        self.nodes = list(body.nodes)
        for listener in self.nodes_listeners:
            listener(body)

    def node_addresses(self):
        return list(self.nodes)

    def home_of(self, device_id):
        """ROUTE_LOOKUP for a PU that asks where it is homed (HOME_QUERY)."""
        return self._request(MsgType.ROUTE_LOOKUP, RouteLookup(device_id=device_id)) \
            .addCallback(lambda msg: msg.body)

    def lookup_node(self, node_id):
        """NODE_LOOKUP: another node's addresses by its id (a ``NodeRoute``); its
        signalling endpoint is kept in ``node_endpoints`` while it is up, dropped when
        CMS says it is down. UNKNOWN_NODE for a node CMS never knew."""

        def learned(msg):
            r = msg.body
            if r.node_id != self.node_id:
                if r.node_up and r.signalling:
                    self.node_endpoints[r.node_id] = r.signalling
                else:
                    self.node_endpoints.pop(r.node_id, None)
            return r

        self.counters["node_lookups"] = self.counters.get("node_lookups", 0) + 1
        return self._request(MsgType.NODE_LOOKUP, NodeLookup(node_id=node_id)).addCallback(
            learned)

    def report_change(self, change):
        """S603 through the durable outbox. Fires with the SyncAck once CMS answered."""
        if self.outbox is None:
            return self._request(MsgType.SYNC_CHANGE, change).addCallback(lambda m: m.body)

        change = replace(change, change_id=self.outbox.next_id(), node_id=self.node_id)
        self.outbox.add(change)
        if change.change in settings.KINDS:
            self.applier.note_setting(change.device_id, change.channel,
                                      ChangeKind(change.change),
                                      {kv.key: kv.value for kv in change.items})
        d = defer.Deferred()
        self._waiters = getattr(self, "_waiters", {})
        self._waiters[change.change_id] = d
        self._send_outbox()
        return d

    @defer.inlineCallbacks
    def _send_outbox(self):
        """Send the outbox in order, one change at a time, until it is empty or the
        link drops (the rest goes on the next connection). A change leaves the outbox
        only when CMS wrote it, or refused it for good (``REFUSALS``, and the conflict
        rule's ``applied=False``), each refusal logged with its reason; any other
        failure (the database lost, locked or timed out, no answer) keeps it, and the
        outbox is sent again after a growing delay."""
        if self._sending or self.outbox is None:
            return
        if self._retry_call is not None and self._retry_call.active():
            return  # waiting out a failure: the retry sends it
        self._sending = True
        try:
            while self.outbox.pending and self.link is not None and not self.catching_up:
                if self.applier.applied_seq < self._acked_seq or self._refetch:
                    # The change before this one was written at _acked_seq (or refused
                    # as stale: the node's copy is behind); its notify may still be
                    # waiting behind a fetch. Base the next change on what CMS holds,
                    # else CMS refuses it as stale (it crossed our own change).
                    try:
                        yield self.fetch()
                    except VssError as e:
                        if self.link is not None:
                            self._retry_later(f"fetch before the next change: {e.message}")
                        return
                    self._acked_seq = 0
                    self._refetch = False
                    continue
                change_id, change = next(iter(self.outbox.pending.items()))
                if change_id not in self.outbox.sent_ids:
                    # The base version is the one held when the change is first sent, and
                    # kept (in the outbox) for every resend: a change whose ack was lost
                    # is then refused as stale instead of being applied a second time
                    # over what came after it.

                    record = self.store.get_device(change.device_id)
                    change = replace(change, base_version=record.version if record else 0)
                    self.outbox.sent(change)
                # On disk before CMS can see it: the change, and the stamp it goes with.
                self.outbox.flush()
                refusal = None
                try:
                    ack = (yield self._request(MsgType.SYNC_CHANGE, change)).body
                except VssError as e:
                    if e.code in (ResultCode.SESSION_CLOSED, ResultCode.CENTRAL_UNAVAILABLE) \
                            or self.link is None:
                        return  # the link is gone: everything is sent again on the next
                    if e.code not in REFUSALS:
                        self._retry_later(f"change {change_id} of {change.device_id}: "
                                          f"{getattr(e.code, 'name', e.code)} {e.message}")
                        return
                    ack, refusal = None, f"{REFUSALS[e.code]} ({e.message})"
                self._retry_delay = RETRY_FIRST
                if ack is not None and not ack.applied:
                    refusal = ("a central change of the device crossed it (conflict rule); "
                               "the node takes the central data")
                    self._refetch = True
                if refusal is not None:
                    self.counters["refused_changes"] += 1
                    self.sync_failed()
                    self.log.warn("CMS refused change {id} of {device} for good: {reason}",
                                  id=change_id, device=change.device_id, reason=refusal)
                self.outbox.ack(change_id)
                if ack is not None and ack.applied:
                    self._acked_seq = max(self._acked_seq, ack.seq)
                waiter = getattr(self, "_waiters", {}).pop(change_id, None)
                if waiter is not None:
                    if ack is None:
                        waiter.errback(VssError(ResultCode.STALE_CHANGE, refusal))
                    else:
                        waiter.callback(ack)
        finally:
            self._sending = False

    def _retry_later(self, why):
        """CMS could not write (or answer) now: keep everything, send again later."""
        delay = self._retry_delay * random.uniform(0.75, 1.25)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self.counters["change_retries"] += 1
        self.sync_failed()
        self.log.warn("CMS did not write {why}; kept, sending again in {delay:.1f} s",
                      why=why, delay=delay)
        self._retry_call = self.clock.callLater(delay, self._retry)

    def _retry(self):
        self._retry_call = None
        self._send_outbox()

    def _cancel_retry(self):
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def status(self):
        return {"connected": self.link is not None, "applied_seq": self.applier.applied_seq,
                "outbox": len(self.outbox.pending) if self.outbox else 0,
                "routes_cached": len(self.route_cache),
                "held": {"devices": len(self.store.devices()), "users": len(self.store.users()),
                         "grants": len(self.store.grants())}, **self.counters}
