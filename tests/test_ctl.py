"""What a newcomer sees of ``vssctl``: a misspelt command or option gets the near one, a
missing argument is named, the help of a command has a clean usage line, and the
answers read well (a goto says where the camera goes, ``--json`` names kinds, grants,
modes and states, a segment being written is shown as recording)."""

import json

from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from vss.cu import ctl
from vss.protocols.codes import DESCRIPTIONS
from vss.protocols.listing import OPEN_TAG, encode_open
from vss.protocols.messages import (
    DeviceInfo,
    Devices,
    PtzOp,
    PtzStatus,
    Recordings,
    RecordSegment,
    RecordTask,
    TimeRange,
)
from vss.testing.processes import child_env, run_tool

T0 = 1_767_600_000_000  # 2026-01-05 08:00:00 UTC


def parse(*argv):
    opts = ctl.Options()
    opts.parseOptions(["--node", "tcp:h:1", "--user", "u", *argv])
    return opts.subCommand, opts.subOptions


def usage_error(*argv):
    try:
        parse(*argv)
    except usage.UsageError as e:
        return str(e)
    raise AssertionError(f"{argv} parsed")


class ParsingTests(unittest.TestCase):
    def test_a_misspelt_command_or_option_gets_the_near_one(self):
        self.assertEqual(usage_error("devcies"), "unknown command 'devcies'; did you mean devices?")
        self.assertIn("did you mean recordings?", usage_error("recordigns", "cam1"))
        self.assertIn("commands: devices, ptz", usage_error("zzzz"))
        self.assertEqual(usage_error("ptz", "cam1", "goto", "--pann", "1"),
                         "ptz: unknown option --pann; did you mean --pan?")

    def test_a_missing_or_extra_argument_is_named(self):
        self.assertTrue(usage_error("record", "status").startswith(
            "record status: DEVICE is missing (Usage: vssctl [global options] record "
            "(start|stop|status) DEVICE"))
        self.assertTrue(usage_error("ptz", "cam1").startswith(
            "ptz cam1: move|goto|step|stop is missing"))
        self.assertTrue(usage_error("record").startswith(
            "record: start|stop|status and DEVICE are missing"))
        self.assertTrue(usage_error("devices", "cam1").startswith(
            "devices: unexpected argument 'cam1'"))
        self.assertTrue(usage_error("live", "cam1", "extra").startswith(
            "live: unexpected argument 'extra'"))
        # optional and variadic arguments still parse
        self.assertEqual(parse("preset", "cam1", "list")[1]["number"], 0)
        self.assertEqual(parse("config", "cam1", "get", "a", "b")[1]["items"], ("a", "b"))

    def test_the_help_of_a_command_has_one_clean_usage_line(self):
        sub = ctl.RecordCmd()
        self.assertEqual(sub.getSynopsis(), "Usage: vssctl [global options] record "
                         "(start|stop|status) DEVICE [--channel N] [--stream main|sub]")
        self.assertTrue(str(ctl.Options()).startswith(
            "Usage: vssctl [--node ENDPOINT] [--user NAME] [--json] COMMAND ..."))

    def test_no_result_code_shows_internal_wording(self):
        for code, text in DESCRIPTIONS.items():
            self.assertNotIn("(", text, code)
        self.assertEqual(ctl.code_name(0x0308), "not_found")
        self.assertEqual(ctl.code_name(0x7777), "0x7777")


