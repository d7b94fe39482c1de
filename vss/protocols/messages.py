"""
The message catalogue of the signalling protocol, defined with construct.

This module is the executable form of docs/protocol.md: every body layout below is
named there byte by byte. It imports nothing from Twisted.

Each body is a small dataclass generated from its construct ``Struct``; the struct is
compiled once at import time. Every body ends with an *extension block* (a list of
tag-length-value records) so a newer peer can add fields that an older peer skips, and
with ``Terminated`` so bytes left over inside a frame are an error.
"""

from dataclasses import field, make_dataclass
from enum import IntEnum, IntFlag

from construct import (
    Adapter,
    Flag,
    Float32b,
    GreedyBytes,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
    this,
)

# ---------------------------------------------------------------------------
# Field types (docs/protocol.md, "Field encoding")

U8, U16, U32, U64 = Int8ub, Int16ub, Int32ub, Int64ub
F32 = Float32b
Bool = Flag
#: UTF-8 text with a 16-bit length prefix (length in bytes).
Str = PascalString(Int16ub, "utf8")
#: Opaque bytes with a 16-bit length prefix (nonces, proofs, keys).
Bytes = Prefixed(Int16ub, GreedyBytes)
#: Opaque bytes with a 32-bit length prefix (an embedded frame body).
Blob = Prefixed(Int32ub, GreedyBytes)
#: Milliseconds since 1970-01-01T00:00:00Z.
Timestamp = Int64ub


def List(sub):
    """A 16-bit count followed by that many items."""
    return PrefixedArray(Int16ub, sub)


class _Optional(Adapter):
    """A presence byte (0 or 1) then, when 1, the value. Decodes to the value or None."""

    def _decode(self, obj, context, path):
        return obj.value if obj.present else None

    def _encode(self, obj, context, path):
        return {"present": obj is not None, "value": obj}


def Optional(sub):
    return _Optional(Struct("present" / Flag, "value" / If(this.present, sub)))


class _Record(Adapter):
    """Maps a nested struct to and from a record dataclass."""

    def __init__(self, cls, subcon):
        super().__init__(subcon)
        self.cls = cls

    def _decode(self, obj, context, path):
        return self.cls(**{n: obj[n] for n in self.cls._fields})

    def _encode(self, obj, context, path):
        return {n: getattr(obj, n) for n in self.cls._fields}


class _Ext(Adapter):
    """The extension block: records (tag, value) a receiver may not know and skips."""

    def _decode(self, obj, context, path):
        return tuple((e.tag, e.value) for e in obj)

    def _encode(self, obj, context, path):
        return [{"tag": t, "value": v} for t, v in obj]


Extensions = _Ext(List(Struct("tag" / Int16ub, "value" / Prefixed(Int16ub, GreedyBytes))))


def _dataclass(name, fields, extra=(), defaults=None):
    """``defaults``: field name -> a default, for fields added at the end of a layout
    (code that builds the type positionally keeps working); ``[]`` gives each instance
    its own empty list, as decoding does."""
    names = [f.name for f in fields]
    defaults = defaults or {}
    plain = [n for n in names if n not in defaults]
    assert names[:len(plain)] == plain, "fields with a default come last"
    cls = make_dataclass(
        name,
        plain + [(n, object, field(default_factory=list) if defaults[n] == [] else
                  field(default=defaults[n])) for n in names[len(plain):]]
        + [(n, object, field(default=d)) for n, d in extra],
        frozen=True,
        slots=True,
    )
    cls._fields = tuple(names)
    cls.__module__ = __name__
    return cls


def record(name, *fields, defaults=None):
    """A nested record type; use ``R.con`` inside other structs."""
    cls = _dataclass(name, fields, defaults=defaults)
    cls.con = _Record(cls, Struct(*fields))
    globals()[name] = cls
    return cls


def body(name, *fields, defaults=None):
    """A frame body type: the fields, then the extension block, then end of frame."""
    cls = _dataclass(name, fields, extra=[("ext", ())], defaults=defaults)
    struct = Struct(*fields, "ext" / Extensions, Terminated)
    cls.struct = struct
    cls.compiled = struct.compile()
    globals()[name] = cls
    return cls


