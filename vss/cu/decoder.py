"""
``vss-decoder``: set-top decoders. Each logs in to its node as a CU of kind ``DECODER``
(docs/protocol.md 9.9), describes its layout, and shows what operators on any node assign
to its tiles: it opens each tile's stream with MEDIA_OPEN under its own account, pulls it
with RTSP and decodes it with PyAV (one thread per tile), and reports the frames shown
and the errors met (WALL_REPORT) every second. Several decoders run in one process, each
reconnecting with backoff; after a reconnection a decoder describes itself again with what
it showed, so a node that restarted gets the wall's state back.

    VSS_PASSWORD=... vss-decoder --node tcp:127.0.0.1:7101 --id dec1 --layout 4
    VSS_PASSWORD='{id}-pw' vss-decoder --node tcp:127.0.0.1:7101 --count 20 \\
        --id-format 'dec{:03d}' --layout 4 --events first-frames.jsonl

The password comes from ``--password-file`` or ``VSS_PASSWORD`` (``{id}`` in it is
replaced by each decoder's account), never from the command line. ``--events FILE``
appends one JSON line per tile change: the wall, tile, device, the state's version,
when the change arrived, when MEDIA_OPEN was answered, when the RTSP stream was open and
when its first frame was decoded (the bench's figures).
"""

import json
import sys
import threading
import time

import av
from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python import usage

from vss.client import ReconnectingClient, SignallingClient
from vss.config import check_many, many_ids, secret_option
from vss.protocols.messages import (
    CuKind,
    MediaClose,
    MediaOpen,
    MsgType,
    Purpose,
    Role,
    TileReport,
    Transport,
    WallDescribe,
    WallReport,
)
from vss.rtsp import ffmpeg_options, start_from_gop
from vss.version import VersionOption

log = Logger()
REPORT_EVERY = 1.0
#: FFmpeg's probing of a new stream: none. The SDP names the codec and its parameters
#: (sprop-parameter-sets), and the first packet is a keyframe (the SS's kept GOP, asked
#: with ``start=gop``, else the camera's next one); probing would only add its
#: own wait to a tile change (bench/wall.py: p50 2.2 s with FFmpeg's default, 1.6 s with
#: half a second, 1.2 s without)
PROBE = {"analyzeduration": "0", "probesize": "32768"}
TICK = 0.25  # a new link is described within this


class Options(VersionOption, usage.Options):
    program = "vss-decoder"
    synopsis = "--node ENDPOINT (--id ACCOUNT | --count N) [options]"
    optParameters = [
        ["node", "n", None, "Client endpoint of the node's CU listener."],
        ["id", None, None, "The decoder's account (one decoder)."],
        ["count", None, 1, "Number of decoders.", int],
        ["start", None, 1, "First number for --id-format.", int],
        ["id-format", None, "dec{:03d}", "Account pattern for --count, Python format."],
        ["layout", None, 1, "Tiles: 1, 4, 9 or 16.", int],
        ["password-file", None, None, "File holding the password ({id} is replaced)."],
        ["events", None, None, "Append a JSON line per tile change to this file."],
        ["ramp", None, 50.0, "Logins started per second.", float],
    ]
    optFlags = [["quiet", "q", "Log warnings only."]]

    def postOptions(self):
        problems = []
        check_many(self, problems)
        if self["layout"] not in (1, 4, 9, 16):
            problems.append("--layout: 1, 4, 9 or 16")
        self.password = secret_option(self["password-file"], "VSS_PASSWORD",
                                      "--password-file", "the password", problems)
        if problems:
            raise usage.UsageError("; ".join(problems))

    def accounts(self):
        return many_ids(self)


def decode(url, player, opener=None):
    """Blocking, in the tile's thread: pull ``url`` and decode its video until the
    player is stopped or the stream ends; counts frames and errors on ``player``."""
    opener = opener or av.open
    try:
        container = opener(url, options={**ffmpeg_options(url), **PROBE}, timeout=10)
    except Exception as e:  # noqa: BLE001 - reported to the node
        player.failed(f"cannot open the stream: {e}")
        return
    player.stream_opened = time.time()
    try:
        if not container.streams.video:
            player.failed("the stream has no video")
            return
        video = container.streams.video[0]
        for packet in container.demux(video):
            if player.stopped:
                return
            try:
                for _frame in packet.decode():
                    player.shown()
            except Exception as e:  # noqa: BLE001 - a bad packet: counted, go on
                player.errors += 1
                player.last_error = str(e)[:256]
        if not player.stopped:
            player.failed("the stream ended")
    except Exception as e:  # noqa: BLE001
        if not player.stopped:
            player.failed(str(e))
    finally:
        container.close()