class AnswerTests(unittest.TestCase):
    def test_a_goto_reports_the_commanded_target_not_where_it_was(self):
        cmd, sub = parse("ptz", "cam1", "goto", "--pan", "0.5", "--tilt", "2")
        moving = PtzStatus(pan=0.0, tilt=0.0, zoom=0.25, moving=True)
        self.assertEqual(ctl.render(cmd, sub, moving),
                         "moving to pan +0.500  tilt +1.000  zoom 0.000  (commanded; now at "
                         "pan +0.000 tilt +0.000 zoom 0.250)")
        self.assertEqual(ctl.json_form(cmd, sub, moving)["target"],
                         {"pan": 0.5, "tilt": 1.0, "zoom": 0.0})
        there = PtzStatus(pan=0.5, tilt=1.0, zoom=0.0, moving=False)
        self.assertEqual(ctl.render(cmd, sub, there), "pan +0.500  tilt +1.000  zoom 0.000  (still)")
        cmd, sub = parse("ptz", "cam1", "step", "--pan", "-0.25")
        self.assertEqual(sub["op"], PtzOp.RELATIVE)
        self.assertEqual(ctl.ptz_target(sub, PtzStatus(pan=0.1, tilt=0, zoom=0, moving=True)),
                         (-0.15, 0.0, 0.0))
        cmd, sub = parse("ptz", "cam1", "move", "--pan", "0.5")
        self.assertNotIn("target", ctl.json_form(cmd, sub, moving))

    def test_json_names_kinds_grants_modes_and_states(self):
        body = Devices(devices=[DeviceInfo(device_id="c", name="C", kind=2, channels=4,
                                           online=True, node_id="n", actions=0x05)],
                       next_cursor="")
        out = ctl.json_form("devices", {}, body)
        self.assertEqual(out["devices"][0]["kind"], "dvs")
        self.assertEqual(out["devices"][0]["actions"], ["view", "config"])
        task = RecordTask(device_id="c", channel=0, stream=1, state=2, reasons=["manual:u"],
                          since=T0, queue_position=1)
        self.assertEqual({k: v for k, v in ctl.json_form("record", {}, task).items()
                          if k in ("stream", "state")}, {"stream": "sub", "state": "queued"})
        json.dumps(out)

    def test_a_segment_being_written_is_shown_as_recording(self):
        body = Recordings(
            segments=[RecordSegment(start=T0, end=T0 + 60_000, bytes=7_500_000, node_id="n1"),
                      RecordSegment(start=T0 + 60_000, end=T0 + 75_000, bytes=1_800_000,
                                    node_id="n1")],
            gaps=[TimeRange(start=T0 - 600_000, end=T0)], missing=[], exports=[],
            truncated=False, ext=((OPEN_TAG, encode_open([(T0 + 60_000, "n1")])),))
        lines = ctl.render("recordings", {}, body).splitlines()
        self.assertEqual(lines[2].split()[2:5], ["2026-01-05", "08:01:00", "1m00s"])
        self.assertEqual(lines[3].split()[:4], ["2026-01-05", "08:01:00", "recording", "0m15s"])
        self.assertEqual(lines[-1], "2 segment(s), 1m15s recorded, 9.3 MB, 1 gap(s), "
                         "1 being recorded")
        segs = ctl.json_form("recordings", {}, body)["segments"]
        self.assertEqual([s["recording"] for s in segs], [False, True])


class CommandLineTests(unittest.TestCase):
    """The same through the real command, as a user types it."""

    @defer.inlineCallbacks
    def ctl(self, *args):
        out, err, code = yield run_tool("vssctl", list(args),
                                        env=child_env(VSS_NODE="tcp:127.0.0.1:1", VSS_USER="u",
                                                      VSS_PASSWORD="p"))
        return out, err, code

    @defer.inlineCallbacks
    def test_typos_and_missing_arguments_are_one_line(self):
        out, err, code = yield self.ctl("devcies")
        self.assertEqual((out, code), ("", 2))
        self.assertEqual(err, "vssctl: unknown command 'devcies'; did you mean devices?\n")
        out, err, code = yield self.ctl("record", "status")
        self.assertEqual(code, 2)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("record status: DEVICE is missing", err)

    @defer.inlineCallbacks
    def test_record_help_has_a_clean_usage_line(self):
        out, err, code = yield self.ctl("record", "--help")
        self.assertEqual(code, 0, err)
        first = out.splitlines()[0]
        self.assertEqual(first, "Usage: vssctl [global options] record (start|stop|status) "
                         "DEVICE [--channel N] [--stream main|sub]")
