"""
An RTSP client that pulls a stream over TCP interleaved and feeds it to a sink: a real
camera (Basic or Digest authentication, RFC 2617 MD5) or another node's SS.

``pull(url, sink_factory, ...)`` connects, runs OPTIONS, DESCRIBE, SETUP (every track)
and PLAY, and returns a Deferred firing with the ``RTSPClientProtocol`` once playing.
``sink_factory(sdp_text)`` returns the sink: an object with ``feed(track, rtcp, data)``
and ``end_of_input()`` (a ``fanout.Source`` is one). ``protocol.finished`` fires when the
connection ends; reconnecting is the caller's business (e.g. ``ClientService``).
``pull_into(server, path, url, ...)`` attaches the stream as a server source and closes
that source when the connection ends. An ``rtsps://`` URL is pulled over TLS (port 322
unless given): the server's certificate must name the URL's host and verify against
``tls`` (a client TLS option object, e.g. the cluster CA's) or, without it, the
system's trust roots.

With ``play=False`` the handshake stops after SETUP (``ready`` fires then, keepalives
run): the caller starts the stream with ``protocol.play(range)`` when it wants it, and may
``pause()`` and ``play(range)`` again (a relayed playback forwards its viewer's PLAY with
``Range`` and PAUSE this way). Both fire with the server's answer (``play`` with the
``Range`` of its reply, or None).

A server that stops answering is left: while playing, no media packet for
``stall_timeout`` seconds (a frozen camera or origin node, a stuck TCP path), or a
keepalive still unanswered when the next is due, aborts the connection (``stalled``
says why), so ``finished`` fires and the pulled source ends instead of holding its
viewers on a silent stream.
"""

from urllib.parse import unquote

from twisted.internet import defer, protocol, ssl
from twisted.logger import Logger

from vss.redact import redact
from vss.rtsp import sdp as sdplib
from vss.rtsp.auth import DigestClient, basic_header, parse_challenge
from vss.rtsp.parser import (
    Interleaved,
    MessageParser,
    ParseError,
    build_request,
    parse_params,
    parse_range,
    parse_transport,
)

log = Logger()

USER_AGENT = "vss-rtsp-client"
STALL_TIMEOUT = 30.0  # seconds without a media packet while playing


class RTSPError(Exception):
    """The server answered a request with an error status."""

    def __init__(self, method, status, reason):
        self.method = method
        self.status = status
        self.reason = reason
        super().__init__(f"{method}: {status} {reason}")


