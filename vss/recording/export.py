"""
Export: an authorised HTTP download of a time range of recordings as ONE MP4 file,
from the node that holds the segments.

How it is authorised: a node that answers a RECORD_QUERY for segments it holds adds an
export URL (``ExportUrl`` in the ``Recordings`` answer) to it:
``http://<media host>:<http port>/export?token=<token>``. The CU's own node checked the
user's VIEW grant before it asked; the token is what carries that decision to the HTTP
side. A token is ``<payload>.<signature>`` (URL-safe base64, no padding), the payload
``x1|<device>|<channel>|<stream>|<from ms>|<to ms>|<expiry s>|<id>`` (``x2|...|<id>|<user>``
when the user who asked is known: the download then names them in the audit log), the
signature
HMAC-SHA256 of it with a key derived from the node secret and a random value drawn at
each start of the node (``HMAC(secret, "vss-export-v1" + boot)``), so a stream token
never passes as an export token nor the reverse, and a token issued before the node
restarted is refused. It names a device, a stream and a time range; never a path.

A token is short-lived (``DEFAULT_TTL``, 2 minutes) and good for ONE download: the first
request the node accepts with it (a GET or a HEAD that is not refused 400, 403 or 503)
spends it, and any later request with it is 403 "token already used". The ids of the
spent tokens are kept until the tokens expire. No access log shows a token
(``vss.redact.Site``).

What is served (``ExportResource``, the only resource of the node's HTTP listener):

- ``GET /export?token=...`` and nothing else: any other path is 404, any other method
  405, any other parameter, a repeated parameter, ``..``, a backslash, a NUL, an encoded
  slash or dot (``%2f``, ``%5c``, ``%2e``) or a ``//`` anywhere in the request target is
  400; a bad, expired, spent or foreign token is 403; a range without segments here is
  404.
- The segments come from the node's catalogue (device, stream, range) and each file path
  is checked to resolve inside ``<data dir>/recordings`` before it is opened.
- The file is made by remuxing (no decoding, no transcoding) with PyAV on a worker
  thread (``remux``), never on the reactor thread, into a temporary file in
  ``<data dir>/exports``, then streamed to the client with a producer and deleted. It
  starts at the keyframe at or before the asked start (so it decodes from its first
  frame) and ends at the asked end; timestamps run on across segments, holes between
  segments stay holes in time.
- While an export reads segments their paths are ``in_use()``: retention never deletes
  them.
- A time range that ends before it starts, starts before the epoch or spans more than
  ``MAX_RANGE_MS`` is 400. At most ``MAX_CONCURRENT`` remuxes run at once and
  ``MAX_WAITING`` wait; one more is 503 (``Retry-After``); a waiting export whose client
  left is not remuxed. A client that stops reading the download (no byte taken for
  ``STALL_TIMEOUT`` seconds) is cut off and its temporary file deleted (``stalled``):
  the HTTP idle timeout does not run while a response is being written.
"""

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections import Counter

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web import resource, server

from vss.protocols.messages import AuditKind
from vss.redact import Site

log = Logger()

DEFAULT_TTL = 120  # seconds an export URL stays valid (and it is good for one download)
MAX_RANGE_MS = 24 * 3600 * 1000  # one export covers at most a day
MAX_CONCURRENT = 2  # remuxes at once per node
MAX_WAITING = 8  # exports waiting for a remux slot; more are answered 503
STALL_TIMEOUT = 60.0  # seconds a download may go without the client taking a byte
EXPORTS = "exports"
BAD_TARGET = ("..", "\\", "\x00", "%2f", "%5c", "%2e", "%00", "//")


def _b64e(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text):
    text = text.encode("ascii")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


