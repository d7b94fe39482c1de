"""
The node's Redis link over TLS (``rediss://``) with a password read from a file, against
real ``redis-server`` processes started here: TLS only (``port 0``, ``tls-port`` picked by
the test), certificates from ``vss.tls``, ``requirepass`` in a configuration file (never
on a command line).

- ``RedisTLSStoreTests``: the Redis store conformance tests of ``tests.test_store``, over
  TLS with ``AUTH``.
- ``RedisTLSFailureTests``: what fails, and how the failure reads: a CA that did not sign
  the server's certificate, a certificate naming another host, a wrong or missing
  password, a plain client on the TLS port, a TLS client on a plain server, a server
  that wants a client certificate, a password changed on the server while the node runs;
  a server that is not up yet is waited for.
- ``NodeStoreOptionsTests``: ``vss-node``'s store options.
- ``NodeRedisTLSEndToEnd``: ``twistd vss-node --store rediss://...`` starts, and does not
  start with a CA that did not sign the server's certificate.

Skipped when redis-server is not installed or is built without TLS.
"""

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from tests import test_store
from vss.rgm.localcentral import MemoryCentral
from vss.testing import records
from vss.testing.processes import run_tool, start_node
from vss.tls import make_ca_and_cert

REDIS_SERVER = shutil.which("redis-server")
PASSWORD = "correct horse battery staple"

if REDIS_SERVER is None:
    SKIP = "redis-server is not installed"
elif not test_store.HAVE_TXREDISAPI:
    SKIP = "txredisapi is not installed"
