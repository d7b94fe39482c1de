"""
The operators' manhole: a Python shell over SSH into a running daemon, with its
service objects in the namespace (nodes, sessions, stores).

Off unless configured. Only public keys listed in an authorized_keys file are accepted
(no passwords); the endpoint should stay on 127.0.0.1 (the defaults in the docs do).
The host key is created on first use next to the authorized_keys file.
"""

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application import strports
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.ssh import keys
from twisted.cred import portal

from vss.private import tighten


class _KeyDB:
    """Keys from one authorized_keys file, read again at every login."""

    def __init__(self, path):
        self.path = path

    def getAuthorizedKeys(self, username):
        found = []
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    line = line.strip()
                    if not line or line.startswith(b"#"):
                        continue
                    try:
                        found.append(keys.Key.fromString(line))
                    except (keys.BadKeyError, ValueError):
                        continue
        except OSError:
            pass
        return found


def host_key(path):
    """The manhole's SSH host key at ``path``, created (0600) if absent, tightened to
    0600 if it is open to other users."""
    if os.path.exists(path):
        tighten(path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        data = key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return keys.Key.fromFile(path)


def manhole_factory(authorized_keys, namespace):
    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory.protocolFactory = lambda _: manhole.ColoredManhole(namespace)
    p = portal.Portal(realm, [SSHPublicKeyChecker(_KeyDB(authorized_keys))])
    factory = manhole_ssh.ConchFactory(p)
    key = host_key(os.path.join(os.path.dirname(os.path.abspath(authorized_keys)),
                                "manhole_host_key"))
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    return factory


def manhole_service(endpoint, authorized_keys, namespace, reactor=None):
    """A service listening on ``endpoint`` (keep it on 127.0.0.1)."""
    if "interface=" not in endpoint and not endpoint.startswith("unix:"):
        raise ValueError("the manhole endpoint must name an interface, e.g. "
                         "tcp:7122:interface=127.0.0.1")
    return strports.service(endpoint, manhole_factory(authorized_keys, namespace))
