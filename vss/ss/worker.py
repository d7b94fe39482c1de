"""
One streaming server (SS) worker: a process of its own (``twistd vss-ss``; the node
spawns one per core), driven only by its node's CDN module over the SS control link
(docs/protocol.md 9.8).

It runs the same RTSP server and fan-out as the node's in-process SS
(``vss.rtsp.server``): each frame's packets built once, the same bytes sent to every TCP
viewer, each stream's last GOP kept for the viewers that ask for it (``start=gop``). It holds no device, user or grant: a viewer's token (signed with the node secret,
issued by the node's CDN module for one path) is all it checks. Each stream it is given
(SS_PULL) it pulls once, from the node's SS or from another worker, and ends it when the
node says so (SS_DROP) or when the link to the node is lost (the node re-places what it
lost). Every ``report_interval`` it sends its load (SS_LOAD): streams, viewers,
bandwidth out and CPU, and each stream's viewers and bandwidth.
"""

import os

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vss.cdn.tokens import TokenAuthorizer, TokenIssuer
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.link import LinkFactory
from vss.protocols.messages import (
    Empty,
    MsgType,
    SsAuth,
    SsHello,
    SsLoad,
    SsPathLoad,
)
from vss.rtsp import start_from_gop
from vss.rtsp.client import pull_into
from vss.rtsp.fanout import GOP_KEEP
from vss.rtsp.server import RTSPServerFactory, RTSPServerService
from vss.ss import auth
from vss.tls import LinkTLS, client_host_port

PULL_TIMEOUT = 10.0


def _viewer_bytes(source):
    """Bytes sent to the viewers of ``source`` so far (those gone included)."""
    return source.viewers_gone[0] + sum(r.bytes for r in source.readers
                                        if getattr(r, "viewer", False))