def to_dict(obj):
    """The fields of a body or record as a dict (records nested as dicts)."""

    def plain(v):
        if hasattr(v, "_fields"):
            return {n: plain(getattr(v, n)) for n in v._fields}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return {n: plain(getattr(obj, n)) for n in obj._fields}


# ---------------------------------------------------------------------------
# Enumerations carried in u8 fields


class Role(IntEnum):
    PU = 1
    CU = 2
    NODE = 3


class PuKind(IntEnum):
    IPC = 1
    DVS = 2
    DVR = 3


class CuKind(IntEnum):
    MOC = 1
    TVWALL = 2
    WEB = 3
    MOBILE = 4
    DECODER = 5


class PtzOp(IntEnum):
    CONTINUOUS = 1
    ABSOLUTE = 2
    RELATIVE = 3
    STOP = 4


class FocusOp(IntEnum):
    NONE = 0
    NEAR = 1
    FAR = 2
    AUTO = 3
    STOP = 4


class IrisOp(IntEnum):
    NONE = 0
    OPEN = 1
    CLOSE = 2
    AUTO = 3
    STOP = 4


class PresetOp(IntEnum):
    SET = 1
    GOTO = 2
    REMOVE = 3
    LIST = 4


class RecordMode(IntEnum):
    OFF = 0
    CONTINUOUS = 1
    SCHEDULE = 2
    EVENT = 3
    MANUAL = 4


class Stream(IntEnum):
    MAIN = 0
    SUB = 1


class Purpose(IntEnum):
    LIVE = 1
    PLAYBACK = 2


class Transport(IntEnum):
    ANY = 0
    TCP = 1
    UDP = 2


class Action(IntFlag):
    """Grant bits (DeviceInfo.actions, GrantRecord.actions)."""

    VIEW = 0x01
    PTZ = 0x02
    CONFIG = 0x04
    RECORD = 0x08
    #: on a CU target ``cu:<account>`` (a TV wall or a decoder): drive it (WALL_*)
    WALL = 0x10


class ChangeKind(IntEnum):
    """What a StateChange reports."""

    ONLINE = 1
    OFFLINE = 2
    CONFIG = 3
    PTZ = 4
    PRESET = 5
    NAME = 6
    ALARM = 7
    RECORDING = 8


class Entity(IntEnum):
    DEVICE = 1
    USER = 2
    GRANT = 3
    NODE = 4
    CREDENTIAL = 5


class ChangeOp(IntEnum):
    UPSERT = 1
    DELETE = 2


class AuditKind(IntEnum):
    """What an AuditEvent reports: media a user started on a node."""

    LIVE = 1
    PLAYBACK = 2
    EXPORT = 3


# ---------------------------------------------------------------------------
# Records (nested inside bodies)

KV = record("KV", "key" / Str, "value" / Str)
PresetEntry = record(
    "PresetEntry", "preset" / U16, "name" / Str, "pan" / F32, "tilt" / F32, "zoom" / F32
)
ScheduleSlot = record("ScheduleSlot", "day" / U8, "start_minute" / U16, "end_minute" / U16)
DeviceInfo = record(
    "DeviceInfo",
    "device_id" / Str,
    "name" / Str,
    "kind" / U8,
    "channels" / U16,
    "online" / Bool,
    "node_id" / Str,
    "actions" / U8,
)
Verifier = record(
    "Verifier",
    "salt" / Bytes,
    "iterations" / U32,
    "stored_key" / Bytes,
    "server_key" / Bytes,
)
DeviceRecord = record(
    "DeviceRecord",
    "device_id" / Str,
    "name" / Str,
    "kind" / U8,
    "channels" / U16,
    "home_node" / Str,
    "verifier" / Verifier.con,
    "source_url" / Str,
    "enabled" / Bool,
    "version" / U64,
)
UserRecord = record(
    "UserRecord",
    "username" / Str,
    "verifier" / Verifier.con,
    "groups" / List(Str),
    "enabled" / Bool,
    "version" / U64,
)
GrantRecord = record(
    "GrantRecord",
    "principal" / Str,
    "device_id" / Str,
    "actions" / U8,
    "version" / U64,
    "expires" / Timestamp,
    defaults={"expires": 0},
)
StreamCredential = record(
    "StreamCredential",
    "cred_id" / Str,
    "username" / Str,
    "device_id" / Str,
    "name" / Str,
    "created" / Timestamp,
    "expires" / Timestamp,
    "revoked" / Timestamp,
    "sealed" / Bytes,
    "version" / U64,
)
Change = record(
    "Change",
    "seq" / U64,
    "entity" / U8,
    "op" / U8,
    "key" / Str,
    "version" / U64,
    "origin" / Str,
    "device" / Optional(DeviceRecord.con),
    "user" / Optional(UserRecord.con),
    "grant" / Optional(GrantRecord.con),
    "credential" / Optional(StreamCredential.con),
    defaults={"credential": None},
)

