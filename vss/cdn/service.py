"""
The CDN module of a node: the only thing that drives its streaming server (SS).

The RGM calls its *service interface* when a CU asks for live video (MEDIA_OPEN):

1. ``media_open``: the grant is checked (view); the stream's path is
   ``/live/<device>/<stream>`` (``main``/``sub``, ``chN-main`` for channel N > 0).
2. ``ensure_source``: if the SS has no source on that path yet, one is started:
   - a PU homed here is asked to publish (MEDIA_START with a publish-only token),
   - a real camera (a device record with an RTSP ``source_url``) is pulled, with its
     credentials, by the RTSP client,
   - a PU homed on another node: that node is asked for the stream (MEDIA_OPEN routed
     to it; ``routed_media_open`` answers there) and this SS pulls it once, node to
     node, for all its viewers.
3. the CU gets an ``rtsp://`` URL carrying a short-lived play token for that path only.

A MEDIA_OPEN with ``purpose=PLAYBACK`` goes to ``vss.recording.remote``: played here
(``vss.recording.playback``, or a DVR logged in here), or relayed from the node holding it.

Many viewers share one source. A source with no reader for ``linger`` seconds is stopped
(MEDIA_STOP to the PU, or the pull closed).

A source pulled from a PU's home node whose origin ends while viewers watch it (the
home node died, or gave the PU up) is kept, its viewers on it, and joined again to the
PU's home as it is now (``_origin_lost``, ``_rejoin``: every ``REJOIN_EVERY`` s for at
most ``REJOIN_FOR`` s, while CMS moves the PU); its packets then continue the same RTSP
sessions. A PU now homed here publishes onto ``<path>.home`` and this SS pulls that
into the kept source over loopback.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from vss.interfaces import IRecorder
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    CuKind,
    Empty,
    MediaOpen,
    MediaStart,
    MediaStop,
    MediaUrl,
    MsgType,
    Purpose,
    SsServer,
    SsState,
    Stream,
)
from vss.recording import remote
from vss.recording.dvr import close_publisher
from vss.recording.remote import RelayedPlayback
from vss.rtsp import start_from_gop
from vss.rtsp.client import host_port, pull, pull_into, split_credentials
from vss.rtsp.server import REHOMED_SUFFIX

SOURCE_WAIT = 10.0
#: a pulled source whose origin ended is joined again to the PU's home for this long,
#: trying every REJOIN_EVERY seconds (the home died: CMS moves the PU within seconds)
REJOIN_FOR = 30.0
REJOIN_EVERY = 0.5
#: how a CU's kind is named in the audit log
CU_KINDS = {int(CuKind.MOC): "monitoring centre", int(CuKind.TVWALL): "tv wall",
            int(CuKind.WEB): "web", int(CuKind.MOBILE): "mobile", int(CuKind.DECODER): "decoder"}


def stream_path(device_id, channel, stream):
    name = "main" if stream == Stream.MAIN else "sub"
    if channel:
        name = f"ch{channel}-{name}"
    return f"/live/{device_id}/{name}"


class CDNModule(service.Service):
    log = Logger()

    def __init__(self, rgm, rtsp, issuer, media_base, clock, reactor=None, linger=10.0,
                 source_wait=SOURCE_WAIT, audit=None, pool=None):
        self.rgm = rgm
        self.audit = audit  # vss.rgm.audit.AuditReporter: the media users start, or None
        self.store = rgm.store
        self.rtsp = rtsp  # the SS: an RTSPServerFactory
        # the SS workers (vss.ss.pool.SSPool), or None: viewers are served by ``rtsp``
        # itself. With workers, ``rtsp`` takes each source in once (and records it) and
        # the workers each pull it once from there for their viewers.
        self.pool = pool
        self.issuer = issuer
        self.media_base = media_base  # e.g. rtsp://192.0.2.10:7554
        self.clock = clock
        self.reactor = reactor or clock
        self.linger = linger
        self.source_wait = source_wait
        self.starting = {}  # path -> Deferred of a source being started
        self.origins = {}  # path -> ("pu", device_id, channel, stream) | ("pull", proto)
        self._stops = {}
        self.counters = {"opened": 0, "pu_publish": 0, "pulls": 0, "node_pulls": 0,
                         "rejoins": 0, "rejoined": 0}
        self.rejoining = set()  # paths of kept sources being joined to a new origin
        self._rejoin_waits = set()  # the pauses between tries, cancelled at stop
        self.playback = None  # vss.recording.playback.PlaybackService: recordings played back
        # f(host) -> client TLS options for an rtsps:// pull from another node's SS (the
        # cluster CA's, when the node has one); None: the system's trust roots
        self.node_tls = None
        rtsp.addObserver(self)

    # -- the service interface, for the RGM

    def handle(self, session, type, body):
        if type == MsgType.MEDIA_OPEN:
            d = self.media_open(session.identity, body)
            if self.audit is not None:
                d.addCallback(self._audited, session, body)
            return d
        return Empty()  # MEDIA_CLOSE: the player's TEARDOWN ends the session

    def _audited(self, answer, session, body):
        """A CU's live view or playback was granted: for the audit log (queued)."""
        link = session.link
        self.audit.live(session.identity, body, getattr(link, "peer_host", ""),
                        CU_KINDS.get(session.kind, "cu"))
        return answer

    @defer.inlineCallbacks
    def media_open(self, username, body):
        if not self.store.actions_for(username, body.device_id) & Action.VIEW:
            raise VssError(ResultCode.FORBIDDEN, f"{username} may not view {body.device_id}")
        if body.purpose == Purpose.PLAYBACK:  # here, the DVR, or relayed from its node

            return (yield remote.media_open(self, body))
        if body.purpose != Purpose.LIVE:
            raise VssError(ResultCode.NOT_SUPPORTED, "playback is not available on this node")
        record = self.store.get_device(body.device_id)
        if record is None:  # granted, but gone: the user may know (docs/protocol.md 9.3)
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
        if record.channels and body.channel >= record.channels:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"no channel {body.channel}")
        path = stream_path(body.device_id, body.channel, body.stream)
        yield self.ensure_source(record, body, path)
        self.counters["opened"] += 1
        return (yield self.live_url(path))

    @defer.inlineCallbacks
    def live_url(self, path):
        """The URL a viewer of the live ``path`` gets: on the SS worker the pool chooses
        (vss.ss.pool), or on the node's own SS when it has none that can take it."""
        base = None
        if self.pool is not None:
            base = yield self.pool.place(path, self.media_base)
        return self.play_url(path, base)

    def play_url(self, path, base=None):
        token = self.issuer.issue(path, ["play"])
        expires = int((self.clock.seconds() + self.issuer.ttl) * 1000)
        return MediaUrl(url=f"{base or self.media_base}{path}?token={token}",
                        session_id=token[-16:], expires=expires)

    # -- starting sources

    def ensure_source(self, record, body, path):
        """A Deferred firing with the source on ``path`` once it exists; one start per
        path however many CUs ask at once."""
        if path in self.rtsp.sources:
            self._cancel_stop(path)
            return defer.succeed(self.rtsp.sources[path])
        waiting = self.starting.get(path)
        if waiting is not None:
            d = defer.Deferred()
            waiting.append(d)
            return d
        self.starting[path] = []
        if record.home_node not in ("", self.rgm.node_id):
            d = self._pull_from_home(record, body, path)
        elif record.source_url:
            d = self._pull_camera(record, path)
        else:
            d = self._ask_pu(record, body, path)

        def done(result):
            for w in self.starting.pop(path, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
            return result

        return d.addBoth(done)

    def _ask_pu(self, record, body, path):
        pu = self.rgm.pu_links.get(record.device_id)
        if pu is None:
            return defer.fail(VssError(ResultCode.DEVICE_OFFLINE,
                                       f"{record.device_id} is offline"))
        token = self.issuer.issue(path, ["publish"])
        start = MediaStart(device_id=record.device_id, channel=body.channel, stream=body.stream,
                           publish_url=f"{self.media_base}{path}?token={token}", start_time=0)
        self.counters["pu_publish"] += 1
        self.origins[path] = ("pu", record.device_id, body.channel, body.stream)
        d = pu.request(MsgType.MEDIA_START, start)
        d.addCallback(lambda _: self._wait(path))
        return d

    def _pull_camera(self, record, path):
        self.counters["pulls"] += 1
        d = pull_into(self.rtsp, path, record.source_url, reactor=self.reactor,
                      timeout=self.source_wait)

        def playing(proto):
            self.origins[path] = ("pull", proto)
            return self.rtsp.sources.get(path)

        def failed(f):
            self.log.warn("cannot pull the camera of {device}: {error}",
                          device=record.device_id, error=f.getErrorMessage())
            raise VssError(ResultCode.DEVICE_OFFLINE, "the camera's stream cannot be reached")

        return d.addCallbacks(playing, failed)

    @defer.inlineCallbacks
    def _home_url(self, record, body):
        """MEDIA_OPEN routed to the PU's home node: the URL of its SS's stream."""
        status, inner = yield self.rgm.central.route(record.device_id, MsgType.MEDIA_OPEN,
                                                     codec.encode_body(body))
        if status:
            msg = codec.decode_body(codec.Frame(1, codec.FLAG_RESPONSE | codec.FLAG_ERROR,
                                                MsgType.MEDIA_OPEN, status, 0, inner))
            raise VssError(status, getattr(getattr(msg, "body", None), "message", None))
        return codec.decode_body(codec.Frame(1, codec.FLAG_RESPONSE, MsgType.MEDIA_OPEN, 0, 0,
                                             inner)).body.url

    @defer.inlineCallbacks
    def _pull_from_home(self, record, body, path):
        """Cross-node: the home node's SS serves this node's SS once. The source
        outlives its origin while viewers watch it (``_origin_lost``)."""
        url = yield self._home_url(record, body)
        self.counters["node_pulls"] += 1
        holder = {}

        def sink(sdp_text):
            holder["source"] = self.rtsp.attach_source(path, sdp_text, origin="pull")
            return holder["source"]

        try:
            # from the GOP the home node's SS kept: the first viewer here that asks
            # ``start=gop`` (a decoder's tile) gets a picture at once, not at the next
            # keyframe
            proto = yield pull(start_from_gop(url), sink, reactor=self.reactor,
                               timeout=self.source_wait, tls=self.node_pull_tls(url))
        except Exception:
            if "source" in holder:
                holder["source"].close()
            raise
        self._follow_origin(path, holder["source"], proto, record.device_id, body)
        return holder["source"]

    def _follow_origin(self, path, source, proto, device_id, body):
        self.origins[path] = ("pull", proto)
        proto.finished.addBoth(lambda _: self._origin_lost(path, source, proto, device_id,
                                                           body))

    def _origin_lost(self, path, source, proto, device_id, body):
        """The pull feeding ``source`` ended. Torn down by this node (no viewer left,
        stopping), or nobody watches: the source ends. Else it is kept and joined again
        to the PU's home as it is now."""
        if source.closed:
            return
        origin = self.origins.get(path)
        if not self.running or not source.readers or origin is None or origin[1] is not proto:
            source.close()
            return
        self.counters["rejoins"] += 1
        self.log.info("the origin of {path} ended; joining its {count} viewers to the "
                      "home of {device} again", path=path, count=len(source.readers),
                      device=device_id)
        self._rejoin(path, source, device_id, body)

    @defer.inlineCallbacks
    def _rejoin(self, path, source, device_id, body):
        self.rejoining.add(path)
        deadline = self.clock.seconds() + REJOIN_FOR
        try:
            while not source.closed and source.readers and self.running \
                    and self.clock.seconds() < deadline:
                record = self.store.get_device(device_id)
                if record is None:
                    break
                try:
                    if record.home_node in ("", self.rgm.node_id):
                        feed = path + REHOMED_SUFFIX
                        yield self.ensure_source(record, body, feed)
                        url = self.play_url(feed).url
                    else:
                        url = yield self._home_url(record, body)
                    proto = yield pull(url, lambda _sdp: _Continuation(source),
                                       reactor=self.reactor, timeout=self.source_wait,
                                       tls=self.node_pull_tls(url))
                except Exception as e:  # noqa: BLE001 - any failure: try again soon
                    self.log.debug("{path} not joined yet: {error}", path=path, error=e)
                    wait = task.deferLater(self.clock, REJOIN_EVERY, lambda: None)
                    self._rejoin_waits.add(wait)
                    try:
                        yield wait
                    except defer.CancelledError:  # the module stopped
                        break
                    finally:
                        self._rejoin_waits.discard(wait)
                    continue
                if source.closed:
                    proto.teardown()
                    return
                self.counters["rejoined"] += 1
                self.log.info("{path} joined to the home of {device} again", path=path,
                              device=device_id)
                self._follow_origin(path, source, proto, device_id, body)
                return
            source.close()
        finally:
            self.rejoining.discard(path)

    def node_pull_tls(self, url):
        """The TLS options of a pull of another node's ``rtsps://`` URL (None: plain
        RTSP, or the system's trust roots)."""
        if self.node_tls is None or not url.lower().startswith("rtsps://"):
            return None

        return self.node_tls(host_port(split_credentials(url)[0])[0])

    def routed_media_open(self, body):
        """Another node asks this (home) node for a stream of one of its PUs: the node
        link is authenticated with the cluster secret, the CU's grant was checked there.
        A playback is served by the node holding the footage, home or not."""
        if body.purpose == Purpose.PLAYBACK:
            return remote.serve_routed(self, body)
        record = self.store.get_device(body.device_id)
        if record is None or record.home_node not in ("", self.rgm.node_id):
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE))
        path = stream_path(body.device_id, body.channel, body.stream)
        if path in self.rejoining:  # a kept source of the PU's former home: not its origin
            return defer.fail(VssError(ResultCode.BUSY, f"{path} is being joined again"))
        return self.ensure_source(record, body, path).addCallback(lambda _: self.live_url(path))

    def _wait(self, path):
        d = self.rtsp.wait_for_source(path, self.source_wait)

        def arrived(source):
            if source is None:
                raise VssError(ResultCode.TIMEOUT, "the device did not start its stream")
            return source

        return d.addCallback(arrived)

    # -- stopping idle sources (observer of the SS)

    def source_idle(self, source):
        self._cancel_stop(source.path)
        self._stops[source.path] = self.clock.callLater(self.linger, self._stop_if_idle,
                                                        source.path)

    def source_removed(self, source):
        self._cancel_stop(source.path)
        self.origins.pop(source.path, None)

    def _cancel_stop(self, path):
        call = self._stops.pop(path, None)
        if call is not None and call.active():
            call.cancel()

    def _stop_if_idle(self, path):
        self._stops.pop(path, None)
        source = self.rtsp.sources.get(path)
        if source is None or source.readers:
            return
        origin = self.origins.pop(path, None)
        if origin and origin[0] == "playback" and not origin[1].may_stop():
            self.origins[path] = origin  # a paused viewer holds it: look again later
            self.source_idle(source)
            return
        self.log.info("stopping {path}: no reader for {s} s", path=path, s=self.linger)
        if origin and origin[0] == "pu":
            _, device_id, channel, stream = origin
            pu = self.rgm.pu_links.get(device_id)
            if pu is not None:
                pu.request(MsgType.MEDIA_STOP, MediaStop(device_id=device_id, channel=channel,
                                                         stream=stream)).addErrback(lambda f: None)
        elif origin and origin[0] == "pull":
            origin[1].teardown()
        elif origin and origin[0] == "playback":
            origin[1].close()
        elif origin and origin[0] == "dvr":
            close_publisher(self.rtsp, path)
        source.close()

    def stopService(self):
        for call in self._stops.values():
            if call.active():
                call.cancel()
        self._stops.clear()
        for wait in list(self._rejoin_waits):
            wait.cancel()
        super().stopService()
        # the pulls (cameras, other nodes, relayed playbacks) end with the module: their
        # origins see a TEARDOWN now rather than a connection that lingers in process

        for path, origin in list(self.origins.items()):
            try:
                if origin[0] == "pull":
                    origin[1].teardown()
                elif origin[0] == "playback" and isinstance(origin[1], RelayedPlayback):
                    origin[1].close()  # this node's own playbacks: close_all below
            except Exception:  # noqa: BLE001 - stopping anyway
                self.log.failure("cannot end {path}", path=path)
        if self.playback is not None:
            return self.playback.close_all()  # fires when its children have exited
        return None

    def status(self):
        out = {"sources": {p: {"readers": len(s.readers), "bytes": s.bytes, "drops": s.drops}
                           for p, s in self.rtsp.sources.items()}, **self.counters}
        if self.pool is not None:
            out["ss_workers"] = self.pool.status()
        return out

    def servers(self, media, load):
        """This node's streaming servers as SsServer records (SS_REPORT to MDP): its own
        SS (``ss0``, at ``media`` with the node's ``load``) then its workers."""
        viewers, _ = self.rtsp.viewer_totals()
        own = SsServer(ss_id="ss0", media=media, state=int(SsState.UP),
                       streams=len(self.rtsp.sources), viewers=sum(viewers.values()),
                       bandwidth_kbps=load.get("bandwidth_kbps", 0),
                       cpu_permille=load.get("cpu_permille", 0))
        return [own, *(self.pool.report() if self.pool is not None else ())]


