"""
The Twisted protocol of every signalling link (PU link, CU link, inter-node links).

It is thin: it frames and decodes bytes with the sans-IO codec, correlates responses with
the requests it sent, applies the one policy for bad input, and hands every incoming
request or notification to a *handler* object:

- ``handler.linkUp(link)`` when the connection is made,
- ``handler.received(link, frame, msg)`` for each request or notification,
- ``handler.linkDown(link, reason)`` when it is lost.

What a link does with a message (authentication, grants, relaying) is the handler's
business: the RGM service on a node, the PU agent, a CU client, CMS.

Bad input policy (docs/protocol.md, "Errors"): a fatal ``ProtocolError`` is logged, answered
with an error response (carrying the offending txid and type when the header could be
read, else type ERROR and txid 0), and the link is closed after the answer is written.
A non-fatal one (unknown message type) is answered and the link stays up. Nothing raises
out of ``dataReceived``.

Replies go out at once (docs/performance.md, "Signalling relay"): what a link writes to
its own peer while handling that peer's bytes (keepalive answers, errors, login steps)
is gathered and, at the end of ``dataReceived``, sent in one ``send`` straight to the
socket when the transport is plain TCP with nothing buffered; otherwise (TLS, a backlog,
a partial send) it goes through ``transport.write`` as usual, in order. This saves the
reactor a second pass and two epoll changes per answer, most of the cost of an idle
link's keepalive. Writes to other links (the relay's forwards) are left to Twisted,
which coalesces them per reactor pass.
"""

from twisted.internet import defer, protocol
from twisted.logger import Logger

from vss.directsend import send_or_write
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError, code_for
from vss.protocols.messages import Bye, MsgType

DEFAULT_REQUEST_TIMEOUT = 10.0
_ANSWER = codec.FLAG_RESPONSE | codec.FLAG_ERROR
DEFAULT_MAX_IN_FLIGHT = 256


