"""
Real video from a simulated PU: when the node asks it to publish (MEDIA_START), the PU
encodes a test pattern with a visible clock (or loops a video file) to H.264 with PyAV
(libx264) and pushes it to the node's streaming server over RTSP (ANNOUNCE + RECORD,
RTP over TCP), paced in real time.

Each stream runs in its own child process (``python -m vss.pu.media``): encoding uses
another core and FFmpeg's blocking network calls never stall the agent's reactor. The
publish URL (it carries a token) goes to the child in its environment, not its command
line. MEDIA_STOP, the agent stopping or the server going away ends it.

A DVR's playback (MEDIA_START with a ``start_time``) is the same test pattern with the
clock showing the RECORDED time (UTC), from that time on, skipping the gaps of its
footage (``vss.pu.dvr``); MEDIA_STOP does not end it (it names no start time): the node
closing the publishing connection does.
"""

import argparse
import os
import signal
import sys
import threading
import time
from fractions import Fraction

from twisted.internet import defer, protocol
from twisted.logger import Logger

from vss.protocols.messages import Empty
from vss.pu import dvr
from vss.redact import redact

# 7-segment digits: segments a b c d e f g
_SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg",
    "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}


def draw_clock(plane, stride, width, height, text, scale=4, x0=8, y0=8):
    """Draw ``text`` (digits and ':') in white 7-segment figures into a luma plane
    (a writable bytearray with ``stride`` bytes per row)."""
    w, h, t = 5 * scale, 9 * scale, max(1, scale)
    x = x0

    def box(bx, by, bw, bh):
        for row in range(max(0, by), min(height, by + bh)):
            start = row * stride + max(0, bx)
            end = row * stride + min(width, bx + bw)
            if end > start:
                plane[start:end] = b"\xeb" * (end - start)

    def dark(bx, by, bw, bh):
        for row in range(max(0, by), min(height, by + bh)):
            start = row * stride + max(0, bx)
            end = row * stride + min(width, bx + bw)
            if end > start:
                plane[start:end] = b"\x10" * (end - start)

    dark(x0 - scale, y0 - scale, (w + 2 * scale) * len(text), h + 2 * scale)
    for ch in text:
        if ch == ":":
            box(x + w // 2 - t // 2, y0 + h // 3 - t, t, t)
            box(x + w // 2 - t // 2, y0 + 2 * h // 3, t, t)
        else:
            seg = _SEGMENTS.get(ch, "")
            half = h // 2
            if "a" in seg:
                box(x, y0, w, t)
            if "b" in seg:
                box(x + w - t, y0, t, half)
            if "c" in seg:
                box(x + w - t, y0 + half, t, h - half)
            if "d" in seg:
                box(x, y0 + h - t, w, t)
            if "e" in seg:
                box(x, y0 + half, t, h - half)
            if "f" in seg:
                box(x, y0, t, half)
            if "g" in seg:
                box(x, y0 + half - t // 2, w, t)
        x += w + 2 * scale


class Publisher(threading.Thread):
    """Encodes and pushes one stream until ``stop()``."""

    log = Logger()

    def __init__(self, url, video="testsrc", width=640, height=360, fps=25, bitrate=1_000_000,
                 recorded_ms=None, days=None, channel=0):
        super().__init__(daemon=True, name=f"publish {url.split('?')[0]}")
        self.url = url
        self.video = video
        self.width, self.height, self.fps, self.bitrate = width, height, fps, bitrate
        self._stop = threading.Event()
        self.frames = 0
        self.error = None
        self.recorded_ms = recorded_ms  # a DVR playback: the recorded time shown
        self.days = days
        self.channel = channel

    def clock_text(self):
        if self.recorded_ms is None:
            return time.strftime("%H:%M:%S")

        now = int(time.time() * 1000)
        at = self.recorded_ms + self.frames * 1000 // self.fps
        shown = dvr.footage_from(at, now, self.days or dvr.DEFAULT_DAYS, self.channel)
        if shown is None:
            shown = at
        elif shown != at:  # a gap of the footage: the clock jumps over it
            self.recorded_ms += shown - at
        return time.strftime("%H:%M:%S", time.gmtime(shown / 1000))

    def stop(self):
        self._stop.set()

    def _source(self):
        import av
        if self.video == "testsrc":
            return av.open(f"testsrc2=size={self.width}x{self.height}:rate={self.fps}",
                           format="lavfi")
        return av.open(self.video)

    def run(self):
        import av
        from av.video.frame import PictureType
        try:
            out = av.open(self.url, mode="w", format="rtsp",
                          options={"rtsp_transport": "tcp"}, timeout=10)
        except Exception as e:  # noqa: BLE001 - reported to the log, the node retries
            self.error = e
            self.log.warn("cannot publish to the node: {error}", error=redact(str(e)))
            return
        try:
            stream = out.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = self.bitrate
            stream.codec_context.time_base = Fraction(1, self.fps)
            stream.options = {"preset": "ultrafast", "tune": "zerolatency",
                              "g": str(self.fps * 2), "bf": "0"}
            start = time.monotonic()
            while not self._stop.is_set():
                src = self._source()
                for frame in src.decode(video=0):
                    if self._stop.is_set():
                        break
                    frame = frame.reformat(width=self.width, height=self.height,
                                           format="yuv420p")
                    luma = frame.planes[0]
                    buf = bytearray(bytes(luma))
                    draw_clock(buf, luma.line_size, self.width, self.height,
                               self.clock_text(), scale=max(2, self.height // 90))
                    luma.update(bytes(buf))
                    # The decoded test-pattern frames come marked as keyframes; left so,
                    # every picture would be encoded as one (a one-frame GOP).
                    frame.pict_type = PictureType.NONE
                    frame.pts = self.frames
                    frame.time_base = Fraction(1, self.fps)
                    for packet in stream.encode(frame):
                        out.mux(packet)
                    self.frames += 1
                    delay = start + self.frames / self.fps - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                src.close()
            for packet in stream.encode(None):
                out.mux(packet)
        except Exception as e:  # noqa: BLE001 - the server went away or refused
            self.error = e
            self.log.info("publishing ended: {error}", error=redact(str(e)))
        finally:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                pass


class _Child(protocol.ProcessProtocol):
    def __init__(self, factory, key):
        self.factory = factory
        self.key = key
        self.target = None  # the publish URL without its query (the token)
        self.ended = defer.Deferred()

    def errReceived(self, data):
        self.factory.log.debug("publisher: {text}",
                               text=redact(data.decode("utf-8", "replace")))

    outReceived = errReceived

    def processEnded(self, reason):
        if self.factory.running.get(self.key) is self:
            del self.factory.running[self.key]
        self.ended.callback(None)


class PublisherFactory:
    """The media side of a PU agent: one publishing child process per (device, channel,
    stream)."""

    log = Logger()

    def __init__(self, reactor, video="testsrc", width=640, height=360, fps=25,
                 bitrate=1_000_000):
        self.reactor = reactor
        self.video = video
        self.size = (width, height)
        self.fps = fps
        self.bitrate = bitrate
        self.running = {}
        reactor.addSystemEventTrigger("before", "shutdown", self.stop_all)

    def stream_config(self):
        """The configuration items of the stream this factory publishes by default."""
        return {"video.codec": "H264", "video.resolution": f"{self.size[0]}x{self.size[1]}",
                "video.fps": str(self.fps), "video.bitrate_kbps": str(self.bitrate // 1000),
                "video.gop": str(self.fps * 2)}

    def stream_of(self, ch):
        """(width, height, fps, bitrate) of a channel's configuration, each within what
        a simulated camera encodes in real time (this factory's own where not valid)."""
        config = getattr(ch, "config", None) or {}
        width, height = self.size
        fps, bitrate = self.fps, self.bitrate
        try:
            w, h = (int(x) for x in config.get("video.resolution", "").split("x"))
            if 16 <= w <= 1920 and 16 <= h <= 1080 and w % 2 == 0 and h % 2 == 0:
                width, height = w, h
        except ValueError:
            pass
        try:
            fps = min(60, max(1, int(config.get("video.fps", fps))))
        except ValueError:
            pass
        try:
            bitrate = min(20_000, max(64, int(config.get("video.bitrate_kbps")))) * 1000
        except (TypeError, ValueError):
            pass
        return width, height, fps, bitrate

    def start(self, pu, ch, body):
        key = (pu.device_id, ch.index, body.stream)
        target = body.publish_url.split("?")[0]
        if body.start_time:  # a playback: one per publish path, beside the live stream
            key += (target,)
        running = self.running.get(key)
        if running is not None and running.target == target and not running.ended.called:
            # asked again for the same server and path while it starts (a loaded machine
            # takes seconds to start a publisher): restarting it would only delay it more
            return Empty()
        self._kill(key)
        child = _Child(self, key)
        child.target = target
        env = {**os.environ, "VSS_PUBLISH_URL": body.publish_url}
        width, height, fps, bitrate = self.stream_of(ch)
        argv = [sys.executable, "-m", "vss.pu.media", "--video", self.video,
                "--size", f"{width}x{height}", "--fps", str(fps), "--bitrate", str(bitrate)]
        if body.start_time:
            argv += ["--recorded", str(body.start_time), "--days", str(pu.dvr_days),
                     "--channel", str(ch.index)]
        self.reactor.spawnProcess(child, sys.executable, argv, env=env)
        self.running[key] = child
        return Empty()

    def _kill(self, key):
        """Ask a publisher to stop; fires when its process has ended."""
        child = self.running.pop(key, None)
        if child is None:
            return defer.succeed(None)
        if child.transport is not None and child.transport.pid:
            try:
                child.transport.signalProcess("TERM")
            except Exception:  # noqa: BLE001 - already gone
                pass
        return child.ended

    def stop(self, pu, ch, body):
        self._kill((pu.device_id, ch.index, body.stream))

    def stop_all(self):
        return defer.DeferredList([self._kill(key) for key in list(self.running)])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Publish one test stream (VSS_PUBLISH_URL).")
    ap.add_argument("--video", default="testsrc")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--bitrate", type=int, default=1_000_000)
    ap.add_argument("--recorded", type=int, default=None, help="DVR playback from (ms UTC)")
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--channel", type=int, default=0)
    args = ap.parse_args(argv)
    url = os.environ.get("VSS_PUBLISH_URL")
    if not url:
        print("VSS_PUBLISH_URL is not set", file=sys.stderr)
        return 2
    width, height = (int(x) for x in args.size.split("x"))
    p = Publisher(url, args.video, width, height, args.fps, args.bitrate, args.recorded,
                  args.days, args.channel)
    signal.signal(signal.SIGTERM, lambda *_: p.stop())
    p.run()
    return 0 if p.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
