"""
The collectors of ``vss-node`` and ``vss-cms``: at each scrape they read the plain
counters the parts keep and yield Prometheus metric families (docs/operations.md,
"Metrics", lists them; docs/grafana-vss.json charts them).

Counters never go back while the process runs: what the readers, links or recordings
that ended had counted is folded into totals when they end (``Source.viewers_gone``,
``RTSPServerFactory.viewers_ended``, the recorder's counters).
"""

import os

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer

from vss import __version__
from vss.ops.metrics import histogram_family
from vss.protocols import codec
from vss.protocols.messages import RecordingState, Role

LINK_STATES = ("new", "hello", "challenged", "authenticated", "registered")


def build_info(program):
    g = GaugeMetricFamily("vss_build_info", "The vss version this process runs (always 1).",
                          labels=["program", "version"])
    g.add_metric([program, __version__], 1)
    return g


def counter(name, documentation, value):
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name, documentation, value):
    return GaugeMetricFamily(name, documentation, value=value)


def labelled(cls, name, documentation, labels, items):
    """A family of ``cls`` with one sample per ``(label values, value)`` of ``items``
    (a lone label's value may be given bare)."""
    family = cls(name, documentation, labels=list(labels))
    for values, value in items:
        family.add_metric(list(values) if isinstance(values, tuple) else [values], value)
    return family


