"""
Conformance vectors: whole frames written by hand from docs/protocol.md, one per body of
every message type in the catalogue (request, response, notification, and the Error
body). Each vector is checked both ways: decoding it gives the typed message, encoding the
message gives the same bytes.

The hex is not produced by the encoder. Header layout (docs/protocol.md, section 2):
``magic(2) version(1) flags(1) type(2) status(2) txid(4) length(4)``.
"""

import pathlib
import re
from typing import NamedTuple

from twisted.trial.unittest import SynchronousTestCase

from vss.protocols.codec import (
    FLAG_ERROR,
    FLAG_NOTIFY,
    FLAG_RESPONSE,
    FrameDecoder,
    Message,
    MessageDecoder,
    ProtocolError,
    decode_body,
    encode_message,
)
from vss.protocols.codes import ResultCode
from vss.protocols.messages import (
    CATALOGUE,
    EXT_HOME_EPOCH,
    EXT_PU_ADDRESS,
    KV,
    AuditAck,
    AuditEvent,
    AuditKind,
    AuditReport,
    AuthChallenge,
    AuthOk,
    AuthProof,
    AuthStart,
    Bye,
    Change,
    ChangeKind,
    ChangeOp,
    Config,
    ConfigGet,
    ConfigSet,
    CredCreate,
    CredIssued,
    CredList,
    CredRevoke,
    Creds,
    CredState,
    CuKind,
    DeviceInfo,
    DeviceList,
    DeviceRecord,
    Devices,
    Empty,
    Entity,
    Error,
    EventAck,
    EventAcked,
    EventEntry,
    EventNotify,
    EventPhase,
    EventQuery,
    EventRaise,
    EventRaised,
    EventRecord,
    EventReport,
    EventReportAck,
    Events,
    EventSubscribe,
    EventSubscribed,
    EventUnsubscribe,
    ExportUrl,
    FocusOp,
    GrantRecord,
    Heartbeat,
    HeartbeatAck,
    Hello,
    HelloAck,
    HomeQuery,
    HomeRedirect,
    IrisOp,
    LensControl,
    LensStatus,
    MediaClose,
    MediaOpen,
    MediaStart,
    MediaStop,
    MediaUrl,
    MsgType,
    NodeAddress,
    NodeList,
    NodeLookup,
    NodeRegister,
    NodeRegistered,
    NodeRoute,
    Preset,
    PresetEntry,
    PresetOp,
    Presets,
    PtzControl,
    PtzOp,
    PtzStatus,
    PuKind,
    Purpose,
    Recordings,
    RecordingState,
    RecordMode,
    RecordQuery,
    RecordRequest,
    RecordSegment,
    RecordSettings,
    RecordSettingsGet,
    RecordState,
    RecordStates,
    RecordStatus,
    RecordTask,
    RegInfo,
    RegInfoRequest,
    Register,
    Registered,
    Role,
    Route,
    RouteLookup,
    RouteRequest,
    RouteResponse,
    ScheduleSlot,
    Severity,
    SsAuth,
    SsChallenge,
    SsDrop,
    SsHello,
    SsLoad,
    SsPathLoad,
    SsPull,
    SsRedirect,
    SsReport,
    SsServer,
    SsState,
    SsWelcome,
    StateChange,
    StaticPage,
    StaticPull,
    Stream,
    StreamCredential,
    SyncAck,
    SyncBatch,
    SyncChange,
    SyncComplete,
    SyncFetch,
    SyncNotify,
    Tile,
    TileReport,
    TileState,
    TimeRange,
    Transport,
    UserRecord,
    Verifier,
    WallAssign,
    WallDescribe,
    WallLayout,
    WallQuery,
    WallReport,
    WallState,
    WallTour,
)

REQ, RSP, NTF, ERR = 0, FLAG_RESPONSE, FLAG_NOTIFY, FLAG_RESPONSE | FLAG_ERROR


def h(text):
    """Bytes from commented hex: '#' starts a comment, whitespace is ignored."""
    return bytes.fromhex(re.sub(r"#[^\n]*", "", text).replace(" ", "").replace("\n", ""))


class V(NamedTuple):
    name: str
    type: int
    flags: int
    txid: int
    body: object
    hex: str
    status: int = 0


TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z = 0x0000018bcfe56800

SEQ = 1_700_000_000_000_001  # a node's first event after a start at TS: 0x00060a24181e4001
EVENT_C = EventRecord(node_id="n1", seq=SEQ, device_id="c", channel=1, type="motion",
                      phase=EventPhase.START, severity=Severity.ALARM, pu_time=TS,
                      node_time=TS + 50, items=[KV(key="zone", value="2")])

VERIFIER_C = Verifier(salt=b"\x01\x02", iterations=4096, stored_key=b"\x03", server_key=b"\x04")


def device_c(version):
    return DeviceRecord(
        device_id="c", name="Cam", kind=PuKind.IPC, channels=1, home_node="n1",
        verifier=VERIFIER_C, source_url="", enabled=True, version=version,
    )


# DeviceRecord "c" as written in the vectors below (40 bytes); only `version` differs.
DEVICE_C = """
    0001 63             # device_id "c"
    0003 43616d         # name "Cam"
    01                  # kind IPC
    0001                # channels 1
    0002 6e31           # home_node "n1"
    0002 0102           # verifier.salt 01 02
    00001000            # verifier.iterations 4096
    0001 03             # verifier.stored_key 03
    0001 04             # verifier.server_key 04
    0000                # source_url ""
    01                  # enabled true
"""

PTZ_BODY = """
    0005 63616d2d31     # device_id "cam-1"
    0001                # channel 1
    01                  # op CONTINUOUS
    3f000000            # pan 0.5
    be800000            # tilt -0.25
    3f800000            # zoom 1.0
    3f400000            # speed 0.75
    000001f4            # timeout_ms 500
    0000                # ext: none
"""

PTZ_STATUS_BODY = """
    3f000000            # pan 0.5
    be800000            # tilt -0.25
    3f800000            # zoom 1.0
    01                  # moving true
    0000                # ext: none
"""

PTZ = PtzControl(
    device_id="cam-1", channel=1, op=PtzOp.CONTINUOUS, pan=0.5, tilt=-0.25, zoom=1.0,
    speed=0.75, timeout_ms=500,
)
PTZ_STATUS = PtzStatus(pan=0.5, tilt=-0.25, zoom=1.0, moving=True)

RECORD_SCHEDULE = RecordSettings(
    device_id="c", channel=1, mode=RecordMode.SCHEDULE, stream=Stream.MAIN,
    segment_seconds=600, retention_days=30, quota_mb=1024, pre_event_seconds=5,
    post_event_seconds=10, schedule=[ScheduleSlot(day=0, start_minute=480, end_minute=1080)],
)
RECORD_SCHEDULE_BODY = """
    0001 63             # device_id "c"
    0001                # channel 1
    02                  # mode SCHEDULE
    00                  # stream MAIN
    00000258            # segment_seconds 600
    001e                # retention_days 30
    00000400            # quota_mb 1024
    0005                # pre_event_seconds 5
    000a                # post_event_seconds 10
    0001                # schedule: 1 slot
      00 01e0 0438      #   day 0 (Monday), start_minute 480, end_minute 1080
    0000                # ext: none
"""
RECORD_CONTINUOUS = RecordSettings(
    device_id="c", channel=1, mode=RecordMode.CONTINUOUS, stream=Stream.SUB,
    segment_seconds=600, retention_days=30, quota_mb=0, pre_event_seconds=0,
    post_event_seconds=0, schedule=[],
)
RECORD_CONTINUOUS_BODY = """
    0001 63             # device_id "c"
    0001                # channel 1
    01                  # mode CONTINUOUS
    01                  # stream SUB
    00000258            # segment_seconds 600
    001e                # retention_days 30
    00000000            # quota_mb 0
    0000                # pre_event_seconds 0
    0000                # post_event_seconds 0
    0000                # schedule: none
    0000                # ext: none
"""

def cred_c(sealed=b"\x05\x06", created=TS, revoked=0, version=1):
    return StreamCredential(
        cred_id="sc-0123456789ab", username="al", device_id="c", name="vlc", created=created,
        expires=0, revoked=revoked, sealed=sealed, version=version,
    )


# StreamCredential "sc-0123456789ab" as written below, up to its `sealed` field (53 bytes).
CRED_C = """
    000f 73632d303132333435363738396162  # cred_id "sc-0123456789ab"
    0002 616c           # username "al"
    0001 63             # device_id "c"
    0003 766c63         # name "vlc"
"""

# TV walls (9.9): a tile showing camera "c"'s sub stream since TS, as written below (36 bytes)
TILE0_C = TileState(tile=0, device_id="c", channel=0, stream=Stream.SUB, tour=[], dwell=0,
                    tour_index=0, since=TS, frames=0, errors=0, last_error="")
TILE0_C_HEX = """
        0000              #   tile 0
        0001 63           #   device_id "c"
        0000              #   channel 0
        01                #   stream SUB
        0000              #   tour: none
        0000              #   dwell 0
        0000              #   tour_index 0
        0000018bcfe56800  #   since TS
        0000000000000000  #   frames 0
        00000000          #   errors 0
        0000              #   last_error ""
"""
QUAD = [Tile(x=0, y=0, width=5000, height=5000), Tile(x=5000, y=0, width=5000, height=5000),
        Tile(x=0, y=5000, width=5000, height=5000),
        Tile(x=5000, y=5000, width=5000, height=5000)]
FULL = Tile(x=0, y=0, width=10000, height=10000)

