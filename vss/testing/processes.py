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

from vss.cms.store import hash_token, make_static_store
from vss.tap.node import Options

BIN = os.path.dirname(sys.executable)


def tool(name):
    return os.path.join(BIN, name)


#: VSS_ variables a child process inherits (the others are the tests' own settings)
INHERITED = ("VSS_GC_THRESHOLD",)


def child_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VSS_") or k in INHERITED}
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
def poll(what, check, timeout=30.0, interval=0.1, reactor=None):
    """Call ``check`` (it may return a Deferred) every ``interval`` seconds until it
    returns something true, and fire with that; fail naming ``what`` after ``timeout``."""
    if reactor is None:
        from twisted.internet import reactor
    for _ in range(int(timeout / interval)):
        result = yield defer.maybeDeferred(check)
        if result:
            return result
        yield task.deferLater(reactor, interval, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


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
            "--rtsp-listen", "tcp:0:interface=127.0.0.1",
            "--http-listen", "tcp:0:interface=127.0.0.1",
            # the in-process SS unless a test asks for workers (--ss-workers N in extra)
            "--ss-workers", "0", *extra]
    d = Daemon(reactor, argv, os.path.join(workdir, f"{node_id}.log"), env=env, cwd=workdir)
    yield wait_for_file(reactor, ports_file, proc=d)
    with open(ports_file) as f:
        ports = json.load(f)
    return d, ports


def start_pu(reactor, workdir, node, device_id, secret, extra=()):
    """A simulated camera, ``vss-pu``, logging in as ``device_id`` to the node at the
    client endpoint ``node``, its output in ``WORKDIR/pu-DEVICE.log``."""
    return Daemon(reactor, [tool("vss-pu"), "--node", node, "--id", device_id, *extra],
                  os.path.join(workdir, f"pu-{device_id}.log"),
                  env=child_env(VSS_PU_SECRET=secret))


def run_tool(name, args, env=None, cwd=None):
    """Run a command-line tool; fires with (stdout, stderr, exit code) as text."""
    d = getProcessOutputAndValue(tool(name), args, env=env or child_env(), path=cwd)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


def vssctl(node, args, user, password):
    """``vssctl ARGS`` as ``user`` of the node at the client endpoint ``node``; fires
    with (stdout, stderr, exit code) as text."""
    return run_tool("vssctl", list(args),
                    env=child_env(VSS_NODE=node, VSS_USER=user, VSS_PASSWORD=password))


def cms_secret_file(workdir):
    """The cluster secret ``start_cms`` has CMS create in its data directory."""
    return os.path.join(workdir, "cms", "cluster.secret")


def cms_db_path(workdir):
    """The SQLite database ``start_cms`` runs on (seed it before starting CMS)."""
    return os.path.join(workdir, "cms", "vss-cms.sqlite3")


@defer.inlineCallbacks
def start_cms(reactor, workdir, extra=(), env=None, name="cms"):
    """``twistd -n vss-cms`` with its node and admin listeners on port 0, data in
    ``WORKDIR/cms`` (SQLite database ``cms_db_path``, cluster secret
    ``cms_secret_file``, created if absent); fires with (daemon, ports). Another
    ``name`` gives another data directory and log (a second CMS on one database)."""
    data = os.path.join(workdir, name)
    os.makedirs(data, exist_ok=True)
    ports_file = os.path.join(data, "ports.json")
    if os.path.exists(ports_file):
        os.remove(ports_file)
    # a node the test stops or kills keeps its PUs (no re-homing) unless ``extra``
    # says otherwise (the last --rehome-after given wins)
    argv = [tool("twistd"), "-n", "--pidfile=", "vss-cms", "--data-dir", data,
            "--rehome-after", "0",
            "--db", "sqlite:" + cms_db_path(workdir),
            "--node-listen", "tcp:0:interface=127.0.0.1",
            "--admin-listen", "tcp:0:interface=127.0.0.1", *extra]
    d = Daemon(reactor, argv, os.path.join(workdir, f"{name}.log"), env=env, cwd=workdir)
    yield wait_for_file(reactor, ports_file, proc=d)
    with open(ports_file) as f:
        ports = json.load(f)
    return d, ports


def other_listeners_on_port_0(given=("pu-listen", "cu-listen", "rtsp-listen")):
    """``--NAME tcp:0:interface=127.0.0.1`` for every listener option of vss-node
    (``*-listen``) not in ``given``, so that several nodes on one host never meet on a
    default port, whatever listeners the node has."""

    args = []
    for name, *_ in Options.optParameters:
        if name.endswith("-listen") and name not in given:
            args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    return args


def node_cms_args(workdir, cms_ports):
    """The options of ``start_node`` for a node of the CMS that ``start_cms`` started:
    CMS on loopback, its cluster secret, the inter-node listener (and any other listener
    ``start_node`` does not set) on port 0."""
    return ["--cms", f"tcp:127.0.0.1:{cms_ports['node']}",
            "--cluster-secret-file", cms_secret_file(workdir),
            *other_listeners_on_port_0()]


def start_cms_node(reactor, workdir, node_id, cms_ports, extra=()):
    """``start_node`` for a node of the CMS that ``start_cms`` started (``node_cms_args``),
    with a short keepalive (2 s) and request timeout (5 s), so that a killed peer is
    noticed soon; fires with (daemon, ports)."""
    return start_node(reactor, workdir, node_id,
                      ["--keepalive", "2", "--request-timeout", "5",
                       *node_cms_args(workdir, cms_ports), *extra])


def read_status(workdir, node_id):
    """The node's ``status.json`` (its RGM and central-link counters), or None."""
    path = os.path.join(workdir, node_id, "status.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def seed_cms_db(reactor, path, devices=(), users=(), grants=(), admin_tokens=(),
                record_settings=()):
    """Write static data into a CMS database (SQLite at ``path``) before CMS starts,
    with the store API. ``devices``: DeviceRecord; ``users``: UserRecord; ``grants``:
    GrantRecord; ``admin_tokens``: (name, token) pairs; ``record_settings``:
    (device_id, channel, settings dict) as the admin API's record-settings take."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return seed_static_store(reactor, "sqlite:" + path, devices, users, grants, admin_tokens,
                             record_settings)


@defer.inlineCallbacks
def seed_static_store(reactor, spec, devices=(), users=(), grants=(), admin_tokens=(),
                      record_settings=()):
    """``seed_cms_db`` for any database ``spec`` of ``vss-cms --db``."""

    store = make_static_store(spec, reactor=reactor)
    yield store.open()
    try:
        for d in devices:
            yield store.upsert_device(d.device_id, d.name, d.kind, d.channels, d.home_node,
                                      d.verifier, source_url=d.source_url, enabled=d.enabled)
        for u in users:
            yield store.upsert_user(u.username, u.verifier, u.groups, enabled=u.enabled)
        for g in grants:
            yield store.set_grant(g.principal, g.device_id, g.actions)
        for name, token in admin_tokens:
            yield store.add_admin_token(name, hash_token(token))
        for device_id, channel, settings in record_settings:
            yield store.set_record_settings(device_id, channel, settings)
    finally:
        yield store.close()