# ---------------------------------------------------------------------------
# Bodies

Empty = body("Empty")
Error = body("Error", "message" / Str)

Hello = body(
    "Hello",
    "min_version" / U8,
    "max_version" / U8,
    "role" / U8,
    "agent" / Str,
    "features" / List(Str),
)
HelloAck = body(
    "HelloAck", "version" / U8, "node_id" / Str, "agent" / Str, "features" / List(Str)
)
Bye = body("Bye", "reason" / U16, "message" / Str)

AuthStart = body("AuthStart", "identity" / Str, "mechanism" / Str, "client_nonce" / Bytes)
AuthChallenge = body(
    "AuthChallenge", "salt" / Bytes, "iterations" / U32, "server_nonce" / Bytes
)
AuthProof = body("AuthProof", "client_proof" / Bytes)
AuthOk = body("AuthOk", "server_signature" / Bytes, "session_id" / Str)

Register = body(
    "Register",
    "kind" / U8,
    "model" / Str,
    "firmware" / Str,
    "channels" / U16,
    "attributes" / List(KV.con),
)
Registered = body(
    "Registered", "node_id" / Str, "keepalive_interval" / U16, "server_time" / Timestamp
)

PtzControl = body(
    "PtzControl",
    "device_id" / Str,
    "channel" / U16,
    "op" / U8,
    "pan" / F32,
    "tilt" / F32,
    "zoom" / F32,
    "speed" / F32,
    "timeout_ms" / U32,
)
PtzStatus = body("PtzStatus", "pan" / F32, "tilt" / F32, "zoom" / F32, "moving" / Bool)
LensControl = body(
    "LensControl",
    "device_id" / Str,
    "channel" / U16,
    "focus" / U8,
    "iris" / U8,
    "speed" / F32,
)
LensStatus = body(
    "LensStatus", "focus" / F32, "iris" / F32, "auto_focus" / Bool, "auto_iris" / Bool
)
Preset = body(
    "Preset", "device_id" / Str, "channel" / U16, "op" / U8, "preset" / U16, "name" / Str
)
Presets = body("Presets", "presets" / List(PresetEntry.con))
ConfigGet = body("ConfigGet", "device_id" / Str, "channel" / U16, "keys" / List(Str))
ConfigSet = body(
    "ConfigSet",
    "device_id" / Str,
    "channel" / U16,
    "items" / List(KV.con),
    "expected_version" / U32,
)
Config = body("Config", "items" / List(KV.con), "version" / U32)
RecordSettingsGet = body("RecordSettingsGet", "device_id" / Str, "channel" / U16)
RecordSettings = body(
    "RecordSettings",
    "device_id" / Str,
    "channel" / U16,
    "mode" / U8,
    "stream" / U8,
    "segment_seconds" / U32,
    "retention_days" / U16,
    "quota_mb" / U32,
    "pre_event_seconds" / U16,
    "post_event_seconds" / U16,
    "schedule" / List(ScheduleSlot.con),
)
MediaOpen = body(
    "MediaOpen",
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "purpose" / U8,
    "start_time" / Timestamp,
    "transport" / U8,
)
MediaUrl = body("MediaUrl", "url" / Str, "session_id" / Str, "expires" / Timestamp)
MediaClose = body("MediaClose", "session_id" / Str)
MediaStart = body(
    "MediaStart",
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "publish_url" / Str,
    "start_time" / Timestamp,
)
MediaStop = body("MediaStop", "device_id" / Str, "channel" / U16, "stream" / U8)
StateChange = body(
    "StateChange",
    "device_id" / Str,
    "channel" / U16,
    "change" / U8,
    "timestamp" / Timestamp,
    "items" / List(KV.con),
)
DeviceList = body("DeviceList", "cursor" / Str, "limit" / U16)
Devices = body("Devices", "devices" / List(DeviceInfo.con), "next_cursor" / Str)