VECTORS = [
    V("hello_request", MsgType.HELLO, REQ, 1,
      Hello(min_version=1, max_version=1, role=Role.PU, agent="pu", features=["ptz"]), """
      5653 01 00 0001 0000 00000001 00000010  # VS v1 request HELLO status 0 txid 1 len 16
      01                  # min_version 1
      01                  # max_version 1
      01                  # role PU
      0002 7075           # agent "pu"
      0001 0003 70747a    # features: 1 item, "ptz"
      0000                # ext: none
    """),
    V("hello_response", MsgType.HELLO, RSP, 1,
      HelloAck(version=1, node_id="n1", agent="vss", features=[]), """
      5653 01 01 0001 0000 00000001 0000000e  # VS v1 response HELLO status 0 txid 1 len 14
      01                  # version 1
      0002 6e31           # node_id "n1"
      0003 767373         # agent "vss"
      0000                # features: none
      0000                # ext: none
    """),
    V("error_unreadable_header", MsgType.ERROR, ERR, 0, Error(message="bad magic"), """
      5653 01 03 0002 0101 00000000 0000000d  # VS v1 error ERROR status BAD_MAGIC txid 0 len 13
      0009 626164206d61676963  # message "bad magic"
      0000                # ext: none
    """, status=ResultCode.BAD_MAGIC),
    V("error_response_to_ptz", MsgType.PTZ_CONTROL, ERR, 9, Error(message="no device cam-1"), """
      5653 01 03 0100 0301 00000009 00000013  # VS v1 error PTZ_CONTROL UNKNOWN_DEVICE txid 9 len 19
      000f 6e6f20646576696365 2063616d2d31  # message "no device cam-1"
      0000                # ext: none
    """, status=ResultCode.UNKNOWN_DEVICE),
    V("error_not_active_to_hello", MsgType.HELLO, ERR, 1,
      Error(message="another CMS is active"), """
      5653 01 03 0001 0407 00000001 00000019  # VS v1 error HELLO NOT_ACTIVE txid 1 len 25
      0015 616e6f74686572 20434d53 206973 20616374697665  # "another CMS is active"
      0000                # ext: none
    """, status=ResultCode.NOT_ACTIVE),
    V("bye_not_active", MsgType.BYE, NTF, 0,
      Bye(reason=ResultCode.NOT_ACTIVE, message="another CMS is active"), """
      5653 01 04 0004 0000 00000000 0000001b  # VS v1 notify BYE txid 0 len 27
      0407                # reason NOT_ACTIVE
      0015 616e6f74686572 20434d53 206973 20616374697665  # "another CMS is active"
      0000                # ext: none
    """),
    V("error_notification_slot", MsgType.ERROR, NTF, 0, Error(message=""), """
      5653 01 04 0002 0000 00000000 00000004  # VS v1 notify ERROR status 0 txid 0 len 4
      0000                # message ""
      0000                # ext: none
    """),
    V("keepalive_request", MsgType.KEEPALIVE, REQ, 7, Empty(), """
      5653 01 00 0003 0000 00000007 00000002  # VS v1 request KEEPALIVE txid 7 len 2
      0000                # ext: none
    """),
    V("keepalive_response", MsgType.KEEPALIVE, RSP, 7, Empty(), """
      5653 01 01 0003 0000 00000007 00000002  # VS v1 response KEEPALIVE txid 7 len 2
      0000                # ext: none
    """),
    V("keepalive_with_extension", MsgType.KEEPALIVE, REQ, 8, Empty(ext=((1, b"\xab"),)), """
      5653 01 00 0003 0000 00000008 00000007  # VS v1 request KEEPALIVE txid 8 len 7
      0001                # ext: 1 record
        0001 0001 ab      #   tag 1, length 1, value ab (unknown: kept raw)
    """),
    V("bye_notification", MsgType.BYE, NTF, 0,
      Bye(reason=ResultCode.KEEPALIVE_TIMEOUT, message=""), """
      5653 01 04 0004 0000 00000000 00000006  # VS v1 notify BYE txid 0 len 6
      0207                # reason KEEPALIVE_TIMEOUT
      0000                # message ""
      0000                # ext: none
    """),
    V("auth_start_request", MsgType.AUTH_START, REQ, 2,
      AuthStart(identity="alice", mechanism="SCRAM-SHA-256", client_nonce=bytes(range(24))), """
      5653 01 00 0010 0000 00000002 00000032  # VS v1 request AUTH_START txid 2 len 50
      0005 616c696365     # identity "alice"
      000d 534352414d2d5348412d323536  # mechanism "SCRAM-SHA-256"
      0018 000102030405060708090a0b0c0d0e0f1011121314151617  # client_nonce, 24 bytes
      0000                # ext: none
    """),
    V("auth_start_response", MsgType.AUTH_START, RSP, 2,
      AuthChallenge(salt=bytes(range(0xA0, 0xB0)), iterations=4096,
                    server_nonce=bytes(range(0xB0, 0xC8))), """
      5653 01 01 0010 0000 00000002 00000032  # VS v1 response AUTH_START txid 2 len 50
      0010 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf  # salt, 16 bytes
      00001000            # iterations 4096
      0018 b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7  # server_nonce, 24 bytes
      0000                # ext: none
    """),
    V("auth_proof_request", MsgType.AUTH_PROOF, REQ, 3, AuthProof(client_proof=b"\x11" * 32), """
      5653 01 00 0011 0000 00000003 00000024  # VS v1 request AUTH_PROOF txid 3 len 36
      0020 1111111111111111111111111111111111111111111111111111111111111111  # proof, 32 bytes
      0000                # ext: none
    """),
    V("auth_proof_response", MsgType.AUTH_PROOF, RSP, 3,
      AuthOk(server_signature=b"\x22" * 32, session_id="s1"), """
      5653 01 01 0011 0000 00000003 00000028  # VS v1 response AUTH_PROOF txid 3 len 40
      0020 2222222222222222222222222222222222222222222222222222222222222222  # signature
      0002 7331           # session_id "s1"
      0000                # ext: none
    """),
    V("register_request", MsgType.REGISTER, REQ, 4,
      Register(kind=PuKind.IPC, model="m", firmware="f", channels=2,
               attributes=[KV(key="k", value="v")]), """
      5653 01 00 0012 0000 00000004 00000013  # VS v1 request REGISTER txid 4 len 19
      01                  # kind IPC
      0001 6d             # model "m"
      0001 66             # firmware "f"
      0002                # channels 2
      0001                # attributes: 1 item
        0001 6b 0001 76   #   key "k", value "v"
      0000                # ext: none
    """),
    V("register_response", MsgType.REGISTER, RSP, 4,
      Registered(node_id="n1", keepalive_interval=30, server_time=TS), """
      5653 01 01 0012 0000 00000004 00000010  # VS v1 response REGISTER txid 4 len 16
      0002 6e31           # node_id "n1"
      001e                # keepalive_interval 30 s
      0000018bcfe56800    # server_time 1700000000000 ms
      0000                # ext: none
    """),
    V("ptz_control_request", MsgType.PTZ_CONTROL, REQ, 2, PTZ, """
      5653 01 00 0100 0000 00000002 00000020  # VS v1 request PTZ_CONTROL txid 2 len 32
    """ + PTZ_BODY),
    V("ptz_control_response", MsgType.PTZ_CONTROL, RSP, 2, PTZ_STATUS, """
      5653 01 01 0100 0000 00000002 0000000f  # VS v1 response PTZ_CONTROL txid 2 len 15
    """ + PTZ_STATUS_BODY),
    V("lens_control_request", MsgType.LENS_CONTROL, REQ, 5,
      LensControl(device_id="c", channel=1, focus=FocusOp.NEAR, iris=IrisOp.AUTO, speed=0.5), """
      5653 01 00 0101 0000 00000005 0000000d  # VS v1 request LENS_CONTROL txid 5 len 13
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # focus NEAR
      03                  # iris AUTO
      3f000000            # speed 0.5
      0000                # ext: none
    """),
    V("lens_control_response", MsgType.LENS_CONTROL, RSP, 5,
      LensStatus(focus=0.25, iris=1.0, auto_focus=True, auto_iris=False), """
      5653 01 01 0101 0000 00000005 0000000c  # VS v1 response LENS_CONTROL txid 5 len 12
      3e800000            # focus 0.25
      3f800000            # iris 1.0
      01                  # auto_focus true
      00                  # auto_iris false
      0000                # ext: none
    """),
    V("preset_request", MsgType.PRESET, REQ, 6,
      Preset(device_id="c", channel=1, op=PresetOp.SET, preset=3, name="door"), """
      5653 01 00 0102 0000 00000006 00000010  # VS v1 request PRESET txid 6 len 16
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # op SET
      0003                # preset 3
      0004 646f6f72       # name "door"
      0000                # ext: none
    """),
    V("preset_response", MsgType.PRESET, RSP, 6,
      Presets(presets=[PresetEntry(preset=3, name="door", pan=0.5, tilt=-0.5, zoom=0.0)]), """
      5653 01 01 0102 0000 00000006 00000018  # VS v1 response PRESET txid 6 len 24
      0001                # presets: 1 item
        0003              #   preset 3
        0004 646f6f72     #   name "door"
        3f000000          #   pan 0.5
        bf000000          #   tilt -0.5
        00000000          #   zoom 0.0
      0000                # ext: none
    """),
    V("config_get_request", MsgType.CONFIG_GET, REQ, 10,
      ConfigGet(device_id="c", channel=0, keys=["a", "b"]), """
      5653 01 00 0110 0000 0000000a 0000000f  # VS v1 request CONFIG_GET txid 10 len 15
      0001 63             # device_id "c"
      0000                # channel 0 (the device)
      0002 0001 61 0001 62  # keys: 2 items, "a", "b"
      0000                # ext: none
    """),
    V("config_get_response", MsgType.CONFIG_GET, RSP, 10,
      Config(items=[KV(key="a", value="1")], version=7), """
      5653 01 01 0110 0000 0000000a 0000000e  # VS v1 response CONFIG_GET txid 10 len 14
      0001                # items: 1
        0001 61 0001 31   #   key "a", value "1"
      00000007            # version 7
      0000                # ext: none
    """),
    V("config_set_request", MsgType.CONFIG_SET, REQ, 11,
      ConfigSet(device_id="c", channel=1, items=[KV(key="a", value="2")], expected_version=7),
      """
      5653 01 00 0111 0000 0000000b 00000013  # VS v1 request CONFIG_SET txid 11 len 19
      0001 63             # device_id "c"
      0001                # channel 1
      0001                # items: 1
        0001 61 0001 32   #   key "a", value "2"
      00000007            # expected_version 7
      0000                # ext: none
    """),
    V("config_set_response", MsgType.CONFIG_SET, RSP, 11,
      Config(items=[KV(key="a", value="2")], version=8), """
      5653 01 01 0111 0000 0000000b 0000000e  # VS v1 response CONFIG_SET txid 11 len 14
      0001                # items: 1
        0001 61 0001 32   #   key "a", value "2"
      00000008            # version 8
      0000                # ext: none
    """),
    V("record_settings_get_request", MsgType.RECORD_SETTINGS_GET, REQ, 12,
      RecordSettingsGet(device_id="c", channel=1), """
      5653 01 00 0120 0000 0000000c 00000007  # VS v1 request RECORD_SETTINGS_GET txid 12 len 7
      0001 63             # device_id "c"
      0001                # channel 1
      0000                # ext: none
    """),
    V("record_settings_get_response", MsgType.RECORD_SETTINGS_GET, RSP, 12, RECORD_SCHEDULE, """
      5653 01 01 0120 0000 0000000c 0000001e  # VS v1 response RECORD_SETTINGS_GET txid 12 len 30
    """ + RECORD_SCHEDULE_BODY),
    V("record_settings_get_response_event_types", MsgType.RECORD_SETTINGS_GET, RSP, 12,
      RecordSettings(device_id="c", channel=1, mode=RecordMode.EVENT, stream=Stream.MAIN,
                     segment_seconds=60, retention_days=7, quota_mb=0, pre_event_seconds=5,
                     post_event_seconds=10, schedule=[], ext=((0x0001, b"motion,alarm-in"),)),
      """
      5653 01 01 0120 0000 0000000c 0000002c  # VS v1 response RECORD_SETTINGS_GET txid 12 len 44
      0001 63             # device_id "c"
      0001                # channel 1
      03                  # mode EVENT
      00                  # stream MAIN
      0000003c            # segment_seconds 60
      0007                # retention_days 7
      00000000            # quota_mb 0
      0005                # pre_event_seconds 5
      000a                # post_event_seconds 10
      0000                # schedule: none
      0001                # ext: 1 record
        0001              #   tag EVENT_TYPES
        000f 6d6f74696f6e2c616c61726d2d696e  #   "motion,alarm-in": these start a recording
    """),
    V("record_settings_set_request", MsgType.RECORD_SETTINGS_SET, REQ, 13, RECORD_CONTINUOUS, """
      5653 01 00 0121 0000 0000000d 00000019  # VS v1 request RECORD_SETTINGS_SET txid 13 len 25
    """ + RECORD_CONTINUOUS_BODY),
    V("record_settings_set_response", MsgType.RECORD_SETTINGS_SET, RSP, 13, RECORD_CONTINUOUS,
      """
      5653 01 01 0121 0000 0000000d 00000019  # VS v1 response RECORD_SETTINGS_SET txid 13 len 25
    """ + RECORD_CONTINUOUS_BODY),
    V("media_open_request", MsgType.MEDIA_OPEN, REQ, 14,
      MediaOpen(device_id="c", channel=1, stream=Stream.MAIN, purpose=Purpose.PLAYBACK,
                start_time=TS, transport=Transport.TCP), """
      5653 01 00 0130 0000 0000000e 00000012  # VS v1 request MEDIA_OPEN txid 14 len 18
      0001 63             # device_id "c"
      0001                # channel 1
      00                  # stream MAIN
      02                  # purpose PLAYBACK
      0000018bcfe56800    # start_time 1700000000000 ms
      01                  # transport TCP
      0000                # ext: none
    """),
    V("media_open_response", MsgType.MEDIA_OPEN, RSP, 14,
      MediaUrl(url="rtsp://h/x", session_id="m1", expires=TS + 60_000), """
      5653 01 01 0130 0000 0000000e 0000001a  # VS v1 response MEDIA_OPEN txid 14 len 26
      000a 727473703a2f2f682f78  # url "rtsp://h/x"
      0002 6d31           # session_id "m1"
      0000018bcfe65260    # expires 1700000060000 ms
      0000                # ext: none
    """),
    V("media_close_request", MsgType.MEDIA_CLOSE, REQ, 15, MediaClose(session_id="m1"), """
      5653 01 00 0131 0000 0000000f 00000006  # VS v1 request MEDIA_CLOSE txid 15 len 6
      0002 6d31           # session_id "m1"
      0000                # ext: none
    """),
    V("media_close_response", MsgType.MEDIA_CLOSE, RSP, 15, Empty(), """
      5653 01 01 0131 0000 0000000f 00000002  # VS v1 response MEDIA_CLOSE txid 15 len 2
      0000                # ext: none
    """),
    V("media_start_request", MsgType.MEDIA_START, REQ, 16,
      MediaStart(device_id="c", channel=1, stream=Stream.SUB, publish_url="rtsp://s/p",
                 start_time=0), """
      5653 01 00 0132 0000 00000010 0000001c  # VS v1 request MEDIA_START txid 16 len 28
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # stream SUB
      000a 727473703a2f2f732f70  # publish_url "rtsp://s/p"
      0000000000000000    # start_time 0 (live)
      0000                # ext: none
    """),
    V("media_start_response", MsgType.MEDIA_START, RSP, 16, Empty(), """
      5653 01 01 0132 0000 00000010 00000002  # VS v1 response MEDIA_START txid 16 len 2
      0000                # ext: none
    """),
    V("media_stop_request", MsgType.MEDIA_STOP, REQ, 17,
      MediaStop(device_id="c", channel=1, stream=Stream.SUB), """
      5653 01 00 0133 0000 00000011 00000008  # VS v1 request MEDIA_STOP txid 17 len 8
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # stream SUB
      0000                # ext: none
    """),
    V("media_stop_response", MsgType.MEDIA_STOP, RSP, 17, Empty(), """
      5653 01 01 0133 0000 00000011 00000002  # VS v1 response MEDIA_STOP txid 17 len 2
      0000                # ext: none
    """),
    V("state_change_notification", MsgType.STATE_CHANGE, NTF, 0,
      StateChange(device_id="c", channel=0, change=ChangeKind.ONLINE, timestamp=TS, items=[]),
      """
      5653 01 04 0140 0000 00000000 00000012  # VS v1 notify STATE_CHANGE txid 0 len 18
      0001 63             # device_id "c"
      0000                # channel 0 (the device)
      01                  # change ONLINE
      0000018bcfe56800    # timestamp 1700000000000 ms
      0000                # items: none
      0000                # ext: none
    """),
    V("device_list_request", MsgType.DEVICE_LIST, REQ, 18, DeviceList(cursor="", limit=100), """
      5653 01 00 0150 0000 00000012 00000006  # VS v1 request DEVICE_LIST txid 18 len 6
      0000                # cursor ""
      0064                # limit 100
      0000                # ext: none
    """),
    V("device_list_response", MsgType.DEVICE_LIST, RSP, 18,
      Devices(devices=[DeviceInfo(device_id="c", name="Cam", kind=PuKind.IPC, channels=1,
                                  online=True, node_id="n1", actions=0x03)],
              next_cursor=""), """
      5653 01 01 0150 0000 00000012 00000017  # VS v1 response DEVICE_LIST txid 18 len 23
      0001                # devices: 1
        0001 63           #   device_id "c"
        0003 43616d       #   name "Cam"
        01                #   kind IPC
        0001              #   channels 1
        01                #   online true
        0002 6e31         #   node_id "n1"
        03                #   actions VIEW|PTZ
      0000                # next_cursor ""
      0000                # ext: none
    """),
    V("node_register_request", MsgType.NODE_REGISTER, REQ, 1,
      NodeRegister(node_id="n1", signalling="tcp:h:7000", media="rtsp://h", capacity=100,
                   applied_seq=5), """
      5653 01 00 0200 0000 00000001 00000028  # VS v1 request NODE_REGISTER txid 1 len 40
      0002 6e31           # node_id "n1"
      000a 7463703a683a37303030  # signalling "tcp:h:7000"
      0008 727473703a2f2f68  # media "rtsp://h"
      00000064            # capacity 100
      0000000000000005    # applied_seq 5
      0000                # ext: none
    """),
    V("node_register_response", MsgType.NODE_REGISTER, RSP, 1,
      NodeRegistered(cms_id="cms", heartbeat_interval=15, head_seq=9), """
      5653 01 01 0200 0000 00000001 00000011  # VS v1 response NODE_REGISTER txid 1 len 17
      0003 636d73         # cms_id "cms"
      000f                # heartbeat_interval 15 s
      0000000000000009    # head_seq 9
      0000                # ext: none
    """),
    V("node_heartbeat_request", MsgType.NODE_HEARTBEAT, REQ, 2,
      Heartbeat(pus=2, cus=3, streams=1, cpu_permille=250, bandwidth_kbps=4000, applied_seq=9),
      """
      5653 01 00 0201 0000 00000002 0000001c  # VS v1 request NODE_HEARTBEAT txid 2 len 28
      00000002            # pus 2
      00000003            # cus 3
      00000001            # streams 1
      00fa                # cpu_permille 250
      00000fa0            # bandwidth_kbps 4000
      0000000000000009    # applied_seq 9
      0000                # ext: none
    """),
    V("node_heartbeat_response", MsgType.NODE_HEARTBEAT, RSP, 2, HeartbeatAck(head_seq=9), """
      5653 01 01 0201 0000 00000002 0000000a  # VS v1 response NODE_HEARTBEAT txid 2 len 10
      0000000000000009    # head_seq 9
      0000                # ext: none
    """),
    V("static_pull_request", MsgType.STATIC_PULL, REQ, 3,
      StaticPull(entity=Entity.DEVICE, cursor="", limit=500), """
      5653 01 00 0202 0000 00000003 00000009  # VS v1 request STATIC_PULL txid 3 len 9
      01                  # entity DEVICE
      0000                # cursor ""
      000001f4            # limit 500
      0000                # ext: none
    """),
    V("static_pull_response", MsgType.STATIC_PULL, RSP, 3,
      StaticPage(entity=Entity.DEVICE, devices=[device_c(2)], users=[], grants=[],
                 next_cursor="", seq=9), """
      5653 01 01 0202 0000 00000003 0000003d  # VS v1 response STATIC_PULL txid 3 len 61
      01                  # entity DEVICE
      0001                # devices: 1 DeviceRecord
    """ + DEVICE_C + """
        0000000000000002  #   version 2
      0000                # users: none
      0000                # grants: none
      0000                # next_cursor ""
      0000000000000009    # seq 9
      0000                # credentials: none
      0000                # ext: none
    """),
    V("route_request_request", MsgType.ROUTE_REQUEST, REQ, 4,
      RouteRequest(origin_node="n1", device_id="c", hops=0, inner_type=MsgType.PTZ_CONTROL,
                   inner_body=h(PTZ_BODY)), """
      5653 01 00 0203 0000 00000004 00000030  # VS v1 request ROUTE_REQUEST txid 4 len 48
      0002 6e31           # origin_node "n1"
      0001 63             # device_id "c"
      00                  # hops 0
      0100                # inner_type PTZ_CONTROL
      00000020            # inner_body: 32 bytes, the CU's PtzControl body:
    """ + PTZ_BODY + """
      0000                # ext: none
    """),
    V("route_request_response", MsgType.ROUTE_REQUEST, RSP, 4,
      RouteResponse(home_node="n2", inner_status=0, inner_body=h(PTZ_STATUS_BODY)), """
      5653 01 01 0203 0000 00000004 0000001b  # VS v1 response ROUTE_REQUEST txid 4 len 27
      0002 6e32           # home_node "n2"
      0000                # inner_status OK
      0000000f            # inner_body: 15 bytes, the PU's PtzStatus body:
    """ + PTZ_STATUS_BODY + """
      0000                # ext: none
    """),
    V("route_request_response_inner_error", MsgType.ROUTE_REQUEST, RSP, 5,
      RouteResponse(home_node="n2", inner_status=ResultCode.DEVICE_OFFLINE,
                    inner_body=h("0003 6f6666 0000")), """
      5653 01 01 0203 0000 00000005 00000013  # VS v1 response ROUTE_REQUEST txid 5 len 19
      0002 6e32           # home_node "n2"
      0303                # inner_status DEVICE_OFFLINE
      00000007            # inner_body: 7 bytes, an Error body:
        0003 6f6666       #   message "off"
        0000              #   ext: none
      0000                # ext: none
    """),
    V("route_lookup_request", MsgType.ROUTE_LOOKUP, REQ, 6, RouteLookup(device_id="c"), """
      5653 01 00 0204 0000 00000006 00000005  # VS v1 request ROUTE_LOOKUP txid 6 len 5
      0001 63             # device_id "c"
      0000                # ext: none
    """),
    V("route_lookup_response", MsgType.ROUTE_LOOKUP, RSP, 6,
      Route(device_id="c", home_node="n2", signalling="tcp:h:7000", media="rtsp://h",
            node_up=True), """
      5653 01 01 0204 0000 00000006 00000020  # VS v1 response ROUTE_LOOKUP txid 6 len 32
      0001 63             # device_id "c"
      0002 6e32           # home_node "n2"
      000a 7463703a683a37303030  # signalling "tcp:h:7000"
      0008 727473703a2f2f68  # media "rtsp://h"
      01                  # node_up true
      0000                # ext: none
    """),
    V("reg_info_request", MsgType.REG_INFO, REQ, 7,
      RegInfoRequest(identity="bob", role=Role.CU), """
      5653 01 00 0205 0000 00000007 00000008  # VS v1 request REG_INFO txid 7 len 8
      0003 626f62         # identity "bob"
      02                  # role CU
      0000                # ext: none
    """),
    V("reg_info_response", MsgType.REG_INFO, RSP, 7,
      RegInfo(home_node="n1", device=None,
              user=UserRecord(username="bob",
                              verifier=Verifier(salt=b"\x01", iterations=1, stored_key=b"\x02",
                                                server_key=b"\x03"),
                              groups=["ops"], enabled=True, version=1),
              grants=[GrantRecord(principal="user:bob", device_id="c", actions=0x01, version=1,
                                  expires=1767225600000)]),
      """
      5653 01 01 0205 0000 00000007 0000004a  # VS v1 response REG_INFO txid 7 len 74
      0002 6e31           # home_node "n1"
      00                  # device: absent
      01                  # user: present, a UserRecord
        0003 626f62       #   username "bob"
        0001 01           #   verifier.salt 01
        00000001          #   verifier.iterations 1
        0001 02           #   verifier.stored_key 02
        0001 03           #   verifier.server_key 03
        0001 0003 6f7073  #   groups: 1, "ops"
        01                #   enabled true
        0000000000000001  #   version 1
      0001                # grants: 1 GrantRecord
        0008 757365723a626f62  #   principal "user:bob"
        0001 63           #   device_id "c"
        01                #   actions VIEW
        0000000000000001  #   version 1
        0000019b76daa800  #   expires 2026-01-01T00:00:00Z (1767225600000 ms)
      0000                # ext: none
    """),
    V("node_lookup_request", MsgType.NODE_LOOKUP, REQ, 31, NodeLookup(node_id="n3"), """
      5653 01 00 0206 0000 0000001f 00000006  # VS v1 request NODE_LOOKUP txid 31 len 6
      0002 6e33           # node_id "n3"
      0000                # ext: none
    """),
    V("node_lookup_response", MsgType.NODE_LOOKUP, RSP, 31,
      NodeRoute(node_id="n3", signalling="tcp:h:7000", media="rtsp://h", node_up=True), """
      5653 01 01 0206 0000 0000001f 0000001d  # VS v1 response NODE_LOOKUP txid 31 len 29
      0002 6e33           # node_id "n3"
      000a 7463703a683a37303030  # signalling "tcp:h:7000"
      0008 727473703a2f2f68  # media "rtsp://h"
      01                  # node_up true
      0000                # ext: none
    """),
    V("node_lookup_response_down", MsgType.NODE_LOOKUP, RSP, 32,
      NodeRoute(node_id="n4", signalling="", media="", node_up=False), """
      5653 01 01 0206 0000 00000020 0000000b  # VS v1 response NODE_LOOKUP txid 32 len 11
      0002 6e34           # node_id "n4"
      0000                # signalling "" (the node is down)
      0000                # media ""
      00                  # node_up false
      0000                # ext: none
    """),
    V("node_lookup_error_unknown_node", MsgType.NODE_LOOKUP, ERR, 33,
      Error(message="no node n9"), """
      5653 01 03 0206 0403 00000021 0000000e  # VS v1 error NODE_LOOKUP UNKNOWN_NODE txid 33 len 14
      000a 6e6f206e6f6465206e39  # message "no node n9"
      0000                # ext: none
    """, status=ResultCode.UNKNOWN_NODE),
    V("sync_notify_request", MsgType.SYNC_NOTIFY, REQ, 8,
      SyncNotify(head_seq=10, changes=[
          Change(seq=10, entity=Entity.GRANT, op=ChangeOp.DELETE, key="user:bob|c", version=2,
                 origin="", device=None, user=None, grant=None)]), """
      5653 01 00 0210 0000 00000008 00000030  # VS v1 request SYNC_NOTIFY txid 8 len 48
      000000000000000a    # head_seq 10
      0001                # changes: 1 Change
        000000000000000a  #   seq 10
        03                #   entity GRANT
        02                #   op DELETE
        000a 757365723a626f627c63  #   key "user:bob|c"
        0000000000000002  #   version 2
        0000              #   origin ""
        00                #   device: absent
        00                #   user: absent
        00                #   grant: absent
        00                #   credential: absent
      0000                # ext: none
    """),
    V("sync_notify_request_prev_seq", MsgType.SYNC_NOTIFY, REQ, 12,
      SyncNotify(head_seq=20, changes=[], ext=((0x0001, bytes.fromhex("000000000000000c")),)),
      """
      5653 01 00 0210 0000 0000000c 00000018  # VS v1 request SYNC_NOTIFY txid 12 len 24
      0000000000000014    # head_seq 20
      0000                # changes: none for this node up to 20
      0001                # ext: 1 record
        0001              #   tag PREV_SEQ
        0008              #   length 8
        000000000000000c  #   the previous notify to this node ended at 12
    """),
    V("sync_notify_response", MsgType.SYNC_NOTIFY, RSP, 8,
      SyncComplete(node_id="n1", applied_seq=10), """
      5653 01 01 0210 0000 00000008 0000000e  # VS v1 response SYNC_NOTIFY txid 8 len 14
      0002 6e31           # node_id "n1"
      000000000000000a    # applied_seq 10
      0000                # ext: none
    """),
    V("sync_change_request", MsgType.SYNC_CHANGE, REQ, 9,
      SyncChange(node_id="n1", change_id=1, device_id="c", channel=1, change=ChangeKind.PTZ,
                 timestamp=TS, items=[KV(key="pan", value="0.5")], base_version=2), """
      5653 01 00 0211 0000 00000009 00000030  # VS v1 request SYNC_CHANGE txid 9 len 48
      0002 6e31           # node_id "n1"
      0000000000000001    # change_id 1
      0001 63             # device_id "c"
      0001                # channel 1
      04                  # change PTZ
      0000018bcfe56800    # timestamp 1700000000000 ms
      0001                # items: 1
        0003 70616e 0003 302e35  # key "pan", value "0.5"
      0000000000000002    # base_version 2
      0000                # ext: none
    """),
    V("sync_change_response", MsgType.SYNC_CHANGE, RSP, 9,
      SyncAck(change_id=1, seq=11, applied=True), """
      5653 01 01 0211 0000 00000009 00000013  # VS v1 response SYNC_CHANGE txid 9 len 19
      0000000000000001    # change_id 1
      000000000000000b    # seq 11
      01                  # applied true
      0000                # ext: none
    """),
    V("sync_fetch_request", MsgType.SYNC_FETCH, REQ, 10, SyncFetch(after_seq=9, limit=100), """
      5653 01 00 0212 0000 0000000a 0000000e  # VS v1 request SYNC_FETCH txid 10 len 14
      0000000000000009    # after_seq 9
      00000064            # limit 100
      0000                # ext: none
    """),
    V("sync_fetch_response", MsgType.SYNC_FETCH, RSP, 10,
      SyncBatch(changes=[
          Change(seq=10, entity=Entity.DEVICE, op=ChangeOp.UPSERT, key="c", version=3,
                 origin="n1", device=device_c(3), user=None, grant=None)],
                head_seq=10, reload_required=False), """
      5653 01 01 0212 0000 0000000a 00000052  # VS v1 response SYNC_FETCH txid 10 len 82
      0001                # changes: 1 Change
        000000000000000a  #   seq 10
        01                #   entity DEVICE
        01                #   op UPSERT
        0001 63           #   key "c"
        0000000000000003  #   version 3
        0002 6e31         #   origin "n1"
        01                #   device: present, a DeviceRecord
    """ + DEVICE_C + """
        0000000000000003  #     version 3
        00                #   user: absent
        00                #   grant: absent
        00                #   credential: absent
      000000000000000a    # head_seq 10
      00                  # reload_required false
      0000                # ext: none
    """),
    V("sync_fetch_response_scanned_seq", MsgType.SYNC_FETCH, RSP, 13,
      SyncBatch(changes=[], head_seq=9000, reload_required=False,
                ext=((0x0001, bytes.fromhex("0000000000001388")),)), """
      5653 01 01 0212 0000 0000000d 00000019  # VS v1 response SYNC_FETCH txid 13 len 25
      0000                # changes: none of this node's share
      0000000000002328    # head_seq 9000
      00                  # reload_required false
      0001                # ext: 1 record
        0001              #   tag SCANNED_SEQ
        0008              #   length 8
        0000000000001388  #   every entry up to 5000 was looked at
    """),
    V("audit_report_request", MsgType.AUDIT_REPORT, REQ, 40,
      AuditReport(batch=7, dropped=2, events=[
          AuditEvent(at=TS, kind=AuditKind.PLAYBACK, username="bob", device_id="c", channel=1,
                     stream=Stream.MAIN, from_time=TS - 60_000, to_time=0, peer="10.0.0.9",
                     via="web"),
          AuditEvent(at=TS, kind=AuditKind.EXPORT, username="bob", device_id="c", channel=0,
                     stream=Stream.SUB, from_time=TS - 600_000, to_time=TS, peer="::1",
                     via="export")]), """
      5653 01 00 0214 0000 00000028 00000074  # VS v1 request AUDIT_REPORT txid 40 len 116
      0000000000000007    # batch 7
      00000002            # dropped 2
      0002                # events: 2 AuditEvent
        0000018bcfe56800  #   at TS
        02                #   kind PLAYBACK
        0003 626f62       #   username "bob"
        0001 63           #   device_id "c"
        0001              #   channel 1
        00                #   stream MAIN
        0000018bcfe47da0  #   from_time TS - 60 s
        0000000000000000  #   to_time 0 (none)
        0008 31302e302e302e39  #   peer "10.0.0.9"
        0003 776562       #   via "web"
        0000018bcfe56800  #   at TS
        03                #   kind EXPORT
        0003 626f62       #   username "bob"
        0001 63           #   device_id "c"
        0000              #   channel 0
        01                #   stream SUB
        0000018bcfdc4040  #   from_time TS - 600 s
        0000018bcfe56800  #   to_time TS
        0003 3a3a31       #   peer "::1"
        0006 6578706f7274 #   via "export"
      0000                # ext: none
    """),
    V("audit_report_response", MsgType.AUDIT_REPORT, RSP, 40, AuditAck(batch=7, stored=3), """
      5653 01 01 0214 0000 00000028 0000000e  # VS v1 response AUDIT_REPORT txid 40 len 14
      0000000000000007    # batch 7
      00000003            # stored 3 (two events and the lost entry)
      0000                # ext: none
    """),
    V("event_raise_request", MsgType.EVENT_RAISE, REQ, 50,
      EventRaise(device_id="c", channel=1, type="motion", phase=EventPhase.START,
                 severity=Severity.ALARM, pu_time=TS, items=[KV(key="zone", value="2")]), """
      5653 01 00 0190 0000 00000032 00000024  # VS v1 request EVENT_RAISE txid 50 len 36
      0001 63             # device_id "c" (the PU itself)
      0001                # channel 1
      0006 6d6f74696f6e   # type "motion"
      01                  # phase START
      02                  # severity ALARM
      0000018bcfe56800    # pu_time TS
      0001                # items: 1 KV
        0004 7a6f6e65     #   key "zone"
        0001 32           #   value "2"
      0000                # ext: none
    """),
    V("event_raise_response", MsgType.EVENT_RAISE, RSP, 50,
      EventRaised(node_id="n1", seq=SEQ), """
      5653 01 01 0190 0000 00000032 0000000e  # VS v1 response EVENT_RAISE txid 50 len 14
      0002 6e31           # node_id "n1" (the home node numbered it)
      00060a24181e4001    # seq TS * 1000 + 1: the first event since n1 started at TS
      0000                # ext: none
    """),
    V("event_subscribe_request", MsgType.EVENT_SUBSCRIBE, REQ, 51,
      EventSubscribe(devices=["c"], groups=[], types=["motion"], resume_after=SEQ), """
      5653 01 00 0191 0000 00000033 0000001b  # VS v1 request EVENT_SUBSCRIBE txid 51 len 27
      0001                # devices: 1
        0001 63           #   "c"
      0000                # groups: none
      0001                # types: 1
        0006 6d6f74696f6e #   "motion"
      00060a24181e4001    # resume_after SEQ: the last feed id this CU saw
      0000                # ext: none
    """),
    V("event_subscribe_response", MsgType.EVENT_SUBSCRIBE, RSP, 51,
      EventSubscribed(subscription=1, head=SEQ + 4, replayed=2, gap=False), """
      5653 01 01 0191 0000 00000033 00000013  # VS v1 response EVENT_SUBSCRIBE txid 51 len 19
      00000001            # subscription 1
      00060a24181e4005    # head SEQ + 4: the node's last feed id
      00000002            # replayed 2 (EVENT_NOTIFY follow this answer)
      00                  # gap false: the history reaches back to resume_after
      0000                # ext: none
    """),
    V("event_unsubscribe_request", MsgType.EVENT_UNSUBSCRIBE, REQ, 52,
      EventUnsubscribe(subscription=1), """
      5653 01 00 0192 0000 00000034 00000006  # VS v1 request EVENT_UNSUBSCRIBE txid 52 len 6
      00000001            # subscription 1
      0000                # ext: none
    """),
    V("event_unsubscribe_response", MsgType.EVENT_UNSUBSCRIBE, RSP, 52, Empty(), """
      5653 01 01 0192 0000 00000034 00000002  # VS v1 response EVENT_UNSUBSCRIBE txid 52 len 2
      0000                # ext: none
    """),
    V("event_notify_notification", MsgType.EVENT_NOTIFY, NTF, 0,
      EventNotify(feed_id=SEQ, event=EVENT_C), """
      5653 01 04 0193 0000 00000000 00000040  # VS v1 notify EVENT_NOTIFY txid 0 len 64
      00060a24181e4001    # feed_id SEQ (on the home node an event's feed id is its seq)
      0002 6e31           # event.node_id "n1"
      00060a24181e4001    # event.seq SEQ
      0001 63             # event.device_id "c"
      0001                # event.channel 1
      0006 6d6f74696f6e   # event.type "motion"
      01                  # event.phase START
      02                  # event.severity ALARM
      0000018bcfe56800    # event.pu_time TS
      0000018bcfe56832    # event.node_time TS + 50 ms
      0001                # event.items: 1 KV
        0004 7a6f6e65     #   key "zone"
        0001 32           #   value "2"
      0000                # ext: none
    """),
    V("event_ack_request", MsgType.EVENT_ACK, REQ, 53,
      EventAck(node_id="n1", seq=SEQ, device_id="c", username="", comment="ok"), """
      5653 01 00 0194 0000 00000035 00000017  # VS v1 request EVENT_ACK txid 53 len 23
      0002 6e31           # node_id "n1"
      00060a24181e4001    # seq SEQ
      0001 63             # device_id "c"
      0000                # username "" (set by the CU's node)
      0002 6f6b           # comment "ok"
      0000                # ext: none
    """),
    V("event_ack_response", MsgType.EVENT_ACK, RSP, 53,
      EventAcked(node_id="n1", seq=SEQ, acked_by="bob", acked_at=TS + 60_000), """
      5653 01 01 0194 0000 00000035 0000001b  # VS v1 response EVENT_ACK txid 53 len 27
      0002 6e31           # node_id "n1"
      00060a24181e4001    # seq SEQ
      0003 626f62         # acked_by "bob"
      0000018bcfe65260    # acked_at TS + 60 s
      0000                # ext: none
    """),
    V("event_query_request", MsgType.EVENT_QUERY, REQ, 54,
      EventQuery(device_id="c", type="motion", from_time=TS, to_time=TS + 60_000, limit=100,
                 username=""), """
      5653 01 00 0195 0000 00000036 00000021  # VS v1 request EVENT_QUERY txid 54 len 33
      0001 63             # device_id "c"
      0006 6d6f74696f6e   # type "motion"
      0000018bcfe56800    # from_time TS
      0000018bcfe65260    # to_time TS + 60 s
      0064                # limit 100
      0000                # username "" (set by the CU's node)
      0000                # ext: none
    """),
    V("event_query_response", MsgType.EVENT_QUERY, RSP, 54,
      Events(events=[EventEntry(event=EVENT_C, acked_by="bob", acked_at=TS + 60_000,
                                comment="ok")], truncated=False), """
      5653 01 01 0195 0000 00000036 0000004c  # VS v1 response EVENT_QUERY txid 54 len 76
      0001                # events: 1 EventEntry
        0002 6e31         #   event.node_id "n1"
        00060a24181e4001  #   event.seq SEQ
        0001 63           #   event.device_id "c"
        0001              #   event.channel 1
        0006 6d6f74696f6e #   event.type "motion"
        01                #   event.phase START
        02                #   event.severity ALARM
        0000018bcfe56800  #   event.pu_time TS
        0000018bcfe56832  #   event.node_time TS + 50 ms
        0001              #   event.items: 1
          0004 7a6f6e65   #     key "zone"
          0001 32         #     value "2"
        0003 626f62       #   acked_by "bob"
        0000018bcfe65260  #   acked_at TS + 60 s
        0002 6f6b         #   comment "ok"
      00                  # truncated false
      0000                # ext: none
    """),
    V("event_report_request", MsgType.EVENT_REPORT, REQ, 55,
      EventReport(batch=3, dropped=0, events=[EVENT_C]), """
      5653 01 00 0215 0000 00000037 00000046  # VS v1 request EVENT_REPORT txid 55 len 70
      0000000000000003    # batch 3
      00000000            # dropped 0
      0001                # events: 1 EventRecord
        0002 6e31         #   node_id "n1"
        00060a24181e4001  #   seq SEQ
        0001 63           #   device_id "c"
        0001              #   channel 1
        0006 6d6f74696f6e #   type "motion"
        01                #   phase START
        02                #   severity ALARM
        0000018bcfe56800  #   pu_time TS
        0000018bcfe56832  #   node_time TS + 50 ms
        0001              #   items: 1
          0004 7a6f6e65   #     key "zone"
          0001 32         #     value "2"
      0000                # ext: none
    """),
    V("event_report_response", MsgType.EVENT_REPORT, RSP, 55,
      EventReportAck(batch=3, stored=1), """
      5653 01 01 0215 0000 00000037 0000000e  # VS v1 response EVENT_REPORT txid 55 len 14
      0000000000000003    # batch 3
      00000001            # stored 1
      0000                # ext: none
    """),
    V("record_start_request", MsgType.RECORD_START, REQ, 19,
      RecordRequest(device_id="c", channel=1, stream=Stream.MAIN), """
      5653 01 00 0160 0000 00000013 00000008  # VS v1 request RECORD_START txid 19 len 8
      0001 63             # device_id "c"
      0001                # channel 1
      00                  # stream MAIN
      0000                # ext: none
    """),
    V("record_start_response", MsgType.RECORD_START, RSP, 19,
      RecordState(device_id="c", channel=1, stream=Stream.MAIN, state=RecordingState.RUNNING,
                  reasons=["manual:alice"], since=TS, queue_position=0), """
      5653 01 01 0160 0000 00000013 00000023  # VS v1 response RECORD_START txid 19 len 35
      0001 63             # device_id "c"
      0001                # channel 1
      00                  # stream MAIN
      01                  # state RUNNING
      0001                # reasons: 1
        000c 6d616e75616c3a616c696365  # "manual:alice"
      0000018bcfe56800    # since 1700000000000 ms
      0000                # queue_position 0 (not queued)
      0000                # ext: none
    """),
    V("record_start_error_queued", MsgType.RECORD_START, ERR, 19,
      Error(message="queued at position 1"), """
      5653 01 03 0160 030a 00000013 00000018  # VS v1 error RECORD_START QUEUED txid 19 len 24
      0014 71756575656420617420706f736974696f6e2031  # message "queued at position 1"
      0000                # ext: none
    """, status=ResultCode.QUEUED),
    V("record_stop_request", MsgType.RECORD_STOP, REQ, 20,
      RecordRequest(device_id="c", channel=1, stream=Stream.SUB), """
      5653 01 00 0161 0000 00000014 00000008  # VS v1 request RECORD_STOP txid 20 len 8
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # stream SUB
      0000                # ext: none
    """),
    V("record_stop_response", MsgType.RECORD_STOP, RSP, 20,
      RecordState(device_id="c", channel=1, stream=Stream.SUB, state=RecordingState.QUEUED,
                  reasons=["schedule"], since=TS, queue_position=3), """
      5653 01 01 0161 0000 00000014 0000001f  # VS v1 response RECORD_STOP txid 20 len 31
      0001 63             # device_id "c"
      0001                # channel 1
      01                  # stream SUB
      02                  # state QUEUED (the schedule still wants it)
      0001                # reasons: 1
        0008 7363686564756c65  # "schedule"
      0000018bcfe56800    # since 1700000000000 ms
      0003                # queue_position 3
      0000                # ext: none
    """),
    V("record_status_request", MsgType.RECORD_STATUS, REQ, 21, RecordStatus(device_id="c"), """
      5653 01 00 0162 0000 00000015 00000005  # VS v1 request RECORD_STATUS txid 21 len 5
      0001 63             # device_id "c"
      0000                # ext: none
    """),
    V("record_status_response", MsgType.RECORD_STATUS, RSP, 21,
      RecordStates(tasks=[
          RecordTask(device_id="c", channel=0, stream=Stream.MAIN, state=RecordingState.RUNNING,
                     reasons=["event", "schedule"], since=TS, queue_position=0)]), """
      5653 01 01 0162 0000 00000015 00000028  # VS v1 response RECORD_STATUS txid 21 len 40
      0001                # tasks: 1 RecordTask
        0001 63           #   device_id "c"
        0000              #   channel 0
        00                #   stream MAIN
        01                #   state RUNNING
        0002              #   reasons: 2
          0005 6576656e74 #     "event"
          0008 7363686564756c65  # "schedule"
        0000018bcfe56800  #   since 1700000000000 ms
        0000              #   queue_position 0
      0000                # ext: none
    """),
    V("cred_create_request", MsgType.CRED_CREATE, REQ, 40,
      CredCreate(device_id="c", name="vlc", expires_in=86400), """
      5653 01 00 0180 0000 00000028 0000000e  # VS v1 request CRED_CREATE txid 40 len 14
      0001 63             # device_id "c"
      0003 766c63         # name "vlc"
      00015180            # expires_in 86400 s
      0000                # ext: none
    """),
    V("cred_create_response", MsgType.CRED_CREATE, RSP, 40,
      CredIssued(credential=cred_c(sealed=b""), secret="s3", url="rtsp://h/x"), """
      5653 01 01 0180 0000 00000028 00000051  # VS v1 response CRED_CREATE txid 40 len 81
    """ + CRED_C + """
        0000018bcfe56800  #   created 1700000000000 ms
        0000000000000000  #   expires 0: never
        0000000000000000  #   revoked 0: not revoked
        0000              #   sealed: empty (never sent to a CU)
        0000000000000001  #   version 1
      0002 7333           # secret "s3"
      000a 727473703a2f2f682f78  # url "rtsp://h/x"
      0000                # ext: none
    """),
    V("cred_list_request", MsgType.CRED_LIST, REQ, 41, CredList(device_id="c"), """
      5653 01 00 0181 0000 00000029 00000005  # VS v1 request CRED_LIST txid 41 len 5
      0001 63             # device_id "c"
      0000                # ext: none
    """),
    V("cred_list_response", MsgType.CRED_LIST, RSP, 41,
      Creds(credentials=[cred_c(sealed=b"")]), """
      5653 01 01 0181 0000 00000029 00000043  # VS v1 response CRED_LIST txid 41 len 67
      0001                # credentials: 1 StreamCredential
    """ + CRED_C + """
        0000018bcfe56800  #   created 1700000000000 ms
        0000000000000000  #   expires never
        0000000000000000  #   revoked no
        0000              #   sealed: empty
        0000000000000001  #   version 1
      0000                # ext: none
    """),
    V("cred_revoke_request", MsgType.CRED_REVOKE, REQ, 42,
      CredRevoke(cred_id="sc-0123456789ab", username="al"), """
      5653 01 00 0182 0000 0000002a 00000017  # VS v1 request CRED_REVOKE txid 42 len 23
      000f 73632d303132333435363738396162  # cred_id "sc-0123456789ab"
      0002 616c           # username "al"
      0000                # ext: none
    """),
    V("cred_revoke_response", MsgType.CRED_REVOKE, RSP, 42,
      CredState(credential=cred_c(sealed=b"", revoked=TS + 60_000, version=2)), """
      5653 01 01 0182 0000 0000002a 00000041  # VS v1 response CRED_REVOKE txid 42 len 65
    """ + CRED_C + """
        0000018bcfe56800  #   created 1700000000000 ms
        0000000000000000  #   expires never
        0000018bcfe65260  #   revoked 1700000060000 ms
        0000              #   sealed: empty
        0000000000000002  #   version 2
      0000                # ext: none
    """),
    V("cred_store_request", MsgType.CRED_STORE, REQ, 43,
      CredState(credential=cred_c(created=0, version=0)), """
      5653 01 00 0213 0000 0000002b 00000043  # VS v1 request CRED_STORE txid 43 len 67
    """ + CRED_C + """
        0000000000000000  #   created 0: CMS sets it
        0000000000000000  #   expires never
        0000000000000000  #   revoked no
        0002 0506         #   sealed 05 06
        0000000000000000  #   version 0: CMS sets it
      0000                # ext: none
    """),
    V("cred_store_response", MsgType.CRED_STORE, RSP, 43, CredState(credential=cred_c()), """
      5653 01 01 0213 0000 0000002b 00000043  # VS v1 response CRED_STORE txid 43 len 67
    """ + CRED_C + """
        0000018bcfe56800  #   created 1700000000000 ms
        0000000000000000  #   expires never
        0000000000000000  #   revoked no
        0002 0506         #   sealed 05 06
        0000000000000001  #   version 1
      0000                # ext: none
    """),
    V("record_query_request", MsgType.RECORD_QUERY, REQ, 22,
      RecordQuery(device_id="c", channel=1, stream=Stream.MAIN, from_time=TS,
                  to_time=TS + 60_000), """
      5653 01 00 0170 0000 00000016 00000018  # VS v1 request RECORD_QUERY txid 22 len 24
      0001 63             # device_id "c"
      0001                # channel 1
      00                  # stream MAIN
      0000018bcfe56800    # from_time 1700000000000 ms
      0000018bcfe65260    # to_time 1700000060000 ms
      0000                # ext: none
    """),
    V("record_query_request_asked_by", MsgType.RECORD_QUERY, REQ, 22,
      RecordQuery(device_id="c", channel=1, stream=Stream.MAIN, from_time=TS,
                  to_time=TS + 60_000, ext=((0x0001, b"bob"),)), """
      5653 01 00 0170 0000 00000016 0000001f  # VS v1 request RECORD_QUERY txid 22 len 31
      0001 63             # device_id "c"
      0001                # channel 1
      00                  # stream MAIN
      0000018bcfe56800    # from_time 1700000000000 ms
      0000018bcfe65260    # to_time 1700000060000 ms
      0001                # ext: 1 record
        0001              #   tag ASKED_BY (set by the CU's node)
        0003 626f62       #   the user who asked, "bob"
    """),
    V("record_query_response", MsgType.RECORD_QUERY, RSP, 22,
      Recordings(
          segments=[RecordSegment(start=TS, end=TS + 30_000, bytes=1_000_000, node_id="n1")],
          gaps=[TimeRange(start=TS + 30_000, end=TS + 60_000)], missing=["n2"],
          exports=[ExportUrl(node_id="n1", url="http://h/e", expires=TS + 600_000)],
          truncated=False), """
      5653 01 01 0170 0000 00000016 00000053  # VS v1 response RECORD_QUERY txid 22 len 83
      0001                # segments: 1 RecordSegment
        0000018bcfe56800  #   start 1700000000000 ms
        0000018bcfe5dd30  #   end 1700000030000 ms
        00000000000f4240  #   bytes 1000000
        0002 6e31         #   node_id "n1"
      0001                # gaps: 1 TimeRange
        0000018bcfe5dd30  #   start 1700000030000 ms
        0000018bcfe65260  #   end 1700000060000 ms
      0001                # missing: 1
        0002 6e32         #   "n2"
      0001                # exports: 1 ExportUrl
        0002 6e31         #   node_id "n1"
        000a 687474703a2f2f682f65  # url "http://h/e"
        0000018bcfee8fc0  #   expires 1700000600000 ms
      00                  # truncated false
      0000                # ext: none
    """),
    V("record_query_response_being_recorded", MsgType.RECORD_QUERY, RSP, 23,
      Recordings(
          segments=[RecordSegment(start=TS, end=TS + 30_000, bytes=1_000_000, node_id="n1")],
          gaps=[TimeRange(start=TS + 30_000, end=TS + 60_000)], missing=["n2"],
          exports=[ExportUrl(node_id="n1", url="http://h/e", expires=TS + 600_000)],
          truncated=False, ext=((0x0001, bytes.fromhex("0001" "0000018bcfe56800" "00026e31")),)),
      """
      5653 01 01 0170 0000 00000017 00000065  # VS v1 response RECORD_QUERY txid 23 len 101
      0001                # segments: 1 RecordSegment
        0000018bcfe56800  #   start 1700000000000 ms
        0000018bcfe5dd30  #   end 1700000030000 ms: the time of the answer
        00000000000f4240  #   bytes 1000000 written so far
        0002 6e31         #   node_id "n1"
      0001                # gaps: 1 TimeRange
        0000018bcfe5dd30  #   start 1700000030000 ms
        0000018bcfe65260  #   end 1700000060000 ms
      0001                # missing: 1
        0002 6e32         #   "n2"
      0001                # exports: 1 ExportUrl
        0002 6e31         #   node_id "n1"
        000a 687474703a2f2f682f65  # url "http://h/e"
        0000018bcfee8fc0  #   expires 1700000600000 ms
      00                  # truncated false
      0001                # ext: 1 record
        0001              #   tag 0x0001: segments being written
        000e              #   length 14
        0001              #     count 1
        0000018bcfe56800  #     start 1700000000000 ms
        0002 6e31         #     node_id "n1"
    """),
    # The SS control link (section 9.8) and SS_REPORT: nonces and proofs are
    # patterns here (real ones are random / HMAC-SHA256).
    V("ss_hello_request", MsgType.SS_HELLO, REQ, 1,
      SsHello(ss_id="ss1", media="rtsp://h:1", pid=0x1234, nonce=bytes(range(1, 25))), """
      5653 01 00 0220 0000 00000001 00000031  # VS v1 request SS_HELLO txid 1 len 49
      0003 737331         # ss_id "ss1"
      000a 727473703a2f2f683a31  # media "rtsp://h:1"
      00001234            # pid 4660
      0018 0102030405060708090a0b0c0d0e0f101112131415161718  # nonce: 24 bytes
      0000                # ext: none
    """),
    V("ss_hello_response", MsgType.SS_HELLO, RSP, 1, SsChallenge(nonce=b"\xaa" * 24), """
      5653 01 01 0220 0000 00000001 0000001c  # VS v1 response SS_HELLO txid 1 len 28
      0018 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa  # nonce: 24 bytes
      0000                # ext: none
    """),
    V("ss_auth_request", MsgType.SS_AUTH, REQ, 2, SsAuth(proof=b"\x11" * 32), """
      5653 01 00 0221 0000 00000002 00000024  # VS v1 request SS_AUTH txid 2 len 36
      0020 1111111111111111111111111111111111111111111111111111111111111111  # proof
      0000                # ext: none
    """),
    V("ss_auth_response", MsgType.SS_AUTH, RSP, 2,
      SsWelcome(proof=b"\x22" * 32, report_interval=1000), """
      5653 01 01 0221 0000 00000002 00000026  # VS v1 response SS_AUTH txid 2 len 38
      0020 2222222222222222222222222222222222222222222222222222222222222222  # proof
      03e8                # report_interval 1000 ms
      0000                # ext: none
    """),
    V("ss_load_notify", MsgType.SS_LOAD, NTF, 0,
      SsLoad(streams=1, viewers=2, bandwidth_kbps=8000, cpu_permille=150,
             paths=[SsPathLoad(path="/live/c/main", viewers=2, bandwidth_kbps=8000)]), """
      5653 01 04 0222 0000 00000000 00000028  # VS v1 notify SS_LOAD txid 0 len 40
      00000001            # streams 1
      00000002            # viewers 2
      00001f40            # bandwidth_kbps 8000
      0096                # cpu_permille 150
      0001                # paths: 1
        000c 2f6c6976652f632f6d61696e  # path "/live/c/main"
        00000002          #   viewers 2
        00001f40          #   bandwidth_kbps 8000
      0000                # ext: none
    """),
    V("ss_pull_request", MsgType.SS_PULL, REQ, 3,
      SsPull(path="/live/c/main", url="rtsp://h:1/live/c/main?token=t"), """
      5653 01 00 0223 0000 00000003 00000030  # VS v1 request SS_PULL txid 3 len 48
      000c 2f6c6976652f632f6d61696e  # path "/live/c/main"
      001e 727473703a2f2f683a31 2f6c6976652f632f6d61696e 3f746f6b656e3d74
                          # url "rtsp://h:1/live/c/main?token=t"
      0000                # ext: none
    """),
    V("ss_pull_response", MsgType.SS_PULL, RSP, 3, Empty(), """
      5653 01 01 0223 0000 00000003 00000002  # VS v1 response SS_PULL txid 3 len 2
      0000                # ext: none
    """),
    V("ss_drop_request", MsgType.SS_DROP, REQ, 4, SsDrop(path="/live/c/main"), """
      5653 01 00 0224 0000 00000004 00000010  # VS v1 request SS_DROP txid 4 len 16
      000c 2f6c6976652f632f6d61696e  # path "/live/c/main"
      0000                # ext: none
    """),
    V("ss_drop_response", MsgType.SS_DROP, RSP, 4, Empty(), """
      5653 01 01 0224 0000 00000004 00000002  # VS v1 response SS_DROP txid 4 len 2
      0000                # ext: none
    """),
    V("ss_redirect_request", MsgType.SS_REDIRECT, REQ, 6,
      SsRedirect(path="/live/c/main", url="rtsp://h:2", viewers=1000), """
      5653 01 00 0226 0000 00000006 00000020  # VS v1 request SS_REDIRECT txid 6 len 32
      000c 2f6c6976652f632f6d61696e  # path "/live/c/main"
      000a 727473703a2f2f683a32  # url "rtsp://h:2"
      000003e8            # viewers 1000
      0000                # ext: none
    """),
    V("ss_redirect_response", MsgType.SS_REDIRECT, RSP, 6, Empty(), """
      5653 01 01 0226 0000 00000006 00000002  # VS v1 response SS_REDIRECT txid 6 len 2
      0000                # ext: none
    """),
    V("ss_report_request", MsgType.SS_REPORT, REQ, 5,
      SsReport(servers=[SsServer(ss_id="ss1", media="rtsp://h:1", state=SsState.UP, streams=1,
                                 viewers=2, bandwidth_kbps=8000, cpu_permille=150)]), """
      5653 01 00 0225 0000 00000005 00000024  # VS v1 request SS_REPORT txid 5 len 36
      0001                # servers: 1
        0003 737331       #   ss_id "ss1"
        000a 727473703a2f2f683a31  # media "rtsp://h:1"
        01                #   state UP
        00000001          #   streams 1
        00000002          #   viewers 2
        00001f40          #   bandwidth_kbps 8000
        0096              #   cpu_permille 150
      0000                # ext: none
    """),
    V("ss_report_response", MsgType.SS_REPORT, RSP, 5, Empty(), """
      5653 01 01 0225 0000 00000005 00000002  # VS v1 response SS_REPORT txid 5 len 2
      0000                # ext: none
    """),
    # TV walls and decoders (9.9): wall "w1" logged in to node "n2"
    V("wall_describe_request", MsgType.WALL_DESCRIBE, REQ, 96,
      WallDescribe(wall_id="", layout=WallLayout.FOUR, tiles=[],
                   assignments=[TILE0_C]), """
      5653 01 00 01a0 0000 00000060 0000002d  # VS v1 request WALL_DESCRIBE txid 96 len 45
      0000                # wall_id "": the wall itself
      04                  # layout FOUR
      0000                # tiles: none (a standard layout's tiles are the node's)
      0001                # assignments: 1 TileState (what the wall showed: restored)
    """ + TILE0_C_HEX + """
      0000                # ext: none
    """),
    V("wall_describe_response", MsgType.WALL_DESCRIBE, RSP, 96,
      WallState(wall_id="w1", node_id="n2", kind=CuKind.TVWALL, layout=WallLayout.FOUR,
                tiles=QUAD, assignments=[TILE0_C], version=1), """
      5653 01 01 01a0 0000 00000060 00000058  # VS v1 response WALL_DESCRIBE txid 96 len 88
      0002 7731           # wall_id "w1"
      0002 6e32           # node_id "n2"
      02                  # kind TVWALL
      04                  # layout FOUR
      0004                # tiles: 4 Tile (x, y, width, height in 1/10000)
        0000 0000 1388 1388  # 0: top left, 5000 x 5000
        1388 0000 1388 1388  # 1: top right
        0000 1388 1388 1388  # 2: bottom left
        1388 1388 1388 1388  # 3: bottom right
      0001                # assignments: 1 TileState
    """ + TILE0_C_HEX + """
      00000001            # version 1
      0000                # ext: none
    """),
    V("wall_assign_request", MsgType.WALL_ASSIGN, REQ, 97,
      WallAssign(wall_id="w1", tile=0, device_id="d", channel=0, stream=Stream.MAIN), """
      5653 01 00 01a1 0000 00000061 0000000e  # VS v1 request WALL_ASSIGN txid 97 len 14
      0002 7731           # wall_id "w1"
      0000                # tile 0
      0001 64             # device_id "d"
      0000                # channel 0
      00                  # stream MAIN
      0000                # ext: none
    """),
    V("wall_assign_response", MsgType.WALL_ASSIGN, RSP, 97,
      WallState(wall_id="w1", node_id="n2", kind=CuKind.DECODER, layout=WallLayout.ONE,
                tiles=[FULL], assignments=[TileState(
                    tile=0, device_id="d", channel=0, stream=Stream.MAIN, tour=[], dwell=0,
                    tour_index=0, since=TS + 1000, frames=0, errors=0, last_error="")],
                version=2), """
      5653 01 01 01a1 0000 00000061 00000040  # VS v1 response WALL_ASSIGN txid 97 len 64
      0002 7731           # wall_id "w1"
      0002 6e32           # node_id "n2"
      05                  # kind DECODER
      01                  # layout ONE
      0001                # tiles: 1
        0000 0000 2710 2710  # the whole screen, 10000 x 10000
      0001                # assignments: 1 TileState
        0000              #   tile 0
        0001 64           #   device_id "d"
        0000              #   channel 0
        00                #   stream MAIN
        0000              #   tour: none
        0000              #   dwell 0
        0000              #   tour_index 0
        0000018bcfe56be8  #   since TS + 1 s
        0000000000000000  #   frames 0
        00000000          #   errors 0
        0000              #   last_error ""
      00000002            # version 2
      0000                # ext: none
    """),
    V("wall_tour_request", MsgType.WALL_TOUR, REQ, 98,
      WallTour(wall_id="w1", tile=0, devices=["c", "d"], stream=Stream.SUB, dwell=10), """
      5653 01 00 01a2 0000 00000062 00000013  # VS v1 request WALL_TOUR txid 98 len 19
      0002 7731           # wall_id "w1"
      0000                # tile 0
      0002 0001 63 0001 64  # devices "c", "d"
      01                  # stream SUB
      000a                # dwell 10 s (0 stops the tile's tour)
      0000                # ext: none
    """),
    V("wall_tour_response", MsgType.WALL_TOUR, RSP, 98,
      WallState(wall_id="w1", node_id="n2", kind=CuKind.TVWALL, layout=WallLayout.ONE,
                tiles=[FULL], assignments=[TileState(
                    tile=0, device_id="c", channel=0, stream=Stream.SUB, tour=["c", "d"],
                    dwell=10, tour_index=0, since=TS, frames=0, errors=0, last_error="")],
                version=3), """
      5653 01 01 01a2 0000 00000062 00000046  # VS v1 response WALL_TOUR txid 98 len 70
      0002 7731 0002 6e32 # wall_id "w1", node_id "n2"
      02 01               # kind TVWALL, layout ONE
      0001 0000 0000 2710 2710  # tiles: the whole screen
      0001                # assignments: 1 TileState
        0000 0001 63      #   tile 0, device_id "c" (the tour's first)
        0000 01           #   channel 0, stream SUB
        0002 0001 63 0001 64  # tour "c", "d"
        000a 0000         #   dwell 10 s, tour_index 0
        0000018bcfe56800  #   since TS
        0000000000000000 00000000 0000  # frames 0, errors 0, last_error ""
      00000003            # version 3
      0000                # ext: none
    """),
    V("wall_state_request", MsgType.WALL_STATE, REQ, 99, WallQuery(wall_id="w1"), """
      5653 01 00 01a3 0000 00000063 00000006  # VS v1 request WALL_STATE txid 99 len 6
      0002 7731           # wall_id "w1"
      0000                # ext: none
    """),
    V("wall_state_response", MsgType.WALL_STATE, RSP, 99,
      WallState(wall_id="w1", node_id="n2", kind=CuKind.TVWALL, layout=WallLayout.ONE,
                tiles=[FULL], assignments=[TileState(
                    tile=0, device_id="c", channel=0, stream=Stream.SUB, tour=[], dwell=0,
                    tour_index=0, since=TS, frames=250, errors=1, last_error="eof")],
                version=4), """
      5653 01 01 01a3 0000 00000063 00000043  # VS v1 response WALL_STATE txid 99 len 67
      0002 7731 0002 6e32 # wall_id "w1", node_id "n2"
      02 01               # kind TVWALL, layout ONE
      0001 0000 0000 2710 2710  # tiles: the whole screen
      0001                # assignments: 1 TileState
        0000 0001 63 0000 01  # tile 0, device_id "c", channel 0, stream SUB
        0000 0000 0000    #   tour none, dwell 0, tour_index 0
        0000018bcfe56800  #   since TS
        00000000000000fa  #   frames 250 (the wall's last WALL_REPORT)
        00000001          #   errors 1
        0003 656f66       #   last_error "eof"
      00000004            # version 4
      0000                # ext: none
    """),
    V("wall_notify_notification", MsgType.WALL_NOTIFY, NTF, 0,
      WallState(wall_id="w1", node_id="n2", kind=CuKind.TVWALL, layout=WallLayout.ONE,
                tiles=[FULL], assignments=[], version=5), """
      5653 01 04 01a4 0000 00000000 0000001c  # VS v1 notify WALL_NOTIFY txid 0 len 28
      0002 7731 0002 6e32 # wall_id "w1", node_id "n2"
      02 01               # kind TVWALL, layout ONE
      0001 0000 0000 2710 2710  # tiles: the whole screen
      0000                # assignments: none (the tile is blank)
      00000005            # version 5
      0000                # ext: none
    """),
    V("wall_report_request", MsgType.WALL_REPORT, REQ, 100,
      WallReport(tiles=[TileReport(tile=0, device_id="c", frames=250, errors=0,
                                   last_error="")]), """
      5653 01 00 01a5 0000 00000064 00000017  # VS v1 request WALL_REPORT txid 100 len 23
      0001                # tiles: 1 TileReport
        0000 0001 63      #   tile 0, device_id "c"
        00000000000000fa  #   frames 250 shown since it was assigned
        00000000 0000     #   errors 0, last_error ""
      0000                # ext: none
    """),
    V("wall_report_response", MsgType.WALL_REPORT, RSP, 100, Empty(), """
      5653 01 01 01a5 0000 00000064 00000002  # VS v1 response WALL_REPORT txid 100 len 2
      0000                # ext: none
    """),
    # Re-homing (docs/protocol.md 9.10)
    V("home_query_request", MsgType.HOME_QUERY, REQ, 2, HomeQuery(device_id="cam1"), """
      5653 01 00 0230 0000 00000002 00000008  # VS v1 request HOME_QUERY txid 2 len 8
      0004 63616d31       # device_id "cam1"
      0000                # ext: none
    """),
    V("home_query_response", MsgType.HOME_QUERY, RSP, 2,
      HomeRedirect(device_id="cam1", home_node="n2", address="tcp:10.0.0.2:7100", epoch=7), """
      5653 01 01 0230 0000 00000002 00000027  # VS v1 response HOME_QUERY txid 2 len 39
      0004 63616d31       # device_id "cam1"
      0002 6e32           # home_node "n2"
      0011 7463703a 31302e302e302e32 3a 37313030  # address "tcp:10.0.0.2:7100"
      0000000000000007    # epoch 7
      0000                # ext: none
    """),
    V("error_home_node_down_to_home_query", MsgType.HOME_QUERY, ERR, 2,
      Error(message="node n1 is down"), """
      5653 01 03 0230 0305 00000002 00000013  # VS v1 error HOME_QUERY HOME_NODE_DOWN txid 2 len 19
      000f 6e6f6465 20 6e31 20 6973 20 646f776e  # "node n1 is down"
      0000                # ext: none
    """, status=ResultCode.HOME_NODE_DOWN),
    V("node_list_notification", MsgType.NODE_LIST, NTF, 0,
      NodeList(nodes=[NodeAddress(node_id="n1", address="tcp:10.0.0.1:7100"),
                      NodeAddress(node_id="n2", address="tcp:10.0.0.2:7100")]), """
      5653 01 04 0231 0000 00000000 00000032  # VS v1 notify NODE_LIST txid 0 len 50
      0002                # nodes: 2 NodeAddress
        0002 6e31         #   node_id "n1" (this node first)
        0011 7463703a 31302e302e302e31 3a 37313030  # address "tcp:10.0.0.1:7100"
        0002 6e32         #   node_id "n2"
        0011 7463703a 31302e302e302e32 3a 37313030  # address "tcp:10.0.0.2:7100"
      0000                # ext: none
    """),
    V("route_lookup_response_pu_address_epoch", MsgType.ROUTE_LOOKUP, RSP, 6,
      Route(device_id="c", home_node="n2", signalling="", media="", node_up=True,
            ext=((EXT_PU_ADDRESS, b"tcp:10.0.0.2:7100"),
                 (EXT_HOME_EPOCH, (7).to_bytes(8, "big")))), """
      5653 01 01 0204 0000 00000006 0000002f  # VS v1 response ROUTE_LOOKUP txid 6 len 47
      0001 63             # device_id "c"
      0002 6e32           # home_node "n2"
      0000                # signalling ""
      0000                # media ""
      01                  # node_up true
      0002                # ext: 2 records
        0001 0011 7463703a 31302e302e302e32 3a 37313030  # PU_ADDRESS "tcp:10.0.0.2:7100"
        0002 0008 0000000000000007                       # HOME_EPOCH 7
    """),
]


