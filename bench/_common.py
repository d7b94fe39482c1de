"""Small helpers shared by the bench scripts (run as scripts: bench/ is on sys.path)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request


class WallClock:
    """The clock the benches give to code that takes one (``seconds()``)."""

    def seconds(self):
        return time.time()


def pin(cpu):
    """Pin this process to one CPU (where the platform allows it)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def proc_cpu(pid):
    """CPU seconds (user + system) of process ``pid`` so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_input(ffmpeg, path, seconds=20, fps=25):
    """A 1280x720 ``fps`` H.264 file at a constant 4 Mb/s, a GOP of one second, no
    B-frames (made once: kept at ``path``)."""
    if os.path.exists(path):
        return
    subprocess.run([
        ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={fps}:duration={seconds}",
        "-vf", "noise=alls=12:allf=t",
        "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps), "-sc_threshold", "0",
        "-bf", "0", "-b:v", "4M", "-minrate", "4M", "-maxrate", "4M", "-bufsize", "2M",
        "-x264-params", "nal-hrd=cbr", "-an", path], check=True)


class Scraper(threading.Thread):
    """GETs ``url`` every ``interval`` seconds until stopped, as Prometheus would."""

    def __init__(self, url, interval):
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.halt = threading.Event()
        self.scrapes = 0
        self.failures = 0
        self.bytes = 0

    def run(self):
        while not self.halt.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.bytes += len(r.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self):
        self.halt.set()
        self.join(10)


def seed_cms(db_path, devices, users, grants):
    """Write the records to a new CMS database with the store API, before CMS starts
    (``task.react`` runs the reactor once and always exits; only a failure matters)."""
    from twisted.internet import task

    from vss.testing.processes import seed_cms_db

    try:
        task.react(lambda reactor: seed_cms_db(reactor, db_path, devices=devices, users=users,
                                               grants=grants))
    except SystemExit as e:
        if e.code:
            raise


def wait_json(path, proc, name, timeout=60):
    """The JSON a started process writes (its ports), once the file is there; fails when
    the process ended first or ``timeout`` s passed."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{name} did not start; see its log")
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def stop_and_clean(procs, logs, work, keep):
    """A bench's end: SIGTERM to every process still running, SIGKILL to one still there
    15 s later, the log files closed, and ``work`` removed unless ``keep`` (then said)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for f in logs:
        f.close()
    if keep:
        print(f"work directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