class SignallingLink(protocol.Protocol):
    """One signalling link. ``handler`` receives what arrives; ``request`` sends."""

    log = Logger()

    def __init__(
        self,
        handler,
        clock,
        max_body=codec.MAX_BODY,
        max_in_flight=DEFAULT_MAX_IN_FLIGHT,
        request_timeout=DEFAULT_REQUEST_TIMEOUT,
    ):
        self.handler = handler
        self.clock = clock
        self.decoder = codec.FrameDecoder(max_body)
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.version = codec.VERSION
        self._next_txid = 0
        # txid -> (on_result, context, deadline or None); on_result(context, result) gets
        # the response Frame or a VssError. One timer per link, at the earliest deadline.
        self._pending = {}
        self._timer = None
        self._timer_at = None
        # The handler's optional fast path: received_frame(link, frame) -> True when it
        # dealt with a request from its raw frame, with no decoded message.
        self._fast = getattr(handler, "received_frame", None)
        self._replies = None  # frames for the peer gathered during dataReceived
        self.last_rx = clock.seconds()
        self.connected_at = self.last_rx
        self.closed = False
        self.peer = None
        self.session = None  # set by the handler once it knows who is on the link
        self.frames_in = 0
        self.frames_out = 0

    # -- connection life cycle

    def connectionMade(self):
        # Signalling is request/response with small frames: Nagle's algorithm would hold
        # a frame back until the previous one is acknowledged (up to a delayed-ACK time).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except Exception:  # noqa: BLE001 - not a TCP transport (tests, UNIX sockets)
                pass
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.peer_host = getattr(peer, "host", "?")
        self.handler.linkUp(self)

    def connectionLost(self, reason=None):
        self.closed = True
        self._cancel_timer()
        pending, self._pending = self._pending, {}
        for on_result, context, _deadline in pending.values():
            on_result(context, VssError(ResultCode.SESSION_CLOSED, "link closed"))
        self.handler.linkDown(self, reason)

    def close(self, code=None, message=""):
        """Say goodbye (BYE with ``code``) if given, then close after writes drain."""
        if self.closed:
            return
        if code is not None:
            self.send_notify(MsgType.BYE, Bye(reason=int(code), message=message))
        self.closed = True
        self._flush_replies()
        self.transport.loseConnection()

    def abort(self):
        self.closed = True
        self._replies = None  # dropped, like whatever the transport still buffers
        self.transport.abortConnection()

    # -- input

    def dataReceived(self, data):
        self.last_rx = self.clock.seconds()
        self._replies = []
        try:
            self._process(data)
        finally:
            self._flush_replies()

    def _process(self, data):
        for item in self.decoder.feed(data):
            if type(item) is codec.Frame:
                self.frames_in += 1
                try:
                    self._frameReceived(item)
                except Exception:
                    self.log.failure("handler failed on {type}", type=codec.message_name(item.type))
                    if not item.flags & (codec.FLAG_RESPONSE | codec.FLAG_NOTIFY):
                        self.send_error(item.type, item.txid, ResultCode.INTERNAL_ERROR)
            else:
                self._badInput(item)
                return
            if self.closed:
                return

    def _frameReceived(self, frame):
        flags = frame.flags
        if flags & _ANSWER:  # RESPONSE, or ERROR (an error response either way: 2.1)
            pending = self._pending
            entry = pending.pop(frame.txid, None)
            if entry is None:
                self.log.debug("late or unknown response txid={txid}", txid=frame.txid)
                return
            if not pending and self._timer is not None:
                self._cancel_timer()
            entry[0](entry[1], frame)
            return
        if not frame.txid and not flags & codec.FLAG_NOTIFY and self.refuse_txid_zero(frame):
            return
        fast = self._fast
        if fast is not None and fast(self, frame):
            return
        msg = codec.decode_body(frame)
        if isinstance(msg, codec.ProtocolError):
            if not msg.fatal and flags & codec.FLAG_NOTIFY:
                # A notification of a type this peer does not know is dropped, never
                # answered (docs/protocol.md 6, rule 2).
                self.log.debug("dropped notification of unknown type {type}", type=frame.type)
                return
            self._badInput(msg)
            return
        self.handler.received(self, frame, msg)

    def refuse_txid_zero(self, frame):
        """txid 0 is reserved for notifications: a request with txid 0 is answered
        UNEXPECTED_MESSAGE and not served (docs/protocol.md 8.6). True when refused."""
        self.send_error(frame.type, 0, ResultCode.UNEXPECTED_MESSAGE,
                        "txid 0 is reserved for notifications")
        return True

    def bad_response(self, err, frame):
        """The peer answered one of this link's requests with ``frame``, whose body does
        not decode (``err``, the ``ProtocolError`` of ``codec.decode_body``). A body
        error is fatal (docs/protocol.md 6, rule 1): the peer is told with an error
        response repeating the frame's type and txid (unless the frame was itself an
        error response: rule 3) and the link is closed."""
        if self.closed:
            return
        self.log.warn(
            "bad answer from {peer}: {code} {message}",
            peer=self.peer,
            code=err.code.name,
            message=err.message,
        )
        if not frame.flags & codec.FLAG_ERROR:
            self.send_error(frame.type, frame.txid, err.code, err.message)
        self.closed = True
        self._flush_replies()
        self.transport.loseConnection()

    def _badInput(self, err):
        self.log.warn(
            "bad input from {peer}: {code} {message}",
            peer=self.peer,
            code=err.code.name,
            message=err.message,
        )
        if err.type is None:
            self.send_error(MsgType.ERROR, 0, err.code, err.message)
        else:
            self.send_error(err.type, err.txid or 0, err.code, err.message)
        if err.fatal:
            self.closed = True
            self._flush_replies()
            self.transport.loseConnection()

    # -- output

    def send_raw(self, data):
        if not self.closed:
            self.frames_out += 1
            replies = self._replies
            if replies is not None:
                replies.append(data)
            else:
                self.transport.write(data)

    def _flush_replies(self):
        """Send what was gathered for the peer: straight to a plain TCP socket with an
        empty write buffer, else (and whatever the socket did not take) through the
        transport, so the order of bytes is kept (``vss.directsend``)."""
        replies, self._replies = self._replies, None
        if not replies:
            return
        data = replies[0] if len(replies) == 1 else b"".join(replies)
        send_or_write(self.transport, data)

    def send_response(self, type, txid, body):
        self.send_raw(codec.encode_response(type, body, txid, self.version))

    def send_raw_response(self, type, txid, status, body):
        flags = codec.FLAG_RESPONSE | (codec.FLAG_ERROR if status else 0)
        self.send_raw(codec.encode_frame(type, body, txid, flags, status, self.version))

    def send_error(self, type, txid, code, message=""):
        self.send_raw(codec.encode_error(type, txid, code, message, self.version))

    def send_failure(self, frame, failure_or_exc):
        """Answer a request with the error a handler failed with; unexpected errors are
        logged with their traceback and answered as INTERNAL_ERROR."""
        code, message = code_for(failure_or_exc)
        exc = getattr(failure_or_exc, "value", failure_or_exc)
        if not isinstance(exc, VssError):
            self.log.failure(
                "request {type} failed",
                failure=failure_or_exc if hasattr(failure_or_exc, "getTraceback") else None,
                type=codec.message_name(frame.type),
            )
        self.send_error(frame.type, frame.txid, code, message)

    def send_notify(self, type, body):
        self.send_raw(codec.encode_notify(type, body, self.version))

    def request(self, type, body, timeout=None):
        """Send a request; a Deferred firing with the decoded response ``Message``, or
        failing with ``VssError`` (the peer's error code, TIMEOUT, SESSION_CLOSED)."""
        return self.request_raw(type, codec.encode_body(body), timeout).addCallback(
            self.decode_response
        )

    def decode_response(self, frame):
        """The decoded ``Message`` of a response to one of this link's requests, or raise
        ``VssError`` (the peer's error code; the body error of an answer that does not
        decode, which also ends the link: ``bad_response``)."""
        try:
            return _decode_response(frame)
        except _BadAnswer as e:
            self.bad_response(e.error, frame)
            raise VssError(frame.status or e.error.code, e.error.message) from None

    def request_raw(self, type, body, timeout=None):
        """Send a request whose body is already encoded; fires with the response
        ``Frame`` (status may be an error code: the caller decides)."""
        if self.closed:
            return defer.fail(VssError(ResultCode.SESSION_CLOSED, "link closed"))
        if len(self._pending) >= self.max_in_flight:
            return defer.fail(VssError(ResultCode.TOO_MANY_IN_FLIGHT))
        d = defer.Deferred(self._cancelled)
        d.txid = self._send_request(type, body, timeout, _fire, d)
        return d

    def request_cb(self, type, body, timeout, on_result, context):
        """``request_raw`` without a Deferred, for the relay's hot path: calls
        ``on_result(context, result)`` once, with the response ``Frame`` or a
        ``VssError`` (SESSION_CLOSED, TIMEOUT, TOO_MANY_IN_FLIGHT), possibly at once."""
        if self.closed:
            return on_result(context, VssError(ResultCode.SESSION_CLOSED, "link closed"))
        if len(self._pending) >= self.max_in_flight:
            return on_result(context, VssError(ResultCode.TOO_MANY_IN_FLIGHT))
        self._send_request(type, body, timeout, on_result, context)

    def _send_request(self, type, body, timeout, on_result, context):
        txid = self._next_txid = (self._next_txid % 0xFFFFFFFF) + 1
        pending = self._pending
        if txid in pending:
            txid = self._allocate_txid()
        if timeout is None:
            timeout = self.request_timeout
        if timeout:
            now = self.clock.seconds()
            deadline = now + timeout
            pending[txid] = (on_result, context, deadline)
            timer_at = self._timer_at
            if timer_at is None or deadline < timer_at:
                self._arm(deadline, now)
        else:
            pending[txid] = (on_result, context, None)
        self.send_raw(codec.encode_frame(type, body, txid, 0, 0, self.version))
        return txid

    def _allocate_txid(self):
        while True:
            self._next_txid = (self._next_txid % 0xFFFFFFFF) + 1
            if self._next_txid not in self._pending:
                return self._next_txid

    def _cancelled(self, d):
        self._pending.pop(d.txid, None)

    def _arm(self, at, now):
        """(Re)arm the link's one request timer for time ``at``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.clock.callLater(max(0.0, at - now), self._timedOut)

    def _cancel_timer(self):
        timer, self._timer, self._timer_at = self._timer, None, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timedOut(self):
        """Fail every request whose deadline has passed; re-arm for the next one."""
        limit = max(self.clock.seconds(), self._timer_at)
        self._timer = self._timer_at = None
        pending = self._pending
        expired = [txid for txid, entry in pending.items()
                   if entry[2] is not None and entry[2] <= limit]
        for txid in expired:
            entry = pending.pop(txid, None)
            if entry is not None:
                entry[0](entry[1], VssError(ResultCode.TIMEOUT))
        if not self.closed:
            deadlines = [entry[2] for entry in pending.values() if entry[2] is not None]
            if deadlines:
                at = min(deadlines)
                if self._timer_at is None or at < self._timer_at:
                    self._arm(at, self.clock.seconds())

    @property
    def in_flight(self):
        return len(self._pending)


def _fire(d, result):
    """``on_result`` of a Deferred request."""
    if type(result) is codec.Frame:
        d.callback(result)
    else:
        d.errback(result)


class _BadAnswer(VssError):
    """A response whose body does not decode (``error``: its ``ProtocolError``)."""

    def __init__(self, code, message, error):
        super().__init__(code, message)
        self.error = error


def _decode_response(frame):
    """The decoded ``Message`` of a response frame, or raise ``VssError``: the error
    code of an error response, or the body error of a body that does not decode."""
    msg = codec.decode_body(frame)
    if type(msg) is codec.ProtocolError:
        raise _BadAnswer(frame.status or msg.code, msg.message, msg)
    if frame.status:
        raise VssError(frame.status, msg.body.message or None)
    return msg


def check_response(frame):
    """Raise ``VssError`` if a raw response frame carries an error status."""
    if frame.status:
        _decode_response(frame)
    return frame


class LinkFactory(protocol.Factory):
    """Builds links for a handler (a server-side service or a client)."""

    noisy = False

    def __init__(self, handler, clock, **link_options):
        self.handler = handler
        self.clock = clock
        self.link_options = link_options

    def buildProtocol(self, addr):
        p = SignallingLink(self.handler, self.clock, **self.link_options)
        p.factory = self
        return p
