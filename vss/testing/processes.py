"""
Real processes for end-to-end tests: ``twistd vss-node``/``vss-cms``, ``vss-pu``,
``vssctl``. Each daemon binds port 0 and its bound ports are read back from the
``ports.json`` it writes. Everything is started through the reactor, never blocking it.
"""

import json
import os
import signal as signals
import sys

from twisted.internet import defer, protocol, task
from twisted.internet.utils import getProcessOutputAndValue

BIN = os.path.dirname(sys.executable)


def tool(name):
    return os.path.join(BIN, name)


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSS_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class _Collector(protocol.ProcessProtocol):
    def __init__(self, path):
        self.log = open(path, "ab")  # noqa: SIM115 - closed in processEnded
        self.ended = defer.Deferred()
        self.exit_code = None

    def outReceived(self, data):
        self.log.write(data)
        self.log.flush()

    errReceived = outReceived

    def processEnded(self, reason):
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.log.close()
        self.ended.callback(self.exit_code)


class Daemon:
    """A child process whose output goes to ``log_path``."""

    def __init__(self, reactor, argv, log_path, env=None, cwd=None):
        self.reactor = reactor
        self.argv = argv
        self.log_path = log_path
        self.proto = _Collector(log_path)
        self.transport = reactor.spawnProcess(self.proto, argv[0], argv, env=env or child_env(),
                                              path=cwd)

    @property
    def pid(self):
        return self.transport.pid

    def signal(self, sig):
        if self.proto.exit_code is None and self.transport.pid:
            os.kill(self.transport.pid, sig)

    def stop(self, sig=signals.SIGTERM, timeout=10.0):
        """Signal the process and wait for it to end (SIGKILL after ``timeout``)."""
        if self.proto.ended.called:
            return defer.succeed(self.proto.exit_code)
        self.signal(sig)
        killer = self.reactor.callLater(timeout, self.signal, signals.SIGKILL)
        d = defer.Deferred()

        def ended(code):
            if killer.active():
                killer.cancel()
            d.callback(code)
            return code

        self.proto.ended.addBoth(ended)
        return d

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


@defer.inlineCallbacks
def wait_for_file(reactor, path, timeout=30.0, proc=None):
    """Poll for a file to exist (a daemon writes it when ready)."""
    waited = 0.0
    while not os.path.exists(path):
        if proc is not None and proc.proto.ended.called:
            raise RuntimeError(f"process ended early:\n{proc.output()[-3000:]}")
        if waited > timeout:
            raise RuntimeError(f"{path} did not appear within {timeout} s"
                               + (f":\n{proc.output()[-3000:]}" if proc else ""))
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05
    return path


@defer.inlineCallbacks
def start_node(reactor, workdir, node_id, extra=(), env=None):
    """``twistd -n vss-node`` on port 0 everywhere; fires with (daemon, ports)."""
    data = os.path.join(workdir, node_id)
    os.makedirs(data, exist_ok=True)
    ports_file = os.path.join(data, "ports.json")
    if os.path.exists(ports_file):
        os.remove(ports_file)
    argv = [tool("twistd"), "-n", "--pidfile=", "vss-node", "--node-id", node_id,
            "--data-dir", data,
            "--pu-listen", "tcp:0:interface=127.0.0.1",
            "--cu-listen", "tcp:0:interface=127.0.0.1",
            "--rtsp-listen", "tcp:0:interface=127.0.0.1", *extra]
    d = Daemon(reactor, argv, os.path.join(workdir, f"{node_id}.log"), env=env, cwd=workdir)
    yield wait_for_file(reactor, ports_file, proc=d)
    with open(ports_file) as f:
        ports = json.load(f)
    return d, ports


def run_tool(name, args, env=None, cwd=None):
    """Run a command-line tool; fires with (stdout, stderr, exit code) as text."""
    d = getProcessOutputAndValue(tool(name), args, env=env or child_env(), path=cwd)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))
