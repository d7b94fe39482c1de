"""A recording in a child process: ``python -m vss.recording.child --data-dir D --out O
--segment S`` with the live URL (it carries a play token) in ``VSS_RECORD_URL``; it
remuxes the stream with PyAV into fragmented MP4 segments and reports each closed
segment as one JSON line on stdout (``vss.recording.recorder`` reads them)."""

import argparse
import json
import os
import signal
import sys
import time

import av
from twisted.logger import Logger

from vss.recording.segments import (
    DISK_FULL,
    EXIT_DISK_FULL,
    MP4_AUDIO,
    URL_ENV,
    Continuity,
    SegmentFile,
    close_segment,
    free_name,
    raw_open,
)
from vss.redact import redact
from vss.rtsp import ffmpeg_options

log = Logger()

def record(url, data_dir, out_rel, segment_seconds, emit, should_stop=lambda: False,
           opener=raw_open, wall=time.time, open_timeout=10):
    """Blocking: record ``url`` into fMP4 segments under ``data_dir/out_rel`` until the
    input ends or ``should_stop()``; ``emit(dict)`` reports events. Returns an exit
    code (0, 1 error, ``EXIT_DISK_FULL``)."""

    out_dir = os.path.join(data_dir, out_rel)
    os.makedirs(out_dir, exist_ok=True)
    # the node's own SS (recorder.media_base: this machine), or a file
    options = ffmpeg_options(url, own_server=True) if url.startswith("rtsp") else {}
    try:
        inp = av.open(url, options=options, timeout=open_timeout)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"cannot open the stream: {e}"})
        return 1
    seg = None
    try:
        if not inp.streams.video:
            emit({"event": "error", "message": "the stream has no video"})
            return 1
        video = inp.streams.video[0]
        streams = [video]
        for a in inp.streams.audio:
            if a.codec_context.name in MP4_AUDIO:
                streams.append(a)
            else:
                emit({"event": "note", "message": f"audio {a.codec_context.name} is not "
                      "recorded (MP4 cannot carry it without transcoding)"})
        emit({"event": "started", "video": video.codec_context.name,
              "audio": [s.codec_context.name for s in streams[1:]]})
        smooth = Continuity()
        seg_ms = max(1, int(segment_seconds * 1000))
        cut_ms = None
        anchor = None  # (wall ms, media seconds) at the first packet
        last_end = None
        for packet in inp.demux(streams):
            if should_stop():
                break
            if packet.dts is None or packet.size == 0:
                continue
            smooth(packet)
            is_video = packet.stream.index == video.index
            t = packet.dts * packet.time_base
            if anchor is None:
                anchor = (wall() * 1000, t)
            if is_video:
                last_end = t + (packet.duration or 0) * packet.time_base
                at_ms = int(anchor[0] + (t - anchor[1]) * 1000)
                if packet.is_keyframe and (seg is None or at_ms >= cut_ms):
                    cut_ms = (at_ms // seg_ms + 1) * seg_ms  # the next UTC boundary
                    if seg is not None:
                        close_segment(seg, at_ms, data_dir, emit)
                        seg = None
                    seg = SegmentFile(free_name(out_dir, at_ms), at_ms, streams, t,
                                       opener)
                    emit({"event": "open", "path": os.path.relpath(seg.part, data_dir),
                          "start_ms": at_ms})
            if seg is not None:
                seg.write(packet, is_video)
        if seg is not None:
            end_ms = int(anchor[0] + (last_end - anchor[1]) * 1000)
            s, seg = seg, None
            close_segment(s, end_ms, data_dir, emit)
        return 0
    except OSError as e:
        if e.errno in DISK_FULL:
            if seg is not None:
                seg.abandon()
            emit({"event": "disk_full", "message": str(e)})
            return EXIT_DISK_FULL
        emit({"event": "error", "message": str(e)})
        if seg is not None:
            seg.abandon()
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the parent
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        if seg is not None:
            seg.abandon()
        return 1
    finally:
        try:
            inp.close()
        except Exception:  # noqa: BLE001,S110
            pass



def main(argv=None):
    ap = argparse.ArgumentParser(description="Record one live stream (URL in "
                                 f"{URL_ENV}) into fragmented MP4 segments.")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True, help="directory relative to the data dir")
    ap.add_argument("--segment", type=float, default=300.0)
    args = ap.parse_args(argv)
    url = os.environ.get(URL_ENV)
    if not url:
        print(f"{URL_ENV} is not set", file=sys.stderr)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    def emit(event):  # an error may quote the URL: its token never reaches the log
        sys.stdout.write(redact(json.dumps(event, separators=(",", ":"))) + "\n")
        sys.stdout.flush()

    return record(url, args.data_dir, args.out, args.segment, emit,
                  should_stop=lambda: bool(stopping))




if __name__ == "__main__":
    sys.exit(main())
