"""
The node's side of its streaming server (SS) workers: the CDN module's only way to them.

``SSPool`` listens for the SS control link (``--ss-control-listen``, loopback by
default), authenticates each SS (vss.ss.auth), keeps its load from its SS_LOAD reports,
and places streams on them:

- ``place(path, origin)``: the URL base of the SS a new viewer of ``path`` is sent to.
  A stream already carried by an SS under the per-SS limit (``stream_viewers`` viewers,
  ``stream_kbps`` kb/s) goes on there; a new stream goes to the SS with the most room
  (vss.ss.placement) which pulls it once from the node's SS (``origin``); a stream over
  the limit on every SS carrying it is pulled once more, by the SS with the most room
  not carrying it yet, from the first SS carrying it (spreading a hot stream).
- an SS that stops reporting for three intervals is STALE: not chosen until it reports.
- an SS whose process ends (or whose link is lost) is DOWN: the streams it carried are
  placed at once on the others (its viewers come back with a new URL), and the node
  starts its process again (1 s, doubling to 30 s while it keeps failing).
- a stream an SS carries with no viewer and no new viewer sent there for ``linger``
  seconds is dropped (SS_DROP); the node's SS then lets its source go as usual.

The workers the node starts are ``twistd vss-ss`` children (``spawn``): each on its own
RTSP port, given the node secret on its standard input, ending with the node.
"""

import os
import sys

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    MsgType,
    SsChallenge,
    SsDrop,
    SsPull,
    SsRedirect,
    SsServer,
    SsState,
    SsWelcome,
)
from vss.ss import auth, placement
from vss.tls import peer_identity_problem, plaintext_guard

REPORT_INTERVAL = 1.0
STALE_AFTER = 3  # report intervals without a report
RESTART_FIRST, RESTART_MAX, RESTART_RESET = 1.0, 30.0, 60.0
PULL_TIMEOUT = 12.0
STOP_WAIT = 5.0  # seconds a worker has to stop before it is killed


class Server:
    """One SS as its node knows it."""

    def __init__(self, ss_id, spawned=False, index=0):
        self.ss_id = ss_id
        self.spawned = spawned  # a child of the node (else an SS that linked by itself)
        self.index = index  # a child's number: its RTSP port follows from it
        self.media = ""
        self.pid = 0
        self.link = None
        self.state = SsState.DOWN
        self.load = {"streams": 0, "viewers": 0, "bandwidth_kbps": 0, "cpu_permille": 0}
        self.paths = {}  # path -> (viewers, kb/s) as last reported
        self.carried = set()  # paths it pulled for the node
        self.pending = {}  # path -> viewers sent there since its last report
        self.last_open = {}  # path -> when a viewer was last sent there
        self.reported_at = None
        self.process = None
        self.started_at = None
        self.restart_delay = RESTART_FIRST
        self.restarts = 0

    def view(self):
        return {"ss_id": self.ss_id, "media": self.media, "state": self.state.name.lower(),
                "pid": self.pid, "restarts": self.restarts, **self.load,
                "streams_detail": {p: {"viewers": v, "bandwidth_kbps": k}
                                   for p, (v, k) in sorted(self.paths.items())}}


class _Child(protocol.ProcessProtocol):
    """A worker process: given the secret on its stdin, watched until it ends."""

    def __init__(self, pool, server, secret):
        self.pool = pool
        self.server = server
        self.secret = secret
        self.ended = defer.Deferred()  # fires when the process has ended

    def connectionMade(self):
        self.transport.write(self.secret + b"\n")
        self.transport.closeStdin()

    def errReceived(self, data):
        """What a worker writes before its log file is open (a bad option, a crash at
        start): kept, the last of it logged when it ends."""
        self.errors = (getattr(self, "errors", b"") + data)[-2000:]

    outReceived = errReceived

    def processEnded(self, reason):
        errors = getattr(self, "errors", b"").decode("utf-8", "replace").strip()
        if errors:
            self.pool.log.warn("streaming server {ss} said: {errors}", ss=self.server.ss_id,
                               errors=errors[-1000:])
        self.pool.process_ended(self.server, self, reason)
        self.ended.callback(None)