class ExportTokens:
    """Signs and checks export tokens with a key derived from the node secret and a
    value drawn for this process; remembers the spent ones until they expire."""

    def __init__(self, secret, clock, ttl=DEFAULT_TTL):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        boot = secrets.token_bytes(16)
        self._key = hmac.new(secret, b"vss-export-v1" + boot, hashlib.sha256).digest()
        self.clock = clock
        self.ttl = ttl
        self.spent = {}  # token id -> its expiry (s)

    def spend(self, grant):
        """Mark the token of ``grant`` (a ``verify`` result) used: ``verify`` refuses
        it from now on. Forgets the spent tokens that expired."""
        now = self.clock.seconds()
        self.spent = {i: e for i, e in self.spent.items() if e > now}
        self.spent[grant["id"]] = grant["expiry"]

    def issue(self, device_id, channel, stream, from_ms, to_ms, ttl=None, user=""):
        """(token, expiry in ms). ``user``: who asked (for the audit), if known."""
        for text in (device_id, stream):
            if not text or "|" in text or "/" in text:
                raise ValueError(f"not exportable: {text!r}")
        if "|" in user:
            raise ValueError(f"not a user name: {user!r}")
        expiry = int(self.clock.seconds() + (self.ttl if ttl is None else ttl))
        payload = (f"{'x2' if user else 'x1'}|{device_id}|{int(channel)}|{stream}|"
                   f"{int(from_ms)}|{int(to_ms)}|{expiry}|{_b64e(secrets.token_bytes(9))}"
                   + (f"|{user}" if user else "")).encode()
        sig = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64e(payload)}.{_b64e(sig)}", expiry * 1000

    def verify(self, token):
        """The dict (device, channel, stream, from_ms, to_ms, expiry, id) of a valid
        token not spent yet, or raise ValueError with the reason."""
        if not token or len(token) > 1024:
            raise ValueError("missing token")
        p64, sep, s64 = token.partition(".")
        if not sep:
            raise ValueError("malformed token")
        try:
            payload, sig = _b64d(p64), _b64d(s64)
        except (ValueError, UnicodeEncodeError):
            raise ValueError("malformed token") from None
        if not hmac.compare_digest(hmac.new(self._key, payload, hashlib.sha256).digest(), sig):
            raise ValueError("bad signature")
        try:
            fields = payload.decode("utf-8").split("|")
            user = fields.pop() if fields[0] == "x2" and len(fields) == 9 else ""
            version, device, channel, stream, from_ms, to_ms, expiry, token_id = fields
            channel, from_ms, to_ms, expiry = int(channel), int(from_ms), int(to_ms), int(expiry)
        except ValueError:
            raise ValueError("malformed token") from None
        if version not in ("x1", "x2"):
            raise ValueError("unknown token version")
        if self.clock.seconds() >= expiry:
            raise ValueError("token expired")
        if token_id in self.spent:
            raise ValueError("token already used")
        return {"device": device, "channel": channel, "stream": stream, "from_ms": from_ms,
                "to_ms": to_ms, "expiry": expiry, "id": token_id, "user": user}


def check_target(uri):
    """The reason a request target is refused (400), or None. ``uri`` is raw bytes."""
    try:
        text = uri.decode("ascii")
    except UnicodeDecodeError:
        return "the request target is not ASCII"
    lower = text.lower()
    for bad in BAD_TARGET:
        if bad in lower:
            return f"{bad!r} is not allowed in the request"
    return None


# -- the remux (blocking: runs on a worker thread) ---------------------------------------