class Control:
    """The worker's end of the SS control link: authenticates, answers SS_PULL and
    SS_DROP, reports the load."""

    log = Logger()

    def __init__(self, ss_id, secret, rtsp, clock, reactor, media=lambda: "",
                 cpu=lambda: sum(os.times()[:2]), pull=pull_into):
        self.ss_id = ss_id
        self.key = auth.link_key(secret)
        self.rtsp = rtsp
        self.clock = clock
        self.reactor = reactor
        self.media = media  # () -> this SS's base URL (known once it listens)
        self.cpu = cpu
        self.pull = pull
        self.link = None
        self.authed = False
        self.pulls = {}  # path -> RTSP client protocol of the pull
        self.redirects = {}  # path -> (URL base of another SS, viewers here before it)
        if rtsp is not None:
            rtsp.redirector = self.redirect_for
        self._reporter = None
        self._last = None  # (time, cpu seconds, bytes per path)
        self.ready = defer.Deferred()  # fires once the first link is authenticated
        # refusals in a row (a wrong secret or certificate): the next try waits longer
        self.refusals = 0
        self.on_refused = None  # (seconds to wait before linking again) -> None

    # -- the link

    def linkUp(self, link):
        self.link = link
        self.authed = False
        self._hello(link).addErrback(self._refused, link)

    @defer.inlineCallbacks
    def _hello(self, link):
        mine = auth.nonce()
        answer = yield link.request(MsgType.SS_HELLO, SsHello(
            ss_id=self.ss_id, media=self.media(), pid=os.getpid(), nonce=mine))
        theirs = answer.body.nonce
        welcome = yield link.request(MsgType.SS_AUTH, SsAuth(
            proof=auth.ss_proof(self.key, self.ss_id, mine, theirs)))
        if not auth.check(auth.node_proof(self.key, self.ss_id, mine, theirs),
                          welcome.body.proof):
            raise VssError(ResultCode.AUTH_FAILED, "the node's proof is wrong")
        self.authed = True
        self.refusals = 0
        interval = max(0.2, welcome.body.report_interval / 1000.0)
        self._reporter = LoopingCall(self.report)
        self._reporter.clock = self.clock
        self._reporter.start(interval, now=True)
        self.log.info("{ss} linked to its node, reporting every {s} s", ss=self.ss_id,
                      s=interval)
        if not self.ready.called:
            self.ready.callback(None)

    def _refused(self, failure, link):
        hint = ""
        if failure.check(VssError) and failure.value.code == ResultCode.SESSION_CLOSED:
            # closed before any answer: a TLS listener met in plaintext, or the reverse
            hint = (" (closed before it answered: if the node has --tls-cert, this SS "
                    "needs --tls-cert, --tls-key and --tls-ca too)")
        self.refusals += 1
        wait = refusal_wait(self.refusals)
        self.log.error("{ss}: the node refused the link: {error}{hint}; trying again in "
                       "{wait:.0f} s", ss=self.ss_id, error=failure.getErrorMessage(),
                       hint=hint, wait=wait)
        link.close()
        if self.on_refused is not None:
            self.on_refused(wait)

    def linkDown(self, link, reason):
        if link is not self.link:
            return
        self.link = None
        self.authed = False
        if self._reporter is not None and self._reporter.running:
            self._reporter.stop()
        # the node re-places what this SS carried: its viewers come back with new URLs
        for path in list(self.pulls):
            self.drop(path)

    def received(self, link, frame, msg):
        if not self.authed:
            link.send_error(frame.type, frame.txid, ResultCode.NOT_AUTHENTICATED)
            link.close()
            return
        if frame.type == MsgType.SS_PULL:
            d = self.start(msg.body.path, msg.body.url)
        elif frame.type == MsgType.SS_DROP:
            d = defer.succeed(self.drop(msg.body.path))
        elif frame.type == MsgType.SS_REDIRECT:
            d = defer.succeed(self.redirect(msg.body))
        else:
            link.send_error(frame.type, frame.txid, ResultCode.UNEXPECTED_MESSAGE)
            return
        d.addCallbacks(lambda _: link.send_response(frame.type, frame.txid, Empty()),
                       lambda f: link.send_failure(frame, f))

    # -- streams

    def start(self, path, url):
        """Pull ``url`` into ``path`` once; a path already carried is kept."""
        if path in self.rtsp.sources:
            return defer.succeed(None)

        def playing(proto):
            self.pulls[path] = proto
            proto.finished.addBoth(lambda _: self.pulls.pop(path, None) is proto)
            self.log.info("{ss} carries {path}", ss=self.ss_id, path=path)

        def failed(f):
            self.log.warn("{ss} cannot pull {path}: {error}", ss=self.ss_id, path=path,
                          error=f.getErrorMessage())
            raise VssError(ResultCode.SS_UNAVAILABLE, f"cannot pull {path}")

        # from the GOP the node's SS (or the other worker) kept: this SS has one to give
        # at once to its first viewer that asks, not only after the camera's next keyframe
        d = self.pull(self.rtsp, path, start_from_gop(url), reactor=self.reactor,
                      timeout=PULL_TIMEOUT)
        return d.addCallbacks(playing, failed)

    def redirect(self, body):
        """SS_REDIRECT: a new viewer of ``path`` coming here (an old URL) while this SS
        has ``viewers`` of it is sent to ``url`` (RTSP 302); an empty url stops it."""
        if body.url:
            self.redirects[body.path] = (body.url, body.viewers)
        else:
            self.redirects.pop(body.path, None)

    def redirect_for(self, path):
        """The URL base a DESCRIBE of ``path`` is redirected to, or None."""
        entry = self.redirects.get(path)
        source = self.rtsp.sources.get(path)
        if entry is None or source is None:
            return None
        viewers = sum(1 for r in source.readers if getattr(r, "viewer", False))
        return entry[0] if viewers >= entry[1] else None

    def drop(self, path):
        self.redirects.pop(path, None)
        proto = self.pulls.pop(path, None)
        if proto is not None:
            proto.teardown()
        source = self.rtsp.sources.get(path)
        if source is not None:
            source.close()

    # -- load

    def load(self):
        """This SS's load since the last call (an SsLoad)."""
        now = self.clock.seconds()
        cpu = self.cpu()
        sent = {p: _viewer_bytes(s) for p, s in self.rtsp.sources.items()}
        last, self._last = self._last, (now, cpu, sent)
        span = now - last[0] if last is not None else 0
        paths, total_kbps, viewers = [], 0, 0
        for p, s in sorted(self.rtsp.sources.items()):
            n = sum(1 for r in s.readers if getattr(r, "viewer", False))
            kbps = 0
            if span > 0:
                kbps = int(max(0, sent[p] - last[2].get(p, sent[p])) * 8 / 1000 / span)
            paths.append(SsPathLoad(path=p, viewers=n, bandwidth_kbps=min(kbps, 2**32 - 1)))
            total_kbps += kbps
            viewers += n
        cpu_permille = int(1000 * (cpu - last[1]) / span) if span > 0 else 0
        return SsLoad(streams=len(paths), viewers=viewers,
                      bandwidth_kbps=min(total_kbps, 2**32 - 1),
                      cpu_permille=max(0, min(cpu_permille, 65535)), paths=paths)

    def report(self):
        if self.link is not None and self.authed:
            self.link.send_notify(MsgType.SS_LOAD, self.load())