class Player:
    """One tile's stream: the MEDIA_OPEN, the decoding thread and its counters."""

    def __init__(self, decoder, tile, device_id, channel, stream, version, arrived):
        self.decoder = decoder
        self.tile = tile
        self.device_id = device_id
        self.channel = channel
        self.stream = stream
        self.version = version
        self.arrived = arrived
        self.frames = 0
        self.errors = 0
        self.last_error = ""
        self.first_frame = None
        self.media_opened = None  # when MEDIA_OPEN was answered
        self.stream_opened = None  # when FFmpeg had opened the RTSP stream
        self.stopped = False
        self.session_id = None
        self.thread = None
        self.open_failed = False

    def key(self):
        return (self.device_id, self.channel, self.stream)

    def shown(self):
        self.frames += 1
        if self.first_frame is None:
            self.first_frame = time.time()
            self.decoder.first_frame(self)

    def failed(self, message):
        self.errors += 1
        self.last_error = message[:256]

    def stop(self):
        self.stopped = True


class Decoder:
    """One decoder CU: its link, its tiles."""

    def __init__(self, reactor, endpoint, account, password, layout, events=None,
                 decode_fn=decode):
        self.reactor = reactor
        self.account = account
        self.layout = layout
        self.events = events
        self.decode_fn = decode_fn
        self.players = {}  # tile -> Player
        self.last_state = None
        self.client = SignallingClient(Role.CU, account, password, kind=int(CuKind.DECODER),
                                       model="vss-decoder", firmware="0.1",
                                       on_notify=self.on_notify)
        self.link = ReconnectingClient(reactor, endpoint, self.client)
        self._reporter = task.LoopingCall(self.tick)
        self._reporter.clock = reactor
        self._ticks = 0
        self._described = None  # the link our WALL_DESCRIBE was sent on

    def start(self):
        self.link.start()
        self._reporter.start(TICK, now=False)

    def stop(self):
        if self._reporter.running:
            self._reporter.stop()
        for p in self.players.values():
            p.stop()
        return self.link.stop()

    # -- the node

    def describe(self):
        """After each login: the layout and what the tiles showed (restored by a node
        that lost the wall's state)."""
        link = self.client.link
        self._described = link
        shown = list(self.last_state.assignments) if self.last_state is not None else []
        d = self.client.request(MsgType.WALL_DESCRIBE, WallDescribe(
            wall_id="", layout=self.layout, tiles=[], assignments=shown))
        d.addCallbacks(lambda msg: self.apply(msg.body),
                       lambda f: log.warn("decoder {account}: describe failed: {error}",
                                          account=self.account, error=f.getErrorMessage()))
        return d

    def on_notify(self, msg):
        if msg.type == MsgType.WALL_NOTIFY:
            self.apply(msg.body)

    def apply(self, state):
        """Show what the state says: a tile whose device changed gets a new player."""
        if self.last_state is not None and state.version < self.last_state.version \
                and state.node_id == self.last_state.node_id:
            return  # an older state than one applied (a late answer)
        self.last_state = state
        now = time.time()
        wanted = {a.tile: a for a in state.assignments}
        for tile in list(self.players):
            p = self.players[tile]
            a = wanted.get(tile)
            if a is None or (a.device_id, a.channel, a.stream) != p.key():
                self._close(self.players.pop(tile))
        for tile, a in wanted.items():
            if tile not in self.players and a.device_id:
                p = Player(self, tile, a.device_id, a.channel, a.stream, state.version, now)
                self.players[tile] = p
                self._open(p)

    def _open(self, p):
        d = self.client.request(MsgType.MEDIA_OPEN, MediaOpen(
            device_id=p.device_id, channel=p.channel, stream=p.stream, purpose=Purpose.LIVE,
            start_time=0, transport=Transport.TCP))

        def opened(msg):
            if p.stopped:
                self._media_close(msg.body.session_id)
                return
            p.session_id = msg.body.session_id
            p.media_opened = time.time()
            # the new tile starts from the SS's kept GOP: its first picture is the last
            # keyframe, not the camera's next one (it then catches up: it decodes as
            # fast as the frames come)
            url = start_from_gop(msg.body.url)
            p.thread = threading.Thread(target=self.decode_fn, args=(url, p),
                                        name=f"{self.account}-tile{p.tile}", daemon=True)
            p.thread.start()

        def failed(f):
            p.failed(f"MEDIA_OPEN: {f.getErrorMessage()}")
            p.open_failed = True  # tried again at the next report while the tile shows it

        d.addCallbacks(opened, failed)

    def _close(self, p):
        p.stop()
        if p.session_id:
            self._media_close(p.session_id)

    def _media_close(self, session_id):
        if self.client.link is not None:
            self.client.request(MsgType.MEDIA_CLOSE, MediaClose(session_id=session_id)) \
                .addErrback(lambda f: None)

    def first_frame(self, p):
        """In the tile's thread: the first frame of a tile change."""
        if self.events is not None:
            self.reactor.callFromThread(self.events, {
                "wall": self.account, "tile": p.tile, "device": p.device_id,
                "version": p.version, "arrived": p.arrived, "media_opened": p.media_opened,
                "stream_opened": p.stream_opened, "first_frame": p.first_frame})

    def tick(self):
        """A new link gets WALL_DESCRIBE at once; a report every second."""
        if self.client.link is None or not self.client.registered:
            return
        if self._described is not self.client.link:
            self.describe()
            return
        self._ticks += 1
        if self._ticks % round(REPORT_EVERY / TICK) == 0:
            self.report()

    def report(self):
        """WALL_REPORT of every tile; a tile whose stream failed is opened again."""
        for p in list(self.players.values()):
            ended = p.open_failed or (p.thread is not None and not p.thread.is_alive())
            if ended and not p.stopped:
                self.players[p.tile] = q = Player(self, p.tile, p.device_id, p.channel,
                                                  p.stream, p.version, p.arrived)
                q.frames, q.errors, q.last_error = p.frames, p.errors, p.last_error
                q.first_frame = p.first_frame
                self._open(q)
        tiles = [TileReport(tile=p.tile, device_id=p.device_id, frames=p.frames,
                            errors=p.errors, last_error=p.last_error)
                 for p in self.players.values()]
        if tiles:
            self.client.request(MsgType.WALL_REPORT, WallReport(tiles=tiles)) \
                .addErrback(lambda f: None)

    def online(self):
        return self.client.link is not None and self.client.registered is not None

    def frames(self):
        return sum(p.frames for p in self.players.values())