def remux(paths_and_starts, out_path, from_ms, to_ms):
    """Write the parts of the segments (``[(absolute path, segment start ms), ...]`` in
    time order) between ``from_ms`` and ``to_ms`` into one MP4 at ``out_path``, starting
    at the keyframe at or before ``from_ms``. Returns (duration ms, video frames).

    Every packet is placed at its wall-clock time (its segment's start plus its time in
    the file), counted in the output stream's time base, so segments written with
    different time bases follow each other exactly. Segments that overlap (a start time
    cut to the second by an older version, two recordings of one stream) never make time
    run back: a segment ends where the next one starts (its last frames are left out, so
    nothing after the next keyframe is lost), audio from before the first picture or
    behind what was written is left out, and a video timestamp that would not increase
    is moved one tick after the one before it."""
    import av

    segments = list(paths_and_starts)
    out = None
    o_video = o_audio = None
    t0 = None  # wall ms of the file's time zero (a Fraction)
    last = {}  # output stream -> last dts written, in its time base
    frames = 0
    first_wall = last_wall = None
    pending = []  # (packet, segment start ms, video?) since the last keyframe before from_ms
    started = False
    try:
        for i, (path, start_ms) in enumerate(segments):
            # where this segment hands over: the next one's start, if that comes first
            end_ms = min(to_ms, segments[i + 1][1]) if i + 1 < len(segments) else to_ms
            if end_ms <= start_ms:
                continue  # the next segment starts as early: it is the one written
            with av.open(path) as inp:
                if not inp.streams.video:
                    continue
                v = inp.streams.video[0]
                a = inp.streams.audio[0] if inp.streams.audio else None
                if out is None:
                    out = av.open(out_path, "w", format="mp4",
                                  options={"movflags": "+faststart"})
                    o_video = out.add_stream_from_template(v)
                    if a is not None:
                        o_audio = out.add_stream_from_template(a)
                    out.start_encoding()  # the output time bases are final from here
                demux = [v] + ([a] if a is not None and o_audio is not None else [])
                for p in inp.demux(demux):
                    if p.dts is None or p.size == 0:
                        continue
                    video = p.stream.index == v.index
                    wall = start_ms + (p.pts if p.pts is not None else p.dts) \
                        * p.time_base * 1000
                    if wall >= end_ms:
                        if video:
                            break
                        continue
                    if not started:
                        if wall < from_ms:  # keep the GOP that holds from_ms
                            if video and p.is_keyframe:
                                pending = [(p, start_ms, video)]
                            elif pending:
                                pending.append((p, start_ms, video))
                            continue
                        if not pending and not (video and p.is_keyframe):
                            continue  # nothing decodable yet
                        started = True
                        todo = pending + [(p, start_ms, video)]
                        pending = []
                    else:
                        todo = [(p, start_ms, video)]
                    for q, seg_start, is_video in todo:
                        ostream = o_video if is_video else o_audio
                        tb, otb = q.time_base, ostream.time_base
                        qwall = seg_start + q.dts * tb * 1000
                        if t0 is None:
                            t0 = qwall
                        dts = round((qwall - t0) / 1000 / otb)
                        pts = dts if q.pts is None else dts + round((q.pts - q.dts) * tb / otb)
                        prev = last.get(ostream)
                        if dts < 0 or (prev is not None and dts <= prev):
                            if not is_video:
                                continue  # audio before the first picture, or overlapping
                            pts += prev + 1 - dts
                            dts = prev + 1
                        last[ostream] = dts
                        duration = round((q.duration or 0) * tb / otb)
                        q.time_base = otb
                        q.dts, q.pts, q.duration = dts, max(pts, dts), duration
                        q.stream = ostream
                        out.mux(q)
                        if is_video:
                            frames += 1
                            first_wall = qwall if first_wall is None else first_wall
                            last_wall = qwall + duration * otb * 1000
    finally:
        if out is not None:
            out.close()
    if out is None or not frames:
        raise ValueError("no video in the range")
    return int(last_wall - first_wall), frames


# -- the HTTP side -------------------------------------------------------------------------