class _ParentWatch(service.Service):
    """A worker the node spawned ends with its node (its parent process gone)."""

    def __init__(self, reactor, interval=1.0):
        self.reactor = reactor
        self.parent_pid = os.getppid()
        self.call = LoopingCall(self.check)
        self.call.clock = reactor
        self.interval = interval

    def startService(self):
        super().startService()
        self.call.start(self.interval, now=False)

    def stopService(self):
        if self.call.running:
            self.call.stop()
        return super().stopService()

    def check(self):
        if os.getppid() != self.parent_pid:
            Logger().info("the node is gone: this streaming server stops")
            self.reactor.stop()


def refusal_wait(refusals):
    """Seconds before linking again after ``refusals`` refusals in a row: 2, 4, 8, ...
    at most 60 (a TCP connect that succeeds resets Twisted's own backoff, so a refused
    SS would otherwise try every second or two for ever)."""
    return float(min(60, 2 ** max(1, refusals)))


class WorkerService(service.MultiService):
    """An SS worker: its RTSP server and its link to the node."""

    def __init__(self, settings, reactor):
        super().__init__()
        self.settings = settings
        issuer = TokenIssuer(settings.secret, clock=reactor)
        # the last GOP of each stream kept, as the node's SS does, for the viewers that
        # ask ``start=gop`` (a decoder's new tile): the others start at the next keyframe
        self.rtsp = RTSPServerFactory(TokenAuthorizer(issuer), reactor=reactor,
                                      max_lag=settings.live_max_lag, gop_keep=GOP_KEEP)
        # started first: a TCP listener is bound at once, and SS_HELLO names its port
        self.listener = RTSPServerService(settings.rtsp_listen, self.rtsp, reactor)
        self.listener.setServiceParent(self)
        self.control = Control(settings.ss_id, settings.secret, self.rtsp, reactor, reactor,
                               media=self.media)
        if settings.tls_cert:  # mutual TLS: the node's certificate signed by the CA
            # (a CertificateError, a ValueError, names the file: makeService says it)
            tls = LinkTLS(settings.tls_cert, settings.tls_key, settings.tls_ca).load()
            host, port = client_host_port(settings.node)
            node = tls.client_endpoint(reactor, host, port)
        else:
            node = endpoints.clientFromString(reactor, settings.node)
        self.link = internet.ClientService(node, LinkFactory(self.control, reactor),
                                           clock=reactor)
        self.link.setServiceParent(self)
        self.control.on_refused = self._pause_link
        self._resume = None
        if settings.exit_with_parent:
            _ParentWatch(reactor).setServiceParent(self)

    def _pause_link(self, seconds):
        """Refused: stop linking for ``seconds``, then try again."""
        if self._resume is not None and self._resume.active():
            return
        reactor = self.control.reactor
        self.link.stopService()
        self._resume = reactor.callLater(seconds, self._resume_link)

    def _resume_link(self):
        self._resume = None
        if self.running and not self.link.running:
            self.link.startService()

    def stopService(self):
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        return super().stopService()

    def media(self):
        port = self.listener.port
        if port is None:
            return ""
        return f"rtsp://{self.settings.media_host}:{port.getHost().port}"