NodeRegister = body(
    "NodeRegister",
    "node_id" / Str,
    "signalling" / Str,
    "media" / Str,
    "capacity" / U32,
    "applied_seq" / U64,
)
NodeRegistered = body(
    "NodeRegistered", "cms_id" / Str, "heartbeat_interval" / U16, "head_seq" / U64
)
Heartbeat = body(
    "Heartbeat",
    "pus" / U32,
    "cus" / U32,
    "streams" / U32,
    "cpu_permille" / U16,
    "bandwidth_kbps" / U32,
    "applied_seq" / U64,
)
HeartbeatAck = body("HeartbeatAck", "head_seq" / U64)
StaticPull = body("StaticPull", "entity" / U8, "cursor" / Str, "limit" / U32)
StaticPage = body(
    "StaticPage",
    "entity" / U8,
    "devices" / List(DeviceRecord.con),
    "users" / List(UserRecord.con),
    "grants" / List(GrantRecord.con),
    "next_cursor" / Str,
    "seq" / U64,
    "credentials" / List(StreamCredential.con),
    defaults={"credentials": []},
)
RouteRequest = body(
    "RouteRequest",
    "origin_node" / Str,
    "device_id" / Str,
    "hops" / U8,
    "inner_type" / U16,
    "inner_body" / Blob,
)
RouteResponse = body(
    "RouteResponse", "home_node" / Str, "inner_status" / U16, "inner_body" / Blob
)
RouteLookup = body("RouteLookup", "device_id" / Str)
Route = body(
    "Route",
    "device_id" / Str,
    "home_node" / Str,
    "signalling" / Str,
    "media" / Str,
    "node_up" / Bool,
)
NodeLookup = body("NodeLookup", "node_id" / Str)
NodeRoute = body(
    "NodeRoute", "node_id" / Str, "signalling" / Str, "media" / Str, "node_up" / Bool
)
RegInfoRequest = body("RegInfoRequest", "identity" / Str, "role" / U8)
RegInfo = body(
    "RegInfo",
    "home_node" / Str,
    "device" / Optional(DeviceRecord.con),
    "user" / Optional(UserRecord.con),
    "grants" / List(GrantRecord.con),
)
# Re-homing (docs/protocol.md 9.10): a PU asks any node where it is homed now; the nodes'
# PU addresses, ordered, for a PU to try when it loses its node.
#: extension tags: NodeRegister's and Route's EXT_PU_ADDRESS (UTF-8: a node's PU
#: address), Route's EXT_HOME_EPOCH (u64: the device's home epoch)
EXT_PU_ADDRESS = 0x0001
EXT_HOME_EPOCH = 0x0002
HomeQuery = body("HomeQuery", "device_id" / Str)
HomeRedirect = body(
    "HomeRedirect",
    "device_id" / Str,
    "home_node" / Str,
    "address" / Str,
    "epoch" / U64,
)
NodeAddress = record("NodeAddress", "node_id" / Str, "address" / Str)
NodeList = body("NodeList", "nodes" / List(NodeAddress.con))
SyncNotify = body("SyncNotify", "head_seq" / U64, "changes" / List(Change.con))
SyncComplete = body("SyncComplete", "node_id" / Str, "applied_seq" / U64)
SyncChange = body(
    "SyncChange",
    "node_id" / Str,
    "change_id" / U64,
    "device_id" / Str,
    "channel" / U16,
    "change" / U8,
    "timestamp" / Timestamp,
    "items" / List(KV.con),
    "base_version" / U64,
)
SyncAck = body("SyncAck", "change_id" / U64, "seq" / U64, "applied" / Bool)
SyncFetch = body("SyncFetch", "after_seq" / U64, "limit" / U32)
SyncBatch = body(
    "SyncBatch", "changes" / List(Change.con), "head_seq" / U64, "reload_required" / Bool
)


