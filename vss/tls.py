"""
Certificates for the TLS links (``ssl:`` server endpoints, ``tls:`` client endpoints).

    python -m vss.tls DIR NAME [NAME...]

writes DIR/ca.pem (a new certificate authority), DIR/NAME.pem (a certificate for the
first NAME, with every NAME as a subject alternative name, signed by that CA) and
DIR/NAME.key (its private key, mode 0600). Clients trust DIR/trust/ca.pem with
``tls:HOST:PORT:trustRoots=DIR/trust``. Production sites use their own PKI the same way.
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cert, key, trust = make_ca_and_cert(sys.argv[1], sys.argv[2:])
    print(f"certificate {cert}\nprivate key {key}\nclients trust {trust}")