def split_credentials(url):
    """(url without user info, username or None, password or None)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, None
    authority, slash, tail = rest.partition("/")
    if "@" not in authority:
        return url, None, None
    userinfo, _, hostport = authority.rpartition("@")
    user, _, pw = userinfo.partition(":")
    return f"{scheme}://{hostport}{slash}{tail}", unquote(user), unquote(pw)


def host_port(url):
    scheme, _, rest = url.partition("://")
    authority = rest.partition("/")[0].partition("?")[0]
    host, sep, port = authority.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or authority.endswith("]"):
        return authority.strip("[]"), 322 if scheme.lower() == "rtsps" else 554
    return host.strip("[]"), int(port)


def control_url(base, control):
    if control is None or control == "*":
        return base
    if "://" in control:
        return control
    path, q, query = base.partition("?")
    return path.rstrip("/") + "/" + control + (q + query if q else "")


class RTSPClientProtocol(protocol.Protocol):
    """Pulls one stream. Public: ``ready`` (Deferred, fires with self when playing),
    ``finished`` (Deferred, fires with the exception that ended the connection),
    ``sdp``, ``sink``, ``packets`` and ``bytes`` counters."""

    def __init__(self, url, sink_factory, username=None, password=None, clock=None,
                 timeout=10.0, play=True, stall_timeout=STALL_TIMEOUT):
        self.url = url
        self.stall_timeout = stall_timeout
        self.stalled = None  # why the connection was abandoned, if it was
        self._streaming = False  # PLAY answered, no PAUSE since
        self._watch = None
        self._seen = 0  # packets at the last check
        self._unanswered = None  # the keepalive in flight
        self.autoplay = play
        self.sink_factory = sink_factory
        self.username = username
        self.password = password
        self.clock = clock
        self.timeout = timeout
        self.parser = MessageParser("response")
        self.ready = defer.Deferred()
        self.finished = defer.Deferred()
        self.sdp = None
        self.sink = None
        self.public = set()
        self.play_url = url
        self.session = None
        self.session_timeout = 60
        self.channels = {}
        self.packets = 0
        self.bytes = 0
        self._cseq = 0
        self._pending = {}
        self._auth = None
        self._keepalive = None
        self._deadline = None

    def connectionMade(self):
        if self.clock is not None:
            self._deadline = self.clock.callLater(self.timeout, self._timed_out)
        d = self._handshake()
        d.addCallbacks(self._playing, self._failed)

    def _timed_out(self):
        self._deadline = None
        self._failed(defer.TimeoutError("RTSP handshake timed out"))

    def _playing(self, _):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self.clock is not None:
            self._keepalive = self.clock.callLater(max(self.session_timeout / 2, 1),
                                                   self._send_keepalive)
        if not self.ready.called:
            self.ready.callback(self)

    def _failed(self, failure):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if not self.ready.called:
            self.ready.errback(failure)
        self.transport.loseConnection()

    @defer.inlineCallbacks
    def _handshake(self):
        resp = yield self.request("OPTIONS", self.url)
        self.public = {m.strip().upper() for m in (resp.headers.get("Public") or "").split(",")}
        resp = yield self.request("DESCRIBE", self.url, [("Accept", "application/sdp")])
        self.sdp = resp.body.decode("utf-8", "replace")
        base = resp.headers.get("Content-Base") or resp.headers.get("Content-Location") \
            or self.url
        tracks = sdplib.tracks(self.sdp)
        controls = sdplib.controls(self.sdp)
        self.sink = self.sink_factory(self.sdp)
        for i in range(len(tracks)):
            hdrs = [("Transport", f"RTP/AVP/TCP;unicast;interleaved={2 * i}-{2 * i + 1}")]
            if self.session:
                hdrs.append(("Session", self.session))
            resp = yield self.request("SETUP", control_url(base, controls[i]), hdrs)
            params = parse_params(resp.headers.get("Session") or "")
            sid = (resp.headers.get("Session") or "").split(";")[0].strip()
            if sid:
                self.session = sid
            timeout = params.get("timeout", "")
            if timeout.isascii() and timeout.isdigit():
                self.session_timeout = int(params["timeout"])
            spec = parse_transport(resp.headers.get("Transport") or "")
            ch = parse_range(spec[0].get("interleaved")) if spec else None
            ch = ch or (2 * i, 2 * i + 1)
            self.channels[ch[0]] = (i, False)
            self.channels[ch[1]] = (i, True)
        self.play_url = control_url(base, sdplib.session_control(self.sdp))
        if self.autoplay:
            yield self.play("npt=0.000-")

    def _session_headers(self):
        return [("Session", self.session)] if self.session else []

    def play(self, range=None, scale=None):
        """PLAY (with ``Range: range`` and ``Scale: scale`` if given); a Deferred firing
        with the ``Range`` of the server's reply, or None (errback with ``RTSPError`` on
        an error status)."""
        hdrs = self._session_headers()
        if range:
            hdrs.append(("Range", range))
        if scale:
            hdrs.append(("Scale", scale))
        d = self.request("PLAY", self.play_url, hdrs)

        def playing(resp):
            self._streaming = True
            self._watch_media()
            return resp.headers.get("Range")

        return d.addCallback(playing)

    def pause(self):
        """PAUSE; a Deferred firing with the server's ``Response``."""
        self._streaming = False
        return self.request("PAUSE", self.play_url, self._session_headers())

    def _watch_media(self):
        if self.clock is None or self._watch is not None or not self.stall_timeout:
            return
        self._seen = self.packets
        self._watch = self.clock.callLater(self.stall_timeout, self._check_media)

    def _check_media(self):
        self._watch = None
        if not self._streaming:
            return  # paused: the keepalives watch the server
        if self.packets == self._seen:
            self._abandon(f"no media for {self.stall_timeout:g} s")
            return
        self._watch_media()

    def _abandon(self, why):
        self.stalled = why
        log.warn("RTSP server {url}: {why}; closing", url=redact(self.url), why=why)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _send_keepalive(self):
        self._keepalive = None
        if self._unanswered is not None and not self._unanswered.called:
            self._abandon("a keepalive went unanswered")
            return
        hdrs = self._session_headers()
        method = "GET_PARAMETER" if "GET_PARAMETER" in self.public else "OPTIONS"
        d = self._unanswered = self.request(method, self.play_url, hdrs, check=False)
        d.addErrback(lambda f: None)
        self._keepalive = self.clock.callLater(max(self.session_timeout / 2, 1),
                                               self._send_keepalive)

    def request(self, method, uri, headers=(), body=b"", check=True, _retry=True):
        """Send a request; a Deferred firing with the ``Response`` (errback with
        ``RTSPError`` on a status >= 300 when ``check``). Answers a 401 once with the
        credentials given."""
        self._cseq += 1
        cseq = str(self._cseq)
        hdrs = [("CSeq", cseq), ("User-Agent", USER_AGENT)]
        if self._auth is not None:
            hdrs.append(("Authorization", self._auth(method, uri)))
        hdrs.extend(headers)
        d = defer.Deferred()
        self._pending[cseq] = d
        self.transport.write(build_request(method, uri, hdrs, body))

        def got(resp):
            if resp.status == 401 and _retry and self.username is not None:
                if self._set_auth(resp):
                    return self.request(method, uri, headers, body, check, _retry=False)
            if check and resp.status >= 300:
                raise RTSPError(method, resp.status, resp.reason)
            return resp

        return d.addCallback(got)

    def _set_auth(self, resp):
        challenges = [parse_challenge(v) for v in resp.headers.get_all("WWW-Authenticate")]
        for scheme, params in challenges:
            if scheme == "digest":
                try:
                    digest = DigestClient(self.username, self.password, params)
                except ValueError:
                    continue
                self._auth = digest.header
                return True
        for scheme, _ in challenges:
            if scheme == "basic":
                value = basic_header(self.username, self.password)
                self._auth = lambda method, uri, value=value: value
                return True
        return False

    def dataReceived(self, data):
        fed = False
        for item in self.parser.feed(data):
            if isinstance(item, Interleaved):
                target = self.channels.get(item.channel)
                if target is not None and self.sink is not None:
                    self.packets += 1
                    self.bytes += len(item.data)
                    self.sink.feed(target[0], target[1], item.data)
                    fed = True
            elif isinstance(item, ParseError):
                log.warn("malformed RTSP from server {url}: {reason}", url=redact(self.url),
                         reason=item.reason)
                self.transport.loseConnection()
                return
            else:
                d = self._pending.pop(item.headers.get("CSeq", ""), None)
                if d is not None:
                    d.callback(item)
        if fed:
            self.sink.end_of_input()

    def connectionLost(self, reason=protocol.connectionDone):
        if reason is None:
            reason = protocol.connectionDone
        for d in [self._deadline, self._keepalive, self._watch]:
            if d is not None and d.active():
                d.cancel()
        self._deadline = self._keepalive = self._watch = None
        self._streaming = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(reason)
        if not self.ready.called:
            self.ready.errback(reason)
        # fired with the exception (not a Failure) so nobody is forced to handle it
        self.finished.callback(getattr(reason, "value", reason))

    def teardown(self):
        """Send TEARDOWN and close."""
        if self.session:
            self.transport.write(build_request("TEARDOWN", self.play_url, [
                ("CSeq", str(self._cseq + 1)), ("Session", self.session)]))
        self.transport.loseConnection()


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, make):
        self.make = make
        self.failed = defer.Deferred()

    def buildProtocol(self, addr):
        return self.make()

    def clientConnectionFailed(self, connector, reason):
        self.failed.errback(reason)