# Recording tasks (RECORD_START, RECORD_STOP, RECORD_STATUS): the state of one recording
# of a (device, channel, stream), as a body (the answer to one request) and as a record
# (an item of the status list). Same fields, same order.


class RecordingState(IntEnum):
    """What a RecordState reports."""

    STOPPED = 0
    RUNNING = 1
    QUEUED = 2


_RECORD_STATE_FIELDS = (
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "state" / U8,
    "reasons" / List(Str),
    "since" / Timestamp,
    "queue_position" / U16,
)
RecordRequest = body("RecordRequest", "device_id" / Str, "channel" / U16, "stream" / U8)
RecordState = body("RecordState", *_RECORD_STATE_FIELDS)
RecordTask = record("RecordTask", *_RECORD_STATE_FIELDS)
RecordStatus = body("RecordStatus", "device_id" / Str)
RecordStates = body("RecordStates", "tasks" / List(RecordTask.con))


# The recording catalogue across nodes (RECORD_QUERY): the segments of a (device,
# channel, stream) overlapping [from_time, to_time), from every node that holds some.

RecordSegment = record(
    "RecordSegment", "start" / Timestamp, "end" / Timestamp, "bytes" / U64, "node_id" / Str
)
TimeRange = record("TimeRange", "start" / Timestamp, "end" / Timestamp)
ExportUrl = record("ExportUrl", "node_id" / Str, "url" / Str, "expires" / Timestamp)
RecordQuery = body(
    "RecordQuery",
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "from_time" / Timestamp,
    "to_time" / Timestamp,
)
Recordings = body(
    "Recordings",
    "segments" / List(RecordSegment.con),
    "gaps" / List(TimeRange.con),
    "missing" / List(Str),
    "exports" / List(ExportUrl.con),
    "truncated" / Bool,
)


# Stream credentials (CRED_*): long-lived, revocable credentials for third-party players
# (vss.streamcreds). ``sealed`` is empty in every answer to a CU.

CredCreate = body("CredCreate", "device_id" / Str, "name" / Str, "expires_in" / U32)
CredIssued = body(
    "CredIssued", "credential" / StreamCredential.con, "secret" / Str, "url" / Str
)
CredList = body("CredList", "device_id" / Str)
Creds = body("Creds", "credentials" / List(StreamCredential.con))
CredRevoke = body("CredRevoke", "cred_id" / Str, "username" / Str)
CredState = body("CredState", "credential" / StreamCredential.con)


# The audit of media (AUDIT_REPORT): the live views, playbacks and exports users started
# on a node, reported to CMS in batches (vss.rgm.audit), kept in its audit log.

AuditEvent = record(
    "AuditEvent",
    "at" / Timestamp,
    "kind" / U8,
    "username" / Str,
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "from_time" / Timestamp,
    "to_time" / Timestamp,
    "peer" / Str,
    "via" / Str,
)
AuditReport = body(
    "AuditReport", "batch" / U64, "dropped" / U32, "events" / List(AuditEvent.con)
)
AuditAck = body("AuditAck", "batch" / U64, "stored" / U32)


# Events and alarms (EVENT_*): what happens at a device (motion, an alarm input, video
# loss, a PU going offline ...), numbered by the device's home node, pushed to the CUs
# that subscribed (vss.events), kept by CMS and acknowledged by operators.


class EventPhase(IntEnum):
    """Whether an event is instantaneous or starts or ends a condition."""

    PULSE = 0
    START = 1
    STOP = 2


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    ALARM = 2
    CRITICAL = 3


