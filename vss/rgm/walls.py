"""
TV walls and set-top decoders on their node (docs/protocol.md 9.9).

A CU that registers as a ``TVWALL`` or a ``DECODER`` is a *wall*, named by its account.
``WallRegistry`` holds, in the node's memory (dynamic data), each wall's layout, tiles and
what each tile shows, runs the tiles' tours on the node's clock and tells the wall every
change (WALL_NOTIFY). Commands for a wall come from any node: the operator's node checks
the WALL grant on ``cu:<wall>`` and serves the command here when the wall is logged in to
this node, else routes it (``vss.rgm.relay``, ``vss.rgm.peers.serve_route``); the wall's
node tells CMS where the wall is (``ICentral.presence`` of ``cu:<wall>``), so that routes
to it can be found and move with it.

The registry imports nothing from the RGM: it is handed the store (grants), the clock,
the node id and a ``presence`` callable.
"""

import math

from twisted.logger import Logger

from vss.protocols import codec
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    CU_TARGET,
    Action,
    CuKind,
    MsgType,
    Stream,
    Tile,
    TileState,
    WallLayout,
    WallState,
)

#: The CU kinds that are walls.
WALL_KINDS = frozenset((int(CuKind.TVWALL), int(CuKind.DECODER)))
#: The messages of a wall, and whether an operator may send each for another wall.
WALL_REQUESTS = frozenset((MsgType.WALL_DESCRIBE, MsgType.WALL_ASSIGN, MsgType.WALL_TOUR,
                           MsgType.WALL_STATE, MsgType.WALL_REPORT))
SCREEN = 10000
MAX_TILES = 64
MAX_TOUR = 64
MAX_DWELL = 3600


def target(wall_id):
    """The route and grant key of a wall: ``cu:<account>``."""
    return CU_TARGET + wall_id


def grid(layout):
    """The tiles of a standard layout: n x n equal tiles, row by row."""
    n = math.isqrt(int(layout))
    size = SCREEN // n
    return [Tile(x=col * size, y=row * size, width=size, height=size)
            for row in range(n) for col in range(n)]


def check_tiles(layout, tiles):
    """The tiles of a layout, or INVALID_ARGUMENT."""
    if layout in (WallLayout.ONE, WallLayout.FOUR, WallLayout.NINE, WallLayout.SIXTEEN):
        if tiles:
            raise VssError(ResultCode.INVALID_ARGUMENT,
                           f"layout {layout} has its own tiles: send none")
        return grid(layout)
    if layout != WallLayout.CUSTOM:
        raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown layout {layout}")
    if not 1 <= len(tiles) <= MAX_TILES:
        raise VssError(ResultCode.INVALID_ARGUMENT,
                       f"a custom layout has 1 to {MAX_TILES} tiles")
    for i, t in enumerate(tiles):
        if not (t.width and t.height and t.x + t.width <= SCREEN and t.y + t.height <= SCREEN):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"tile {i} is not on the screen")
    return list(tiles)


class Wall:
    """One wall's state on the node that it is (or was last) logged in to."""

    __slots__ = ("wall_id", "kind", "link", "layout", "tiles", "tiles_state", "version",
                 "tours")

    def __init__(self, wall_id, kind):
        self.wall_id = wall_id
        self.kind = kind
        self.link = None
        self.layout = int(WallLayout.ONE)
        self.tiles = grid(WallLayout.ONE)
        self.tiles_state = {}  # tile -> TileState
        self.version = 0
        self.tours = {}  # tile -> IDelayedCall of its next step