def pull(url, sink_factory, username=None, password=None, reactor=None, timeout=10.0,
         play=True, tls=None):
    """Connect and play ``url``; a Deferred firing with the protocol once playing (with
    ``play=False``: once set up, see the module docstring). Credentials may also be given
    in the URL (``rtsp://user:pass@host/...``). ``rtsps://``: over TLS, see the module
    docstring."""
    if reactor is None:
        from twisted.internet import reactor
    clean, u, p = split_credentials(url)
    username = username if username is not None else u
    password = password if password is not None else p
    host, port = host_port(clean)
    result = defer.Deferred()

    def make():
        proto = RTSPClientProtocol(clean, sink_factory, username, password, reactor, timeout,
                                   play)
        proto.ready.chainDeferred(result)
        return proto

    factory = _ClientFactory(make)
    factory.failed.addErrback(lambda f: result.called or result.errback(f))
    if clean.lower().startswith("rtsps://"):
        if tls is None:
            tls = ssl.optionsForClientTLS(host)
        reactor.connectSSL(host, port, factory, tls, timeout=timeout)
    else:
        reactor.connectTCP(host, port, factory, timeout=timeout)
    return result


def pull_into(server, path, url, username=None, password=None, reactor=None, timeout=10.0,
              play=True, tls=None):
    """Pull ``url`` into a new source ``path`` of ``server`` (an ``RTSPServerFactory``).
    The source closes when the connection ends. A Deferred firing with the protocol
    (``play=False``: set up, not playing yet; the source exists already)."""
    holder = {}

    def sink_factory(sdp_text):
        holder["source"] = server.attach_source(path, sdp_text, origin="pull")
        return holder["source"]

    d = pull(url, sink_factory, username, password, reactor, timeout, play, tls)

    def playing(proto):
        proto.finished.addBoth(lambda r: holder["source"].close())
        return proto

    def failed(f):
        if "source" in holder:
            holder["source"].close()
        return f

    return d.addCallbacks(playing, failed)
