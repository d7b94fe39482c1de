"""
A PostgreSQL server of a test's own (``initdb`` in a temporary directory, a free port on
loopback), to stop and start at will: the database outage tests cannot touch a shared
server. ``OwnPostgres.find()`` is None when the server binaries are not installed.

Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses root). Every
command runs in a thread, so the reactor keeps serving while the server starts or stops.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

from twisted.internet import threads


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnPostgres:
    def __init__(self, bindir, user=None):
        self.bindir = bindir
        self.user = user  # run the server as this user (when we are root)
        self.dir = None
        self.port = None

    @classmethod
    def find(cls):
        """An instance if ``initdb`` and ``pg_ctl`` are installed (and, as root, a
        ``postgres`` user exists), else None; ``why_not`` says what is missing."""
        initdb = shutil.which("initdb")
        candidates = [os.path.dirname(os.path.realpath(initdb))] if initdb else []
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True,
                             key=lambda p: [int(x) for x in p.split("/")[-2].split(".")
                                            if x.isdigit()])
        bindir = next((d for d in candidates
                       if os.access(os.path.join(d, "initdb"), os.X_OK)
                       and os.access(os.path.join(d, "pg_ctl"), os.X_OK)), None)
        if bindir is None:
            cls.why_not = "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
            return None
        user = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                cls.why_not = "running as root and there is no postgres user to run initdb as"
                return None
        return cls(bindir, user)

    @property
    def dsn(self):
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"

    def _run(self, *argv):
        kw = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run([os.path.join(self.bindir, argv[0]), *argv[1:]], check=True,
                              capture_output=True, timeout=120, cwd=self.dir, **kw)

    def _init(self):
        self.dir = tempfile.mkdtemp(prefix="vss-pg-")
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", os.path.join(self.dir, "data"), "-A", "trust", "-U",
                  "postgres", "--no-sync", "-E", "UTF8")
        self.port = _free_port()

    def _start(self):
        # fsync off: an immediate stop kills the processes, not the machine, so what the
        # server wrote is in the OS; commits stay synchronous (nothing acknowledged is
        # lost by the stop).
        options = (f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=40")
        self._run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-l",
                  os.path.join(self.dir, "server.log"), "-o", options, "-w", "-t", "60",
                  "start")

    def _stop(self, mode):
        self._run("pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", mode, "-w", "stop")

    def init_and_start(self):
        """Create the cluster and start it; a Deferred."""
        return threads.deferToThread(lambda: (self._init(), self._start()))

    def start(self):
        return threads.deferToThread(self._start)

    def stop(self, mode="immediate"):
        """``pg_ctl -m MODE stop`` (immediate: the processes die at once, as in a crash)."""
        return threads.deferToThread(self._stop, mode)

    def destroy(self):
        """Stop the server if it runs and remove its directory; a Deferred."""

        def gone():
            if self.dir is None:
                return
            try:
                self._stop("immediate")
            except (subprocess.CalledProcessError, OSError):
                pass  # not running
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

        return threads.deferToThread(gone)

    def log(self):
        try:
            with open(os.path.join(self.dir, "server.log"), encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""