class EventLog:
    """``--events``: one JSON line per tile change's first frame, flushed at once."""

    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open while running

    def __call__(self, record):
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


def main(argv=None):
    opts = Options()
    try:
        opts.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"vss-decoder: {e}", file=sys.stderr)
        print(f"Usage: vss-decoder {Options.synopsis} (see vss-decoder --help)",
              file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    def run(reactor):
        events = EventLog(opts["events"]) if opts["events"] else None
        reactor.suggestThreadPoolSize(4)
        decoders = [Decoder(reactor, opts["node"], account,
                            opts.password.replace("{id}", account), opts["layout"], events)
                    for account in opts.accounts()]
        for i, dec in enumerate(decoders):
            reactor.callLater(i / opts["ramp"], dec.start)

        def status():
            online = sum(1 for d in decoders if d.online())
            frames = sum(d.frames() for d in decoders)
            log.info("{online}/{count} decoders online, {frames} frames shown",
                     online=online, count=len(decoders), frames=frames)

        task.LoopingCall(status).start(10.0, now=False)

        def stop():
            d = defer.DeferredList([dec.stop() for dec in decoders])
            if events is not None:
                d.addBoth(lambda _: events.close())
            return d

        reactor.addSystemEventTrigger("before", "shutdown", stop)
        return defer.Deferred()

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