class Exporter:
    """Makes export files from this node's catalogue; counts the segments being read."""

    def __init__(self, catalogue, data_dir, reactor, max_concurrent=MAX_CONCURRENT,
                 clock=None, stall_timeout=STALL_TIMEOUT):
        self.catalogue = catalogue
        self.data_dir = os.path.abspath(data_dir)
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.stall_timeout = stall_timeout
        self.reading = Counter()  # relative segment path -> exports reading it
        self.limit = defer.DeferredSemaphore(max_concurrent)
        self.sending = 0  # downloads being written
        self.waiting = 0  # exports waiting for a remux slot
        self.max_waiting = MAX_WAITING
        self.counters = {"exports": 0, "refused": 0, "failed": 0, "bytes": 0,
                         "stalled": 0, "busy": 0, "abandoned": 0}

    def in_use(self):
        return {p for p, n in self.reading.items() if n > 0}

    def sweep(self, older_than=3600.0):
        """Delete export files left behind (a node killed while serving one) that are
        older than ``older_than`` seconds. Returns how many."""
        tmpdir = os.path.join(self.data_dir, EXPORTS)
        if not os.path.isdir(tmpdir):
            return 0
        cutoff = time.time() - older_than
        gone = 0
        for name in os.listdir(tmpdir):
            full = os.path.join(tmpdir, name)
            if name.endswith(".mp4") and os.path.getmtime(full) < cutoff:
                _unlink(full)
                gone += 1
        return gone

    def _safe(self, rel):
        root = os.path.realpath(os.path.join(self.data_dir, "recordings"))
        full = os.path.realpath(os.path.join(self.data_dir, rel))
        if os.path.commonpath([root, full]) != root:
            raise ValueError(f"segment outside the recordings: {rel!r}")
        return full

    def busy(self):
        """True when an export more would wait behind ``max_waiting`` others."""
        return self.waiting >= self.max_waiting

    @defer.inlineCallbacks
    def make(self, device, stream, from_ms, to_ms, gone=lambda: False):
        """A Deferred of the path of a new temporary MP4 file (the caller deletes it), or
        None when the node holds no segment of the range, or when ``gone()`` (the
        client left while the export waited for its turn)."""
        self.waiting += 1
        try:
            listing = yield self.catalogue.list(device, stream, from_ms, to_ms)
            segs = listing["segments"]
            if not segs:
                return None
            paths = [(self._safe(s.path), s.start_ms) for s in segs]
            rels = [s.path for s in segs]
            yield self.limit.acquire()
        finally:
            self.waiting -= 1
        if gone():  # nobody to send it to: no remux
            self.counters["abandoned"] += 1
            self.limit.release()
            return None
        tmpdir = os.path.join(self.data_dir, EXPORTS)
        os.makedirs(tmpdir, exist_ok=True)
        fd, out = tempfile.mkstemp(suffix=".mp4", dir=tmpdir)
        os.close(fd)
        self.reading.update(rels)
        try:
            duration, frames = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), remux, paths, out, from_ms, to_ms)
        except BaseException:
            _unlink(out)
            raise
        finally:
            self.reading.subtract(rels)
            self.reading += Counter()  # drop the zero counts
            self.limit.release()
        log.info("export of {device}/{stream} {frm}-{to}: {n} segments, {ms} ms, {frames} "
                 "frames", device=device, stream=stream, frm=from_ms, to=to_ms, n=len(segs),
                 ms=duration, frames=frames)
        return out


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ExportResource(resource.Resource):
    """The node's HTTP root: ``GET /export?token=...`` only (see the module docstring)."""

    isLeaf = True

    def __init__(self, tokens, exporter, audit=None):
        super().__init__()
        self.tokens = tokens
        self.exporter = exporter
        self.audit = audit  # vss.rgm.audit.AuditReporter: each download started, or None

    def _refuse(self, request, code, message):
        self.exporter.counters["refused"] += 1
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (message + "\n").encode("utf-8")

    def render(self, request):
        problem = check_target(request.uri)
        if problem is not None:
            return self._refuse(request, 400, problem)
        if request.path != b"/export":
            return self._refuse(request, 404, "not found")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._refuse(request, 405, "method not allowed")
        args = request.args or {}
        if set(args) != {b"token"} or len(args[b"token"]) != 1:
            return self._refuse(request, 400, "the only parameter is one token")
        for values in args.values():
            for v in values:
                if check_target(v) is not None or v.startswith(b"/"):
                    return self._refuse(request, 400, "bad parameter")
        try:
            grant = self.tokens.verify(args[b"token"][0].decode("ascii"))
        except (ValueError, UnicodeDecodeError) as e:
            return self._refuse(request, 403, f"forbidden: {e}")
        if grant["from_ms"] < 0 or grant["to_ms"] <= grant["from_ms"] \
                or grant["to_ms"] - grant["from_ms"] > MAX_RANGE_MS:
            return self._refuse(request, 400, "bad time range")
        if self.exporter.busy():
            self.exporter.counters["busy"] += 1
            request.setHeader(b"retry-after", b"10")
            return self._refuse(request, 503, "too many exports at once, retry later")
        self.tokens.spend(grant)  # one download per token: a copy of the URL is worthless
        if self.audit is not None:
            peer = request.getClientAddress()
            self.audit.note(AuditKind.EXPORT, grant["user"], grant["device"], grant["channel"],
                            1 if grant["stream"].endswith("sub") else 0, grant["from_ms"],
                            grant["to_ms"], getattr(peer, "host", ""), "export")
        d = self.exporter.make(grant["device"], grant["stream"], grant["from_ms"],
                               grant["to_ms"], gone=lambda: request._disconnected)
        d.addCallback(self._send, request, grant)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _send(self, path, request, grant):
        if path is None and request._disconnected:
            return
        if path is None:
            request.write(self._refuse(request, 404, "no recording in that range on this node"))
            request.finish()
            return
        if request._disconnected:
            _unlink(path)
            return
        size = os.path.getsize(path)
        name = f"{grant['device']}-{grant['stream']}-{grant['from_ms']}.mp4"
        request.setHeader(b"content-type", b"video/mp4")
        request.setHeader(b"content-length", str(size).encode())
        request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
        self.exporter.counters["exports"] += 1
        self.exporter.counters["bytes"] += size
        if request.method == b"HEAD":
            _unlink(path)
            request.finish()
            return
        f = open(path, "rb")  # noqa: SIM115 - closed when the transfer ends
        exporter = self.exporter
        exporter.sending += 1
        d = FileSender().beginFileTransfer(f, request)
        watch = _StallWatch(exporter, f, request)

        def done(result):
            watch.stop()
            exporter.sending -= 1
            f.close()
            _unlink(path)
            if isinstance(result, Failure):  # the connection went (or was cut off)
                with contextlib.suppress(Exception):
                    request.unregisterProducer()
                return None
            if not request._disconnected:
                request.finish()
            return None

        d.addBoth(done)

    def _failed(self, failure, request):
        self.exporter.counters["failed"] += 1
        log.failure("export failed", failure)
        if not request._disconnected:
            request.write(self._refuse(request, 500, "the export failed"))
            request.finish()


class _StallWatch:
    """Cuts a download off when its client took no byte for ``stall_timeout`` seconds
    (the file position did not move): the transfer then fails and its file is
    deleted."""

    def __init__(self, exporter, f, request):
        self.exporter = exporter
        self.f = f
        self.request = request
        self.pos = -1
        self.call = None
        self._arm()

    def _arm(self):
        self.call = self.exporter.clock.callLater(self.exporter.stall_timeout, self._check)

    def _check(self):
        self.call = None
        pos = self.f.tell()
        if pos != self.pos:
            self.pos = pos
            self._arm()
            return
        self.exporter.counters["stalled"] += 1
        log.info("export download stalled at byte {pos}: cut off", pos=pos)
        transport = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            transport.abortConnection()

    def stop(self):
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def make_site(tokens, exporter, web=None, audit=None):
    """The node's HTTP site: its access log shows no token (``vss.redact.Site``).
    ``web`` (``vss.web.site.WebClient``) adds the browser client in front of the
    export; ``audit`` (``vss.rgm.audit.AuditReporter``) is told of every download."""
    root = ExportResource(tokens, exporter, audit)
    return Site(web.resource(root) if web is not None else root)
