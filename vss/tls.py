"""
Certificates and the mutual TLS of the links between servers.

Links between servers (a node's link to CMS, node-to-node links) use mutual TLS when
the server has ``--tls-cert``, ``--tls-key`` and ``--tls-ca``: the listener asks for a
client certificate signed by the cluster CA, the connecting side checks the server's.
A node's certificate names the node (CN and a DNS subject alternative name = node id):
CMS and the nodes refuse a node whose certificate names another node than the one it
logs in as, and a node linking to another checks that the certificate names the node it
meant to reach. The link to CMS checks that CMS's certificate names the host of
``--cms``. Without TLS, such a link to or from an address that is not loopback is
refused unless ``--allow-plaintext-links`` is given (``plaintext_problem``).

The cluster CA and the certificates (``vss-admin tls ca`` / ``vss-admin tls issue``)::
    vss-admin tls ca --dir DIR                 # DIR/ca.pem and DIR/ca.key (0600)
    vss-admin tls issue --dir DIR node-a --host 10.0.0.11

``python -m vss.tls DIR NAME [NAME...]`` writes a throw-away CA and one certificate
(DIR/ca.pem, DIR/trust/ca.pem, DIR/NAME.pem with every NAME as a subject alternative
name, DIR/NAME.key mode 0600), e.g. for the PU/CU listeners (``ssl:`` server endpoints,
``tls:HOST:PORT:trustRoots=DIR/trust`` client endpoints). Production sites may use their
own PKI the same way.
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import endpoints, protocol, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names):
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _write(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # a file that was there keeps its mode otherwise
        f.write(data)


def make_ca_and_cert(directory, names, days=825):
    """Create a CA and one server certificate; returns (cert_path, key_path, trust_dir)."""
    os.makedirs(os.path.join(directory, "trust"), exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # a name of its own: two CAs of the same name in one trust bundle make peers pick
    # the wrong one when checking a signature
    ca_name = _name(f"vss CA {names[0]} {os.urandom(4).hex()}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    _write(os.path.join(directory, "ca.pem"), ca_pem)
    _write(os.path.join(directory, "trust", "ca.pem"), ca_pem)
    cert_path = os.path.join(directory, f"{names[0]}.pem")
    key_path = os.path.join(directory, f"{names[0]}.key")
    _write(cert_path, cert.public_bytes(pem) + ca_pem)
    _write(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    return cert_path, key_path, os.path.join(directory, "trust")


# -- the cluster CA and the servers' certificates


class CertificateError(ValueError):
    """A CA or certificate that cannot be made or used (the message says why)."""


def _private_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _create(path, data, mode):
    """Write a new file (refusing to overwrite one)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertificateError(f"{path} exists already; remove it first to replace it") \
            from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_ca(directory, name="vss cluster CA", days=3650):
    """A new certificate authority for a cluster: DIR/ca.pem (give it to every server
    as ``--tls-ca``) and DIR/ca.key (mode 0600: keep it where certificates are made,
    not on the servers). Returns (ca.pem, ca.key)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.join(directory, "ca.pem")
    key_path = os.path.join(directory, "ca.key")
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise CertificateError(f"{path} exists already; a cluster has one CA")
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} {os.urandom(4).hex()}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    _create(key_path, _private_pem(key), 0o600)
    _create(cert_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def issue(directory, identity, hosts=(), days=825):
    """A certificate for one server, signed by the CA in ``directory``: CN and a DNS
    subject alternative name = ``identity`` (a node id, or the name nodes give CMS by),
    and every host name or address in ``hosts`` as further alternative names. Usable as
    a TLS server and as a TLS client. Writes DIR/IDENTITY.pem (the certificate, then the
    CA's) and DIR/IDENTITY.key (mode 0600); returns their paths."""
    if not identity or len(identity) > 64 or not all(
            c.isascii() and (c.isalnum() or c in "-_.") for c in identity):
        raise CertificateError(f"{identity!r}: a name is 1-64 letters, digits, '-', '_' "
                               "or '.'")
    try:
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, "ca.key"), "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
    except OSError as e:
        raise CertificateError(f"no CA in {directory} ({e.strerror}): make one with "
                               "'vss-admin tls ca'") from None
    except ValueError as e:
        raise CertificateError(f"the CA in {directory} cannot be read: {e}") from None
    cert_path = os.path.join(directory, f"{identity}.pem")
    key_path = os.path.join(directory, f"{identity}.key")
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise CertificateError(f"{path} exists already; remove it first to replace it")
    names = [x509.DNSName(identity)]
    for host in hosts:
        if host == identity:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(identity))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _create(key_path, _private_pem(key), 0o600)
    _create(cert_path, cert.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    return cert_path, key_path


def certificate_names(cert):
    """The names a certificate (pyOpenSSL or cryptography) is for: its common names and
    its DNS subject alternative names."""
    if hasattr(cert, "to_cryptography"):
        cert = cert.to_cryptography()
    names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names.update(san.get_values_for_type(x509.DNSName))
    return names


def peer_identity_problem(transport, identity):
    """None when ``transport`` is not TLS or its peer's certificate names
    ``identity``; else what is wrong, for the log and the peer."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None  # plaintext (allowed by the link policy)
    cert = get()
    if cert is None:
        return "the link's TLS peer gave no certificate"
    names = certificate_names(cert)
    if identity in names:
        return None
    return (f"the link's TLS certificate is for {', '.join(sorted(names)) or 'nobody'}, "
            f"not {identity}")


# -- the links between servers: mutual TLS, or plaintext on loopback only


def is_loopback(host):
    """True for a loopback address or ``localhost``; False for any other address, a
    wildcard (every interface) or a host name."""
    if host is None:
        return False
    host = str(host).strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def plaintext_problem(what, host, allowed):
    """The plaintext link policy: None when a plaintext link ``what`` to or from
    ``host`` may go on (``host`` is loopback, or plaintext links are ``allowed``), else
    the refusal."""
    if allowed or is_loopback(host):
        return None
    where = f"on {host}" if host not in ("", None) else "on every interface"
    return (f"{what}: a plaintext link {where} (not loopback) is refused; give "
            "--tls-cert, --tls-key and --tls-ca (mutual TLS between servers), or "
            "--allow-plaintext-links")


def split_endpoint(description):
    """(kind, positional arguments, keyword arguments) of a Twisted endpoint string
    (``tcp:host:port:timeout=5``; ``\\:`` escapes a colon, as in IPv6 addresses)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    args, kwargs = [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0].lower(), args, kwargs


def client_host_port(description):
    """(host, port) of a ``tcp:`` client endpoint string; ValueError otherwise."""
    kind, args, kwargs = split_endpoint(description)
    if kind != "tcp":
        raise ValueError(f"{description!r} is not a tcp: endpoint")
    host = kwargs.get("host") or (args[0] if args else "")
    port = kwargs.get("port") or (args[1] if len(args) > 1 else "")
    if not host or not str(port).isdigit():
        raise ValueError(f"{description!r} names no host and port")
    return host, int(port)


def listen_interface(description):
    """The interface a ``tcp:`` server endpoint string binds ("" for every one), or
    None for another kind (``unix:`` is local)."""
    kind, _args, kwargs = split_endpoint(description)
    if kind in ("tcp", "tcp6"):
        return kwargs.get("interface", "")
    if kind == "unix":
        return "localhost"
    return None


class LinkTLS:
    """The mutual TLS of a server's links to other servers: its certificate chain and
    key (PEM), and the cluster CA (PEM) peers' certificates must be signed by. Read and
    checked once, by ``load``."""

    def __init__(self, cert_file, key_file, ca_file):
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self._private = None
        self._chain = ()
        self._trust = None

    def load(self):
        """Read the files; CertificateError naming the file and the reason."""

        def read(path, what):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise CertificateError(f"{what}: cannot read {path}: {e.strerror}") from None

        cert_pem = read(self.cert_file, "--tls-cert")
        key_pem = read(self.key_file, "--tls-key")
        ca_pem = read(self.ca_file, "--tls-ca")
        try:
            certs = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as e:
            raise CertificateError(f"--tls-cert: {self.cert_file}: {e}") from None
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as e:
            raise CertificateError(f"--tls-ca: {self.ca_file}: {e}") from None
        pem = serialization.Encoding.PEM
        try:
            self._private = ssl.PrivateCertificate.loadPEM(
                key_pem + b"\n" + certs[0].public_bytes(pem))
        except Exception as e:  # noqa: BLE001 - pyOpenSSL's errors name little
            raise CertificateError(f"--tls-key: {self.key_file} is not the key of "
                                   f"{self.cert_file} ({e or e.__class__.__name__})") from None
        self._chain = [crypto.X509.from_cryptography(c) for c in certs[1:]]
        self._trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(pem)) for c in cas])
        return self

    @property
    def names(self):
        """The names this server's certificate is for."""
        return certificate_names(self._private.original)

    def server_options(self):
        """TLS server options that ask for a client certificate signed by the CA."""

        return ssl.CertificateOptions(
            privateKey=self._private.privateKey.original,
            certificate=self._private.original, extraCertChain=self._chain,
            trustRoot=self._trust, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    def listen_factory(self, factory):
        """``factory`` behind mutual TLS, for a ``tcp:`` listener."""

        return TLSMemoryBIOFactory(self.server_options(), False, factory)

    def client_options(self, hostname=None):
        """TLS client options presenting this server's certificate; the peer's must be
        signed by the CA and, with ``hostname``, name it (else the caller checks the
        name it expects once connected: ``peer_identity_problem``)."""

        if hostname is not None:
            return ssl.optionsForClientTLS(hostname, trustRoot=self._trust,
                                           clientCertificate=self._private,
                                           extraCertificateOptions={
                                               "extraCertChain": self._chain,
                                               "raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
        return ssl.CertificateOptions(
            privateKey=self._private.privateKey.original,
            certificate=self._private.original, extraCertChain=self._chain,
            trustRoot=self._trust, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    def client_endpoint(self, reactor, host, port, hostname=None, timeout=30):
        """A TLS client endpoint to ``host``:``port`` (see ``client_options``)."""

        return endpoints.wrapClientTLS(
            self.client_options(hostname),
            endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout))


def plaintext_guard(factory, what, allowed, log):
    """A factory for a plaintext listener of links between servers: a connection from
    an address that is not loopback is refused (or, with ``allowed``, accepted with a
    warning)."""

    class Guard(protocol.Factory):
        noisy = False

        def buildProtocol(self, addr):
            host = getattr(addr, "host", None)
            if not is_loopback(host):
                if not allowed:
                    log.warn("refused a plaintext {what} link from {peer}: not loopback "
                             "(give the servers --tls-cert/--tls-key/--tls-ca)",
                             what=what, peer=host)
                    return None
                log.warn("plaintext {what} link from {peer} (--allow-plaintext-links)",
                         what=what, peer=host)
            return factory.buildProtocol(addr)

        def doStart(self):
            factory.doStart()

        def doStop(self):
            factory.doStop()

    return Guard()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cert, key, trust = make_ca_and_cert(sys.argv[1], sys.argv[2:])
    print(f"certificate {cert}\nprivate key {key}\nclients trust {trust}")