EventRecord = record(
    "EventRecord",
    "node_id" / Str,
    "seq" / U64,
    "device_id" / Str,
    "channel" / U16,
    "type" / Str,
    "phase" / U8,
    "severity" / U8,
    "pu_time" / Timestamp,
    "node_time" / Timestamp,
    "items" / List(KV.con),
)
EventEntry = record(
    "EventEntry",
    "event" / EventRecord.con,
    "acked_by" / Str,
    "acked_at" / Timestamp,
    "comment" / Str,
)
EventRaise = body(
    "EventRaise",
    "device_id" / Str,
    "channel" / U16,
    "type" / Str,
    "phase" / U8,
    "severity" / U8,
    "pu_time" / Timestamp,
    "items" / List(KV.con),
)
EventRaised = body("EventRaised", "node_id" / Str, "seq" / U64)
EventSubscribe = body(
    "EventSubscribe",
    "devices" / List(Str),
    "groups" / List(Str),
    "types" / List(Str),
    "resume_after" / U64,
)
EventSubscribed = body(
    "EventSubscribed", "subscription" / U32, "head" / U64, "replayed" / U32, "gap" / Bool
)
EventUnsubscribe = body("EventUnsubscribe", "subscription" / U32)
EventNotify = body("EventNotify", "feed_id" / U64, "event" / EventRecord.con)
EventAck = body(
    "EventAck",
    "node_id" / Str,
    "seq" / U64,
    "device_id" / Str,
    "username" / Str,
    "comment" / Str,
)
EventAcked = body(
    "EventAcked", "node_id" / Str, "seq" / U64, "acked_by" / Str, "acked_at" / Timestamp
)
EventQuery = body(
    "EventQuery",
    "device_id" / Str,
    "type" / Str,
    "from_time" / Timestamp,
    "to_time" / Timestamp,
    "limit" / U16,
    "username" / Str,
)
Events = body("Events", "events" / List(EventEntry.con), "truncated" / Bool)
EventReport = body(
    "EventReport", "batch" / U64, "dropped" / U32, "events" / List(EventRecord.con)
)
EventReportAck = body("EventReportAck", "batch" / U64, "stored" / U32)


class SsState(IntEnum):
    """A streaming server as its node sees it (SS_REPORT)."""

    UP = 1  # linked and reporting
    STALE = 2  # linked, but its load reports stopped: not chosen
    DOWN = 3  # its process ended or its link is gone: being restarted


# The SS control link (docs/protocol.md 9.8): a node's CDN module and its streaming
# server workers; SS_REPORT carries their load from the node to MDP.
SsHello = body("SsHello", "ss_id" / Str, "media" / Str, "pid" / U32, "nonce" / Bytes)
SsChallenge = body("SsChallenge", "nonce" / Bytes)
SsAuth = body("SsAuth", "proof" / Bytes)
SsWelcome = body("SsWelcome", "proof" / Bytes, "report_interval" / U16)
SsPathLoad = record("SsPathLoad", "path" / Str, "viewers" / U32, "bandwidth_kbps" / U32)
SsLoad = body(
    "SsLoad",
    "streams" / U32,
    "viewers" / U32,
    "bandwidth_kbps" / U32,
    "cpu_permille" / U16,
    "paths" / List(SsPathLoad.con),
)
SsPull = body("SsPull", "path" / Str, "url" / Str)
SsDrop = body("SsDrop", "path" / Str)
SsRedirect = body("SsRedirect", "path" / Str, "url" / Str, "viewers" / U32)
SsServer = record(
    "SsServer",
    "ss_id" / Str,
    "media" / Str,
    "state" / U8,
    "streams" / U32,
    "viewers" / U32,
    "bandwidth_kbps" / U32,
    "cpu_permille" / U16,
)
SsReport = body("SsReport", "servers" / List(SsServer.con))


# TV walls and set-top decoders (WALL_*): CUs that show what operators assign to their
# tiles (vss.rgm.walls). A wall is named by its account; a routed command for it names
# the CU target ``cu:<account>`` (docs/protocol.md 9.9).


#: The prefix of a CU target (a wall or decoder's account) in grants and routes.
CU_TARGET = "cu:"


class WallLayout(IntEnum):
    """How a wall's screen is split: N equal tiles, or the tiles it lists itself."""

    CUSTOM = 0
    ONE = 1
    FOUR = 4
    NINE = 9
    SIXTEEN = 16


