"""
``vss-pu``: the PU agent. Simulates one or thousands of PUs (IPC, DVS or DVR) that log
in to their node, keep alive, answer control requests with real state and report their
changes; each reconnects with backoff when its link drops.

    VSS_PU_SECRET=s3cret vss-pu --node tcp:127.0.0.1:7100 --id cam1
    VSS_PU_SECRET='{id}-secret' vss-pu --node tcp:127.0.0.1:7100 --count 5000 --id-format 'cam{:05d}'
    VSS_PU_SECRET=s3cret vss-pu --node tcp:127.0.0.1:7100 --id cam1 --events 20   # motion
    VSS_PU_SECRET=s3cret vss-pu --node tcp:127.0.0.1:7100,tcp:127.0.0.1:7110 --id cam1

Each PU asks the node it reaches where it is homed (HOME_QUERY) and goes there; its
node names the other nodes (NODE_LIST), which it tries in turn, with jittered backoff,
when it loses its node (a node that died: CMS moves its PUs to live nodes).

The secret comes from ``--secret-file`` or the environment variable ``VSS_PU_SECRET``
(never from the command line, where other users could read it); ``{id}`` in it is
replaced by each device id.
"""

import random
import signal
import sys

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from vss.client import ReconnectingClient, SignallingClient
from vss.config import check_many, many_ids, secret_option
from vss.gctune import tune_gc
from vss.protocols.messages import PuKind, Role
from vss.pu.device import SimulatedPU
from vss.pu.media import PublisherFactory
from vss.version import VersionOption

log = Logger()


class Options(VersionOption, usage.Options):
    program = "vss-pu"
    synopsis = "--node ENDPOINT (--id ID | --count N) [options]"
    optParameters = [
        ["node", "n", None, "Client endpoint of the node's PU listener, e.g. "
         "tcp:127.0.0.1:7100; several, comma-separated: tried in turn."],
        ["id", None, None, "Device id (one PU)."],
        ["count", None, 1, "Number of PUs to simulate.", int],
        ["start", None, 1, "First number for --id-format.", int],
        ["id-format", None, "cam{:05d}", "Device id pattern for --count, Python format."],
        ["kind", None, "ipc", "ipc, dvs or dvr."],
        ["channels", None, None, "Channels per PU [1 for ipc, 4 for dvs/dvr].", int],
        ["secret-file", None, None, "File holding the secret ({id} is replaced)."],
        ["ramp", None, 500.0, "Logins started per second.", float],
        ["video", None, "testsrc", "Video to publish when asked: testsrc or a file path."],
        ["model", None, "vss-sim", "Model string reported at registration."],
        ["dvr-days", None, 7, "A DVR's footage: the past N days, with gaps.", int],
        ["events", None, 0.0, "Simulated motion: each PU raises a motion event (START, STOP "
         "3 s later) about every N seconds; 0: none. SIGUSR1 raises an alarm-in event on "
         "every PU.", float],
    ]
    optFlags = [["quiet", "q", "Log warnings only."]]

    def postOptions(self):
        problems = []
        check_many(self, problems)
        if self["kind"] not in ("ipc", "dvs", "dvr"):
            problems.append(f"--kind: {self['kind']!r} is not ipc, dvs or dvr")
        if self["dvr-days"] < 1:
            problems.append("--dvr-days: must be >= 1")
        if self["events"] < 0:
            problems.append("--events: must be >= 0")
        self.secret = secret_option(self["secret-file"], "VSS_PU_SECRET", "--secret-file",
                                    "the PU secret", problems)
        if problems:
            raise usage.UsageError("; ".join(problems))
        self.kind = {"ipc": PuKind.IPC, "dvs": PuKind.DVS, "dvr": PuKind.DVR}[self["kind"]]
        if self["channels"] is None:
            self["channels"] = 1 if self.kind == PuKind.IPC else 4

    def device_ids(self):
        return many_ids(self)


