"""The operators' manhole: an SSH Python shell, public keys only, loopback only."""

import os
import shutil

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from vss.manhole import manhole_factory, manhole_service

SSH = shutil.which("ssh")


def write_key(directory, name):
    key = ed25519.Ed25519PrivateKey.generate()
    private = os.path.join(directory, name)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public


class Session(protocol.ProcessProtocol):
    def __init__(self, lines):
        self.lines = lines
        self.out = b""
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.typing = reactor.callLater(1.5, self._type)

    def _type(self):
        if self.transport.pid is not None:
            for line in self.lines:
                self.transport.write(line)

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        if self.typing.active():
            self.typing.cancel()
        self.ended.callback(reason.value.exitCode)


class ManholeTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        if SSH is None:
            raise unittest.SkipTest("needs the OpenSSH client (ssh) to drive the manhole")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.key, public = write_key(self.dir, "operator")
        self.other_key, _ = write_key(self.dir, "stranger")
        self.keys = os.path.join(self.dir, "authorized_keys")
        with open(self.keys, "wb") as f:
            f.write(public + b" operator\n")
        self.port = reactor.listenTCP(0, manhole_factory(self.keys, {"answer": 21}),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def ssh(self, key, lines):
        s = Session(lines)
        argv = [SSH, "-tt", "-i", key, "-p", str(self.port.getHost().port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "PreferredAuthentications=publickey", "-o", "ConnectTimeout=10",
                "operator@127.0.0.1"]
        reactor.spawnProcess(s, SSH, argv, env={"HOME": self.dir, "PATH": "/usr/bin:/bin"})
        kill = reactor.callLater(30, lambda: s.transport.signalProcess("KILL"))
        s.ended.addBoth(lambda r: (kill.active() and kill.cancel(), r)[1])
        return s

    @defer.inlineCallbacks
    def test_an_authorized_key_gets_a_shell_with_the_service_objects(self):
        s = self.ssh(self.key, [b"print(answer * 2)\r", b"\x04"])
        yield s.ended
        self.assertIn(b"42", s.out)

    @defer.inlineCallbacks
    def test_any_other_key_is_refused(self):
        s = self.ssh(self.other_key, [])
        code = yield s.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", s.out)

    def test_the_endpoint_must_name_an_interface(self):
        with self.assertRaises(ValueError):
            manhole_service("tcp:7122", self.keys, {})
