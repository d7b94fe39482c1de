"""
The product as an operator installs it: an sdist built from the checkout's files, a
wheel built from that sdist (``pip wheel``, with build isolation), installed with its
dependencies into a fresh venv in a temporary directory outside the checkout, run from
there with no PYTHONPATH: ``twistd --help`` lists both plugins, ``--version`` on every
command, a ``twistd vss-cms`` and a ``twistd vss-node`` on free ports, the first admin
bootstrapped, a user and a ``vss-pu`` camera added, the user logged in with ``vssctl
devices`` seeing the camera online.

Nothing here runs inside the checkout's venv, where the checkout is on ``sys.path``
(a test there cannot see what the wheel leaves out). The build and the venv are made
once per test process and shared by the tests below.
"""

import atexit
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from vss import __version__
from vss.testing.processes import Daemon, poll, wait_for_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "twisted/plugins/vss_plugins.py"
UNITS = ("vss/ops/systemd/vss-cms.service", "vss/ops/systemd/vss-node@.service")
STATIC = "vss/web/static"  # the browser client the node serves
CONSOLE = "vss/cms/console/static"  # the operator console the central platform serves
_waiters = None  # the tests of this process waiting for the build
_result = None  # (ok, paths or failure) once built


def clean_env(**extra):
    """The environment of an operator's shell: no PYTHONPATH, no VSS_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VSS_") and k not in ("PYTHONPATH", "PYTHONHOME",
                                                      "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(extra)
    return env


@defer.inlineCallbacks
def run(argv, cwd, env=None, check=True):
    """Run a command through the reactor; fires with (stdout, stderr, exit code)."""
    out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=env or clean_env(),
                                                    path=cwd)
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if check and code != 0:
        raise AssertionError(f"{' '.join(argv)} exited {code}:\n{out[-3000:]}\n{err[-3000:]}")
    return out, err, code


def source_files():
    """The files of the checkout a clean clone has (tracked, plus new files not ignored)."""
    if os.path.isdir(os.path.join(ROOT, ".git")) or os.path.isfile(os.path.join(ROOT, ".git")):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True,
                                check=True).stdout.decode().split("\0")
        return [f for f in listed if f and os.path.isfile(os.path.join(ROOT, f))]
    skip = {".venv", ".git", "build", "dist", "__pycache__"}
    out = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith("_trial_temp")
                   and not d.endswith(".egg-info")]
        out += [os.path.relpath(os.path.join(top, f), ROOT) for f in files]
    return out


@defer.inlineCallbacks
def build():
    """sdist, wheel and a venv with the wheel installed, in a new temporary directory
    outside the checkout; fires with a dict of their paths."""
    work = tempfile.mkdtemp(prefix="vss-wheel-test-")
    atexit.register(shutil.rmtree, work, True)
    assert not os.path.realpath(work).startswith(os.path.realpath(ROOT) + os.sep)
    src = os.path.join(work, "src")
    for rel in source_files():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(src, rel))
    dist = os.path.join(work, "dist")
    yield run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
               "print(b.build_sdist(sys.argv[1]))", dist], cwd=src)
    (sdist,) = glob.glob(os.path.join(dist, "vss-*.tar.gz"))
    unpacked = os.path.join(work, "unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    (tree,) = glob.glob(os.path.join(unpacked, "vss-*"))
    yield run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
               dist, tree], cwd=work)
    (wheel,) = glob.glob(os.path.join(dist, "vss-*.whl"))
    venv = os.path.join(work, "venv")
    yield run([sys.executable, "-m", "venv", venv], cwd=work)
    yield run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", wheel],
              cwd=work)
    rundir = os.path.join(work, "run")
    os.makedirs(rundir)
    return {"work": work, "sdist": sdist, "wheel": wheel, "venv": venv,
            "bin": os.path.join(venv, "bin"), "run": rundir}


def built():
    """A Deferred of ``build()``'s result: the first call of a process builds, the
    others wait for it and get the same result (or failure)."""
    global _waiters
    d = defer.Deferred()
    if _result is not None:
        ok, value = _result
        d.callback(value) if ok else d.errback(value)
        return d
    if _waiters is None:
        _waiters = []
        build().addBoth(_done)
    _waiters.append(d)
    return d


def _done(outcome):
    global _result
    ok = not isinstance(outcome, Failure)
    _result = (ok, outcome)
    waiters = list(_waiters)
    del _waiters[:]
    for d in waiters:
        d.callback(outcome) if ok else d.errback(outcome)


@defer.inlineCallbacks
def http_get(url):
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = yield Agent(reactor, pool=pool).request(b"GET", url.encode("ascii"))
    body = yield readBody(response)
    return response.code, body


class WheelTests(unittest.TestCase):
    timeout = 900  # the first test of a process builds and installs

    @defer.inlineCallbacks
    def test_the_sdist_and_the_wheel_carry_the_plugin_the_units_and_the_page(self):
        b = yield built()
        with tarfile.open(b["sdist"]) as tar:
            names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        with zipfile.ZipFile(b["wheel"]) as z:
            wheel = set(z.namelist())
        served = [os.path.relpath(os.path.join(top, f), ROOT)
                  for folder in (STATIC, CONSOLE)
                  for top, _, files in os.walk(os.path.join(ROOT, folder)) for f in files]
        self.assertIn(os.path.join(STATIC, "index.html"), served)
        self.assertIn(os.path.join(CONSOLE, "js", "pages", "grants.js"), served)
        for path in (PLUGIN, *UNITS, "vss/__init__.py", *served):
            self.assertIn(path, names)
            self.assertIn(path, wheel)
        self.assertNotIn("twisted/plugins/__init__.py", wheel)
        self.assertNotIn("twisted/__init__.py", wheel)

    @defer.inlineCallbacks
    def test_an_installed_platform_runs_from_the_wheel(self):
        b = yield built()
        bindir, rundir = b["bin"], b["run"]

        def tool(name):
            return os.path.join(bindir, name)

        # the venv's vss is the wheel's; nothing of the checkout is on its path
        out, _, _ = yield run([tool("python"), "-c",
                               "import json, sys, vss, twisted.plugins.vss_plugins as p; "
                               "print(json.dumps([vss.__file__, p.__file__, sys.path]))"],
                              cwd=rundir)
        vss_file, plugin_file, path = json.loads(out)
        for f in (vss_file, plugin_file):
            self.assertTrue(f.startswith(b["venv"] + os.sep), f)
        root = os.path.realpath(ROOT)
        self.assertEqual([p for p in path if p and os.path.realpath(p).startswith(root)], [])

        out, err, _ = yield run([tool("twistd"), "--help"], cwd=rundir)
        self.assertIn("vss-node", out)
        self.assertIn("vss-cms", out)
        for name in ("vssctl", "vss-admin", "vss-pu", "vss-conformance"):
            out, err, _ = yield run([tool(name), "--version"], cwd=rundir)
            self.assertEqual(out, f"{name} (vss) {__version__}\n")
        out, err, _ = yield run([tool("twistd"), "vss-node", "--version"], cwd=rundir)
        self.assertEqual(out, f"vss-node (vss) {__version__}\n")

        # the central platform, its first admin, a node
        cms_data = os.path.join(rundir, "cms")
        cms = Daemon(reactor, [tool("twistd"), "-n", "--pidfile=", "vss-cms",
                               "--data-dir", cms_data,
                               "--node-listen", "tcp:0:interface=127.0.0.1",
                               "--admin-listen", "tcp:0:interface=127.0.0.1"],
                     os.path.join(rundir, "cms.log"), env=clean_env(), cwd=rundir)
        self.addCleanup(cms.stop)
        yield wait_for_file(reactor, os.path.join(cms_data, "ports.json"), 60, cms)
        with open(os.path.join(cms_data, "ports.json")) as f:
            cms_ports = json.load(f)
        token, err, _ = yield run([tool("vss-admin"), "bootstrap", "--db",
                                   "sqlite:" + os.path.join(cms_data, "vss-cms.sqlite3")],
                                  cwd=rundir)
        admin_env = clean_env(VSS_API=f"http://127.0.0.1:{cms_ports['admin']}",
                              VSS_ADMIN_TOKEN=token.strip())
        # the operator console, from the wheel, beside the admin API
        status, page = yield http_get(f"http://127.0.0.1:{cms_ports['admin']}/console/")
        self.assertEqual(status, 200)
        with open(os.path.join(ROOT, CONSOLE, "index.html"), "rb") as f:
            self.assertEqual(page, f.read())
        status, _ = yield http_get(f"http://127.0.0.1:{cms_ports['admin']}"
                                   "/console/static/js/pages/audit.js")
        self.assertEqual(status, 200)

        node_data = os.path.join(rundir, "node-a")
        node = Daemon(reactor, [tool("twistd"), "-n", "--pidfile=", "vss-node",
                                "--node-id", "node-a", "--data-dir", node_data,
                                "--cms", f"tcp:127.0.0.1:{cms_ports['node']}",
                                "--cluster-secret-file", os.path.join(cms_data, "cluster.secret"),
                                "--ss-workers", "0",
                                *[arg for name in ("pu", "cu", "rtsp", "node", "http")
                                  for arg in (f"--{name}-listen", "tcp:0:interface=127.0.0.1")]],
                      os.path.join(rundir, "node-a.log"), env=clean_env(), cwd=rundir)
        self.addCleanup(node.stop)
        yield wait_for_file(reactor, os.path.join(node_data, "ports.json"), 60, node)
        with open(os.path.join(node_data, "ports.json")) as f:
            ports = json.load(f)

        @defer.inlineCallbacks
        def node_ready():
            status, _ = yield http_get(f"http://127.0.0.1:{ports['http']}/readyz")
            return status == 200

        yield poll("node-a ready", node_ready, timeout=60, interval=0.2)
        status, page = yield http_get(f"http://127.0.0.1:{ports['http']}/")
        self.assertEqual(status, 200)
        with open(os.path.join(ROOT, STATIC, "index.html"), "rb") as f:
            self.assertEqual(page, f.read())  # the browser client, from the wheel

        # a user, a camera, a grant
        yield run([tool("vss-admin"), "user", "add", "alice"], cwd=rundir,
                  env={**admin_env, "VSS_USER_PASSWORD": "alice-password"})
        yield run([tool("vss-admin"), "device", "add", "cam-1", "--kind", "ipc",
                   "--home-node", "node-a"], cwd=rundir,
                  env={**admin_env, "VSS_DEVICE_SECRET": "cam-1-secret"})
        yield run([tool("vss-admin"), "grant", "set", "user:alice", "cam-1", "view,ptz"],
                  cwd=rundir, env=admin_env)
        pu = Daemon(reactor, [tool("vss-pu"), "--node", f"tcp:127.0.0.1:{ports['pu']}",
                              "--id", "cam-1"], os.path.join(rundir, "pu.log"),
                    env=clean_env(VSS_PU_SECRET="cam-1-secret"), cwd=rundir)
        self.addCleanup(pu.stop)

        ctl_env = clean_env(VSS_NODE=f"tcp:127.0.0.1:{ports['cu']}", VSS_USER="alice",
                            VSS_PASSWORD="alice-password")
        seen = []

        @defer.inlineCallbacks
        def camera_online():
            out, err, code = yield run([tool("vssctl"), "devices"], cwd=rundir, env=ctl_env,
                                       check=False)
            seen[:] = [out, err]
            lines = [line.split() for line in out.splitlines()]
            return code == 0 and any(fields[:1] == ["cam-1"] and "online" in fields
                                     for fields in lines)

        yield poll("cam-1 online in vssctl devices", camera_online, timeout=60, interval=0.5)
        self.assertIn("cam-1", seen[0])