def _message(v):
    return Message(v.type, v.flags, v.status, v.txid, v.body)


class VectorTests(SynchronousTestCase):
    """Every vector decodes to its message and its message encodes to the vector."""

    def test_names_unique(self):
        names = [v.name for v in VECTORS]
        self.assertEqual(len(names), len(set(names)))

    def test_every_catalogue_body_has_a_vector(self):
        """A message type added to the catalogue without a vector fails here."""
        covered = set()
        for v in VECTORS:
            if v.flags & FLAG_ERROR:
                covered.add(("error", type(v.body)))
            elif v.flags & FLAG_RESPONSE:
                covered.add((v.type, "response", type(v.body)))
            else:
                covered.add((v.type, "request", type(v.body)))
        wanted = {("error", Error)}
        for t, (req, resp) in CATALOGUE.items():
            wanted.add((t, "request", req))
            if resp is not None:
                wanted.add((t, "response", resp))
        self.assertEqual(wanted - covered, set())

    def test_length_fields(self):
        """The hand-written header length matches the hand-written body."""
        for v in VECTORS:
            data = h(v.hex)
            self.assertEqual(int.from_bytes(data[12:16], "big"), len(data) - 16, v.name)

    def test_stream_of_all_vectors(self):
        """All vectors back to back, fed one byte at a time, decode in order."""
        stream = b"".join(h(v.hex) for v in VECTORS)
        dec = MessageDecoder()
        out = []
        for i in range(len(stream)):
            out.extend(dec.feed(stream[i : i + 1]))
        self.assertEqual(out, [_message(v) for v in VECTORS])
        self.assertEqual(dec.buffered, 0)

    def test_inner_bodies(self):
        """The bodies embedded in ROUTE_REQUEST / ROUTE_RESPONSE decode as the doc says."""
        by_name = {v.name: v for v in VECTORS}
        inner = by_name["route_request_request"].body
        msg = decode_body(_frame(inner.inner_type, REQ, inner.inner_body))
        self.assertEqual(msg.body, PTZ)
        inner = by_name["route_request_response"].body
        msg = decode_body(_frame(MsgType.PTZ_CONTROL, RSP, inner.inner_body))
        self.assertEqual(msg.body, PTZ_STATUS)
        inner = by_name["route_request_response_inner_error"].body
        msg = decode_body(_frame(MsgType.PTZ_CONTROL, ERR, inner.inner_body))
        self.assertEqual(msg.body, Error(message="off"))