else:
    SKIP = None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # Linux: the server gets SIGTERM if the test process dies without cleaning up
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RedisServer:
    """A ``redis-server`` child with its own directory, configuration and certificates.

    ``tls``: serve TLS only, on ``port``; otherwise plain TCP only. ``clients``: Redis's
    ``tls-auth-clients`` (no, optional, yes); client certificates are signed by the CA in
    ``client_ca`` (a second CA that ``vss.tls`` wrote), the one the server checks clients
    against.
    """

    def __init__(self, directory, tls=True, clients="no"):
        self.directory = directory
        self.tls = tls
        self.clients = clients
        self.process = None
        self.port = None
        os.makedirs(directory, exist_ok=True)
        self.cert, self.key, _ = make_ca_and_cert(os.path.join(directory, "server"), ["localhost"])
        self.ca = os.path.join(directory, "server", "ca.pem")
        self.client_cert, self.client_key, _ = make_ca_and_cert(
            os.path.join(directory, "client"), ["vss-node"])
        self.client_ca = os.path.join(directory, "client", "ca.pem")
        self.password_file = os.path.join(directory, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")

    def url(self, db=15, host="localhost", scheme=None):
        return f"{scheme or ('rediss' if self.tls else 'redis')}://{host}:{self.port}/{db}"

    def _config(self, port):
        lines = [
            "bind 127.0.0.1 -::1",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            f'requirepass "{PASSWORD}"',
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {self.cert}",
                f"tls-key-file {self.key}",
                f"tls-ca-cert-file {self.client_ca}",
                f"tls-auth-clients {self.clients}",
            ]
        else:
            lines.append(f"port {port}")
        path = os.path.join(self.directory, "redis.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, port=None, timeout=30.0):
        """Start on ``port`` (a free one by default) and wait until it accepts."""
        for _ in range(3):  # a free port can be taken between the test and the server
            self.port = port or _free_port()
            log = open(os.path.join(self.directory, "redis.log"), "ab")  # noqa: SIM115
            with log:
                self.process = subprocess.Popen(
                    [REDIS_SERVER, self._config(self.port)], stdout=log,
                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    try:  # wait for the server, waking at once if it exits
                        self.process.wait(timeout=0.05)
                    except subprocess.TimeoutExpired:
                        pass
            self.stop()
            output = self.output()
            if self.tls and ("TLS" in output and "not" in output.lower()
                             or "tls-port" in output):
                raise unittest.SkipTest(f"redis-server without TLS support: {output[-300:]}")
            if "Address already in use" not in output or port:
                raise RuntimeError(f"redis-server did not start:\n{output[-2000:]}")
        raise RuntimeError("redis-server found no free port")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def output(self):
        try:
            with open(os.path.join(self.directory, "redis.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


_shared = None


def shared_server():
    """One TLS server for the whole test process (client certificates optional)."""
    global _shared
    if _shared is None:
        directory = tempfile.mkdtemp(prefix="vss-redis-tls-")
        server = RedisServer(directory, clients="optional")

        def cleanup():
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)

        try:
            server.start()
        except BaseException:
            cleanup()
            raise
        atexit.register(cleanup)
        _shared = server
    return _shared


def store_for(server, node_id, url=None, **files):
    from vss.store import make_store

    files.setdefault("ca_file", server.ca)
    files.setdefault("password_file", server.password_file)
    return make_store(url or server.url(), node_id, **files)


class RedisTLSStoreTests(test_store.RedisStoreTests):
    """The Redis conformance tests, over TLS with a password."""

    skip = SKIP

    def setUp(self):
        self.server = shared_server()
        return super().setUp()

    def openStore(self, node_id):
        return store_for(self.server, node_id)

    @defer.inlineCallbacks
    def test_link_is_tls_with_auth(self):
        s = self.store
        yield s.load()
        self.assertEqual(s.where, f"rediss://localhost:{self.server.port}")
        # the server serves nothing but TLS, so this reply came over TLS
        info = yield s.redis.execute_command("CLIENT", "INFO")
        self.assertIn("user=default", info)
        self.assertIsNotNone(s._tls)


class RedisTLSFailureTests(unittest.TestCase):
    """The link fails with a message naming the cause, logged, rather than hanging."""

    skip = SKIP
    timeout = 120

    def setUp(self):
        self.server = shared_server()
        self.node_id = f"test-{uuid.uuid4().hex[:12]}"

    def store(self, **kwargs):
        store = store_for(self.server, self.node_id, **kwargs)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def assertUnavailable(self, store, *fragments):
        from vss.store.redislink import StoreUnavailable

        with capturedLogs() as events:
            e = yield self.assertFailure(store.load(), StoreUnavailable)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        errors = [ev for ev in events if ev.get("log_level") == LogLevel.error]
        self.assertEqual([ev["why"] for ev in errors], [str(e)])
        self.assertIsNone(store.redis)  # the store's own connection was never opened
        return str(e)

    def other_ca(self):
        directory = os.path.abspath(self.mktemp())
        make_ca_and_cert(directory, ["localhost"])
        return os.path.join(directory, "ca.pem")

    def password_file(self, text):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_ca_that_did_not_sign_the_server_certificate(self):
        return self.assertUnavailable(self.store(ca_file=self.other_ca()),
                                      "certificate verify failed", "--store-ca")

    def test_system_roots_do_not_trust_a_private_ca(self):
        return self.assertUnavailable(self.store(ca_file=""), "certificate verify failed")

    def test_certificate_for_another_host(self):
        # the server's certificate names localhost only
        url = self.server.url(host="127.0.0.1")
        return self.assertUnavailable(self.store(url=url), "does not name the host")

    def test_wrong_password(self):
        store = self.store(password_file=self.password_file("not the password\n"))
        return self.assertUnavailable(store, "WRONGPASS", "--store-password-file")

    def test_no_password(self):
        return self.assertUnavailable(self.store(password_file=""), "NOAUTH",
                                      "--store-password-file")

    def test_unknown_acl_user(self):
        url = f"rediss://nobody@localhost:{self.server.port}/15"
        return self.assertUnavailable(self.store(url=url), "WRONGPASS")

    def test_database_out_of_range(self):
        return self.assertUnavailable(self.store(url=self.server.url(db=99)), "database 99")

    def test_plain_client_on_the_tls_port(self):
        url = self.server.url(scheme="redis")
        return self.assertUnavailable(self.store(url=url, ca_file=""),
                                      "closed the connection without answering", "rediss://")

    @defer.inlineCallbacks
    def test_tls_client_on_a_plain_server(self):
        plain = RedisServer(os.path.abspath(self.mktemp()), tls=False).start()
        self.addCleanup(plain.stop)
        store = self.store(url=plain.url(scheme="rediss"))
        store.replyTimeout = 3.0
        why = yield self.assertUnavailable(store, "TLS")
        self.assertTrue("tls-port" in why or "TLS port" in why, why)

    @defer.inlineCallbacks
    def test_server_that_wants_a_client_certificate(self):
        strict = RedisServer(os.path.abspath(self.mktemp()), clients="yes").start()
        self.addCleanup(strict.stop)
        without = store_for(strict, self.node_id)
        self.addCleanup(without.close)
        yield self.assertUnavailable(without, "TLS with", "--store-cert")

        with_cert = store_for(strict, self.node_id, cert_file=strict.client_cert,
                              key_file=strict.client_key)
        self.addCleanup(with_cert.close)
        yield with_cert.load()
        yield with_cert.set_state("cam-1", online=True)
        again = store_for(strict, self.node_id, cert_file=strict.client_cert,
                          key_file=strict.client_key)
        self.addCleanup(again.close)
        yield again.load()
        self.assertEqual(again.get_state("cam-1"), {"online": True})
        yield again.wipe()

    @defer.inlineCallbacks
    def test_waits_for_a_server_not_up_yet(self):
        later = RedisServer(os.path.abspath(self.mktemp()))
        port = _free_port()
        later.port = port
        self.addCleanup(later.stop)
        store = store_for(later, self.node_id)
        self.addCleanup(store.close)
        store.retryInitial = store.retryMax = 0.2
        with capturedLogs() as events:
            loaded = store.load()
            while not any("Cannot use" in ev.get("log_format", "") for ev in events):
                yield task.deferLater(reactor, 0.05, lambda: None)
            self.assertFalse(loaded.called)
            later.start(port=port)
            yield loaded
        warnings = [ev for ev in events if "Cannot use" in ev.get("log_format", "")]
        self.assertIn("refused", warnings[0]["why"])
        yield store.set_state("cam-1", online=True)
        yield store.wipe()

    @defer.inlineCallbacks
    def test_password_changed_while_running(self):
        server = RedisServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(server.stop)
        store = store_for(server, self.node_id)
        store.slowAfter = 1.0
        store.closeTimeout = 0.5
        self.addCleanup(store.close)
        yield store.load()
        yield store.set_state("cam-1", online=True)
        admin = store_for(server, "admin")
        self.addCleanup(admin.close)
        yield admin.load()
        yield admin.redis.execute_command("CONFIG", "SET", "requirepass", "rotated")
        with capturedLogs() as events:
            # the store's connection is dropped and comes back with the old password
            yield admin.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
            written = store.set_state("cam-1", online=False)
            for _ in range(600):
                if any(ev.get("log_level") == LogLevel.error and "why" in ev for ev in events):
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(written)
        self.assertEqual(store.get_state("cam-1"), {"online": False})  # memory is current
        why = [ev["why"] for ev in events if ev.get("log_level") == LogLevel.error and "why" in ev]
        self.assertIn("WRONGPASS", why[0])

    @defer.inlineCallbacks
    def test_close_while_waiting(self):
        from vss.store.redis import StoreClosed

        store = store_for(self.server, self.node_id,
                          url=f"rediss://localhost:{_free_port()}/15")
        store.retryInitial = 0.1
        loaded = store.load()
        yield task.deferLater(reactor, 0.3, lambda: None)
        yield store.close()
        yield self.assertFailure(loaded, StoreClosed)


class NodeStoreOptionsTests(unittest.SynchronousTestCase):
    """``vss-node``'s store options, checked before anything starts."""

    def parse(self, *args):
        from vss.tap.node import Options

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        opts = Options()
        opts.parseOptions(["--node-id", "n1", "--static", static, *args])
        return opts.settings

    def problems(self, *args):
        from vss.config import ConfigError

        try:
            self.parse(*args)
        except ConfigError as e:
            return str(e)
        self.fail("options accepted")

    def existing(self, name="file.pem"):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("x\n")
        return path

    def test_rediss_with_files(self):
        ca, cert, key, pw = (self.existing() for _ in range(4))
        s = self.parse("--store", "rediss://vss@redis.example:6380/2", "--store-ca", ca,
                       "--store-cert", cert, "--store-key", key, "--store-password-file", pw)
        self.assertEqual((s.store, s.store_ca, s.store_cert, s.store_key, s.store_password_file),
                         ("rediss://vss@redis.example:6380/2", ca, cert, key, pw))

    def test_password_in_url_refused(self):
        message = self.problems("--store", "rediss://vss:hunter2@redis.example/0")
        self.assertIn("--store-password-file", message)
        self.assertNotIn("hunter2", message)

    def test_tls_files_need_rediss(self):
        self.assertIn("need a rediss://",
                      self.problems("--store", "redis://127.0.0.1/0", "--store-ca", self.existing()))

    def test_files_need_a_redis_store(self):
        self.assertIn("need a Redis store",
                      self.problems("--store-password-file", self.existing()))

    def test_missing_files_and_half_a_key_pair(self):
        message = self.problems("--store", "rediss://h/0", "--store-ca", "/nonexistent/ca.pem",
                                "--store-cert", self.existing())
        self.assertIn("--store-ca: no such file /nonexistent/ca.pem", message)
        self.assertIn("--store-cert and --store-key", message)

    def test_unknown_scheme(self):
        self.assertIn("rediss://", self.problems("--store", "memcached://h"))


def write_static(path, node_id):
    c = MemoryCentral()
    c.add_device(records.device("cam1", "cam1-secret", home_node=node_id, channels=1))
    c.add_user(records.user("alice", "alice-pw"))
    c.save(path)


class NodeRedisTLSEndToEnd(unittest.TestCase):
    """A real ``twistd vss-node`` on a rediss:// store."""

    skip = SKIP
    timeout = 120

    def setUp(self):
        self.server = shared_server()
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.static = os.path.join(self.work, "static.json")
        self.node_id = f"tls-{uuid.uuid4().hex[:8]}"
        write_static(self.static, self.node_id)

    def args(self, ca):
        return ["--static", self.static, "--store", self.server.url(),
                "--store-ca", ca, "--store-password-file", self.server.password_file]

    @defer.inlineCallbacks
    def test_node_keeps_its_state_in_redis_over_tls(self):
        from vss.store.redis import RedisStore

        node, ports = yield start_node(reactor, self.work, self.node_id, self.args(self.server.ca))
        self.addCleanup(node.stop)
        self.assertIn("cu", ports)
        reader = store_for(self.server, self.node_id)
        self.addCleanup(reader.close)
        self.assertIsInstance(reader, RedisStore)
        for _ in range(200):  # the node writes its static records at start-up
            yield reader.load()
            if reader.get_device("cam1") is not None:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(reader.get_device("cam1").device_id, "cam1")
        self.assertEqual(reader.get_user("alice").username, "alice")
        yield node.stop()
        yield reader.wipe()
        # the password went through a file, never the command line
        self.assertNotIn(PASSWORD, " ".join(node.argv))

    @defer.inlineCallbacks
    def test_node_does_not_start_with_a_wrong_ca(self):
        other = os.path.join(self.work, "other")
        make_ca_and_cert(other, ["localhost"])
        data = os.path.join(self.work, self.node_id)
        out, err, code = yield run_tool(
            "twistd", ["-n", "--pidfile=", "vss-node", "--node-id", self.node_id,
                       "--data-dir", data, "--pu-listen", "tcp:0:interface=127.0.0.1",
                       "--cu-listen", "tcp:0:interface=127.0.0.1",
                       "--rtsp-listen", "tcp:0:interface=127.0.0.1",
                       "--http-listen", "off", *self.args(os.path.join(other, "ca.pem"))],
            cwd=self.work)
        # the process ends on its own, with a non-zero status and one line naming the cause
        self.assertNotEqual(code, 0)
        self.assertIn("cannot start", out + err)
        self.assertNotIn("Traceback", out + err)
        self.assertIn("certificate verify failed", out + err)
        self.assertIn("--store-ca", out + err)
        self.assertFalse(os.path.exists(os.path.join(data, "ports.json")))
