"""
The link to Redis, apart from the store that uses it (``vss.store.redis``): the URL
(``redis://`` plain, ``rediss://`` TLS), the password file, the TLS options (the
server's certificate checked against a CA file and the URL's host name, a client
certificate when the server asks for one), and a short handshake of its own (TLS,
``AUTH``, ``SELECT``, ``PING``, spoken in RESP by hand) whose failure names the cause:
a certificate that does not verify, a TLS/plain mismatch, a refused password or
database. txredisapi only waits, or logs a bare "Lost connection"; this says why.

No txredisapi here: the daemons import this module to name the store's errors even
where the optional dependency is not installed.
"""

import ipaddress
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import defer, error, ssl
from twisted.internet._sslverify import VerificationError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer


class StoreUnavailable(Exception):
    """Redis cannot be used as configured (certificate, TLS, password, database): the
    message names the cause. Raised by ``load()``; a node does not start without its
    store."""


#: what the options are called on the command line, for the messages
PASSWORD_OPTION = "--store-password-file"


def parse_url(url):
    """``redis[s]://[user@]host[:port][/db]`` -> dict of connection arguments.

    A password in the URL is refused: it would show in ``ps`` and in logs.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    if parts.password is not None:
        raise ValueError(
            "a password in the Redis URL would show in ps and in logs: put it in a file"
            f" and give that file with {PASSWORD_OPTION}"
        )
    path = parts.path.strip("/")
    try:
        dbid = int(path) if path else 0
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port or database number in Redis URL {url!r}")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "dbid": dbid,
        "username": unquote(parts.username) if parts.username else None,
        "tls": parts.scheme == "rediss",
    }


def read_password(path):
    """The Redis password held by a file (surrounding whitespace dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
    except OSError as e:
        raise ValueError(f"{PASSWORD_OPTION}: cannot read {path}: {e.strerror}") from None
    if not data:
        raise ValueError(f"{PASSWORD_OPTION}: {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{PASSWORD_OPTION}: {path} is not UTF-8 text") from None


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path}: {e.strerror}") from None


def tls_options(host, ca_file=None, cert_file=None, key_file=None):
    """Twisted's client TLS options for a Redis server named ``host``: its certificate
    must verify against the certificates of ``ca_file`` (the system's trust roots when
    None) and name ``host``; ``cert_file``/``key_file`` are the client's certificate."""

    trust = None  # optionsForClientTLS: the platform's trust roots
    if ca_file:
        data = _read(ca_file, "--store-ca")
        try:
            roots = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(f"--store-ca: {ca_file} holds no PEM certificate") from None
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in roots]
        )
    client = None
    if bool(cert_file) != bool(key_file):
        raise ValueError("--store-cert and --store-key go together")
    if cert_file:
        pem = _read(cert_file, "--store-cert") + b"\n" + _read(key_file, "--store-key")
        try:
            client = ssl.PrivateCertificate.loadPEM(pem)
        except Exception as e:  # OpenSSL.crypto.Error or ValueError, by what is wrong
            raise ValueError(
                f"--store-cert/--store-key: cannot load {cert_file} and {key_file}: {e}"
            ) from None
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def _resp(*args):
    """One Redis command in RESP, as a client sends it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Refused(Exception):
    """Redis answered a command of the handshake with an error."""

    def __init__(self, command, message):
        super().__init__(command, message)
        self.command = command
        self.message = message



@implementer(IHandshakeListener)
class Handshake(LineReceiver):
    """One check of the link: sends ``[AUTH,] SELECT, PING`` at once. ``done`` fires
    once the connection is closed: with None when PING was answered, else with a
    Failure: a ``Refused`` for the first error reply, ``defer.TimeoutError`` when no
    answer came within ``timeout`` seconds of ``clock``, or why the connection was lost
    (TLS errors land there).

    Every reply expected is one line (``+OK``, ``+PONG``, ``-ERR ...``), so this needs
    none of a full client; it exists to name the cause of a failure, which txredisapi
    turns into a bare "Lost connection" or a silent wait.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 4096

    def __init__(self, commands, clock, timeout):
        self.commands = commands
        self.pending = [args[0] for args in commands]
        self.clock = clock
        self.timeout = timeout
        self.done = defer.Deferred()
        #: a TLS link completed its handshake (the commands wait for it)
        self.secured = False
        self._outcome = None  # (failure or None,) once decided
        self._timer = None

    def handshakeCompleted(self):
        self.secured = True

    def connectionMade(self):
        self._timer = self.clock.callLater(self.timeout, self._timedOut)
        self.transport.write(b"".join(_resp(*args) for args in self.commands))

    def lineReceived(self, line):
        if self._outcome is not None or not self.pending:
            return
        command = self.pending.pop(0)
        if line.startswith(b"-"):
            text = line[1:].decode("utf-8", "replace")
            self._finish(Failure(Refused(command, text)))
        elif not self.pending:
            self._finish(None)

    def lineLengthExceeded(self, line):
        self._finish(Failure(Refused("handshake", "reply line too long (not Redis?)")))

    def _timedOut(self):
        self._timer = None
        self._finish(Failure(defer.TimeoutError()), abort=True)

    def _finish(self, failure, abort=False):
        if self._outcome is None:
            self._outcome = (failure,)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.done.called:
            return
        outcome = self._outcome[0] if self._outcome is not None else reason
        if outcome is None:
            self.done.callback(None)
        else:
            self.done.errback(outcome)