class SSPool(service.Service):
    log = Logger()

    def __init__(self, node_id, secret, issuer, reactor, workers=0, listen="tcp:0:interface=127.0.0.1",
                 worker_listen=None, media_host="127.0.0.1", data_dir=".", live_max_lag=2.0,
                 report_interval=REPORT_INTERVAL, stream_viewers=0, stream_kbps=0, linger=10.0,
                 spawn=True, link_tls=None, allow_plaintext=False):
        self.node_id = node_id
        self.secret = secret if isinstance(secret, bytes) else secret.encode("utf-8")
        self.key = auth.link_key(self.secret)
        self.issuer = issuer
        self.reactor = reactor
        self.workers = workers
        self.listen_on = listen
        self.worker_listen = worker_listen or (lambda i: "tcp:0:interface=127.0.0.1")
        self.media_host = media_host
        self.data_dir = data_dir
        self.live_max_lag = live_max_lag
        self.report_interval = report_interval
        self.stream_viewers = stream_viewers
        self.stream_kbps = stream_kbps
        self.linger = linger
        self.spawn = spawn
        # the control link: mutual TLS (a vss.tls.LinkTLS: the workers it starts present
        # the node's own certificate), else plaintext from loopback only unless allowed
        self.link_tls = link_tls
        self.allow_plaintext = allow_plaintext
        self.servers = {}  # ss_id -> Server
        self._hello = {}  # link -> (ss_id, media, pid, ss nonce, node nonce)
        self._pulls = {}  # (ss_id, path) -> [Deferred] of an SS_PULL in flight
        self.origin = None  # the node's SS's URL base, for re-placing lost streams
        self.port = None
        self._watch = None
        self._restarts = {}
        self.counters = {"placed": 0, "spread": 0, "replaced": 0, "dropped": 0,
                         "restarts": 0, "fallbacks": 0}

    # -- life cycle

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        factory = LinkFactory(self, self.reactor)
        if self.link_tls is not None:
            factory = self.link_tls.listen_factory(factory)
        else:
            factory = plaintext_guard(factory, "SS control", self.allow_plaintext, self.log)
        self.port = yield endpoints.serverFromString(self.reactor, self.listen_on).listen(
            factory)
        self._watch = LoopingCall(self.check_stale)
        self._watch.clock = self.reactor
        self._watch.start(self.report_interval, now=False)
        for i in range(1, self.workers + 1):
            server = self.servers.setdefault(f"ss{i}", Server(f"ss{i}", spawned=True, index=i))
            if self.spawn:
                self.start_process(server)

    def control_endpoint(self):
        """The client endpoint a local worker links to."""
        host = self.port.getHost()
        address = "127.0.0.1" if host.host in ("0.0.0.0", "::", "") else host.host
        return f"tcp:{address}:{host.port}"

    def worker_argv(self, server):
        return [sys.executable, "-m", "twisted",
                "--log-file", os.path.join(self.data_dir, f"{server.ss_id}.log"),
                "vss-ss", "--ss-id", server.ss_id, "--node", self.control_endpoint(),
                "--secret-file", "-", "--rtsp-listen", self.worker_listen(server.index),
                "--media-host", self.media_host, "--live-max-lag", str(self.live_max_lag),
                "--exit-with-parent", *self._tls_argv()]

    def _tls_argv(self):
        if self.link_tls is None:
            return []
        return ["--tls-cert", os.path.abspath(self.link_tls.cert_file),
                "--tls-key", os.path.abspath(self.link_tls.key_file),
                "--tls-ca", os.path.abspath(self.link_tls.ca_file)]

    def start_process(self, server):
        self._restarts.pop(server.ss_id, None)
        if not self.running:
            return
        argv = self.worker_argv(server)
        child = _Child(self, server, self.secret)
        env = {k: v for k, v in os.environ.items()}
        server.process = self.reactor.spawnProcess(child, argv[0], argv, env=env,
                                                   path=self.data_dir,
                                                   childFDs={0: "w", 1: "r", 2: "r"})
        server.started_at = self.reactor.seconds()
        self.log.info("streaming server {ss} started (pid {pid})", ss=server.ss_id,
                      pid=server.process.pid)

    def process_ended(self, server, child, reason):
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        server.process = None
        if not self.running:
            return
        delay = server.restart_delay
        if server.started_at is not None and \
                self.reactor.seconds() - server.started_at > RESTART_RESET:
            delay = RESTART_FIRST  # it ran a good while: a new failure, not a loop
        self.log.warn("streaming server {ss} ended (code {code}, signal {sig}): restarting "
                      "in {delay} s", ss=server.ss_id, code=code, sig=sig, delay=delay)
        self.lost(server)
        server.restart_delay = min(RESTART_MAX, delay * 2)
        server.restarts += 1
        self.counters["restarts"] += 1
        self._restarts[server.ss_id] = self.reactor.callLater(delay, self.start_process,
                                                              server)

    def stopService(self):
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ended = []
        for server in self.servers.values():
            if server.link is not None:
                server.link.abort()
            proc = server.process
            if proc is not None and proc.pid:
                ended.append(proc.proto.ended)
                try:
                    proc.signalProcess("TERM")
                except error.ProcessExitedAlready:
                    continue
                # a worker that does not stop within STOP_WAIT seconds is killed
                kill = self.reactor.callLater(STOP_WAIT, self._kill, proc)
                proc.proto.ended.addBoth(lambda r, kill=kill: kill.active() and kill.cancel())
        d = defer.DeferredList(ended)
        if self.port is not None:
            d.addCallback(lambda _: self.port.stopListening())
        return d

    @staticmethod
    def _kill(proc):
        try:
            proc.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    # -- the control link

    def linkUp(self, link):
        self._hello[link] = None

    def linkDown(self, link, reason):
        self._hello.pop(link, None)
        server = link.session
        if server is not None and server.link is link:
            server.link = None
            self.log.warn("streaming server {ss}: link lost", ss=server.ss_id)
            self.lost(server)

    def received(self, link, frame, msg):
        t = frame.type
        server = link.session
        if server is None:
            if t == MsgType.SS_HELLO and self._hello.get(link) is None:
                return self._on_hello(link, frame, msg.body)
            if t == MsgType.SS_AUTH and self._hello.get(link) is not None:
                return self._on_auth(link, frame, msg.body)
            link.send_error(t, frame.txid, ResultCode.NOT_AUTHENTICATED)
            link.close()
            return
        if t == MsgType.SS_LOAD:
            self.on_load(server, msg.body)
        elif not frame.flags & codec.FLAG_NOTIFY:  # nothing else is asked of the node
            link.send_error(t, frame.txid, ResultCode.UNEXPECTED_MESSAGE)

    def _on_hello(self, link, frame, body):
        ss_id = body.ss_id
        if not ss_id or len(ss_id) > 64 or len(body.nonce) != auth.NONCE_BYTES:
            link.send_error(frame.type, frame.txid, ResultCode.INVALID_ARGUMENT, "bad SS_HELLO")
            link.close()
            return
        mine = auth.nonce()
        self._hello[link] = (ss_id, body.media, body.pid, body.nonce, mine)
        link.send_response(frame.type, frame.txid, SsChallenge(nonce=mine))

    def _on_auth(self, link, frame, body):
        ss_id, media, pid, theirs, mine = self._hello[link]
        if not auth.check(auth.ss_proof(self.key, ss_id, theirs, mine), body.proof):
            self.log.warn("streaming server link from {peer}: wrong proof", peer=link.peer)
            link.send_error(frame.type, frame.txid, ResultCode.AUTH_FAILED)
            link.close()
            return
        # over TLS the certificate must be the SS's own (issued for its id) or this
        # node's (the workers the node starts present it)
        problem = peer_identity_problem(link.transport, ss_id)
        if problem and peer_identity_problem(link.transport, self.node_id) is None:
            problem = None
        if problem:
            self.log.warn("streaming server {ss} from {peer} refused: {problem}", ss=ss_id,
                          peer=link.peer, problem=problem)
            link.send_error(frame.type, frame.txid, ResultCode.AUTH_FAILED, problem)
            link.close()
            return
        server = self.servers.get(ss_id)
        if server is None:
            server = self.servers[ss_id] = Server(ss_id)  # an SS on another host
        if server.link is not None and server.link is not link:
            old = server.link
            server.link = None
            old.session = None
            old.close(ResultCode.SESSION_REPLACED, "the same SS linked again")
            self.lost(server)
        link.session = server
        server.link = link
        server.media = media
        server.pid = pid
        server.state = SsState.UP
        server.reported_at = self.reactor.seconds()
        link.send_response(frame.type, frame.txid, SsWelcome(
            proof=auth.node_proof(self.key, ss_id, theirs, mine),
            report_interval=int(self.report_interval * 1000)))
        self.log.info("streaming server {ss} up at {media} (pid {pid})", ss=ss_id,
                      media=media, pid=pid)

    # -- load

    def on_load(self, server, body):
        now = self.reactor.seconds()
        server.reported_at = now
        if server.state == SsState.STALE:
            server.state = SsState.UP
        server.load = {"streams": body.streams, "viewers": body.viewers,
                       "bandwidth_kbps": body.bandwidth_kbps, "cpu_permille": body.cpu_permille}
        server.paths = {p.path: (p.viewers, p.bandwidth_kbps) for p in body.paths}
        server.pending.clear()
        for path in list(server.carried):
            viewers = server.paths.get(path, (0, 0))[0]
            if path not in server.paths and (server.ss_id, path) not in self._pulls:
                server.carried.discard(path)  # its pull ended (the origin went away)
            elif not viewers and now - server.last_open.get(path, 0) > self.linger:
                self.drop(server, path)

    def check_stale(self):
        now = self.reactor.seconds()
        for server in self.servers.values():
            if server.state == SsState.UP and server.reported_at is not None and \
                    now - server.reported_at > STALE_AFTER * self.report_interval:
                server.state = SsState.STALE
                self.log.warn("streaming server {ss}: no report for {s:.1f} s, not chosen "
                              "until it reports", ss=server.ss_id, s=now - server.reported_at)

    def up(self):
        return {s.ss_id: s for s in self.servers.values()
                if s.state == SsState.UP and s.link is not None}

    def report(self):
        """The workers as SsServer records (for SS_REPORT to MDP)."""
        return [SsServer(ss_id=s.ss_id, media=s.media, state=int(s.state),
                         streams=s.load["streams"], viewers=s.load["viewers"],
                         bandwidth_kbps=s.load["bandwidth_kbps"],
                         cpu_permille=s.load["cpu_permille"])
                for _, s in sorted(self.servers.items())]

    # -- placing streams

    def _room(self, servers):
        return placement.most_room({s.ss_id: s.load for s in servers},
                                   {s.ss_id: sum(s.pending.values()) for s in servers})

    def _under_limit(self, server, path):
        viewers, kbps = server.paths.get(path, (0, 0))
        viewers += server.pending.get(path, 0)
        return not placement.over_limit(viewers, kbps, self.stream_viewers, self.stream_kbps)

    def carriers(self, path):
        return [s for s in self.up().values() if path in s.carried]

    def place(self, path, origin):
        """A Deferred firing with the URL base (``rtsp://host:port``) of the SS a new
        viewer of ``path`` goes to, or None when no SS worker can take it (the caller
        serves it from the node's own SS). ``origin``: the node's SS URL base."""
        self.origin = origin
        up = self.up()
        carriers = [s for s in up.values() if path in s.carried]
        fit = [s for s in carriers if self._under_limit(s, path)]
        if fit:
            return defer.succeed(self._sent(up[self._room(fit)], path))
        others = [s for s in up.values() if path not in s.carried]
        if not others:
            if carriers:
                return defer.succeed(self._sent(up[self._room(carriers)], path))
            self.counters["fallbacks"] += 1
            return defer.succeed(None)
        target = up[self._room(others)]
        if carriers:  # spreading: pulled once from an SS carrying it already
            first = up[self._room(carriers)]
            source = self._url(first.media, path)
            self.counters["spread"] += 1
            self.log.info("{path} over the limit on {ss}: {to} pulls it too", path=path,
                          ss=",".join(sorted(s.ss_id for s in carriers)), to=target.ss_id)
        else:
            source = self._url(origin, path)
        d = self._pull(target, path, source)
        if carriers:  # old URLs of the first SS go to the new one while it is full
            d.addCallback(self._redirect, carriers, target, path)

        def failed(f):
            self.log.warn("{ss} could not take {path}: {error}", ss=target.ss_id, path=path,
                          error=f.getErrorMessage())
            if carriers:
                return self._sent(up[self._room(carriers)], path)
            self.counters["fallbacks"] += 1
            return None

        return d.addCallbacks(lambda _: self._sent(target, path), failed)

    def redirect_limit(self, server, path):
        """The viewers of ``path`` at which ``server`` is full: the viewer limit, or the
        Mb/s limit in viewers at the bandwidth each takes there now (the smaller);
        2**32 - 1 when neither applies."""
        limits = [self.stream_viewers] if self.stream_viewers else []
        viewers, kbps = server.paths.get(path, (0, 0))
        if self.stream_kbps and viewers and kbps:
            limits.append(max(1, int(self.stream_kbps * viewers // kbps)))
        return min(limits, default=2**32 - 1)

    def _redirect(self, result, carriers, target, path):
        for s in carriers:
            if s.link is not None:
                s.link.request(MsgType.SS_REDIRECT, SsRedirect(
                    path=path, url=target.media, viewers=self.redirect_limit(s, path))
                ).addErrback(lambda f: None)
        return result

    def carry(self, path, origin):
        """Have every SS that is up carry ``path``, each pulling it once from ``origin``
        (the node's SS URL base): a stream served from all of them at once, as
        bench/fanout.py measures it. A Deferred firing with the ss_ids carrying it."""
        self.origin = origin
        up = self.up()
        pulls = [self._pull(s, path, self._url(origin, path)).addErrback(lambda f: None)
                 for s in up.values() if path not in s.carried]
        d = defer.gatherResults(pulls)
        return d.addCallback(lambda _: sorted(s.ss_id for s in self.carriers(path)))

    def _url(self, base, path):
        return f"{base}{path}?token={self.issuer.issue(path, ['play'])}"

    def _sent(self, server, path):
        server.pending[path] = server.pending.get(path, 0) + 1
        server.last_open[path] = self.reactor.seconds()
        self.counters["placed"] += 1
        return server.media

    def _pull(self, server, path, url):
        key = (server.ss_id, path)
        waiting = self._pulls.get(key)
        if waiting is not None:
            d = defer.Deferred()
            waiting.append(d)
            return d
        self._pulls[key] = []
        server.last_open[path] = self.reactor.seconds()
        d = server.link.request(MsgType.SS_PULL, SsPull(path=path, url=url),
                                timeout=PULL_TIMEOUT)

        def done(result):
            if not isinstance(result, Failure) and server.link is not None:
                server.carried.add(path)
            for w in self._pulls.pop(key, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
            return result

        return d.addBoth(done)

    def drop(self, server, path):
        server.carried.discard(path)
        server.paths.pop(path, None)
        server.last_open.pop(path, None)
        self.counters["dropped"] += 1
        if server.link is not None:
            server.link.request(MsgType.SS_DROP, SsDrop(path=path)).addErrback(lambda f: None)

    def lost(self, server):
        """An SS is gone: what it carried is placed on the others at once."""
        server.state = SsState.DOWN
        lost = sorted(server.carried)
        server.carried.clear()
        server.paths.clear()
        server.pending.clear()
        server.load = {"streams": 0, "viewers": 0, "bandwidth_kbps": 0, "cpu_permille": 0}
        if server.link is not None:
            link, server.link = server.link, None
            link.session = None
            link.abort()
        if not self.running or self.origin is None:
            return
        for path in lost:
            carriers = self.carriers(path)
            for s in carriers:  # no more sending old URLs' viewers to the lost SS
                s.link.request(MsgType.SS_REDIRECT, SsRedirect(
                    path=path, url="", viewers=0)).addErrback(lambda f: None)
            if carriers:
                continue
            self.counters["replaced"] += 1
            d = self.place(path, self.origin)
            d.addCallback(lambda media, path=path: self.log.info(
                "{path} re-placed on {media}", path=path, media=media))
            d.addErrback(lambda f: None)

    def status(self):
        return {"servers": [s.view() for _, s in sorted(self.servers.items())],
                "stream_viewers": self.stream_viewers, "stream_kbps": self.stream_kbps,
                **self.counters}


__all__ = ["SSPool", "Server"]