def disk_free(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return float("nan")
    return st.f_bavail * st.f_frsize


def streaming_server_families(rtsp):
    """The streaming server's families (``vss.rtsp.server.RTSPServerFactory``): sources,
    viewers, what they were sent and not sent."""
    origins = {}
    for source in list(rtsp.sources.values()):
        origins[source.origin] = origins.get(source.origin, 0) + 1
    yield labelled(GaugeMetricFamily, "vss_media_sources",
                   "Live sources of the streaming server by origin (rtsp: published by a "
                   "PU, pull: pulled from a camera or a node, playback, code).",
                   ("origin",), sorted(origins.items()))
    viewers, (sent, frames, drops, waits) = rtsp.viewer_totals()
    yield labelled(GaugeMetricFamily, "vss_media_viewers",
                   "Players reading a source, by transport.", ("transport",),
                   sorted(viewers.items()))
    yield counter("vss_media_sent_bytes", "Bytes sent to players.", sent)
    yield counter("vss_media_sent_frames", "Frames (one picture with its audio and RTCP) "
                  "sent to players.", frames)
    yield counter("vss_media_dropped_frames", "Frames not sent to a player too slow to "
                  "take them (then until its next keyframe).", drops)
    yield counter("vss_media_keyframe_wait_frames", "Frames a new player skipped before "
                  "its first keyframe.", waits)
    yield counter("vss_media_lag_skips", "Times a live player fell more than "
                  "--live-max-lag behind: what was queued for it was dropped and it resumed "
                  "at a keyframe.", rtsp.lag_skips)


class NodeCollector:
    """The metrics of a ``vss.node.NodeService``."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        node = self.node
        yield build_info("vss-node")
        yield from self._signalling(node.rgm)
        yield from self._central(node)
        yield from self._media(node)
        yield from self._recording(node)
        yield from self._events(node)

    # -- signalling: links, logins, the relay

    def _signalling(self, rgm):
        links = {(kind, state): 0 for kind in ("pu", "cu") for state in LINK_STATES}
        for link in list(rgm.links):
            s = link.session
            if s is not None:
                key = ("pu" if s.listener_role == Role.PU else "cu", s.state)
                links[key] = links.get(key, 0) + 1
        node = self.node
        peer_server = getattr(node, "peer_server", None)  # a node with CMS only
        if peer_server is not None:
            links["node_in", "registered"] = len(peer_server.links)
            links["node_out", "registered"] = len(node.central.peers.links)
        yield labelled(GaugeMetricFamily, "vss_links",
                       "Signalling links by kind (pu, cu; node_in, node_out: links with other "
                       "nodes) and state (registered: logged in and serving).",
                       ("kind", "state"), sorted(links.items()))
        yield labelled(CounterMetricFamily, "vss_logins",
                       "Logins of PUs and CUs by result (ok, failed: a wrong proof, "
                       "throttled: refused while the source must wait, not_ready: refused "
                       "while the node loads its data).",
                       ("role", "result"), sorted(rgm.logins.items()))
        c = rgm.counters
        yield counter("vss_relay_forwarded", "Requests forwarded to a PU of this node "
                      "(from its CUs and from other nodes).", c["relayed"])
        yield counter("vss_relay_routed", "CU requests for devices homed on another node.",
                      c["routed"])
        yield counter("vss_relay_timeouts", "Relayed requests that got no answer in time.",
                      c["timeouts"])
        yield counter("vss_links_dropped_silent", "Links dropped after three keepalive "
                      "intervals without a byte.", c["dropped_silent"])
        if rgm.latency is not None:
            yield histogram_family(
                "vss_relay_request_duration_seconds",
                "CU requests relayed to a PU, by message type and route (local: a PU of "
                "this node; remote: through the home node): seconds from the request read "
                "to the answer read.", ["type", "route"],
                [((codec.message_name(t), route), h)
                 for (t, route), h in sorted(rgm.latency.items())])

    # -- the link to CMS: routing and synchronisation

    def _central(self, node):
        central = node.central
        cms = not node.settings.static
        counters = central.counters if cms else {}
        applied = central.applier.applied_seq if cms else 0
        head = max(central.head_seq, applied) if cms else 0
        yield gauge("vss_cms_link_up", "1 while the node is registered with CMS (a node run "
                    "with --static: 1).", 1 if not cms or central.link is not None else 0)
        yield counter("vss_route_cache_hits", "Requests for another node's device sent "
                      "straight to its home node (cached route).",
                      counters.get("routed_direct", 0))
        yield counter("vss_route_cache_misses", "Requests for another node's device routed "
                      "through CMS (no cached route, or it failed).",
                      counters.get("routed_via_cms", 0))
        yield counter("vss_cms_requests", "Requests this node sent to CMS.",
                      counters.get("cms_requests", 0))
        yield gauge("vss_sync_applied_seq", "The last change-log sequence applied here.",
                    applied)
        yield gauge("vss_sync_head_seq", "The latest change-log head CMS named to this node.",
                    head)
        yield gauge("vss_sync_lag", "Changes CMS holds that this node has not applied yet "
                    "(head - applied).", head - applied)
        outbox = central.outbox if cms else None
        yield gauge("vss_sync_outbox_depth", "PU changes waiting for CMS's acknowledgement.",
                    len(outbox.pending) if outbox is not None else 0)
        yield counter("vss_sync_errors", "Failed synchronisation steps (link set-up, fetch, "
                      "apply, a change CMS refused).", central.sync_errors if cms else 0)
        yield gauge("vss_sync_last_error_timestamp_seconds", "When the last synchronisation "
                    "step failed (Unix time; 0: never).",
                    central.last_sync_error if cms else 0)

    # -- media: the SS and the CDN module

    def _media(self, node):
        yield from streaming_server_families(node.rtsp)
        c = node.cdn.counters
        yield counter("vss_media_opens", "MEDIA_OPEN requests served (live and playback).",
                      c.get("opened", 0))
        yield labelled(CounterMetricFamily, "vss_media_pulls",
                       "Live streams pulled into this node's streaming server, from a camera's "
                       "RTSP URL or from the device's home node.", ("source",),
                       [(("camera",), c.get("pulls", 0)), (("node",), c.get("node_pulls", 0))])
        yield counter("vss_media_pu_publishes", "Streams asked of PUs (MEDIA_START).",
                      c.get("pu_publish", 0))
        yield counter("vss_media_relayed_playbacks", "Playbacks of footage another node (or "
                      "a DVR there) holds, relayed through this node.",
                      c.get("relayed_playbacks", 0) + c.get("relayed_dvr_playbacks", 0))
        pool = getattr(node, "ss_pool", None)
        if pool is not None:
            yield from self._ss_workers(pool)

    def _ss_workers(self, pool):
        """The streaming server workers (``--ss-workers``) as their reports say."""
        servers = sorted(pool.servers.values(), key=lambda s: s.ss_id)
        states = {"up": 0, "stale": 0, "down": 0}
        for s in servers:
            states[s.state.name.lower()] += 1
        yield labelled(GaugeMetricFamily, "vss_ss_workers", "SS workers by state (up; stale: "
                       "its reports stopped, not chosen; down: being restarted).", ("state",),
                       sorted(states.items()))
        for name, key, what in (("vss_ss_viewers", "viewers", "Viewers an SS worker serves."),
                                ("vss_ss_streams", "streams", "Streams an SS worker carries."),
                                ("vss_ss_bandwidth_kbps", "bandwidth_kbps",
                                 "What an SS worker sends to its viewers, kb/s."),
                                ("vss_ss_cpu_permille", "cpu_permille",
                                 "An SS worker's CPU, per mille of one core.")):
            yield labelled(GaugeMetricFamily, name, what, ("ss",),
                           [((s.ss_id,), s.load[key]) for s in servers])
        yield labelled(CounterMetricFamily, "vss_ss_restarts", "Times the node started an SS "
                       "worker again after it ended.", ("ss",),
                       [((s.ss_id,), s.restarts) for s in servers])

    # -- recording

    def _recording(self, node):
        states = {s.name.lower(): 0 for s in RecordingState}
        for stack in list(node.recordings.stacks.values()):
            name = RecordingState(stack.state).name.lower()
            states[name] = states.get(name, 0) + 1
        yield labelled(GaugeMetricFamily, "vss_recordings",
                       "Recordings wanted, by state (running: being written; queued: "
                       "waiting for capacity).", ("state",), sorted(states.items()))
        c = node.recorder.counters
        yield counter("vss_recording_bytes_written", "Bytes of closed segments.", c["bytes"])
        yield counter("vss_recording_segments_closed", "Segments closed and indexed.",
                      c["segments"])
        yield counter("vss_recording_write_errors", "Recording errors (the stream could not "
                      "be read or written, disk full).", c["write_errors"])
        yield counter("vss_recording_restarts", "Recordings restarted after an interruption.",
                      c["restarts"])
        yield gauge("vss_recording_alarm", "1 while recording is stopped by an alarm (disk "
                    "full).", 1 if node.recorder.alarm is not None else 0)
        yield gauge("vss_recording_disk_free_bytes", "Free space for the recordings (the "
                    "data directory's file system).", disk_free(node.recorder.data_dir))


    def _events(self, node):
        c = node.events.counters
        yield counter("vss_events_raised", "Events numbered on this node (its PUs' and its "
                      "own).", c["raised"])
        yield counter("vss_events_delivered", "Event notifications sent to CUs of this node.",
                      c["delivered"])
        yield counter("vss_events_received", "Events received from the nodes this node "
                      "follows.", c["remote_received"])
        yield counter("vss_events_duplicates", "Events received twice from another node "
                      "and dropped.", c["duplicates"])
        yield counter("vss_events_refused", "EVENT_RAISE refused (bad input).", c["refused"])
        yield gauge("vss_events_subscribed_links", "CU links holding event subscriptions.",
                    len(node.events.subs))
        yield gauge("vss_events_following", "Nodes whose events this node follows.",
                    len(node.events.remote))
        r = node.event_reporter
        yield gauge("vss_events_report_waiting", "Events waiting to be reported to CMS.",
                    len(r.queue))
        yield counter("vss_events_report_dropped", "Events dropped because too many waited "
                      "for CMS.", r.counters["dropped"])


class CmsCollector:
    """The metrics of a ``vss.cms.daemon.CmsDaemon``. ``refresh`` (before each scrape)
    reads the node registry and the change log's head from the database."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.registry_nodes = set()
        self.head_seq = 0

    @defer.inlineCallbacks
    def refresh(self):
        store = self.daemon.store
        nodes = yield store.list_nodes()
        self.registry_nodes = {n["node_id"] for n in nodes}
        self.head_seq = yield store.head_seq()

    def collect(self):
        daemon = self.daemon
        cms = daemon.cms
        yield build_info("vss-cms")
        up = set(cms.sessions)
        yield labelled(GaugeMetricFamily, "vss_cms_nodes", "Nodes of the registry by state "
                       "(up: linked to CMS now).", ("state",),
                       [(("up",), len(up)), (("down",), len(self.registry_nodes - up))])
        head = max(self.head_seq, max((s.applied_seq for s in cms.sessions.values()),
                                      default=0))
        yield gauge("vss_cms_head_seq", "The change log's last sequence.", head)
        election = daemon.election
        yield gauge("vss_cms_active", "1 while this CMS is the active one (0: a standby, "
                    "docs/consistency.md).", 1 if election is None or election.active else 0)
        if election is not None:
            yield counter("vss_cms_takeovers", "Times this CMS took over as the active one.",
                          election.takeovers)
        yield labelled(GaugeMetricFamily, "vss_cms_node_lag",
                       "Changes an up node has not confirmed yet (head - its applied "
                       "sequence).", ("node",),
                       [((n,), max(0, head - s.applied_seq))
                        for n, s in sorted(cms.sessions.items())])
        c = cms.counters
        yield counter("vss_cms_changes", "Changes published to the nodes (rate: changes/s).",
                      c["changes"])
        yield counter("vss_cms_routed_requests", "Requests routed to a device's home node "
                      "(S403).", c["routed"])
        yield counter("vss_cms_sync_notifies", "SYNC_NOTIFY messages sent to nodes (S504).",
                      c["notified"])
        yield labelled(CounterMetricFamily, "vss_cms_node_changes",
                       "Changes nodes reported (S603), by result (stale: refused, the "
                       "central data is newer).", ("result",),
                       [(("applied",), c["sync_changes"] - c["stale_changes"]),
                        (("stale",), c["stale_changes"])])
        yield gauge("vss_cms_devices", "Devices in the database.", len(cms.homes))
        yield gauge("vss_cms_devices_online", "Devices their home node reports online.",
                    len(cms.online))
        down = self.registry_nodes - up
        yield gauge("vss_cms_devices_on_down_nodes", "Devices homed on a node of the "
                    "registry that is down (dark until they move or it comes back).",
                    sum(1 for h in cms.homes.values() if h in down) if down else 0)
        yield counter("vss_cms_rehomed_devices", "Devices moved away from a node that was "
                      "down (docs/consistency.md, re-homing).", c.get("rehomed", 0))
        yield counter("vss_cms_failback_devices", "Devices given back to the node they "
                      "were moved away from (--failback).", c.get("failed_back", 0))
        yield histogram_family("vss_cms_db_call_duration_seconds",
                               "Database calls, issued to answered, by kind.", ["kind"],
                               [((k,), h) for k, h in sorted(daemon.store.call_latency.items())])
        api = daemon.admin_api
        if api is not None:
            yield labelled(CounterMetricFamily, "vss_cms_admin_requests",
                           "Admin API requests by method and HTTP status.",
                           ("method", "status"),
                           [((m, str(s)), n) for (m, s), n in sorted(api.answered.items())])
