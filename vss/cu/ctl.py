"""
``vssctl``: a CU for people. Logs in to a node as a user and runs one command.

    export VSS_NODE=tcp:127.0.0.1:7101 VSS_USER=alice
    vssctl devices
    vssctl ptz cam1 move --pan 0.5 --timeout-ms 1000
    vssctl ptz cam1 goto --pan 0.2 --tilt -0.1 --zoom 0.5
    vssctl preset cam1 set 3 --name gate
    vssctl config cam1 set video.bitrate_kbps=2048
    vssctl --json config cam1 get
    vssctl record start cam1 --channel 0 --stream main
    vssctl record status cam1
    vssctl recordings cam1 --from -2h --to now
    vssctl export cam1 --from 2026-01-05T08:00:00Z --to 2026-01-05T08:10:00Z -o clip.mp4
    vssctl events --follow
    vssctl events --device cam1 --type motion --from -2h
    vssctl ack node-b/1765120000000000042 cam1 --comment "checked, a cat"
    vssctl wall wall1 assign 2 cam1
    vssctl wall wall1 tour 0 cam1,cam2 --dwell 10

The password comes from ``--password-file``, the environment variable ``VSS_PASSWORD``,
or a prompt; never from the command line. Errors are printed as one readable line and
the exit status is 1 (2 for a usage error).
"""

import datetime
import difflib
import getopt
import getpass
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

from twisted.internet import defer, protocol, task
from twisted.python import usage
from twisted.web.client import Agent, ResponseDone

from vss.client import SignallingClient, connect
from vss.config import parse_duration
from vss.cu.events import (
    ack_body,
    event_start,
    follow,
    parse_event_id,
    query_body,
    render_ack,
    render_events,
)
from vss.cu.wall import build_wall_request, render_wall, wall_json, wall_options
from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.jsonrec import plain
from vss.protocols.listing import (
    MIN_GAP_MS,
    decode_recordings,  # long listings: no construct
    open_segments,
)
from vss.protocols.messages import (
    KV,
    ConfigGet,
    ConfigSet,
    CredCreate,
    CredList,
    CredRevoke,
    CuKind,
    DeviceList,
    FocusOp,
    IrisOp,
    LensControl,
    MediaOpen,
    MsgType,
    Preset,
    PresetOp,
    PtzControl,
    PtzOp,
    PuKind,
    Purpose,
    RecordingState,
    RecordMode,
    RecordQuery,
    RecordRequest,
    RecordSettings,
    RecordSettingsGet,
    RecordStatus,
    Role,
    ScheduleSlot,
    Stream,
    Transport,
)
from vss.protocols.messages import Action as A
from vss.protocols.messages import Devices as DevicesBody
from vss.streamcreds.secret import state
from vss.version import VersionOption


