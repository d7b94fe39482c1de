"""
``vssctl wall``: drive a TV wall or a decoder from any node (docs/protocol.md 9.9).

    vssctl wall WALL show
    vssctl wall WALL layout 4
    vssctl wall WALL assign TILE DEVICE [--stream main|sub] [--channel N]
    vssctl wall WALL clear TILE
    vssctl wall WALL tour TILE DEV1,DEV2,... --dwell 10 [--stream main|sub]
    vssctl wall WALL tour-stop TILE

The operator needs the ``wall`` grant on ``cu:WALL`` (``vss-admin grant set user:NAME
cu:WALL wall``); the wall shows only what its own account may view.
"""

from twisted.python import usage

from vss.protocols.messages import (
    CuKind,
    MsgType,
    Stream,
    WallAssign,
    WallDescribe,
    WallLayout,
    WallQuery,
    WallTour,
)

OPS = ("show", "layout", "assign", "clear", "tour", "tour-stop")


def wall_options(base):
    """The ``wall`` command's options class, on vssctl's base class of commands."""

    class WallCmd(base):
        synopsis = ("wall WALL show | layout 1|4|9|16 | assign TILE DEVICE | clear TILE | "
                    "tour TILE DEV1,DEV2,... --dwell S | tour-stop TILE")
        description = ("Drive a TV wall or decoder logged in to any node: its state, its "
                       "layout, what a tile shows, tours. Needs the 'wall' grant on "
                       "cu:WALL.")
        arguments = ("WALL", "OP", "ARG", "DEVICE")
        optional = 2
        optParameters = [["stream", None, "sub", "main or sub."],
                         ["channel", None, 0, "The device's channel.", int],
                         ["dwell", None, 10, "tour: seconds per device (1..3600).", int]]

        def parseArgs(self, wall, op, arg=None, device=None):
            if op not in OPS:
                raise usage.UsageError(f"wall: unknown operation {op!r} (use "
                                       f"{', '.join(OPS)})")
            self["wall"], self["op"], self["device"] = wall, op, device
            needs = {"show": 0, "layout": 1, "clear": 1, "tour-stop": 1, "tour": 2,
                     "assign": 2}[op]
            given = (arg is not None) + (device is not None)
            if given != needs:
                raise usage.UsageError(f"wall {op}: {needs} argument(s) after {op} "
                                       f"({self.synopsis})")
            self["arg"] = arg

        def postOptions(self):
            if self["stream"] not in ("main", "sub"):
                raise usage.UsageError("--stream: main or sub")
            op, arg = self["op"], self["arg"]
            if op == "layout":
                if arg not in ("1", "4", "9", "16"):
                    raise usage.UsageError("wall layout: 1, 4, 9 or 16")
                self["layout"] = int(arg)
            elif op != "show":
                try:
                    self["tile"] = int(arg)
                except ValueError:
                    raise usage.UsageError(f"wall {op}: TILE is a number") from None
            if op == "tour":
                self["devices"] = [d for d in self["device"].split(",") if d]
                if not 1 <= self["dwell"] <= 3600:
                    raise usage.UsageError("--dwell: 1..3600 seconds")

    return WallCmd


def build_wall_request(sub):
    """(message type, body) of a ``vssctl wall`` command."""
    wall, op = sub["wall"], sub["op"]
    stream = Stream[sub["stream"].upper()]
    if op == "show":
        return MsgType.WALL_STATE, WallQuery(wall_id=wall)
    if op == "layout":
        return MsgType.WALL_DESCRIBE, WallDescribe(wall_id=wall, layout=sub["layout"],
                                                   tiles=[], assignments=[])
    if op in ("assign", "clear"):
        return MsgType.WALL_ASSIGN, WallAssign(
            wall_id=wall, tile=sub["tile"], device_id=sub["device"] if op == "assign" else "",
            channel=sub["channel"], stream=stream)
    return MsgType.WALL_TOUR, WallTour(
        wall_id=wall, tile=sub["tile"], devices=sub["devices"] if op == "tour" else [],
        stream=stream, dwell=sub["dwell"] if op == "tour" else 0)


def wall_json(data):
    """The ``--json`` form of a WallState (a plain dict): kinds, layouts and streams by
    name."""
    try:
        data["kind"] = CuKind(data["kind"]).name.lower()
    except ValueError:
        pass
    try:
        data["layout"] = WallLayout(data["layout"]).name.lower()
    except ValueError:
        pass
    for a in data["assignments"]:
        a["stream"] = Stream(a["stream"]).name.lower() if a["stream"] in (0, 1) else a["stream"]
    return data


def render_wall(state):
    """A wall's state for people."""
    kind = {int(CuKind.TVWALL): "TV wall", int(CuKind.DECODER): "decoder"}.get(state.kind,
                                                                            "wall")
    try:
        layout = WallLayout(state.layout).name.lower()
    except ValueError:
        layout = str(state.layout)
    lines = [f"{kind} {state.wall_id} on {state.node_id}: layout {layout}, "
             f"{len(state.tiles)} tile(s), version {state.version}"]
    shown = {a.tile: a for a in state.assignments}
    for i in range(len(state.tiles)):
        a = shown.get(i)
        if a is None:
            lines.append(f"  tile {i:>2}  -")
            continue
        tour = (f"  tour {','.join(a.tour)} every {a.dwell} s (at {a.tour_index + 1})"
                if a.tour else "")
        error = f", last error: {a.last_error}" if a.last_error else ""
        lines.append(f"  tile {i:>2}  {a.device_id} ch {a.channel} "
                     f"{Stream(a.stream).name.lower()}: {a.frames} frames, {a.errors} "
                     f"errors{error}{tour}")
    return "\n".join(lines)