#: A tile's place on the screen, in 1/10000 of its width and height.
Tile = record("Tile", "x" / U16, "y" / U16, "width" / U16, "height" / U16)
TileState = record(
    "TileState",
    "tile" / U16,
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
    "tour" / List(Str),
    "dwell" / U16,
    "tour_index" / U16,
    "since" / Timestamp,
    "frames" / U64,
    "errors" / U32,
    "last_error" / Str,
)
TileReport = record(
    "TileReport",
    "tile" / U16,
    "device_id" / Str,
    "frames" / U64,
    "errors" / U32,
    "last_error" / Str,
)
WallDescribe = body(
    "WallDescribe",
    "wall_id" / Str,
    "layout" / U8,
    "tiles" / List(Tile.con),
    "assignments" / List(TileState.con),
)
WallAssign = body(
    "WallAssign",
    "wall_id" / Str,
    "tile" / U16,
    "device_id" / Str,
    "channel" / U16,
    "stream" / U8,
)
WallTour = body(
    "WallTour",
    "wall_id" / Str,
    "tile" / U16,
    "devices" / List(Str),
    "stream" / U8,
    "dwell" / U16,
)
WallQuery = body("WallQuery", "wall_id" / Str)
WallState = body(
    "WallState",
    "wall_id" / Str,
    "node_id" / Str,
    "kind" / U8,
    "layout" / U8,
    "tiles" / List(Tile.con),
    "assignments" / List(TileState.con),
    "version" / U32,
)
WallReport = body("WallReport", "tiles" / List(TileReport.con))


# ---------------------------------------------------------------------------
# Message types: (type id, request body, response body or None for a notification)


class MsgType(IntEnum):
    HELLO = 0x0001
    ERROR = 0x0002
    KEEPALIVE = 0x0003
    BYE = 0x0004
    AUTH_START = 0x0010
    AUTH_PROOF = 0x0011
    REGISTER = 0x0012
    PTZ_CONTROL = 0x0100
    LENS_CONTROL = 0x0101
    PRESET = 0x0102
    CONFIG_GET = 0x0110
    CONFIG_SET = 0x0111
    RECORD_SETTINGS_GET = 0x0120
    RECORD_SETTINGS_SET = 0x0121
    MEDIA_OPEN = 0x0130
    MEDIA_CLOSE = 0x0131
    MEDIA_START = 0x0132
    MEDIA_STOP = 0x0133
    STATE_CHANGE = 0x0140
    DEVICE_LIST = 0x0150
    RECORD_START = 0x0160
    RECORD_STOP = 0x0161
    RECORD_STATUS = 0x0162
    RECORD_QUERY = 0x0170
    CRED_CREATE = 0x0180
    CRED_LIST = 0x0181
    CRED_REVOKE = 0x0182
    EVENT_RAISE = 0x0190
    EVENT_SUBSCRIBE = 0x0191
    EVENT_UNSUBSCRIBE = 0x0192
    EVENT_NOTIFY = 0x0193
    EVENT_ACK = 0x0194
    EVENT_QUERY = 0x0195
    WALL_DESCRIBE = 0x01A0
    WALL_ASSIGN = 0x01A1
    WALL_TOUR = 0x01A2
    WALL_STATE = 0x01A3
    WALL_NOTIFY = 0x01A4
    WALL_REPORT = 0x01A5
    NODE_REGISTER = 0x0200
    NODE_HEARTBEAT = 0x0201
    STATIC_PULL = 0x0202
    ROUTE_REQUEST = 0x0203
    ROUTE_LOOKUP = 0x0204
    REG_INFO = 0x0205
    NODE_LOOKUP = 0x0206
    SYNC_NOTIFY = 0x0210
    SYNC_CHANGE = 0x0211
    SYNC_FETCH = 0x0212
    CRED_STORE = 0x0213
    AUDIT_REPORT = 0x0214
    EVENT_REPORT = 0x0215
    SS_HELLO = 0x0220
    SS_AUTH = 0x0221
    SS_LOAD = 0x0222
    SS_PULL = 0x0223
    SS_DROP = 0x0224
    SS_REPORT = 0x0225
    SS_REDIRECT = 0x0226
    HOME_QUERY = 0x0230
    NODE_LIST = 0x0231