class AnyOrder(usage.Options):
    """A command of vssctl. Options may come after the positional arguments (``ptz cam1
    goto --pan 0.5``); ``arguments`` names the positional arguments, the required ones
    first (``optional`` of them may be left out), so that a missing one is named."""

    arguments = ()
    optional = 0

    def getSynopsis(self):
        return f"Usage: vssctl [global options] {self.synopsis}"

    def parseOptions(self, options=None):
        try:
            opts, args = getopt.gnu_getopt(list(options or []), self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(f"{self.command()}: {near_miss(self, str(e))}") from None
        flat = []
        for name, value in opts:
            if name.startswith("--"):
                flat.append(f"{name}={value}" if name[2:] + "=" in self.longOpt else name)
            else:
                flat.append(name + value)
        self._args = args
        try:
            return super().parseOptions(flat + ["--"] + args)
        except usage.UsageError as e:
            if str(e) == "Wrong number of arguments.":
                raise usage.UsageError(self._check_arguments() or str(e)) from None
            raise

    def _check_arguments(self):
        """Which positional argument is missing, or the first one too many."""
        args = self._args
        required = len(self.arguments) - self.optional
        if len(args) < required:
            missing = self.arguments[len(args):required]
            where = " ".join([self.command(), *args])
            verb = "is" if len(missing) == 1 else "are"
            return f"{where}: {' and '.join(missing)} {verb} missing ({self.getSynopsis()})"
        if len(args) > len(self.arguments) and not getattr(self, "variadic", False):
            return (f"{self.command()}: unexpected argument {args[len(self.arguments)]!r} "
                    f"({self.getSynopsis()})")
        return None

    def command(self):
        parent = getattr(self, "parent", None)
        return getattr(parent, "subCommand", None) or self.synopsis.split()[0]


class DeviceCommand(AnyOrder):
    arguments = ("DEVICE",)

    def parseArgs(self, device):
        self["device"] = device


class Devices(AnyOrder):
    synopsis = "devices"
    description = "List the devices you may see, with their online state."


class Ptz(DeviceCommand):
    synopsis = "ptz DEVICE (move|goto|step|stop) [--pan P --tilt T --zoom Z --speed S]"
    arguments = ("DEVICE", "move|goto|step|stop")
    optParameters = [
        ["channel", None, 0, "Channel.", int],
        ["pan", None, 0.0, "Pan velocity (move) or position (goto) in [-1, 1].", float],
        ["tilt", None, 0.0, "Tilt in [-1, 1].", float],
        ["zoom", None, 0.0, "Zoom.", float],
        ["speed", None, 1.0, "Speed in (0, 1].", float],
        ["timeout-ms", None, 0, "Stop a continuous move after this long.", int],
    ]

    def parseArgs(self, device, op):
        ops = {"move": PtzOp.CONTINUOUS, "goto": PtzOp.ABSOLUTE, "step": PtzOp.RELATIVE,
               "stop": PtzOp.STOP}
        if op not in ops:
            raise usage.UsageError(f"ptz: {op!r} is not move, goto, step or stop")
        self["device"] = device
        self["op"] = ops[op]


class Lens(DeviceCommand):
    synopsis = "lens DEVICE [--focus near|far|auto|stop] [--iris open|close|auto|stop]"
    optParameters = [
        ["channel", None, 0, "Channel.", int],
        ["focus", None, "none", "near, far, auto or stop."],
        ["iris", None, "none", "open, close, auto or stop."],
        ["speed", None, 0.5, "Speed in [0, 1].", float],
    ]


class PresetCmd(AnyOrder):
    synopsis = "preset DEVICE (list|set N|goto N|remove N) [--name NAME]"
    arguments = ("DEVICE", "list|set|goto|remove", "N")
    optional = 1
    optParameters = [["channel", None, 0, "Channel.", int], ["name", None, "", "Preset name."]]

    def parseArgs(self, device, op, number=None):
        ops = {"set": PresetOp.SET, "goto": PresetOp.GOTO, "remove": PresetOp.REMOVE,
               "list": PresetOp.LIST}
        if op not in ops:
            raise usage.UsageError(f"preset: {op!r} is not list, set, goto or remove")
        if op != "list" and number is None:
            raise usage.UsageError(f"preset {op}: which preset number?")
        self["device"], self["op"] = device, ops[op]
        try:
            self["number"] = int(number or 0)
        except ValueError:
            raise usage.UsageError(f"preset: {number!r} is not a number") from None


class ConfigCmd(AnyOrder):
    synopsis = "config DEVICE get [KEY...] | config DEVICE set KEY=VALUE..."
    arguments = ("DEVICE", "get|set")
    variadic = True
    optParameters = [
        ["channel", None, 0, "Channel.", int],
        ["expect-version", None, 0, "Refuse the change unless the config is at this version.",
         int],
    ]

    def parseArgs(self, device, op, *items):
        if op not in ("get", "set"):
            raise usage.UsageError(f"config: {op!r} is not get or set")
        if op == "set":
            if not items:
                raise usage.UsageError("config set: give KEY=VALUE pairs")
            for item in items:
                if "=" not in item:
                    raise usage.UsageError(f"config set: {item!r} is not KEY=VALUE")
        self["device"], self["op"], self["items"] = device, op, items


class RecordSettingsCmd(AnyOrder):
    synopsis = ("record-settings DEVICE get | record-settings DEVICE set --mode "
                "off|continuous|schedule|event|manual [--segment S] [--retention-days D] "
                "[--schedule 'mon 08:00-18:00,tue 08:00-18:00']")
    arguments = ("DEVICE", "get|set")
    optParameters = [
        ["channel", None, 0, "Channel.", int],
        ["mode", None, None, "off, continuous, schedule, event or manual."],
        ["stream", None, "main", "main or sub."],
        ["segment", None, 300, "Segment length in seconds.", int],
        ["retention-days", None, 7, "Days to keep.", int],
        ["quota-mb", None, 0, "Disk quota in MB (0: none).", int],
        ["pre-event", None, 5, "Seconds kept before an event.", int],
        ["post-event", None, 10, "Seconds kept after an event.", int],
        ["schedule", None, "", "Weekly slots: 'mon 08:00-18:00,sat 00:00-24:00'."],
    ]

    def parseArgs(self, device, op):
        if op not in ("get", "set"):
            raise usage.UsageError(f"record-settings: {op!r} is not get or set")
        self["device"], self["op"] = device, op

    def postOptions(self):
        if self["op"] == "set":
            if self["mode"] not in ("off", "continuous", "schedule", "event", "manual"):
                raise usage.UsageError("record-settings set: --mode is required "
                                       "(off, continuous, schedule, event or manual)")
            self["slots"] = parse_schedule(self["schedule"])


DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_schedule(text):
    slots = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            day, span = part.split()
            start, end = span.split("-")
            slots.append(ScheduleSlot(day=DAYS.index(day.lower()[:3]),
                                      start_minute=_minutes(start), end_minute=_minutes(end)))
        except ValueError:
            raise usage.UsageError(f"--schedule: {part!r} is not like 'mon 08:00-18:00'") from None
    return slots


def _minutes(hhmm):
    h, m = hhmm.split(":")
    value = int(h) * 60 + int(m)
    if not 0 <= value <= 1440:
        raise ValueError(hhmm)
    return value


class Live(DeviceCommand):
    synopsis = "live DEVICE [--stream main|sub] [--play]"
    optParameters = [["channel", None, 0, "Channel.", int], ["stream", None, "main", "main or sub."],
                     ["transport", None, "tcp", "tcp, udp or any."]]
    optFlags = [["play", None, "Start ffplay on the URL if it is installed."]]


class RecordCmd(AnyOrder):
    synopsis = "record (start|stop|status) DEVICE [--channel N] [--stream main|sub]"
    arguments = ("start|stop|status", "DEVICE")
    optParameters = [["channel", None, 0, "Channel.", int], ["stream", None, "main", "main or sub."]]

    def parseArgs(self, op, device):
        if op not in ("start", "stop", "status"):
            raise usage.UsageError(f"record: {op!r} is not start, stop or status")
        if self["stream"] not in ("main", "sub"):
            raise usage.UsageError(f"record: --stream {self['stream']!r} is not main or sub")
        self["device"], self["op"] = device, op


def parse_time(text, now_ms):
    """UTC milliseconds of ``now``, ``-90s``/``-30m``/``-2h``/``-1d`` (before now), an ISO
    8601 time (UTC unless it names an offset) or epoch milliseconds."""

    text = (text or "").strip()
    if text == "now":
        return now_ms
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    if text[:1] == "-" and text[-1:] in units and text[1:-1].isdigit():
        return now_ms - int(text[1:-1]) * units[text[-1]]
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise usage.UsageError(f"{text!r} is not a time (ISO 8601, now, -30m, -2h, -1d or "
                               "epoch ms)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


class RecordingsCmd(DeviceCommand):
    synopsis = "recordings DEVICE [--from TIME] [--to TIME] [--channel N] [--stream main|sub]"
    description = ("List the recordings of a device on every node, with the gaps. TIME: "
                   "ISO 8601 (UTC unless an offset is given), now, -30m, -2h, -1d or epoch ms.")
    optParameters = [["channel", None, 0, "Channel.", int],
                     ["stream", None, "main", "main or sub."],
                     ["from", None, "-1d", "Start of the range."],
                     ["to", None, "now", "End of the range."]]

    def postOptions(self):
        if self["stream"] not in ("main", "sub"):
            raise usage.UsageError(f"--stream {self['stream']!r} is not main or sub")
        now = int(time.time() * 1000)
        self["from_ms"] = parse_time(self["from"], now)
        self["to_ms"] = parse_time(self["to"], now)
        if self["to_ms"] <= self["from_ms"]:
            raise usage.UsageError("--to must be after --from")


class ExportCmd(RecordingsCmd):
    synopsis = "export DEVICE --from TIME --to TIME -o FILE [--channel N] [--stream main|sub]"
    description = "Download a time range of recordings as one MP4 file."
    optParameters = [["output", "o", None, "The MP4 file to write."]]

    def postOptions(self):
        super().postOptions()
        if not self["output"]:
            raise usage.UsageError("export: -o FILE is required")


class PlaybackCmd(DeviceCommand):
    synopsis = ("playback DEVICE (--at TIME | --event NODE/SEQ) [--channel N] "
                "[--stream main|sub] [--play]")
    description = ("Play back the recordings of a device from TIME (ISO 8601, UTC unless an "
                   "offset is given, -10m, -2h, -1d or epoch ms), or from an event (its id "
                   "as `vssctl events` lists it: the event recording's bookmark, from its "
                   "pre-event seconds): prints the rtsp:// URL.")
    optParameters = [["channel", None, 0, "Channel.", int],
                     ["stream", None, "main", "main or sub."],
                     ["at", None, None, "Where to start."],
                     ["event", None, None, "Start at this event, less its pre-event seconds."]]
    optFlags = [["play", None, "Start ffplay (or vlc, mpv) on the URL if one is installed."]]

    def postOptions(self):
        if self["stream"] not in ("main", "sub"):
            raise usage.UsageError(f"--stream {self['stream']!r} is not main or sub")
        if bool(self["at"]) == bool(self["event"]):
            raise usage.UsageError("playback: --at TIME or --event NODE/SEQ is required")
        if self["event"]:
            parse_event_id(self["event"])
            self["at_ms"] = 0  # from the event, once it is found
        else:
            self["at_ms"] = parse_time(self["at"], int(time.time() * 1000))


class StreamCredCmd(AnyOrder):
    synopsis = "stream-cred (create DEVICE [--name NAME] [--expires-in 30d] | list [DEVICE] | " \
               "revoke ID)"
    description = ("Stable stream URLs for players and NVRs (VLC, an NVR, Home Assistant) "
                   "that cannot ask for a fresh token: a credential of yours for a device, "
                   "used in the URL or as RTSP Digest credentials, on any node, until it "
                   "expires or you revoke it (or lose the grant).")
    arguments = ("create|list|revoke", "DEVICE or ID")
    optional = 1
    optParameters = [["name", None, "", "A label (which player or NVR uses it)."],
                     ["expires-in", None, None, "Lifetime: seconds or 15m, 12h, 30d, 2w "
                      "(default: until revoked)."]]

    def parseArgs(self, op, target=""):
        if op not in ("create", "list", "revoke"):
            raise usage.UsageError(f"stream-cred: {op!r} is not create, list or revoke")
        if op != "list" and not target:
            raise usage.UsageError(f"stream-cred {op}: "
                                   f"{'DEVICE' if op == 'create' else 'ID'} is missing "
                                   f"({self.getSynopsis()})")
        self["op"], self["target"] = op, target

    def postOptions(self):
        self["expires"] = 0
        if self["expires-in"] is not None:
            self["expires"] = parse_duration(self["expires-in"])


class EventsCmd(AnyOrder):
    synopsis = ("events [--device D] [--type T] [--from TIME] [--to TIME] [--limit N] | "
                "events --follow [--device D] [--type T] [--count N]")
    description = ("The events and alarms of the devices you may view: stored ones, newest "
                   "first (with who acknowledged them), or live with --follow (resumes "
                   "after a dropped link; an event is shown once).")
    optParameters = [["device", None, None, "One device."],
                     ["type", None, None, "One event type (motion, offline ...)."],
                     ["from", None, "-1d", "Start of the range."],
                     ["to", None, "now", "End of the range."],
                     ["limit", None, 100, "Most events listed (1..1000).", int],
                     ["count", None, 0, "--follow: stop after N events (0: never).", int],
                     ["resume-after", None, 0, "--follow: the last feed id seen.", int]]
    optFlags = [["follow", "f", "Show the events live."]]

    def postOptions(self):
        now = int(time.time() * 1000)
        self["from_ms"] = parse_time(self["from"], now)
        self["to_ms"] = parse_time(self["to"], now)
        if self["to_ms"] <= self["from_ms"]:
            raise usage.UsageError("--to must be after --from")
        if not 1 <= self["limit"] <= 1000:
            raise usage.UsageError("--limit must be within 1..1000")


class AckCmd(AnyOrder):
    synopsis = "ack NODE/SEQ DEVICE [--comment TEXT]"
    description = "Acknowledge an event (its id and device as `vssctl events` lists them)."
    arguments = ("NODE/SEQ", "DEVICE")
    optParameters = [["comment", "c", "", "Why, what was done (at most 512 characters)."]]

    def parseArgs(self, event, device):
        self["event"], self["device"] = event, device

    def postOptions(self):
        parse_event_id(self["event"])
        if len(self["comment"]) > 512:
            raise usage.UsageError("--comment: at most 512 characters")


WallCmd = wall_options(AnyOrder)


class Options(VersionOption, usage.Options):
    program = "vssctl"
    synopsis = "Usage: vssctl [--node ENDPOINT] [--user NAME] [--json] COMMAND ..."
    optParameters = [
        ["node", "n", None, "Client endpoint of the node's CU listener [$VSS_NODE]."],
        ["user", "u", None, "User name [$VSS_USER]."],
        ["password-file", None, None, "File holding the password [else $VSS_PASSWORD or a prompt]."],
        ["timeout", None, 15, "Seconds to wait for an answer.", float],
    ]
    optFlags = [["json", "j", "Print JSON instead of text."]]
    subCommands = [
        ["devices", None, Devices, "List the devices you may see."],
        ["ptz", None, Ptz, "Pan, tilt, zoom."],
        ["lens", None, Lens, "Focus and iris."],
        ["preset", None, PresetCmd, "Presets."],
        ["config", None, ConfigCmd, "Device configuration."],
        ["record-settings", None, RecordSettingsCmd, "Recording settings on the device."],
        ["live", None, Live, "Live video URL."],
        ["record", None, RecordCmd, "Start, stop or show manual recordings on your node."],
        ["recordings", None, RecordingsCmd, "List recordings on every node, with gaps."],
        ["export", None, ExportCmd, "Download a time range of recordings as one MP4."],
        ["playback", None, PlaybackCmd, "Play back recordings from a time (rtsp:// URL)."],
        ["stream-cred", None, StreamCredCmd, "Stable stream URLs for players and NVRs."],
        ["events", None, EventsCmd, "Events and alarms: stored, or live with --follow."],
        ["ack", None, AckCmd, "Acknowledge an event."],
        ["wall", None, WallCmd, "Drive a TV wall or decoder on any node."],
    ]

    def parseOptions(self, options=None):
        try:
            return super().parseOptions(options)
        except usage.UsageError as e:
            raise usage.UsageError(near_miss(self, str(e))) from None

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is required (see --help)")
        self["node"] = self["node"] or os.environ.get("VSS_NODE")
        self["user"] = self["user"] or os.environ.get("VSS_USER")
        if not self["node"]:
            raise usage.UsageError("--node (or VSS_NODE) is required")
        if not self["user"]:
            raise usage.UsageError("--user (or VSS_USER) is required")


def near_miss(opts, text):
    """A usage error with the nearest command or option when one was misspelt."""

    m = re.match(r"Unknown command: (.*)", text)
    if m:
        commands = [c[0] for c in opts.subCommands]
        near = difflib.get_close_matches(m.group(1), commands, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else f" (commands: {', '.join(commands)})"
        return f"unknown command {m.group(1)!r}{hint}"
    m = re.match(r"option --(\S+) not recognized", text)
    if m:
        known = [p[0] for p in getattr(opts, "optParameters", [])] + [
            f[0] for f in getattr(opts, "optFlags", [])]
        near = difflib.get_close_matches(m.group(1), known, n=1, cutoff=0.6)
        return f"unknown option --{m.group(1)}" + (f"; did you mean --{near[0]}?" if near
                                                    else "")
    return text


def code_name(code):
    """``not_found``: the result code's name, for scripts to match on."""
    try:
        return ResultCode(code).name.lower()
    except ValueError:
        return f"0x{int(code):04x}"


def read_password(opts):
    if opts["password-file"]:
        with open(opts["password-file"], encoding="utf-8") as f:
            return f.read().strip()
    if os.environ.get("VSS_PASSWORD"):
        return os.environ["VSS_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {opts['user']}: ")
    raise usage.UsageError("no password: use --password-file or VSS_PASSWORD")


def build_request(cmd, sub):
    """(message type, body) for a command."""
    if cmd == "events":
        return MsgType.EVENT_QUERY, query_body(sub)
    if cmd == "ack":
        return MsgType.EVENT_ACK, ack_body(sub)
    if cmd == "devices":
        return MsgType.DEVICE_LIST, DeviceList(cursor="", limit=1000)
    if cmd == "wall":
        return build_wall_request(sub)
    if cmd == "stream-cred":
        if sub["op"] == "create":
            return MsgType.CRED_CREATE, CredCreate(device_id=sub["target"], name=sub["name"],
                                                   expires_in=sub["expires"])
        if sub["op"] == "list":
            return MsgType.CRED_LIST, CredList(device_id=sub["target"])
        return MsgType.CRED_REVOKE, CredRevoke(cred_id=sub["target"], username="")
    dev, ch = sub["device"], sub.get("channel", 0)
    if cmd == "ptz":
        return MsgType.PTZ_CONTROL, PtzControl(device_id=dev, channel=ch, op=sub["op"],
                                               pan=sub["pan"], tilt=sub["tilt"], zoom=sub["zoom"],
                                               speed=sub["speed"], timeout_ms=sub["timeout-ms"])
    if cmd == "lens":
        focus = {"none": FocusOp.NONE, "near": FocusOp.NEAR, "far": FocusOp.FAR,
                 "auto": FocusOp.AUTO, "stop": FocusOp.STOP}.get(sub["focus"])
        iris = {"none": IrisOp.NONE, "open": IrisOp.OPEN, "close": IrisOp.CLOSE,
                "auto": IrisOp.AUTO, "stop": IrisOp.STOP}.get(sub["iris"])
        if focus is None or iris is None:
            raise usage.UsageError("lens: --focus near|far|auto|stop, --iris open|close|auto|stop")
        return MsgType.LENS_CONTROL, LensControl(device_id=dev, channel=ch, focus=focus,
                                                 iris=iris, speed=sub["speed"])
    if cmd == "preset":
        return MsgType.PRESET, Preset(device_id=dev, channel=ch, op=sub["op"],
                                      preset=sub["number"], name=sub["name"])
    if cmd == "config":
        if sub["op"] == "get":
            return MsgType.CONFIG_GET, ConfigGet(device_id=dev, channel=ch, keys=list(sub["items"]))
        items = [KV(key=k, value=v) for k, v in (i.split("=", 1) for i in sub["items"])]
        return MsgType.CONFIG_SET, ConfigSet(device_id=dev, channel=ch, items=items,
                                             expected_version=sub["expect-version"])
    if cmd == "record-settings":
        if sub["op"] == "get":
            return MsgType.RECORD_SETTINGS_GET, RecordSettingsGet(device_id=dev, channel=ch)
        return MsgType.RECORD_SETTINGS_SET, RecordSettings(
            device_id=dev, channel=ch, mode=RecordMode[sub["mode"].upper()],
            stream=Stream[sub.get("stream", "main").upper()], segment_seconds=sub["segment"],
            retention_days=sub["retention-days"], quota_mb=sub["quota-mb"],
            pre_event_seconds=sub["pre-event"], post_event_seconds=sub["post-event"],
            schedule=sub["slots"])
    if cmd == "record":
        if sub["op"] == "status":
            return MsgType.RECORD_STATUS, RecordStatus(device_id=dev)
        type = MsgType.RECORD_START if sub["op"] == "start" else MsgType.RECORD_STOP
        return type, RecordRequest(device_id=dev, channel=ch, stream=Stream[sub["stream"].upper()])
    if cmd in ("recordings", "export"):
        return MsgType.RECORD_QUERY, RecordQuery(
            device_id=dev, channel=ch, stream=Stream[sub["stream"].upper()],
            from_time=sub["from_ms"], to_time=sub["to_ms"])
    if cmd == "live":
        return MsgType.MEDIA_OPEN, MediaOpen(
            device_id=dev, channel=ch, stream=Stream[sub["stream"].upper()],
            purpose=Purpose.LIVE, start_time=0,
            transport=Transport[sub["transport"].upper()])
    if cmd == "playback":
        return MsgType.MEDIA_OPEN, MediaOpen(
            device_id=dev, channel=ch, stream=Stream[sub["stream"].upper()],
            purpose=Purpose.PLAYBACK, start_time=sub["at_ms"], transport=Transport.TCP)
    raise usage.UsageError(f"unknown command {cmd}")


def ptz_target(sub, body):
    """The position a goto (absolute) or step (relative) move was commanded to, as the
    device clamps it (pan and tilt in [-1, 1], zoom in [0, 1]); None for other moves.
    The answer itself gives the position when the command arrived, before the move."""
    if sub.get("op") not in (PtzOp.ABSOLUTE, PtzOp.RELATIVE):
        return None
    out = []
    for axis, low in (("pan", -1.0), ("tilt", -1.0), ("zoom", 0.0)):
        value = sub[axis] if sub["op"] == PtzOp.ABSOLUTE else getattr(body, axis) + sub[axis]
        out.append(min(1.0, max(low, value)))
    return tuple(out)


#: --json shows these fields by name, not number
_NAMED = {"kind": PuKind, "mode": RecordMode, "stream": Stream, "state": RecordingState}


def readable(value):
    """The JSON form of an answer for people and scripts: kinds, modes, streams, states
    and days by name, grants (``actions``) as a list of names."""
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if key in _NAMED and isinstance(v, int) and not isinstance(v, bool):
                try:
                    v = _NAMED[key](v).name.lower()
                except ValueError:
                    pass
            elif key == "actions" and isinstance(v, int):
                v = [a.name.lower() for a in A if v & a]
            elif key == "day" and isinstance(v, int) and 0 <= v < 7:
                v = DAYS[v]
            else:
                v = readable(v)
            out[key] = v
        return out
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def json_form(cmd, sub, result):
    """What ``--json`` prints for a command's answer."""
    if cmd == "wall":
        return wall_json(plain(result))
    out = readable(plain(result))
    if cmd == "ptz":
        target = ptz_target(sub, result)
        if target is not None:
            out["target"] = dict(zip(("pan", "tilt", "zoom"), target, strict=True))
    if cmd == "stream-cred":
        for c in ([out["credential"]] if "credential" in out else out.get("credentials", [])):
            c.pop("sealed", None)
        if sub["op"] == "create":
            out["digest_url"] = digest_url(result.url, result.credential.cred_id, result.secret)
    if cmd == "recordings":
        opens = open_segments(result)
        for seg in out["segments"]:
            seg["recording"] = (seg["start"], seg["node_id"]) in opens
    return out


def render(cmd, sub, body):
    """Readable text for a response body."""
    if cmd == "devices":
        lines = [f"{'DEVICE':<24} {'STATE':<8} {'NODE':<12} {'GRANTS':<22} NAME"]
        for d in body.devices:
            grants = ",".join(a.name.lower() for a in A if d.actions & a)
            lines.append(f"{d.device_id:<24} {'online' if d.online else 'offline':<8} "
                         f"{d.node_id:<12} {grants:<22} {d.name}")
        lines.append(f"{len(body.devices)} device(s)")
        return "\n".join(lines)
    if cmd == "ptz":
        here = f"pan {body.pan:+.3f}  tilt {body.tilt:+.3f}  zoom {body.zoom:.3f}"
        target = ptz_target(sub, body)
        if target is not None and body.moving:
            pan, tilt, zoom = target
            return (f"moving to pan {pan:+.3f}  tilt {tilt:+.3f}  zoom {zoom:.3f}  "
                    f"(commanded; now at {here.replace('  ', ' ')})")
        return f"{here}  ({'moving' if body.moving else 'still'})"
    if cmd == "lens":
        return (f"focus {body.focus:.2f}{' (auto)' if body.auto_focus else ''}  "
                f"iris {body.iris:.2f}{' (auto)' if body.auto_iris else ''}")
    if cmd == "preset":
        if not body.presets:
            return "no presets"
        return "\n".join(f"{p.preset:>3}  {p.name:<20} pan {p.pan:+.3f} tilt {p.tilt:+.3f} "
                         f"zoom {p.zoom:.3f}" for p in body.presets)
    if cmd == "config":
        width = max((len(kv.key) for kv in body.items), default=0)
        lines = [f"{kv.key:<{width}}  {kv.value}" for kv in body.items]
        lines.append(f"(version {body.version})")
        return "\n".join(lines)
    if cmd == "record-settings":
        mode = RecordMode(body.mode).name.lower() if body.mode in set(RecordMode) else body.mode
        slots = ", ".join(f"{DAYS[s.day]} {s.start_minute // 60:02d}:{s.start_minute % 60:02d}-"
                          f"{s.end_minute // 60:02d}:{s.end_minute % 60:02d}"
                          for s in body.schedule if s.day < 7)
        return (f"mode {mode}, segment {body.segment_seconds} s, keep {body.retention_days} days"
                f"{f', quota {body.quota_mb} MB' if body.quota_mb else ''}, pre/post event "
                f"{body.pre_event_seconds}/{body.post_event_seconds} s"
                f"{', schedule ' + slots if slots else ''}")
    if cmd in ("live", "playback"):
        return body.url
    if cmd == "wall":
        return render_wall(body)
    if cmd == "stream-cred":
        return render_credentials(sub, body)
    if cmd == "recordings":
        return render_recordings(body)
    if cmd == "export":
        return f"{body['file']}: {body['bytes']} bytes from {body['node_id']}"
    if cmd == "record":
        tasks = body.tasks if hasattr(body, "tasks") else [body]
        if not tasks:
            return f"{sub['device']}: no recordings on this node"
        return "\n".join(render_record_state(t) for t in tasks)
    return repr(body)


def digest_url(url, cred_id, secret):
    """The Digest form of a credential's URL: ``rtsp://ID:SECRET@host/path`` (the player
    answers the server's challenge; the secret does not cross the network)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{cred_id}:{secret}@{rest.split('?', 1)[0]}"


def render_credentials(sub, body):
    if sub["op"] == "create":
        c = body.credential
        return (f"url     {body.url}\n"
                f"digest  {digest_url(body.url, c.cred_id, body.secret)}")
    if sub["op"] == "revoke":
        c = body.credential
        return f"stream credential {c.cred_id} for {c.device_id} revoked"

    now = int(time.time() * 1000)
    rows = [f"{'ID':<16} {'DEVICE':<20} {'STATE':<8} {'CREATED (UTC)':<20} "
            f"{'EXPIRES (UTC)':<20} NAME"]
    for c in body.credentials:
        rows.append(f"{c.cred_id:<16} {c.device_id:<20} {state(c, now):<8} "
                    f"{_utc(c.created):<20} {_utc(c.expires) if c.expires else 'never':<20} "
                    f"{c.name}")
    rows.append(f"{len(body.credentials)} stream credential(s)")
    return "\n".join(rows)


def _utc(ms):
    return f"{datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC):%Y-%m-%d %H:%M:%S}"


def _iso(ms):
    return f"{datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"


def _length(ms):
    s = ms // 1000
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _size(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n:.1f} GB"


def render_recordings(body):
    """A table of segments in time order with the gaps between them (UTC times); a
    segment still being written says so in place of its end."""
    lines = [f"{'START (UTC)':<20} {'END (UTC)':<20} {'LENGTH':>10} {'SIZE':>10}  NODE"]
    rows = [(s.start, 1, s) for s in body.segments] + [(g.start, 0, g) for g in body.gaps]
    opens = open_segments(body)
    for _, is_segment, item in sorted(rows, key=lambda r: (r[0], r[1])):
        if is_segment:
            end = "recording" if (item.start, item.node_id) in opens else _utc(item.end)
            lines.append(f"{_utc(item.start):<20} {end:<20} "
                         f"{_length(item.end - item.start):>10} {_size(item.bytes):>10}  "
                         f"{item.node_id}")
        else:
            lines.append(f"{'-- gap ' + _utc(item.start):<27} .. {_utc(item.end):<20} "
                         f"({_length(item.end - item.start)}) --")
    total = sum(s.bytes for s in body.segments)
    recorded = sum(s.end - s.start for s in body.segments)
    lines.append(f"{len(body.segments)} segment(s), {_length(recorded)} recorded, "
                 f"{_size(total)}, {len(body.gaps)} gap(s)"
                 + (f", {len(opens)} being recorded" if opens else ""))
    if body.missing:
        lines.append(f"not listed (no answer): {', '.join(body.missing)}")
    if body.truncated:
        lines.append("truncated: more segments match; narrow the range")
    return "\n".join(lines)


def render_record_state(t):
    """``cam1 ch0 main: running since 2026-01-05 08:00:00Z (manual:alice, schedule)``"""

    state = RecordingState(t.state).name.lower() if t.state in set(RecordingState) else t.state
    line = f"{t.device_id} ch{t.channel} {'main' if t.stream == Stream.MAIN else 'sub'}: {state}"
    if t.queue_position:
        line += f" at position {t.queue_position}"
    if t.since and t.state != RecordingState.STOPPED:
        when = datetime.datetime.fromtimestamp(t.since / 1000, datetime.UTC)
        line += f" since {when:%Y-%m-%d %H:%M:%S}Z"
    if t.reasons:
        line += f" ({', '.join(t.reasons)})"
    return line


#: The first wait after a NOT_READY answer, in seconds; it doubles up to NOT_READY_MAX.
NOT_READY_FIRST = 0.5
NOT_READY_MAX = 8.0


@defer.inlineCallbacks
def connect_when_ready(reactor, opts, client, err=None):
    """Log in; a node that answers NOT_READY (still loading its data) is asked again
    after a growing, randomised delay (each between half and one and a half times the
    step), until ``--timeout`` has passed."""
    err = err or sys.stderr
    deadline = reactor.seconds() + opts["timeout"]
    step = NOT_READY_FIRST
    while True:
        try:
            yield connect(reactor, opts["node"], client, request_timeout=opts["timeout"])
            return client
        except VssError as e:
            if e.code != ResultCode.NOT_READY:
                raise
            delay = step * random.uniform(0.5, 1.5)
            if reactor.seconds() + delay > deadline:
                raise
            print(f"vssctl: the node is not ready ({e.message}); trying again in "
                  f"{delay:.1f} s", file=err, flush=True)
            yield task.deferLater(reactor, delay, lambda: None)
            step = min(step * 2, NOT_READY_MAX)


@defer.inlineCallbacks
def run_command(reactor, opts, password, out):
    cmd, sub = opts.subCommand, opts.subOptions
    if cmd == "events" and sub["follow"]:
        yield follow(reactor, opts, password, out, connect_when_ready)
        return
    client = SignallingClient(Role.CU, opts["user"], password, kind=CuKind.MOC)
    yield connect_when_ready(reactor, opts, client)
    try:
        type, body = build_request(cmd, sub)
        if cmd == "devices":
            devices, cursor = [], ""
            while True:
                page = (yield client.request(type, DeviceList(cursor=cursor, limit=1000))).body
                devices.extend(page.devices)
                cursor = page.next_cursor
                if not cursor:
                    break
            result = type_of_devices(devices)
        elif cmd == "record":
            result = yield record_request(client, type, body)
        elif cmd in ("recordings", "export"):
            result = yield list_recordings(client, body, opts["timeout"])
            if cmd == "export":
                result = yield export(reactor, result, sub["output"])
        else:
            if cmd == "playback":
                if sub["event"]:
                    event, pre = yield event_start(client, sub)
                    sub["channel"] = event.channel
                    sub["at_ms"] = yield bookmark(client, sub, event, pre, opts["timeout"])
                    type, body = build_request(cmd, sub)
                yield check_footage(client, sub, opts["timeout"])
            result = (yield client.request(type, body)).body
        if cmd == "events":
            out.write(render_events(result, opts["json"]) + "\n")
        elif cmd == "ack":
            out.write(render_ack(result, opts["json"]) + "\n")
        elif opts["json"]:
            out.write(json.dumps(json_form(cmd, sub, result), indent=1, sort_keys=True) + "\n")
        else:
            out.write(render(cmd, sub, result) + "\n")
        if cmd == "stream-cred" and sub["op"] == "create":
            c = result.credential
            until = f"expires {_utc(c.expires)} UTC" if c.expires else "never expires"
            print(f"stream credential {c.cred_id} for {c.device_id} ({until}): the secret is "
                  f"shown only now. Revoke it with: vssctl stream-cred revoke {c.cred_id}",
                  file=sys.stderr)
        if cmd in ("live", "playback") and sub["play"]:
            play(result.url)
    finally:
        if client.link is not None:
            client.link.close()


@defer.inlineCallbacks
def record_request(client, type, body):
    """RECORD_*; a start answered QUEUED is shown as the queued task, from RECORD_STATUS."""
    try:
        return (yield client.request(type, body)).body
    except VssError as e:
        if e.code != ResultCode.QUEUED:
            raise
    status = (yield client.request(MsgType.RECORD_STATUS, RecordStatus(device_id=body.device_id)))
    for t in status.body.tasks:
        if (t.channel, t.stream) == (body.channel, body.stream):
            return t
    raise VssError(ResultCode.QUEUED, "queued")


@defer.inlineCallbacks
def list_recordings(client, query, timeout):
    frame = yield client.link.request_raw(MsgType.RECORD_QUERY, codec.encode_body(query),
                                          timeout)
    return decode_recordings(frame)


@defer.inlineCallbacks
def bookmark(client, sub, event, pre, timeout):
    """Where the recording of ``event`` starts: its time less the pre-event seconds, or
    the start of the segment that holds the event when that is later (the recording
    began at a keyframe after it, or the settings changed since)."""
    at = event.node_time - pre * 1000
    query = RecordQuery(device_id=event.device_id, channel=event.channel,
                        stream=Stream[sub["stream"].upper()], from_time=at,
                        to_time=event.node_time + 1000)
    listing = yield list_recordings(client, query, timeout)
    holding = [s for s in listing.segments if s.start <= event.node_time < s.end]
    if holding and not any(s.start <= at < s.end for s in listing.segments):
        at = min(s.start for s in holding)
    return at


@defer.inlineCallbacks
def check_footage(client, sub, timeout):
    """Before a playback: is anything recorded at the asked time? A time with no
    footage is said, with where the next recording starts, rather than answered with a
    URL that plays something else (or nothing yet)."""

    at = sub["at_ms"]
    query = RecordQuery(device_id=sub["device"], channel=sub["channel"],
                        stream=Stream[sub["stream"].upper()], from_time=at,
                        to_time=at + 86400_000)
    listing = yield list_recordings(client, query, timeout)
    opens = open_segments(listing)
    what = f"{sub['device']} {sub['stream']}" + (f" channel {sub['channel']}"
                                                 if sub["channel"] else "")
    for s in listing.segments:
        if s.start <= at + MIN_GAP_MS and s.end > at:
            if (s.start, s.node_id) in opens:
                raise VssError(ResultCode.NOT_FOUND, (
                    f"{_utc(at)} UTC of {what} is in the segment being recorded now (since "
                    f"{_utc(s.start)}); it can be played back once that segment closes"))
            return
    later = [s for s in listing.segments if s.start > at]
    if later:
        first = min(later, key=lambda s: s.start)
        raise VssError(ResultCode.NOT_FOUND, (
            f"nothing was recorded of {what} at {_utc(at)} UTC; the next recording starts at "
            f"{_utc(first.start)} UTC (vssctl playback {sub['device']} --at "
            f"{_iso(first.start)})"))
    if listing.missing:
        return  # not every node answered: the node asked to play back may know more
    raise VssError(ResultCode.NOT_FOUND,
                   f"nothing was recorded of {what} at or after {_utc(at)} UTC")


@defer.inlineCallbacks
def export(reactor, listing, path):
    """Download the export of the node holding the most of the range into ``path``."""
    if not listing.exports:
        missing = f" (not listed: {', '.join(listing.missing)})" if listing.missing else ""
        opens = open_segments(listing)
        if opens:
            since = _utc(min(start for start, _ in opens))
            raise VssError(ResultCode.NOT_FOUND, (
                f"nothing to export in that range yet: the segment being recorded since "
                f"{since} UTC is exported once it closes (segments close at the end of "
                f"their length, see record-settings){missing}"))
        raise VssError(ResultCode.NOT_FOUND, f"no recording in that range{missing}")
    held = {}
    for s in listing.segments:
        held[s.node_id] = held.get(s.node_id, 0) + s.bytes
    best = max(listing.exports, key=lambda e: held.get(e.node_id, 0))
    size = yield download(reactor, best.url, path)
    return {"file": path, "bytes": size, "node_id": best.node_id,
            "nodes_with_footage": sorted(held)}


def download(reactor, url, path):
    """GET ``url`` into ``path`` (written as it arrives); fires with the size."""

    class Sink(protocol.Protocol):
        def __init__(self, f, done):
            self.f, self.done, self.size = f, done, 0

        def dataReceived(self, data):
            self.f.write(data)
            self.size += len(data)

        def connectionLost(self, reason):
            self.f.close()
            if reason.check(ResponseDone):
                self.done.callback(self.size)
            else:
                self.done.errback(reason)

    def got(response):
        if response.code != 200:
            response.deliverBody(protocol.Protocol())
            raise VssError(ResultCode.FORBIDDEN if response.code == 403 else ResultCode.NOT_FOUND,
                           f"export answered HTTP {response.code}")
        done = defer.Deferred()
        response.deliverBody(Sink(open(path, "wb"), done))  # noqa: SIM115 - closed by Sink
        return done

    return Agent(reactor).request(b"GET", url.encode("ascii")).addCallback(got)


def type_of_devices(devices):
    return DevicesBody(devices=devices, next_cursor="")


def play(url):
    player = shutil.which("ffplay") or shutil.which("vlc") or shutil.which("mpv")
    if player:
        subprocess.Popen([player, url])
    else:
        print("no player found (ffplay, vlc, mpv); open the URL above in one", file=sys.stderr)


def main(argv=None, out=None):
    out = out or sys.stdout
    opts = Options()
    try:
        opts.parseOptions(sys.argv[1:] if argv is None else argv)
        try:
            password = read_password(opts)
        except OSError as e:
            raise usage.UsageError(f"--password-file: {e.strerror}") from None
    except usage.UsageError as e:
        print(f"vssctl: {e}", file=sys.stderr)
        return 2
    status = []

    def run(reactor):
        d = run_command(reactor, opts, password, out)

        def failed(f):
            if f.check(VssError):
                print(f"vssctl: {f.value.message} [{code_name(f.value.code)}]",
                      file=sys.stderr)
            elif f.check(usage.UsageError):
                print(f"vssctl: {f.value}", file=sys.stderr)
            else:
                print(f"vssctl: cannot reach {opts['node']}: {f.getErrorMessage()}",
                      file=sys.stderr)
            status.append(1)

        return d.addErrback(failed)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            return e.code
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