def _frame(type, flags, body):
    (frame,) = FrameDecoder().feed(
        b"VS\x01" + bytes([flags]) + type.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x01"
        + len(body).to_bytes(4, "big") + body
    )
    return frame


def _add_vector_tests(cls):
    for v in VECTORS:

        def test_decode(self, v=v):
            out = MessageDecoder().feed(h(v.hex))
            self.assertEqual(len(out), 1)
            (msg,) = out
            self.assertNotIsInstance(msg, ProtocolError)
            self.assertEqual(msg, _message(v))
            self.assertEqual(type(msg.body), type(v.body))

        def test_encode(self, v=v):
            self.assertEqual(encode_message(_message(v)).hex(), h(v.hex).hex())

        test_decode.__name__ = f"test_decode_{v.name}"
        test_encode.__name__ = f"test_encode_{v.name}"
        setattr(cls, test_decode.__name__, test_decode)
        setattr(cls, test_encode.__name__, test_encode)
    return cls


_add_vector_tests(VectorTests)


class DocumentExampleTests(SynchronousTestCase):
    """The worked examples of docs/protocol.md, section 5, are real frames."""

    def examples(self):
        doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
        text = doc.read_text(encoding="utf-8")
        section = text.split("## 5. Worked examples", 1)[1].split("\n## 6.", 1)[0]
        blocks = re.findall(r"```\n([0-9a-f \n]+)```", section)
        return [bytes.fromhex(b) for b in blocks]

    def test_examples_decode(self):
        ptz, status, keepalive, error = self.examples()
        self.assertEqual(
            MessageDecoder().feed(ptz + status + keepalive + error),
            [
                Message(MsgType.PTZ_CONTROL, REQ, 0, 2, PTZ),
                Message(MsgType.PTZ_CONTROL, RSP, 0, 2, PTZ_STATUS),
                Message(MsgType.KEEPALIVE, REQ, 0, 7, Empty()),
                Message(MsgType.PTZ_CONTROL, ERR, ResultCode.UNKNOWN_DEVICE, 9,
                        Error(message="no device cam-1")),
            ],
        )
        self.assertEqual(ptz, h(VECTORS[[v.name for v in VECTORS].index(
            "ptz_control_request")].hex))


class ResultCodeTableTests(SynchronousTestCase):
    """The table of docs/protocol.md, section 7, is the whole of ``codes.py``: the same
    codes, names and meanings."""

    def test_table_equals_codes(self):
        from vss.protocols.codes import DESCRIPTIONS

        doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
        section = doc.read_text(encoding="utf-8").split("## 7. Result codes", 1)[1]
        section = section.split("\n## 8.", 1)[0]
        rows = re.findall(r"^\| (0x[0-9A-F]{4}) \| `(\w+)` \| [^|]* \| (.*) \|$", section, re.M)
        documented = {int(code, 16): (name, meaning) for code, name, meaning in rows}
        implemented = {int(c): (c.name, DESCRIPTIONS[c]) for c in ResultCode}
        self.assertEqual(documented, implemented)