class WallRegistry:
    log = Logger()

    def __init__(self, node_id, store, clock, presence=None):
        self.node_id = node_id
        self.store = store
        self.clock = clock
        self.presence = presence or (lambda key, online: None)
        self.walls = {}  # wall_id -> Wall
        self.counters = {"wall_commands": 0, "wall_notifies": 0, "wall_tour_steps": 0}

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- the wall's own link

    def logged_in(self, link, identity, kind):
        """A wall registered on this node: it is here from now on (CMS is told)."""
        wall = self.walls.get(identity)
        if wall is None:
            wall = self.walls[identity] = Wall(identity, kind)
        wall.kind = kind
        old, wall.link = wall.link, link
        if old is not None and old is not link and not old.closed:
            old.close(ResultCode.SESSION_REPLACED, "the wall logged in on another link")
        self.presence(target(identity), True)
        self.log.info("wall {wall} logged in", wall=identity)

    def logged_out(self, link):
        """The wall's link dropped: its state stays (a wall that comes back here finds
        it), its route goes."""
        s = link.session
        wall = self.walls.get(s.identity)
        if wall is None or wall.link is not link:
            return
        wall.link = None
        self.presence(target(s.identity), False)

    def here(self, wall_id):
        wall = self.walls.get(wall_id)
        return wall is not None and wall.link is not None and not wall.link.closed

    def stop(self):
        for wall in self.walls.values():
            for call in wall.tours.values():
                if call.active():
                    call.cancel()
            wall.tours.clear()

    # -- commands (already authorised by the operator's node)

    def serve(self, type, body, own=False):
        """A WALL_* command for a wall logged in here; returns the WallState. ``own``:
        the wall itself describes itself (its assignments are taken when the node holds
        none for it)."""
        wall_id = body.wall_id if type != MsgType.WALL_REPORT else None
        wall = self.walls.get(wall_id)
        if wall is None or wall.link is None or wall.link.closed:
            raise VssError(ResultCode.WALL_OFFLINE, f"wall {wall_id} is not logged in here")
        self.counters["wall_commands"] += 1
        if type == MsgType.WALL_STATE:
            return self.state(wall)
        if type == MsgType.WALL_DESCRIBE:
            self.describe(wall, body, own)
        elif type == MsgType.WALL_ASSIGN:
            self.assign(wall, body)
        elif type == MsgType.WALL_TOUR:
            self.tour(wall, body)
        else:
            raise VssError(ResultCode.UNEXPECTED_MESSAGE, codec.message_name(type))
        return self.changed(wall)

    def describe(self, wall, body, own):
        tiles = check_tiles(body.layout, body.tiles)
        keep = {}
        restore = own and wall.version == 0
        for ts in (body.assignments if restore else wall.tiles_state.values()):
            if ts.tile < len(tiles) and ts.device_id:
                if restore and not self.may_view(wall, ts.device_id):
                    continue
                keep[ts.tile] = ts
        for tile in list(wall.tours):
            if tile not in keep or not keep[tile].tour:
                self._stop_tour(wall, tile)
        wall.layout = int(body.layout)
        wall.tiles = tiles
        wall.tiles_state = keep
        for tile, ts in keep.items():
            if ts.tour and ts.dwell and tile not in wall.tours:
                self._schedule(wall, tile, ts.dwell)

    def _tile(self, wall, tile):
        if tile >= len(wall.tiles):
            raise VssError(ResultCode.INVALID_ARGUMENT,
                           f"tile {tile} out of range (the wall has {len(wall.tiles)})")

    def may_view(self, wall, device_id):
        return bool(self.store.actions_for(wall.wall_id, device_id) & Action.VIEW)

    def _viewable(self, wall, device_id):
        if not self.may_view(wall, device_id):
            raise VssError(ResultCode.FORBIDDEN,
                           f"wall {wall.wall_id} may not view {device_id}")

    def assign(self, wall, body):
        self._tile(wall, body.tile)
        if body.stream not in (Stream.MAIN, Stream.SUB):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown stream {body.stream}")
        self._stop_tour(wall, body.tile)
        if not body.device_id:
            wall.tiles_state.pop(body.tile, None)
            return
        self._viewable(wall, body.device_id)
        record = self.store.get_device(body.device_id)
        if record is not None and record.channels and body.channel >= record.channels:
            raise VssError(ResultCode.INVALID_ARGUMENT,
                           f"channel {body.channel} out of range (device has "
                           f"{record.channels})")
        wall.tiles_state[body.tile] = TileState(
            tile=body.tile, device_id=body.device_id, channel=body.channel,
            stream=body.stream, tour=[], dwell=0, tour_index=0, since=self.now_ms(),
            frames=0, errors=0, last_error="")

    def tour(self, wall, body):
        self._tile(wall, body.tile)
        self._stop_tour(wall, body.tile)
        if not body.devices or not body.dwell:  # stop: the tile keeps what it shows
            ts = wall.tiles_state.get(body.tile)
            if ts is not None and ts.tour:
                wall.tiles_state[body.tile] = _replace(ts, tour=[], dwell=0, tour_index=0)
            return
        if len(body.devices) > MAX_TOUR or body.dwell > MAX_DWELL:
            raise VssError(ResultCode.INVALID_ARGUMENT,
                           f"a tour has 1 to {MAX_TOUR} devices and 1 to {MAX_DWELL} s")
        if body.stream not in (Stream.MAIN, Stream.SUB):
            raise VssError(ResultCode.INVALID_ARGUMENT, f"unknown stream {body.stream}")
        for device_id in body.devices:
            self._viewable(wall, device_id)
        wall.tiles_state[body.tile] = TileState(
            tile=body.tile, device_id=body.devices[0], channel=0, stream=body.stream,
            tour=list(body.devices), dwell=body.dwell, tour_index=0, since=self.now_ms(),
            frames=0, errors=0, last_error="")
        self._schedule(wall, body.tile, body.dwell)

    def _schedule(self, wall, tile, dwell):
        wall.tours[tile] = self.clock.callLater(dwell, self._step, wall, tile)

    def _stop_tour(self, wall, tile):
        call = wall.tours.pop(tile, None)
        if call is not None and call.active():
            call.cancel()

    def _step(self, wall, tile):
        """A tour's next device, on time: the next step is scheduled from this one."""
        wall.tours.pop(tile, None)
        ts = wall.tiles_state.get(tile)
        if ts is None or not ts.tour:
            return
        self._schedule(wall, tile, ts.dwell)
        index = (ts.tour_index + 1) % len(ts.tour)
        device_id = ts.tour[index]
        # a device the wall may no longer view is skipped (shown blank)
        wall.tiles_state[tile] = _replace(
            ts, device_id=device_id if self.may_view(wall, device_id) else "",
            tour_index=index, since=self.now_ms(), frames=0, errors=0, last_error="")
        self.counters["wall_tour_steps"] += 1
        self.changed(wall)

    def report(self, wall_id, body):
        """WALL_REPORT: what the wall showed on each tile since it was assigned."""
        wall = self.walls.get(wall_id)
        if wall is None:
            raise VssError(ResultCode.NOT_A_WALL, f"{wall_id} is not a wall")
        for r in body.tiles:
            ts = wall.tiles_state.get(r.tile)
            if ts is not None and ts.device_id == r.device_id:
                wall.tiles_state[r.tile] = _replace(ts, frames=r.frames, errors=r.errors,
                                                    last_error=r.last_error[:256])

    # -- state

    def state(self, wall):
        return WallState(wall_id=wall.wall_id, node_id=self.node_id, kind=wall.kind,
                         layout=wall.layout, tiles=list(wall.tiles),
                         assignments=[wall.tiles_state[t] for t in sorted(wall.tiles_state)],
                         version=wall.version)

    def changed(self, wall):
        wall.version = (wall.version + 1) & 0xFFFFFFFF
        state = self.state(wall)
        link = wall.link
        if link is not None and not link.closed:
            self.counters["wall_notifies"] += 1
            link.send_notify(MsgType.WALL_NOTIFY, state)
        return state

    def access_changed(self):
        """Grants changed: a tile showing a device its wall may no longer view is
        cleared."""
        for wall in self.walls.values():
            gone = [t for t, ts in wall.tiles_state.items()
                    if ts.device_id and not self.may_view(wall, ts.device_id)]
            for tile in gone:
                self._stop_tour(wall, tile)
                del wall.tiles_state[tile]
            if gone:
                self.changed(wall)

    def status(self):
        return {"walls": len(self.walls),
                "walls_online": sum(1 for w in self.walls.values() if w.link is not None),
                **self.counters}


def _replace(ts, **changes):
    fields = {n: getattr(ts, n) for n in ts._fields}
    fields.update(changes)
    return TileState(**fields)
