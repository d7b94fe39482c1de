"""
The node's RTSP server (the SS front end): play and publish on ``/live/<device>/<stream>``.

- ``RTSPServerFactory`` holds the state: ``sources`` (path -> ``fanout.Source``),
  ``sessions`` (id -> ``Session``), observers, the optional UDP port pair, and the
  ``IStreamAuthorizer`` every request is checked with (``?token=`` in the URL).
- ``RTSPServerProtocol`` is thin: it frames with ``parser.MessageParser``, hands requests
  to the factory's handlers, feeds a publisher's interleaved packets to its source, and
  answers malformed input with 4xx then closes. A well-framed request without one CSeq
  that is a number (missing, repeated, ``CSeq: abc``) is answered ``400 Bad Request``
  (RFC 2326 12.17) with no CSeq, and the connection and its sessions stay.

Observers (``addObserver``) may implement any of ``source_added(source)``,
``source_removed(source)``, ``source_idle(source)`` (no readers since
``source.no_readers_since``) and ``source_wanted(path)`` (a reader asked for a path
without a source; DESCRIBE then waits up to ``describe_wait`` seconds for one).
``attach_source(path, sdp)`` makes a source fed by code (RTSP client, recordings).
``controllers`` (path -> object) lets code steer the PLAY and PAUSE of one path (a
playback seeks on ``Range``): ``play(session, range_header)`` (``play(session,
range_header, scale_header)`` when the PLAY has a ``Scale``: a speed, said again in
the reply) is called before the
reader starts and returns the ``Range`` of the reply (or None), or a Deferred of it (a
relayed playback asks its origin first: the reply and the reader wait for it; a failure
is answered 502), ``pause(session)``. A controller refuses a PLAY by raising (or
failing with) ``ControlError(status)``, e.g. 457 for a ``Range`` that is malformed or
outside the footage: the viewer gets that status and its session stays as it was.
"""

import os
from urllib.parse import parse_qs

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from vss.rtsp import sdp as sdplib
from vss.rtsp.auth import DigestServer
from vss.rtsp.fanout import (
    DEFAULT_MAX_LAG,
    DEFAULT_MAX_QUEUE,
    DEFAULT_SNDBUF,
    LagWatch,
    Source,
    TCPReader,
    UDPReader,
)
from vss.rtsp.parser import (
    Interleaved,
    MessageParser,
    ParseError,
    build_response,
    parse_range,
    parse_transport,
    valid_cseq,
)

log = Logger()

PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER, " \
         "ANNOUNCE, RECORD"
STREAMS = ("main", "sub")
PLAYBACK_PREFIX = "pb-"  # /live/<device>/pb-<id>: a recording played back (vss.recording.playback)
ABORT_AFTER = 5.0
SERVER_NAME = "vss-ss"
START_GOP = "gop"  # ``?start=gop`` on a live stream URL: start from the kept GOP


def _records(auth):
    """True when the session's token says it is a recording (``record`` method)."""
    return isinstance(auth, dict) and "record" in auth.get("methods", ())


#: the suffix of a live stream's name that a PU newly homed here publishes on while a
#: source kept for its viewers pulls it (``vss.cdn.service``: ``main.home``)
REHOMED_SUFFIX = ".home"


def is_stream_name(name):
    """A live stream's last path part: ``main``, ``sub``, or ``chN-main``/``chN-sub``
    for channel N > 0 of a device with several (a DVS, a DVR); any of them with
    ``REHOMED_SUFFIX``."""
    if name.endswith(REHOMED_SUFFIX):
        name = name[:-len(REHOMED_SUFFIX)]
    if name in STREAMS:
        return True
    channel, dash, stream = name.partition("-")
    return bool(dash) and stream in STREAMS and channel[:2] == "ch" \
        and channel[2:].isascii() and channel[2:].isdigit() and channel[2:3] != "0" \
        and len(channel) <= 5


def is_live(path):
    """True for a live stream's path (``/live/<device>/main``, ``sub``, ``ch2-main``
    ...), False for a playback's (``pb-...``: it follows the player's pace)."""
    return is_stream_name(path.rpartition("/")[2])


class ControlError(Exception):
    """A controller's refusal of a request: answered with ``status`` (and ``reason``)."""

    def __init__(self, status, reason=None):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason or ''}".strip())