@implementer(IRecorder)
class CDNRecording:
    """The CDN module's recording interface (the only path from the RGM's recording
    task manager to the SS): the live source is made sure of the same way as for a
    viewer (the PU asked to publish, a camera or another node pulled), then the SS's
    recorder writes it into segments. The recorder is a reader of the source, so the
    source is not stopped while it records."""

    def __init__(self, cdn, recorder):
        self.cdn = cdn
        self.recorder = recorder

    def start(self, device_id, channel, stream, segment_seconds):
        record = self.cdn.store.get_device(device_id)
        if record is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE))
        body = MediaOpen(device_id=device_id, channel=channel, stream=stream,
                         purpose=Purpose.LIVE, start_time=0, transport=0)
        d = self.cdn.ensure_source(record, body, stream_path(device_id, channel, stream))
        return d.addCallback(
            lambda _: self.recorder.start(device_id, channel, stream, segment_seconds))

    def stop(self, device_id, channel, stream):
        return self.recorder.stop(device_id, channel, stream)

    def prebuffer(self, device_id, channel, stream, seconds):
        """Keep the live source open and its last ``seconds`` in the recorder's
        pre-event buffer, so an event recording starts with the footage from before
        the event. Each time the recorder waits for the source (at the start, after
        the source ended) the source is asked for again, as for a viewer."""
        if self.cdn.store.get_device(device_id) is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE))

        def want():
            record = self.cdn.store.get_device(device_id)
            if record is None:
                return
            body = MediaOpen(device_id=device_id, channel=channel, stream=stream,
                             purpose=Purpose.LIVE, start_time=0, transport=0)
            d = self.cdn.ensure_source(record, body, stream_path(device_id, channel, stream))
            d.addErrback(lambda f: CDNModule.log.info(
                "pre-event buffer of {device}: no live source yet ({error})",
                device=device_id, error=f.getErrorMessage()))

        return self.recorder.prebuffer(device_id, channel, stream, seconds, want=want)

    def unprebuffer(self, device_id, channel, stream):
        return self.recorder.unprebuffer(device_id, channel, stream)


__all__ = ["CDNModule", "CDNRecording", "MediaOpen", "stream_path"]


class _Continuation:
    """The sink of a pull that continues a kept source (its new origin)."""

    def __init__(self, source):
        self.source = source

    def feed(self, track, rtcp, data):
        self.source.feed(track, rtcp, data)

    def end_of_input(self):
        self.source.flush()