class Agent:
    """Runs many simulated PUs in one process."""

    def __init__(self, reactor, endpoint, device_ids, secret, kind, channels, model="vss-sim",
                 media=None, dvr_days=7):
        self.reactor = reactor
        self.endpoint = endpoint
        endpoints = [e.strip() for e in endpoint.split(",") if e.strip()] \
            if isinstance(endpoint, str) else endpoint
        self.pus = {}
        self.clients = {}
        self._event_calls = []
        self._every = 0.0
        for device_id in device_ids:
            pu = SimulatedPU(device_id, kind, channels, clock=reactor)
            if media is not None:
                pu.use_media(media)
            pu.dvr_days = dvr_days
            client = SignallingClient(Role.PU, device_id, secret.replace("{id}", device_id),
                                      kind=int(kind), channels=channels, model=model,
                                      firmware="0.1", on_request=pu, home_query=True)
            pu.client = client
            self.pus[device_id] = pu
            self.clients[device_id] = ReconnectingClient(reactor, endpoints, client)

    def start(self, ramp=500.0):
        """Start logins at ``ramp`` per second."""
        calls = []
        for i, c in enumerate(self.clients.values()):
            calls.append(self.reactor.callLater(i / ramp, c.start))
        return calls

    def online(self):
        return sum(1 for c in self.clients.values() if c.client.registered and c.client.link)

    def homes(self):
        """{node id: PUs logged in there}."""
        out = {}
        for c in self.clients.values():
            if c.client.registered and c.client.link:
                out[c.client.node_id] = out.get(c.client.node_id, 0) + 1
        return out

    def waiting(self):
        """PUs whose last login was answered NOT_READY (they try again later)."""
        return sum(1 for c in self.clients.values() if c.not_ready)

    def status_line(self):
        line = f"{self.online()}/{len(self.pus)} PUs online"
        homes = self.homes()
        if len(homes) > 1:
            line += " (" + ", ".join(f"{n}: {c}" for n, c in sorted(homes.items())) + ")"
        waiting = self.waiting()
        if waiting:
            line += f", {waiting} waiting for the node to be ready (NOT_READY)"
        return line

    def stop(self):
        for call in self._event_calls:
            if call.active():
                call.cancel()
        return defer.DeferredList([c.stop() for c in self.clients.values()])

    # -- simulated events

    def start_events(self, every):
        """Each PU raises a motion event about every ``every`` seconds (each its own
        phase, so that many PUs spread their events)."""
        self._every = every
        for i, pu in enumerate(self.pus.values()):
            offset = every * (0.5 + (i * 0.618033) % 1.0)
            self._event_calls.append(self.reactor.callLater(offset, self._motion, pu))

    def _motion(self, pu):
        pu.motion()
        jitter = random.uniform(0.8, 1.2)
        self._event_calls.append(self.reactor.callLater(self._every * jitter, self._motion, pu))
        if len(self._event_calls) > 2 * len(self.pus):
            self._event_calls = [c for c in self._event_calls if c.active()]

    def alarm_input(self):
        """An alarm input on every PU (``kill -USR1``)."""
        for pu in self.pus.values():
            pu.raise_event("alarm-in", items={"input": 1})


def main(argv=None):
    opts = Options()
    try:
        opts.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"vss-pu: {e}", file=sys.stderr)
        print(f"Usage: vss-pu {Options.synopsis} (see vss-pu --help)", file=sys.stderr)
        return 2
    try:
        tune_gc()  # thousands of simulated PUs in one process: vss.gctune
    except ValueError as e:
        print(f"vss-pu: {e}", file=sys.stderr)
        return 2
    observer = textFileLogObserver(sys.stdout)
    if opts["quiet"]:  # thousands of PUs moving log a line each otherwise
        observer = FilteringLogObserver(observer, [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def run(reactor):
        media = None
        try:
            media = PublisherFactory(reactor, opts["video"])
        except ImportError:
            pass
        agent = Agent(reactor, opts["node"], opts.device_ids(), opts.secret, opts.kind,
                      opts["channels"], opts["model"], media=media, dvr_days=opts["dvr-days"])
        agent.start(opts["ramp"])
        if opts["events"]:
            agent.start_events(opts["events"])
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(agent.alarm_input))
        status = task.LoopingCall(lambda: log.info("{line}", line=agent.status_line()))
        status.start(10.0, now=False)
        done = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", agent.stop)
        return done

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