class RTSPUrl:
    """A parsed request URI: ``base`` (rtsp://host:port), ``path`` (/live/dev/stream),
    ``control`` (trailing track control such as 'trackID=0', or None), ``query``,
    ``token``, ``cred`` (a stream credential given in the URL, ``vss.streamcreds``),
    ``start`` (``start=gop``: a live viewer starts from the last GOP the server kept, not
    at the next keyframe; any other value is refused)."""

    def __init__(self, base, path, control, query):
        self.base = base
        self.path = path
        self.control = control
        self.query = query
        params = parse_qs(query) if query else {}
        values = params.get("token")
        self.token = values[0] if values else None
        values = params.get("cred")
        self.cred = values[0] if values else None
        values = params.get("start")
        self.start = values[0] if values else None

    @property
    def from_gop(self):
        return self.start == START_GOP

    @property
    def track(self):
        if self.control is None:
            return None
        digits = self.control.rpartition("=")[2]
        return int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 4 else -1

    @classmethod
    def parse(cls, uri):
        """An ``RTSPUrl`` or None if it is not a stream URL."""
        if "://" in uri:
            scheme, _, rest = uri.partition("://")
            if scheme.lower() not in ("rtsp", "rtsps", "rtspu"):
                return None
            authority, slash, rest = rest.partition("/")
            authority = authority.rpartition("@")[2]
            base = f"{scheme}://{authority}"
            rest = slash + rest
        elif uri.startswith("/"):
            base, rest = "", uri
        else:
            return None
        path, _, query = rest.partition("?")
        if "/" in query:  # 'token=x/trackID=0': control appended after the query
            query, _, extra = query.partition("/")
            path = path.rstrip("/") + "/" + extra
        parts = path.rstrip("/").split("/")
        if len(parts) not in (4, 5) or parts[0] or parts[1] != "live" or not parts[2] \
                or not (is_stream_name(parts[3]) or parts[3].startswith(PLAYBACK_PREFIX)):
            return None
        control = parts[4] if len(parts) == 5 else None
        return cls(base, "/".join(parts[:4]), control, query)


class Session:
    """One RTSP session: a viewer or a publisher of ``path``."""

    def __init__(self, session_id, path, role, conn, now, auth):
        self.id = session_id
        self.path = path
        self.role = role  # 'play' or 'publish'
        self.conn = conn
        self.auth = auth
        self.state = "ready"
        self.tcp_tracks = {}  # track -> (rtp channel, rtcp channel) as asked
        self.udp_tracks = {}  # track -> (client rtp port, client rtcp port)
        self.last_seen = now
        self.reader = None
        self.source = None
        self.timer = None
        self.from_gop = False  # a URL of its SETUP or PLAY said ``start=gop``

    @property
    def tracks(self):
        return set(self.tcp_tracks) | set(self.udp_tracks)


class RTSPServerProtocol(protocol.Protocol):
    """One RTSP connection."""

    def __init__(self):
        self.parser = MessageParser("request")
        self.sessions = {}
        self.channels = {}  # publisher: interleaved channel -> (source, track, rtcp)
        self.announced = {}  # path -> sdp text (after ANNOUNCE)
        self.reader = None  # TCPReader while one of our sessions plays over TCP
        self.closed = False
        self.peer_host = None
        self.last_seen = None  # None: active since the last idle check
        self.idle_timer = None
        self._abort_call = None

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", None)
        self.factory.connection_made(self)

    def dataReceived(self, data):
        self.last_seen = None  # the factory's idle check reads the clock lazily
        try:
            items = self.parser.feed(data)
        except Exception:  # the parser never raises; belt and braces
            log.failure("rtsp parser failed")
            items = [ParseError(400, "Bad Request")]
        if self.sessions:
            now = self.factory.clock.seconds()
            for s in self.sessions.values():
                s.last_seen = now
        published = set()
        for item in items:
            if self.closed:
                return
            if isinstance(item, Interleaved):
                target = self.channels.get(item.channel)
                if target is not None:
                    source, track, rtcp = target
                    try:
                        source.feed(track, rtcp, item.data)
                    except Exception:
                        log.failure("fan-out failed", path=source.path)
                    published.add(source)
                continue  # RTCP receiver reports of viewers: liveness only
            if isinstance(item, ParseError):
                log.info("malformed rtsp from {peer}: {reason}", peer=self.peer_host,
                         reason=item.reason)
                headers = [("CSeq", item.cseq)] if valid_cseq(item.cseq) else []
                self.send(build_response(item.status, headers + [("Connection", "close")]))
                self.close()
                return
            try:
                self.factory.handle(self, item)
            except Exception:
                log.failure("rtsp request failed", method=item.method)
                self.reply(item, 500)
        for source in published:
            try:
                source.end_of_input()
            except Exception:
                log.failure("fan-out failed", path=source.path)

    def send(self, data):
        if self.closed:
            return
        if self.reader is not None:
            self.reader.write(data)
        else:
            self.transport.write(data)

    def reply(self, request, status, headers=(), body=b"", reason=None):
        hdrs = [("CSeq", request.cseq or "0"), ("Server", SERVER_NAME)]
        hdrs.extend(headers)
        self.send(build_response(status, hdrs, body, reason))

    def close(self):
        """Close after what is buffered is written; abort if the peer does not read it
        within ``ABORT_AFTER`` seconds (a stalled viewer must not keep the socket)."""
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()
            self._abort_call = self.factory.clock.callLater(ABORT_AFTER, self._abort)

    def _abort(self):
        self._abort_call = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        call, self._abort_call = self._abort_call, None
        if call is not None and call.active():
            call.cancel()
        self.factory.connection_lost(self)