def tls_error_text(failure):
    """The reasons of an OpenSSL error (``certificate verify failed``), or None when
    the failure is not about TLS."""

    if failure.check(VerificationError):
        return f"the certificate does not name the host ({failure.value})"
    if failure.check(SSL.Error):
        reasons = [
            entry[2] for entry in (failure.value.args[0] if failure.value.args else [])
            if isinstance(entry, tuple) and len(entry) == 3
        ]
        # the last reason is the one that ended the handshake
        reasons = [r for r in reasons if r]
        return reasons[-1] if reasons else str(failure.value)
    return None


class LinkProbe:
    """One handshake with Redis the way a store reaches it (``params`` from
    ``parse_url``, the password, the TLS options), on a short connection of its own,
    and the judgement of how it ended. ``clock`` times the replies; ``reactor``
    connects (the global one unless given: txredisapi runs on it too)."""

    def __init__(self, params, password, tls, where, clock, connect_timeout, reply_timeout,
                 reactor=None):
        self.params = params
        self.password = password
        self.tls = tls
        self.where = where
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        if reactor is None:
            from twisted.internet import reactor  # the global reactor, only when connecting
        self.reactor = reactor

    def handshake(self):
        """A Deferred (final, why): why is None when Redis answered; final when
        trying again cannot help (a certificate, a password, a database)."""

        p = self.params
        commands = []
        if self.password is not None:
            auth = (p["username"], self.password) if p["username"] else (self.password,)
            commands.append(("AUTH", *auth))
        commands += [("SELECT", p["dbid"]), ("PING",)]
        handshake = Handshake(commands, self.clock, self.reply_timeout)
        endpoint = HostnameEndpoint(self.reactor, p["host"], p["port"], timeout=self.connect_timeout)
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls, endpoint)

        def connected(_):
            return handshake.done

        def judged(result):
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return result
            if isinstance(result, Failure) and result.check(defer.TimeoutError):
                if self.tls is not None and not handshake.secured:
                    # a server without TLS waits for the end of a line that never comes
                    return True, (
                        f"{self.where} took the connection but no TLS handshake within"
                        f" {self.reply_timeout:.0f}s (is it Redis's tls-port?)"
                    )
                return False, f"{self.where} did not answer within {self.reply_timeout:.0f}s"
            return self.judge(result)

        def not_connected(failure):
            failure.trap(error.ConnectError, error.DNSLookupError, error.TimeoutError)
            return False, f"cannot connect to {self.where}: {failure.getErrorMessage()}"

        def cancel(_):
            if handshake.transport is not None:
                handshake.transport.abortConnection()
            d.cancel()

        factory = Factory.forProtocol(lambda: handshake)
        factory.noisy = False
        d = endpoint.connect(factory)
        d.addCallbacks(connected, not_connected)
        d.addBoth(lambda r: r if isinstance(r, tuple) else judged(r))
        outer = defer.Deferred(cancel)
        d.chainDeferred(outer)
        return outer

    #: error replies of a server that will take the connection a little later
    BUSY = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")

    def judge(self, result):
        """(final, why) for what the handshake ended with."""
        where = self.where
        if result is None:
            return False, None
        if result.check(Refused):
            command, message = result.value.command, result.value.message
            if message.startswith(self.BUSY):
                return False, f"{where} answered {command}: {message}"
            if command == "AUTH":
                return True, (
                    f"{where} refused the password of {PASSWORD_OPTION}: {message}"
                )
            if message.startswith("NOAUTH"):
                return True, (
                    f"{where} wants a password: give it in a file with {PASSWORD_OPTION}"
                    f" ({message})"
                )
            if command == "SELECT":
                return True, f"{where} refused database {self.params['dbid']}: {message}"
            return True, f"{where} answered {command}: {message}"
        tls = tls_error_text(result)
        if tls is not None:
            hint = ""
            if "certificate" in tls and "verify" in tls:
                hint = " (does --store-ca hold the CA that signed the server's certificate?)"
            elif "alert" in tls and ("certificate" in tls or "handshake" in tls):
                hint = " (does the server want a client certificate: --store-cert/--store-key?)"
            elif "version" in tls or "record" in tls or "packet" in tls:
                hint = " (is it a TLS port?)"
            return True, f"TLS with {where} failed: {tls}{hint}"
        if result.check(error.ConnectionDone, error.ConnectionLost):
            hint = (
                " (a TLS port? use a rediss:// URL)" if self.tls is None
                else " (is it a TLS port?)"
            )
            return True, f"{where} closed the connection without answering{hint}"
        return False, f"{where}: {result.getErrorMessage()}"
