"""
TV walls and decoders on their node (vss.rgm.walls, docs/protocol.md 9.9) over in-memory
links and a task.Clock: a wall describes itself, operators assign tiles and run tours
(with the WALL grant; the wall shows only what its own account may view), a command for
a wall on another node is routed to it, and a wall whose node lost its state restores it.
"""

from twisted.trial import unittest

from vss.cms.interest import EVERY_NODE, Interest
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    Change,
    ChangeOp,
    CuKind,
    DeviceList,
    Entity,
    MsgType,
    Stream,
    Tile,
    TileReport,
    TileState,
    WallAssign,
    WallDescribe,
    WallLayout,
    WallQuery,
    WallReport,
    WallTour,
)
from vss.rgm.walls import grid
from vss.testing import records
from vss.testing.harness import NodeHarness


def result(d):
    out = []
    d.addCallback(out.append)
    assert out, "the request has not completed"
    return out[0]


def error(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the request did not fail"
    failures[0].trap(VssError)
    return failures[0].value.code


class Base(unittest.TestCase):
    def setUp(self):
        self.h = NodeHarness()
        self.addCleanup(self.h.stop)
        for cam in ("cam1", "cam2", "cam3"):
            self.h.store.put_device(self.h.add_device(cam))
        # the wall may view cam1 and cam2, not cam3
        self.h.add_user("wall1", grants=[("cam1", Action.VIEW), ("cam2", Action.VIEW)])
        self.h.add_user("op", grants=[("cu:wall1", Action.WALL), ("cam3", Action.VIEW)])
        self.h.add_user("eve", grants=[("cam1", Action.VIEW)])

    def wall(self, h=None, name="wall1", kind=CuKind.TVWALL):
        h = h or self.h
        notes = []
        client, (d, link, server) = h.cu(name, kind=kind, on_notify=notes.append)
        result(d)
        return client, notes

    def operator(self, h=None, name="op"):
        h = h or self.h
        client, (d, link, server) = h.cu(name)
        result(d)
        return client

    def ask(self, client, type, body, h=None):
        d = client.request(type, body)
        (h or self.h).pump()
        return d

    def describe(self, client, layout=WallLayout.FOUR, tiles=(), assignments=()):
        return self.ask(client, MsgType.WALL_DESCRIBE, WallDescribe(
            wall_id="", layout=layout, tiles=list(tiles), assignments=list(assignments)))

    def assign(self, client, device_id, tile=0, wall_id="wall1", h=None):
        return self.ask(client, MsgType.WALL_ASSIGN, WallAssign(
            wall_id=wall_id, tile=tile, device_id=device_id, channel=0, stream=Stream.SUB),
            h=h)


def wall_notes(notes):
    return [m.body for m in notes if m.type == MsgType.WALL_NOTIFY]


class LayoutTests(Base):
    def test_grid_tiles(self):
        self.assertEqual(grid(WallLayout.ONE), [Tile(x=0, y=0, width=10000, height=10000)])
        nine = grid(WallLayout.NINE)
        self.assertEqual(len(nine), 9)
        self.assertEqual(nine[4], Tile(x=3333, y=3333, width=3333, height=3333))
        self.assertEqual(len(grid(WallLayout.SIXTEEN)), 16)

    def test_wall_describes_itself(self):
        wall, notes = self.wall()
        state = result(self.describe(wall)).body
        self.assertEqual((state.wall_id, state.node_id, state.kind, state.layout),
                         ("wall1", "node-a", CuKind.TVWALL, WallLayout.FOUR))
        self.assertEqual(len(state.tiles), 4)
        self.assertEqual(wall_notes(notes)[-1], state)

    def test_custom_layout(self):
        wall, _ = self.wall()
        tiles = [Tile(x=0, y=0, width=7500, height=10000),
                 Tile(x=7500, y=0, width=2500, height=5000)]
        state = result(self.describe(wall, WallLayout.CUSTOM, tiles)).body
        self.assertEqual(state.tiles, tiles)
        bad = [Tile(x=7500, y=0, width=5000, height=5000)]
        self.assertEqual(error(self.describe(wall, WallLayout.CUSTOM, bad)),
                         ResultCode.INVALID_ARGUMENT)
        self.assertEqual(error(self.describe(wall, WallLayout.CUSTOM, [])),
                         ResultCode.INVALID_ARGUMENT)
        self.assertEqual(error(self.describe(wall, WallLayout.FOUR, tiles)),
                         ResultCode.INVALID_ARGUMENT)
        self.assertEqual(error(self.describe(wall, 5)), ResultCode.INVALID_ARGUMENT)

    def test_a_plain_cu_is_not_a_wall(self):
        op = self.operator()
        self.assertEqual(error(self.describe(op)), ResultCode.NOT_A_WALL)
        self.assertEqual(error(self.ask(op, MsgType.WALL_REPORT, WallReport(tiles=[]))),
                         ResultCode.NOT_A_WALL)

    def test_smaller_layout_clears_the_tiles_beyond(self):
        wall, _ = self.wall()
        self.describe(wall)
        op = self.operator()
        result(self.assign(op, "cam1", tile=0))
        result(self.assign(op, "cam2", tile=3))
        state = result(self.describe(wall, WallLayout.ONE)).body
        self.assertEqual([(a.tile, a.device_id) for a in state.assignments], [(0, "cam1")])


class AssignTests(Base):
    def test_operator_assigns_and_the_wall_is_told(self):
        wall, notes = self.wall()
        self.describe(wall)
        op = self.operator()
        state = result(self.assign(op, "cam2", tile=2)).body
        self.assertEqual([(a.tile, a.device_id, a.stream) for a in state.assignments],
                         [(2, "cam2", Stream.SUB)])
        self.assertEqual(wall_notes(notes)[-1], state)
        cleared = result(self.assign(op, "", tile=2)).body
        self.assertEqual(cleared.assignments, [])
        self.assertEqual(cleared.version, state.version + 1)

    def test_operator_without_the_grant_is_refused(self):
        wall, notes = self.wall()
        self.describe(wall)
        before = len(notes)
        eve = self.operator(name="eve")
        d = self.assign(eve, "cam1")
        self.assertEqual(error(d), ResultCode.FORBIDDEN)
        # the same answer for a wall that does not exist: no oracle
        self.assertEqual(error(self.assign(eve, "cam1", wall_id="nowall")),
                         ResultCode.FORBIDDEN)
        self.assertEqual(len(notes), before)

    def test_the_wall_shows_only_what_its_account_may_view(self):
        wall, _ = self.wall()
        self.describe(wall)
        op = self.operator()  # op may view cam3; the wall may not
        self.assertEqual(error(self.assign(op, "cam3")), ResultCode.FORBIDDEN)

    def test_tile_out_of_range(self):
        wall, _ = self.wall()
        self.describe(wall)
        self.assertEqual(error(self.assign(self.operator(), "cam1", tile=4)),
                         ResultCode.INVALID_ARGUMENT)
        d = self.ask(self.operator(), MsgType.WALL_ASSIGN, WallAssign(
            wall_id="wall1", tile=0, device_id="cam1", channel=1, stream=Stream.SUB))
        self.assertEqual(error(d), ResultCode.INVALID_ARGUMENT)  # cam1 has one channel
        d = self.ask(self.operator(), MsgType.WALL_ASSIGN, WallAssign(
            wall_id="wall1", tile=0, device_id="cam1", channel=0, stream=7))
        self.assertEqual(error(d), ResultCode.INVALID_ARGUMENT)

    def test_a_wall_drives_itself_and_reads_its_state(self):
        wall, _ = self.wall()
        self.describe(wall)
        result(self.assign(wall, "cam1", wall_id=""))
        state = result(self.ask(wall, MsgType.WALL_STATE, WallQuery(wall_id=""))).body
        self.assertEqual(state.assignments[0].device_id, "cam1")

    def test_reports_show_on_the_state(self):
        wall, _ = self.wall(kind=CuKind.DECODER)
        self.describe(wall)
        op = self.operator()
        result(self.assign(op, "cam1", tile=1))
        result(self.ask(wall, MsgType.WALL_REPORT, WallReport(tiles=[
            TileReport(tile=1, device_id="cam1", frames=75, errors=1, last_error="late"),
            TileReport(tile=0, device_id="cam2", frames=9, errors=0, last_error="")])))
        state = result(self.ask(op, MsgType.WALL_STATE, WallQuery(wall_id="wall1"))).body
        self.assertEqual([(a.tile, a.frames, a.errors, a.last_error) for a in state.assignments],
                         [(1, 75, 1, "late")])
        self.assertEqual(state.kind, CuKind.DECODER)

    def test_grant_removed_clears_the_tile(self):
        wall, notes = self.wall()
        self.describe(wall)
        result(self.assign(self.operator(), "cam2"))
        self.h.store.remove_grant("user:wall1", "cam2")
        self.h.rgm.walls.access_changed()
        self.h.pump()
        self.assertEqual(wall_notes(notes)[-1].assignments, [])

    def test_wall_grants_are_no_devices(self):
        op = self.operator()
        listed = result(self.ask(op, MsgType.DEVICE_LIST, DeviceList(cursor="", limit=0))).body
        self.assertEqual([d.device_id for d in listed.devices], ["cam3"])

    def test_a_second_login_of_the_wall_replaces_the_first(self):
        first, _ = self.wall()
        self.describe(first)
        second, notes = self.wall()
        self.h.pump()
        self.assertIsNone(first.link)
        state = result(self.assign(self.operator(), "cam1")).body
        self.assertEqual(wall_notes(notes)[-1], state)

    def test_a_wall_logged_out_is_offline(self):
        wall, _ = self.wall()
        self.describe(wall)
        wall.link.transport.loseConnection()
        self.h.pump()
        self.assertEqual(error(self.assign(self.operator(), "cam1")), ResultCode.WALL_OFFLINE)


class TourTests(Base):
    def test_tour_cycles_on_time_and_stops(self):
        wall, notes = self.wall()
        self.describe(wall)
        op = self.operator()
        state = result(self.ask(op, MsgType.WALL_TOUR, WallTour(
            wall_id="wall1", tile=1, devices=["cam1", "cam2"], stream=Stream.MAIN,
            dwell=5))).body
        self.assertEqual(state.assignments[0].device_id, "cam1")
        shown = []
        for _ in range(4):
            self.h.clock.advance(4.9)
            self.h.pump()
            before = len(wall_notes(notes))
            self.h.clock.advance(0.1)
            self.h.pump()
            self.assertEqual(len(wall_notes(notes)), before + 1)
            shown.append(wall_notes(notes)[-1].assignments[0].device_id)
        self.assertEqual(shown, ["cam2", "cam1", "cam2", "cam1"])
        result(self.ask(op, MsgType.WALL_TOUR, WallTour(
            wall_id="wall1", tile=1, devices=[], stream=Stream.MAIN, dwell=0)))
        count = len(wall_notes(notes))
        self.h.clock.advance(60)
        self.h.pump()
        self.assertEqual(len(wall_notes(notes)), count)
        self.assertEqual([c for c in self.h.clock.getDelayedCalls()
                          if "_step" in repr(c.func)], [])

    def test_tour_of_a_device_the_wall_may_not_view_is_refused(self):
        wall, _ = self.wall()
        self.describe(wall)
        d = self.ask(self.operator(), MsgType.WALL_TOUR, WallTour(
            wall_id="wall1", tile=0, devices=["cam1", "cam3"], stream=0, dwell=5))
        self.assertEqual(error(d), ResultCode.FORBIDDEN)


class RoutingTests(Base):
    """An operator on node A drives a wall logged in to node B (S402-S407 through the
    central platform, here the in-process one)."""

    def setUp(self):
        super().setUp()
        self.b = NodeHarness(node_id="node-b", central=self.h.central, clock=self.h.clock)
        self.addCleanup(self.b.stop)
        for g in self.h.store.grants():
            self.b.store.put_grant(g)

    def test_command_routed_to_the_walls_node(self):
        wall, notes = self.wall(h=self.b)
        self.ask(wall, MsgType.WALL_DESCRIBE, WallDescribe(
            wall_id="", layout=WallLayout.FOUR, tiles=[], assignments=[]), h=self.b)
        op = self.operator()  # on node A
        d = self.assign(op, "cam1", tile=3)
        self.b.pump()
        self.h.pump()
        state = result(d).body
        self.assertEqual(state.node_id, "node-b")
        self.assertEqual(wall_notes(notes)[-1], state)
        self.assertIn(("cu:wall1", MsgType.WALL_ASSIGN), self.h.central.routed)

    def test_wall_nowhere_is_offline(self):
        op = self.operator()
        self.assertEqual(error(self.assign(op, "cam1")), ResultCode.WALL_OFFLINE)


class RestoreTests(Base):
    def test_a_node_without_state_takes_the_walls(self):
        wall, _ = self.wall()
        shown = [TileState(tile=2, device_id="cam1", channel=0, stream=Stream.SUB, tour=[],
                           dwell=0, tour_index=0, since=1, frames=0, errors=0, last_error=""),
                 TileState(tile=3, device_id="cam3", channel=0, stream=Stream.SUB, tour=[],
                           dwell=0, tour_index=0, since=1, frames=0, errors=0, last_error="")]
        state = result(self.describe(wall, assignments=shown)).body
        # cam3 is not the wall's to view: not restored
        self.assertEqual([(a.tile, a.device_id) for a in state.assignments], [(2, "cam1")])

    def test_a_node_with_state_keeps_its_own(self):
        wall, _ = self.wall()
        self.describe(wall)
        result(self.assign(self.operator(), "cam2", tile=1))
        wall.link.transport.loseConnection()
        self.h.pump()
        wall, _ = self.wall()
        stale = [TileState(tile=1, device_id="cam1", channel=0, stream=Stream.SUB, tour=[],
                           dwell=0, tour_index=0, since=1, frames=0, errors=0, last_error="")]
        state = result(self.describe(wall, assignments=stale)).body
        self.assertEqual([(a.tile, a.device_id) for a in state.assignments], [(1, "cam2")])


class GrantRoutingTests(unittest.SynchronousTestCase):
    """Every node holds the grants on CU targets (the operator may be on any node)."""

    def test_wall_grants_go_to_every_node(self):
        interest = Interest()
        g = records.grant("user:op", "cu:wall1", Action.WALL)
        c = Change(seq=1, entity=Entity.GRANT, op=ChangeOp.UPSERT, key="user:op|cu:wall1",
                   version=1, origin="", device=None, user=None, grant=g)
        self.assertIs(interest.nodes_for(c), EVERY_NODE)
        self.assertTrue(interest.keeps("n9", Entity.GRANT, ChangeOp.UPSERT, c.key, ""))
        self.assertEqual(interest.apply(c), [])