#: type -> (request body class, response body class or None if notification-only)
CATALOGUE = {
    MsgType.HELLO: (Hello, HelloAck),
    MsgType.ERROR: (Error, None),
    MsgType.KEEPALIVE: (Empty, Empty),
    MsgType.BYE: (Bye, None),
    MsgType.AUTH_START: (AuthStart, AuthChallenge),
    MsgType.AUTH_PROOF: (AuthProof, AuthOk),
    MsgType.REGISTER: (Register, Registered),
    MsgType.PTZ_CONTROL: (PtzControl, PtzStatus),
    MsgType.LENS_CONTROL: (LensControl, LensStatus),
    MsgType.PRESET: (Preset, Presets),
    MsgType.CONFIG_GET: (ConfigGet, Config),
    MsgType.CONFIG_SET: (ConfigSet, Config),
    MsgType.RECORD_SETTINGS_GET: (RecordSettingsGet, RecordSettings),
    MsgType.RECORD_SETTINGS_SET: (RecordSettings, RecordSettings),
    MsgType.MEDIA_OPEN: (MediaOpen, MediaUrl),
    MsgType.MEDIA_CLOSE: (MediaClose, Empty),
    MsgType.MEDIA_START: (MediaStart, Empty),
    MsgType.MEDIA_STOP: (MediaStop, Empty),
    MsgType.STATE_CHANGE: (StateChange, None),
    MsgType.DEVICE_LIST: (DeviceList, Devices),
    MsgType.RECORD_START: (RecordRequest, RecordState),
    MsgType.RECORD_STOP: (RecordRequest, RecordState),
    MsgType.RECORD_STATUS: (RecordStatus, RecordStates),
    MsgType.RECORD_QUERY: (RecordQuery, Recordings),
    MsgType.NODE_REGISTER: (NodeRegister, NodeRegistered),
    MsgType.NODE_HEARTBEAT: (Heartbeat, HeartbeatAck),
    MsgType.STATIC_PULL: (StaticPull, StaticPage),
    MsgType.ROUTE_REQUEST: (RouteRequest, RouteResponse),
    MsgType.ROUTE_LOOKUP: (RouteLookup, Route),
    MsgType.REG_INFO: (RegInfoRequest, RegInfo),
    MsgType.NODE_LOOKUP: (NodeLookup, NodeRoute),
    MsgType.SYNC_NOTIFY: (SyncNotify, SyncComplete),
    MsgType.SYNC_CHANGE: (SyncChange, SyncAck),
    MsgType.SYNC_FETCH: (SyncFetch, SyncBatch),
    MsgType.CRED_CREATE: (CredCreate, CredIssued),
    MsgType.CRED_LIST: (CredList, Creds),
    MsgType.CRED_REVOKE: (CredRevoke, CredState),
    MsgType.CRED_STORE: (CredState, CredState),
    MsgType.AUDIT_REPORT: (AuditReport, AuditAck),
    MsgType.EVENT_RAISE: (EventRaise, EventRaised),
    MsgType.EVENT_SUBSCRIBE: (EventSubscribe, EventSubscribed),
    MsgType.EVENT_UNSUBSCRIBE: (EventUnsubscribe, Empty),
    MsgType.EVENT_NOTIFY: (EventNotify, None),
    MsgType.EVENT_ACK: (EventAck, EventAcked),
    MsgType.EVENT_QUERY: (EventQuery, Events),
    MsgType.EVENT_REPORT: (EventReport, EventReportAck),
    MsgType.SS_HELLO: (SsHello, SsChallenge),
    MsgType.SS_AUTH: (SsAuth, SsWelcome),
    MsgType.SS_LOAD: (SsLoad, None),
    MsgType.SS_PULL: (SsPull, Empty),
    MsgType.SS_DROP: (SsDrop, Empty),
    MsgType.SS_REPORT: (SsReport, Empty),
    MsgType.SS_REDIRECT: (SsRedirect, Empty),
    MsgType.WALL_DESCRIBE: (WallDescribe, WallState),
    MsgType.WALL_ASSIGN: (WallAssign, WallState),
    MsgType.WALL_TOUR: (WallTour, WallState),
    MsgType.WALL_STATE: (WallQuery, WallState),
    MsgType.WALL_NOTIFY: (WallState, None),
    MsgType.WALL_REPORT: (WallReport, Empty),
    MsgType.HOME_QUERY: (HomeQuery, HomeRedirect),
    MsgType.NODE_LIST: (NodeList, None),
}
