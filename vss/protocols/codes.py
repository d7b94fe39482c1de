"""
Result codes of the signalling protocol: the one table (docs/protocol.md, "Result codes").

A response frame carries its code in the header's ``status`` field; 0 means success.
Codes are grouped by their high byte: 0x01 framing, 0x02 session, 0x03 request,
0x04 central platform and sync, 0xFF internal.
"""

from enum import IntEnum


class ResultCode(IntEnum):
    OK = 0x0000

    # framing: the frame could not be read; the sender closes the link after answering
    BAD_MAGIC = 0x0101
    UNSUPPORTED_VERSION = 0x0102
    FRAME_TOO_LARGE = 0x0103
    TRUNCATED_BODY = 0x0104
    UNKNOWN_MESSAGE = 0x0105
    BAD_UTF8 = 0x0106
    TRAILING_BYTES = 0x0107
    MALFORMED_BODY = 0x0108

    # session: authentication, state, flow control
    AUTH_FAILED = 0x0201
    NOT_AUTHENTICATED = 0x0202
    AUTH_THROTTLED = 0x0203
    UNEXPECTED_MESSAGE = 0x0204
    DUPLICATE_TXID = 0x0205
    TOO_MANY_IN_FLIGHT = 0x0206
    KEEPALIVE_TIMEOUT = 0x0207
    SESSION_REPLACED = 0x0208
    SESSION_CLOSED = 0x0209
    NO_COMMON_VERSION = 0x020A
    NOT_READY = 0x020B

    # request: what the addressed device or the grants say
    UNKNOWN_DEVICE = 0x0301
    FORBIDDEN = 0x0302
    DEVICE_OFFLINE = 0x0303
    TIMEOUT = 0x0304
    HOME_NODE_DOWN = 0x0305
    INVALID_ARGUMENT = 0x0306
    NOT_SUPPORTED = 0x0307
    NOT_FOUND = 0x0308
    CONFLICT = 0x0309
    QUEUED = 0x030A
    BUSY = 0x030B
    LIMIT_REACHED = 0x030C
    SS_UNAVAILABLE = 0x0318
    WALL_OFFLINE = 0x0310
    NOT_A_WALL = 0x0311

    # central platform and synchronisation
    CENTRAL_UNAVAILABLE = 0x0401
    RELOAD_REQUIRED = 0x0402
    UNKNOWN_NODE = 0x0403
    STALE_CHANGE = 0x0404
    ROUTE_LOOP = 0x0405
    DB_UNAVAILABLE = 0x0406
    NOT_ACTIVE = 0x0407

    INTERNAL_ERROR = 0xFFFF


#: One line per code, shown to people by vssctl and written in docs/protocol.md.
DESCRIPTIONS = {
    ResultCode.OK: "success",
    ResultCode.BAD_MAGIC: "the frame does not start with the magic bytes 'VS'",
    ResultCode.UNSUPPORTED_VERSION: "the frame's protocol version is not spoken here",
    ResultCode.FRAME_TOO_LARGE: "the frame's body is longer than the maximum frame size",
    ResultCode.TRUNCATED_BODY: "the body ends before all its fields were read",
    ResultCode.UNKNOWN_MESSAGE: "the message type is not known to this peer",
    ResultCode.BAD_UTF8: "a string field is not valid UTF-8",
    ResultCode.TRAILING_BYTES: "bytes are left over inside the frame after the body",
    ResultCode.MALFORMED_BODY: "the body could not be decoded",
    ResultCode.AUTH_FAILED: "wrong identity or credentials",
    ResultCode.NOT_AUTHENTICATED: "log in first",
    ResultCode.AUTH_THROTTLED: "too many failed logins for this account or from this address;"
                               " wait and retry",
    ResultCode.UNEXPECTED_MESSAGE: "this message is not allowed in the link's current state",
    ResultCode.DUPLICATE_TXID: "a request with this transaction id is still in flight",
    ResultCode.TOO_MANY_IN_FLIGHT: "too many requests in flight on this link",
    ResultCode.KEEPALIVE_TIMEOUT: "no keepalive within three intervals",
    ResultCode.SESSION_REPLACED: "the same identity logged in on another link",
    ResultCode.SESSION_CLOSED: "the session was closed by the node",
    ResultCode.NO_COMMON_VERSION: "no protocol version in common",
    ResultCode.NOT_READY: "the node is not ready yet: it is loading its data or cannot reach"
                          " the central platform; try again later",
    ResultCode.UNKNOWN_DEVICE: "no such device",
    ResultCode.FORBIDDEN: "not granted for this device and action",
    ResultCode.DEVICE_OFFLINE: "the device is offline",
    ResultCode.TIMEOUT: "the device did not answer in time",
    ResultCode.HOME_NODE_DOWN: "the device's home node is down",
    ResultCode.INVALID_ARGUMENT: "a field has a value out of range",
    ResultCode.NOT_SUPPORTED: "the device does not support this operation",
    ResultCode.NOT_FOUND: "not found",
    ResultCode.CONFLICT: "the item changed meanwhile: read it and try again",
    ResultCode.QUEUED: "accepted and queued",
    ResultCode.BUSY: "the peer is at capacity",
    ResultCode.LIMIT_REACHED: "a limit of this link or request was reached, such as the "
                              "event subscriptions of a link",
    ResultCode.SS_UNAVAILABLE: "no streaming server of the node could take the stream",
    ResultCode.WALL_OFFLINE: "the wall or decoder is not logged in to any node",
    ResultCode.NOT_A_WALL: "the CU is not a TV wall or a decoder",
    ResultCode.CENTRAL_UNAVAILABLE: "the central platform cannot be reached",
    ResultCode.RELOAD_REQUIRED: "the change log no longer reaches back that far: reload",
    ResultCode.UNKNOWN_NODE: "no such node",
    ResultCode.STALE_CHANGE: "the change is older than what is stored",
    ResultCode.ROUTE_LOOP: "the routed request came back to a node it passed",
    ResultCode.DB_UNAVAILABLE: "the central database failed: unreachable, locked or timed"
                               " out; try again later",
    ResultCode.NOT_ACTIVE: "this CMS is a standby, another CMS is active: try the next"
                           " CMS address",
    ResultCode.INTERNAL_ERROR: "internal error",
}


def describe(code):
    """A readable line for a result code, known or not."""
    try:
        rc = ResultCode(code)
    except ValueError:
        return f"unknown result code 0x{code:04x}"
    return f"{rc.name.lower()} (0x{int(rc):04x}): {DESCRIPTIONS[rc]}"