class RTSPServerFactory(protocol.Factory):
    """The streaming server's state and request handlers."""

    protocol = RTSPServerProtocol

    def __init__(self, authorizer, reactor=None, clock=None, session_timeout=60,
                 describe_wait=3.0, users=None, realm="vss", max_queue=DEFAULT_MAX_QUEUE,
                 sndbuf=DEFAULT_SNDBUF, gop_cache=0, max_lag=DEFAULT_MAX_LAG,
                 gop_keep=0):
        self.authorizer = authorizer
        # live TCP viewers are kept within max_lag seconds of live (None or 0: not)
        self.max_lag = max_lag or None
        self._lag_watch = None
        self.gop_cache = min(gop_cache, max_queue // 2)
        # the last GOP kept for the readers that start from it (browser packagers):
        # a browser's live view starts at once, RTSP viewers as without a cache
        self.gop_keep = gop_keep
        self._reactor = reactor
        self._clock = clock
        self.session_timeout = session_timeout
        self.describe_wait = describe_wait
        self.max_queue = max_queue
        self.sndbuf = sndbuf
        self.digest = DigestServer(users, self, realm) if users else None
        self.sources = {}
        self.sessions = {}
        self.connections = set()
        self.observers = []
        self.udp_ports = None  # (rtp port, rtcp port) Twisted UDP listening ports
        self._udp_peers = {}  # (host, port) -> (session, track, rtcp) of UDP clients
        self._waiters = {}  # path -> [Deferred]
        self.controllers = {}  # path -> play/pause controller (see the module docstring)
        #: bytes, frames, drops and key waits of the viewers of the sources that ended
        self.viewers_ended = [0, 0, 0, 0]
        self.credentials = None  # stream credentials (use_credentials)
        # path -> URL base another server serves it from: a DESCRIBE of it is answered
        # 302 there (an SS worker over its limit for a hot stream: vss.ss.worker)
        self.redirector = None

    # -- reactor and clock, resolved lazily

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def clock(self):
        return self._clock if self._clock is not None else self.reactor

    def seconds(self):  # the DigestServer's clock
        return self.clock.seconds()

    def use_credentials(self, credentials):
        """Accept long-lived stream credentials (``vss.streamcreds.node``) besides
        tokens: ``credentials.authorize(request, url, method)`` gives (True, info),
        (False, reason) or None (the request carries none), ``challenges()`` the
        ``WWW-Authenticate`` values of a 401. A session it allowed keeps the info
        (``Session.auth``; ``info["start"]``, if any, starts the source a DESCRIBE waits
        for) and is ended by ``end_session`` when the credential no longer holds."""
        self.credentials = credentials

    # -- observers and sources

    def addObserver(self, observer):
        self.observers.append(observer)

    def removeObserver(self, observer):
        self.observers.remove(observer)

    def _notify(self, event, *args):
        for obs in list(self.observers):
            fn = getattr(obs, event, None)
            if fn is not None:
                try:
                    fn(*args)
                except Exception:
                    log.failure("observer {event} failed", event=event)

    def attach_source(self, path, sdp, origin="code"):
        """A new ``Source`` on ``path`` fed by code (``feed``/``flush``/``close``).
        Raises ValueError if the path already has one or the SDP has no media."""
        if path in self.sources:
            raise ValueError(f"{path} already has a source")
        source = Source(path, sdp, sdplib.tracks(sdp), self.clock,
                        on_idle=lambda s: self._notify("source_idle", s), origin=origin,
                        gop_cache=self.gop_cache, gop_keep=self.gop_keep)
        self.sources[path] = source
        source.on_end(self._source_ended)
        log.info("source {path} started ({origin})", path=path, origin=origin)
        self._notify("source_added", source)
        for d in self._waiters.pop(path, []):
            d.callback(source)
        return source

    def _source_ended(self, source):
        if self.sources.get(source.path) is source:
            del self.sources[source.path]
        for i, n in enumerate(source.viewers_gone):
            self.viewers_ended[i] += n
        log.info("source {path} ended: {packets} packets, {bytes} bytes",
                 path=source.path, packets=source.packets, bytes=source.bytes)
        for s in list(self.sessions.values()):
            if s.source is source:
                if s.reader is not None and s.conn is not None and s.conn.reader is s.reader:
                    s.conn.reader.stop()
                    s.conn.reader = None
                s.reader = None
                s.source = None
                if s.role == "play" and s.tcp_tracks and s.conn is not None:
                    s.conn.close()
        self._notify("source_removed", source)

    def wait_for_source(self, path, timeout):
        """A Deferred firing with the source of ``path`` or None after ``timeout``."""
        if path in self.sources:
            return defer.succeed(self.sources[path])
        d = defer.Deferred()
        waiters = self._waiters.setdefault(path, [])
        waiters.append(d)
        self._notify("source_wanted", path)

        def expire():
            if d in self._waiters.get(path, []):
                self._waiters[path].remove(d)
                if not self._waiters[path]:
                    del self._waiters[path]
                d.callback(None)

        call = self.clock.callLater(timeout, expire)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    # -- UDP

    def listen_udp(self, interface="0.0.0.0", attempts=20):
        """Open the shared UDP port pair (even RTP port, RTP+1 for RTCP). Returns it."""

        last = None
        for _ in range(attempts):
            rtp = self.reactor.listenUDP(0, _UDPPeer(self, False), interface=interface)
            port = rtp.getHost().port
            if port % 2 == 0 and port < 65535:
                try:
                    rtcp = self.reactor.listenUDP(port + 1, _UDPPeer(self, True),
                                                  interface=interface)
                except CannotListenError as e:
                    last = e
                else:
                    self.udp_ports = (rtp, rtcp)
                    return self.udp_ports
            rtp.stopListening()
        raise RuntimeError(f"no UDP port pair available: {last}")

    def stop_udp(self):
        if self.udp_ports is not None:
            ports, self.udp_ports = self.udp_ports, None
            return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        return defer.succeed(None)

    def udp_received(self, data, addr):
        """A datagram on the shared port pair: RTP/RTCP of a UDP publisher, or RTCP
        receiver reports (liveness) of a UDP viewer, told apart by source address."""
        entry = self._udp_peers.get(addr)
        if entry is None:
            return
        session, track, rtcp = entry
        session.last_seen = self.clock.seconds()
        source = session.source
        if session.role == "publish" and source is not None and session.state == "recording":
            source.feed(track, rtcp, data)
            source.end_of_input()

    # -- connections and sessions

    def connection_made(self, conn):
        self.connections.add(conn)
        conn.last_seen = self.clock.seconds()
        conn.idle_timer = self.clock.callLater(self.session_timeout, self._check_idle, conn)

    def _check_idle(self, conn):
        """Close a connection that holds no session and sent nothing for a session
        timeout (sessions have their own timer)."""
        now = self.clock.seconds()
        if conn.last_seen is None:
            conn.last_seen = now
        idle = now - conn.last_seen
        if not conn.sessions and idle >= self.session_timeout:
            conn.idle_timer = None
            log.info("closing idle connection from {peer}", peer=conn.peer_host)
            conn.close()
            return
        wait = self.session_timeout - idle if not conn.sessions else self.session_timeout
        conn.idle_timer = self.clock.callLater(max(wait, 1), self._check_idle, conn)

    def connection_lost(self, conn):
        self.connections.discard(conn)
        if conn.idle_timer is not None and conn.idle_timer.active():
            conn.idle_timer.cancel()
        conn.idle_timer = None
        for s in list(conn.sessions.values()):
            if s.tcp_tracks or s.role == "publish":
                self._end_session(s, "connection closed")
            else:
                s.conn = None  # UDP viewers live on until TEARDOWN or timeout
        if conn.reader is not None:
            conn.reader.stop()
            conn.reader = None

    def _new_session(self, conn, path, role, auth):
        sid = os.urandom(8).hex()
        s = Session(sid, path, role, conn, self.clock.seconds(), auth)
        self.sessions[sid] = s
        conn.sessions[sid] = s
        s.timer = self.clock.callLater(self.session_timeout, self._check_timeout, s)
        return s

    def _check_timeout(self, s):
        s.timer = None
        if s.id not in self.sessions:
            return
        idle = self.clock.seconds() - s.last_seen
        if idle >= self.session_timeout:
            log.info("session {sid} on {path} timed out", sid=s.id, path=s.path)
            conn = s.conn
            self._end_session(s, "timeout")
            if conn is not None and (s.tcp_tracks or s.role == "publish") and not conn.sessions:
                conn.close()
        else:
            s.timer = self.clock.callLater(self.session_timeout - idle, self._check_timeout, s)

    def _end_session(self, s, why):
        if self.sessions.pop(s.id, None) is None:
            return
        if s.timer is not None and s.timer.active():
            s.timer.cancel()
        s.timer = None
        if s.conn is not None:
            s.conn.sessions.pop(s.id, None)
        self._stop_reading(s)
        for addr in [a for a, v in self._udp_peers.items() if v[0] is s]:
            del self._udp_peers[addr]
        if s.role == "publish":
            if s.conn is not None:
                for ch in [c for c, v in s.conn.channels.items() if v[0] is s.source]:
                    del s.conn.channels[ch]
            if s.source is not None:
                s.source.close()
        log.info("session {sid} ({role} {path}) ended: {why}", sid=s.id, role=s.role,
                 path=s.path, why=why)

    def end_session(self, s, why):
        """End a session now (its credential no longer holds) and close its TCP
        connection, so that the player sees the end at once."""
        conn = s.conn
        self._end_session(s, why)
        if conn is not None and (s.tcp_tracks or s.role == "publish"):
            conn.close()

    def _stop_reading(self, s):
        if s.reader is not None:
            if s.source is not None:
                s.source.remove_reader(s.reader)
            if isinstance(s.reader, TCPReader) and s.conn is not None \
                    and s.conn.reader is s.reader:
                s.conn.reader.stop()
                s.conn.reader = None
            s.reader = None
        if s.role == "play":
            s.source = None

    # -- requests

    def handle(self, conn, req):
        problem = req.cseq_problem()
        if problem is not None:
            # RFC 2326 12.17: every request carries one CSeq, a number. The message was
            # framed right, so the connection (and any session on it) stays.
            log.info("{method} from {peer} refused: {problem}", method=req.method[:32],
                     peer=conn.peer_host, problem=problem)
            conn.send(build_response(400, [("Server", SERVER_NAME)]))
            return
        handler = getattr(self, "do_" + req.method, None)
        if req.method == "OPTIONS":
            conn.reply(req, 200, [("Public", PUBLIC)])
            return
        if handler is None or not req.method.isupper():
            conn.reply(req, 501 if req.method.isupper() else 405, [("Allow", PUBLIC)])
            return
        if self.digest is not None:
            user = self.digest.check(req.headers.get("Authorization"), req.method, req.uri)
            if user is None:
                conn.reply(req, 401, [("WWW-Authenticate", c) for c in self.digest.challenges()])
                return
        session = None
        sid = req.headers.get("Session")
        if sid is not None:
            sid = sid.split(";")[0].strip()
            session = self.sessions.get(sid)
            if session is None or (session.conn is not conn and session.tcp_tracks):
                conn.reply(req, 454)
                return
            if session.conn is None:
                session.conn = conn
                conn.sessions[session.id] = session
            session.last_seen = self.clock.seconds()
        url = None
        if req.uri != "*":
            url = RTSPUrl.parse(req.uri)
            if url is None:
                conn.reply(req, 404 if "://" in req.uri or req.uri.startswith("/") else 400)
                return
            if session is not None and session.path != url.path:
                conn.reply(req, 454)
                return
            if url.start is not None and url.start != START_GOP:
                conn.reply(req, 400, reason="Unknown Start")
                return
        elif session is None and req.method not in ("GET_PARAMETER", "SET_PARAMETER"):
            conn.reply(req, 400)
            return
        handler(conn, req, url, session)

    def _authorize(self, conn, req, url, method):
        """(True, info) or reply 401 and return (False, None)."""
        if self.credentials is not None and url.token is None:
            try:
                verdict = self.credentials.authorize(req, url, method, peer=conn.peer_host)
            except Exception:
                log.failure("stream credential check failed", path=url.path)
                verdict = (False, "credential check error")
            if verdict is not None and verdict[0]:
                return verdict
            reason = verdict[1] if verdict is not None else "no token or stream credential"
            log.info("refused {method} on {path} from {peer}: {reason}", method=method,
                     path=url.path, peer=conn.peer_host, reason=reason)
            challenges = [("WWW-Authenticate", c) for c in self.credentials.challenges()]
            conn.reply(req, 401, challenges + [("WWW-Authenticate", 'Bearer realm="vss"')])
            return False, None
        try:
            ok, info = self.authorizer.check(url.token, url.path, method)
        except Exception:
            log.failure("authorizer failed", path=url.path)
            ok, info = False, "authorizer error"
        if not ok:
            log.info("refused {method} on {path} from {peer}: {reason}", method=method,
                     path=url.path, peer=conn.peer_host, reason=info)
            conn.reply(req, 401, [("WWW-Authenticate", 'Bearer realm="vss"')])
            return False, None
        return True, info

    def _session_header(self, s):
        return ("Session", f"{s.id};timeout={int(self.session_timeout)}")

    def do_GET_PARAMETER(self, conn, req, url, session):
        if session is None and url is not None:
            ok, _ = self._authorize(conn, req, url, "play")
            if not ok:
                return
        hdrs = [self._session_header(session)] if session is not None else []
        conn.reply(req, 200, hdrs)

    do_SET_PARAMETER = do_GET_PARAMETER

    def do_DESCRIBE(self, conn, req, url, session):
        if url.control is not None:
            conn.reply(req, 404)
            return
        ok, info = self._authorize(conn, req, url, "play")
        if not ok:
            return
        elsewhere = self.redirector(url.path) if self.redirector is not None else None
        if elsewhere:
            query = f"?{url.query}" if url.query else ""
            conn.reply(req, 302, [("Location", f"{elsewhere}{url.path}{query}")])
            return
        source = self.sources.get(url.path)
        if source is not None:
            self._describe(conn, req, url, source)
            return
        start = info.get("start") if isinstance(info, dict) else None
        if start is not None:  # a stream credential: the node starts the source
            d = defer.maybeDeferred(start)

            def not_started(f):
                log.info("no source for {path}: {error}", path=url.path,
                         error=f.getErrorMessage())

            d.addCallbacks(lambda _: self.sources.get(url.path), not_started)
        else:
            d = self.wait_for_source(url.path, self.describe_wait)
        d.addCallback(lambda src: self._describe(conn, req, url, src))
        d.addErrback(lambda f: log.failure("describe failed", f))

    def _describe(self, conn, req, url, source):
        if conn.closed:
            return
        if source is None:
            conn.reply(req, 404, reason="No Source")
            return
        base = url.base or "rtsp://" + self._host_of(req, conn)
        body = sdplib.for_viewers(source.sdp, base + url.path, url.query,
                                  source.duration).encode("utf-8")
        conn.reply(req, 200, [("Content-Type", "application/sdp"),
                              ("Content-Base", f"{base}{url.path}/")], body)

    def _host_of(self, req, conn):
        host = conn.transport.getHost()
        return f"{getattr(host, 'host', 'localhost')}:{getattr(host, 'port', 554)}"

    def do_ANNOUNCE(self, conn, req, url, session):
        ok, _ = self._authorize(conn, req, url, "publish")
        if not ok:
            return
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        text = req.body.decode("utf-8", "replace")
        if ctype != "application/sdp":
            conn.reply(req, 415, reason="Unsupported Media Type")
            return
        try:
            sdplib.tracks(text)
        except ValueError as e:
            conn.reply(req, 400, reason=f"Bad SDP: {e}"[:60])
            return
        if url.path in self.sources:
            conn.reply(req, 455, reason="Already Publishing")
            return
        conn.announced[url.path] = text
        conn.reply(req, 200)

    def do_SETUP(self, conn, req, url, session):
        transports = parse_transport(req.headers.get("Transport") or "")
        if not transports:
            conn.reply(req, 461)
            return
        record = any((t.get("mode") or "").strip('"').lower() == "record" for t in transports)
        role = "publish" if record else "play"
        info = None
        if session is None:
            ok, info = self._authorize(conn, req, url, role)
            if not ok:
                return
        elif session.role != role:
            conn.reply(req, 455)
            return
        if role == "publish":
            self._setup_record(conn, req, url, session, transports, info)
        else:
            self._setup_play(conn, req, url, session, transports, info)

    def _track_index(self, url, sdp_text):
        """The track a SETUP URL names, or None."""
        if url.control is None:
            return None
        ctl = sdplib.controls(sdp_text)
        for i, c in enumerate(ctl):
            if c is not None and (c == url.control or c.rstrip("/").endswith("/" + url.control)):
                return i
        t = url.track
        if t is not None and 0 <= t < len(ctl):
            return t
        return None

    def _setup_play(self, conn, req, url, session, transports, info=None):
        source = self.sources.get(url.path)
        if source is None:
            conn.reply(req, 404)
            return
        track = self._track_index(url, sdplib.for_viewers(source.sdp, "x"))
        if track is None:
            if len(source.tracks) == 1 and url.control is None:
                track = 0
            else:
                conn.reply(req, 404 if url.control is not None else 459)
                return
        if session is not None and session.state == "playing":
            conn.reply(req, 455)
            return
        chosen = None
        for t in transports:
            spec = t["spec"]
            if spec == "RTP/AVP/TCP":
                chosen = t
                break
            if spec in ("RTP/AVP", "RTP/AVP/UDP") and "multicast" not in t and \
                    parse_range(t.get("client_port")) and self.udp_ports is not None:
                chosen = t
                break
        if chosen is None:
            conn.reply(req, 461)
            return
        if session is None:
            session = self._new_session(conn, url.path, "play", info)
        session.from_gop = session.from_gop or url.from_gop
        if chosen["spec"] == "RTP/AVP/TCP":
            if session.udp_tracks:
                conn.reply(req, 461, reason="Mixed Transports")
                return
            ch = (2 * track, 2 * track + 1)
            session.tcp_tracks[track] = ch
            reply_t = f"RTP/AVP/TCP;unicast;interleaved={ch[0]}-{ch[1]}"
        else:
            if session.tcp_tracks:
                conn.reply(req, 461, reason="Mixed Transports")
                return
            lo, hi = parse_range(chosen.get("client_port"))
            hi = hi if hi != lo else lo + 1
            session.udp_tracks[track] = (lo, hi)
            host = conn.peer_host
            self._udp_peers[(host, lo)] = (session, track, False)
            self._udp_peers[(host, hi)] = (session, track, True)
            srv = self.udp_ports[0].getHost().port
            reply_t = (f"RTP/AVP;unicast;client_port={lo}-{hi};"
                       f"server_port={srv}-{srv + 1}")
        conn.reply(req, 200, [("Transport", reply_t), self._session_header(session)])

    def _setup_record(self, conn, req, url, session, transports, info=None):
        sdp_text = conn.announced.get(url.path)
        if sdp_text is None:
            conn.reply(req, 455, reason="ANNOUNCE First")
            return
        track = self._track_index(url, sdp_text)
        if track is None:
            conn.reply(req, 404)
            return
        chosen = None
        for t in transports:
            if t["spec"] == "RTP/AVP/TCP" or (
                    t["spec"] in ("RTP/AVP", "RTP/AVP/UDP") and "multicast" not in t
                    and parse_range(t.get("client_port")) and self.udp_ports is not None):
                chosen = t
                break
        if chosen is None:
            conn.reply(req, 461)
            return
        if chosen["spec"] == "RTP/AVP/TCP":
            if session is not None and session.udp_tracks:
                conn.reply(req, 461, reason="Mixed Transports")
                return
            ch = parse_range(chosen.get("interleaved")) or (2 * track, 2 * track + 1)
            if ch[0] in conn.channels or ch[1] in conn.channels or any(
                    c in ch for s2 in conn.sessions.values() for pair in s2.tcp_tracks.values()
                    for c in pair):
                conn.reply(req, 461, reason="Channel In Use")
                return
            if session is None:
                session = self._new_session(conn, url.path, "publish", info)
            session.tcp_tracks[track] = ch
            reply_t = f"RTP/AVP/TCP;unicast;interleaved={ch[0]}-{ch[1]};mode=record"
        else:
            if session is not None and session.tcp_tracks:
                conn.reply(req, 461, reason="Mixed Transports")
                return
            lo, hi = parse_range(chosen.get("client_port"))
            hi = hi if hi != lo else lo + 1
            if (conn.peer_host, lo) in self._udp_peers or (conn.peer_host, hi) in self._udp_peers:
                conn.reply(req, 461, reason="Client Ports In Use")
                return
            if session is None:
                session = self._new_session(conn, url.path, "publish", info)
            session.udp_tracks[track] = (lo, hi)
            self._udp_peers[(conn.peer_host, lo)] = (session, track, False)
            self._udp_peers[(conn.peer_host, hi)] = (session, track, True)
            srv = self.udp_ports[0].getHost().port
            reply_t = (f"RTP/AVP;unicast;client_port={lo}-{hi};server_port={srv}-{srv + 1};"
                       "mode=record")
        conn.reply(req, 200, [("Transport", reply_t), self._session_header(session)])

    def do_RECORD(self, conn, req, url, session):
        if session is None or session.role != "publish":
            conn.reply(req, 454 if session is None else 455)
            return
        if session.state == "recording":
            conn.reply(req, 200, [self._session_header(session)])
            return
        if not session.tracks:
            conn.reply(req, 455)
            return
        try:
            source = self.attach_source(session.path, conn.announced[session.path],
                                        origin="rtsp")
        except ValueError:
            conn.reply(req, 455, reason="Already Publishing")
            return
        session.source = source
        session.state = "recording"
        for track, (rtp, rtcp) in session.tcp_tracks.items():
            conn.channels[rtp] = (source, track, False)
            conn.channels[rtcp] = (source, track, True)
        conn.reply(req, 200, [self._session_header(session)])

    def do_PLAY(self, conn, req, url, session):
        if session is None:
            conn.reply(req, 454)
            return
        if session.role != "play":
            conn.reply(req, 455)
            return
        source = self.sources.get(session.path)
        if source is None:
            conn.reply(req, 404)
            return
        if session.tcp_tracks and conn.reader is not None and session.state != "playing":
            conn.reply(req, 455, reason="Already Playing On This Connection")
            return
        if url is not None and url.from_gop:
            session.from_gop = True
        scale = req.headers.get("Scale")
        if scale is not None and session.path in self.controllers:
            # a speed for a playback (its controller refuses one it cannot play at)
            rng = self._control(session, "play", req.headers.get("Range"), scale.strip())
        else:
            scale = None  # live video plays at its own pace: no Scale in the reply
            rng = self._control(session, "play", req.headers.get("Range"))
        if isinstance(rng, defer.Deferred):
            def failed(f):
                if f.check(ControlError):
                    return f.value
                log.failure("play controller of {path} failed", f, path=session.path)
                return False

            rng.addErrback(failed)
            rng.addCallback(lambda r: self._play(conn, req, session, r, scale))
            rng.addErrback(lambda f: log.failure("PLAY of {path} failed", f,
                                                 path=session.path))
            return
        self._play(conn, req, session, rng, scale)

    def _play(self, conn, req, session, rng, scale=None):
        """The rest of a PLAY once its controller answered (``rng`` False: it failed);
        ``scale``: the ``Scale`` its controller took (said in the reply)."""
        if conn.closed or self.sessions.get(session.id) is not session:
            return
        if rng is False:
            conn.reply(req, 502, [self._session_header(session)], reason="Origin Failed")
            return
        if isinstance(rng, ControlError):
            conn.reply(req, rng.status, [self._session_header(session)], reason=rng.reason)
            return
        source = self.sources.get(session.path)
        if source is None:
            conn.reply(req, 404)
            return
        rng = rng or "npt=now-"
        headers = [self._session_header(session), ("Range", rng)]
        if scale is not None:
            headers.append(("Scale", scale))
        if session.state == "playing":
            conn.reply(req, 200, headers)
            return
        if session.tcp_tracks and conn.reader is not None:
            conn.reply(req, 455, reason="Already Playing On This Connection")
            return
        conn.reply(req, 200, headers)
        session.state = "playing"
        session.source = source
        if session.tcp_tracks:
            reader = TCPReader(conn.transport, session.tcp_tracks, self.max_queue,
                               on_end=None, sndbuf=self.sndbuf)
            conn.reader = reader
            reader.start(pending=True)
        else:
            rtp, rtcp = self.udp_ports
            reader = UDPReader(rtp, rtcp, conn.peer_host, session.udp_tracks)
        session.reader = reader
        # ``start=gop``: a live viewer over TCP starts from the GOP kept (``gop_keep``)
        # when its queue takes it whole; others (UDP, a playback) at the next keyframe
        cached = (session.from_gop and bool(session.tcp_tracks) and is_live(session.path)
                  and 0 < source.cached_bytes <= self.max_queue // 2)
        source.add_reader(reader, cached=cached)
        if self.max_lag and session.tcp_tracks and is_live(session.path) \
                and not _records(session.auth):
            self.lag_watch.add(reader)  # a live viewer (not a playback, not a recording)

    def do_PAUSE(self, conn, req, url, session):
        if session is None:
            conn.reply(req, 454)
            return
        if session.role != "play":
            conn.reply(req, 455)
            return
        self._stop_reading(session)
        session.state = "ready"
        done = self._control(session, "pause")
        if isinstance(done, defer.Deferred):
            done.addErrback(lambda f: log.failure("pause controller of {path} failed", f,
                                                  path=session.path))
        conn.reply(req, 200, [self._session_header(session)])

    def _control(self, session, event, *args):
        ctl = self.controllers.get(session.path)
        if ctl is None:
            return None
        try:
            return getattr(ctl, event)(session, *args)
        except ControlError as e:
            return e
        except Exception:
            log.failure("{event} controller of {path} failed", event=event, path=session.path)
            return None

    def do_TEARDOWN(self, conn, req, url, session):
        if session is None:
            conn.reply(req, 454)
            return
        conn.reply(req, 200)
        self._end_session(session, "teardown")

    # -- counters

    def viewer_totals(self):
        """``({"tcp": n, "udp": n}, [bytes, frames, drops, key waits])``: the viewers
        now, and what every viewer since the start was sent (or not sent)."""
        viewers = {"tcp": 0, "udp": 0}
        totals = list(self.viewers_ended)
        for source in self.sources.values():
            for i, n in enumerate(source.viewers_gone):
                totals[i] += n
            for r in source.readers:
                if getattr(r, "viewer", False):
                    viewers[r.transport_name] = viewers.get(r.transport_name, 0) + 1
                    totals[0] += r.bytes
                    totals[1] += r.frames
                    totals[2] += r.drops
                    totals[3] += r.key_waits
        return viewers, totals

    def stats(self):
        """Counters per source and per reader (JSON-able)."""
        out = {}
        for path, source in self.sources.items():
            entry = source.stats()
            entry["readers_detail"] = [r.stats() for r in source.readers]
            out[path] = entry
        return {"sources": out, "sessions": len(self.sessions),
                "connections": len(self.connections),
                "lag_skips": self.lag_skips}

    @property
    def lag_skips(self):
        """Times a live viewer fell more than ``max_lag`` behind and skipped ahead."""
        return self._lag_watch.skips if self._lag_watch is not None else 0

    @property
    def lag_watch(self):
        """The ``LagWatch`` of the live TCP viewers (made on first use)."""
        if self._lag_watch is None:
            self._lag_watch = LagWatch(self.clock, self.max_lag)
        return self._lag_watch

    # -- shutdown

    def close_all(self):
        """End every session and source, close every connection (service stop)."""
        for s in list(self.sessions.values()):
            self._end_session(s, "shutdown")
        for source in list(self.sources.values()):
            source.close()
        for conn in list(self.connections):
            conn.close()
        for path, ds in list(self._waiters.items()):
            del self._waiters[path]
            for d in ds:
                d.callback(None)
        if self._lag_watch is not None:
            self._lag_watch.stop()


class _UDPPeer(protocol.DatagramProtocol):
    def __init__(self, factory, rtcp):
        self.factory = factory
        self.rtcp = rtcp

    def datagramReceived(self, data, addr):
        self.factory.udp_received(data, addr)


class RTSPServerService(service.Service):
    """Runs an ``RTSPServerFactory`` on a listen endpoint string (``tcp:7554:...``) and,
    if ``udp_interface`` is given, the shared UDP port pair for RTP/UDP clients.
    ``port`` is the listening port object once started (``port.getHost().port``)."""

    def __init__(self, endpoint, factory, reactor=None, udp_interface=None):
        self.endpoint = endpoint
        self.factory = factory
        self._reactor = reactor
        self.udp_interface = udp_interface
        self.port = None

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self.port = yield endpoints.serverFromString(reactor, self.endpoint).listen(
            self.factory)
        if self.udp_interface is not None:
            self.factory.listen_udp(self.udp_interface)
        log.info("streaming server listening on {address}", address=self.port.getHost())

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        self.factory.close_all()
        if self.port is not None:
            port, self.port = self.port, None
            yield port.stopListening()
        yield self.factory.stop_udp()
