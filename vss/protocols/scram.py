"""
Challenge-response authentication with stored verifiers (SCRAM-SHA-256, RFC 5802/7677
adapted to binary fields; docs/protocol.md, "Authentication"). No Twisted here.

The server stores only (salt, iterations, StoredKey, ServerKey); the password or device
secret never crosses the wire and is never stored.
"""

import hashlib
import hmac
import os

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
NONCE_SIZE = 24


def _hmac(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def salted_password(secret, salt, iterations):
    return hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), salt, iterations)


def client_key(salted):
    return _hmac(salted, b"Client Key")


def make_verifier(secret, salt=None, iterations=DEFAULT_ITERATIONS):
    """(salt, iterations, stored_key, server_key) for a secret."""
    salt = os.urandom(16) if salt is None else salt
    salted = salted_password(secret, salt, iterations)
    stored_key = hashlib.sha256(client_key(salted)).digest()
    server_key = _hmac(salted, b"Server Key")
    return salt, iterations, stored_key, server_key


def auth_message(identity, client_nonce, server_nonce, salt, iterations):
    """The bytes both sides sign: every field of the exchange, length-prefixed."""
    parts = [identity.encode("utf-8"), client_nonce, server_nonce, salt,
             iterations.to_bytes(4, "big")]
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def client_proof(secret, salt, iterations, message):
    """What the client sends: ClientKey XOR HMAC(StoredKey, AuthMessage)."""
    salted = salted_password(secret, salt, iterations)
    ck = client_key(salted)
    stored = hashlib.sha256(ck).digest()
    return _xor(ck, _hmac(stored, message))


def client_proof_from_salted(salted, message):
    ck = client_key(salted)
    return _xor(ck, _hmac(hashlib.sha256(ck).digest(), message))


def verify_proof(stored_key, message, proof):
    """True if ``proof`` shows knowledge of the secret behind ``stored_key``."""
    if len(proof) != 32:
        return False
    signature = _hmac(stored_key, message)
    ck = _xor(proof, signature)
    return hmac.compare_digest(hashlib.sha256(ck).digest(), stored_key)


def server_signature(server_key, message):
    """What the server sends back so the client knows it talks to the real node."""
    return _hmac(server_key, message)


def check_server_signature(secret_or_salted, salt, iterations, message, signature):
    if isinstance(secret_or_salted, str):
        salted = salted_password(secret_or_salted, salt, iterations)
    else:
        salted = secret_or_salted
    expected = _hmac(_hmac(salted, b"Server Key"), message)
    return hmac.compare_digest(expected, signature)


def fake_salt(node_secret, identity):
    """A stable salt for an unknown identity, so probing cannot tell users apart."""
    return _hmac(node_secret, b"fake-salt:" + identity.encode("utf-8"))[:16]


def nonce():
    return os.urandom(NONCE_SIZE)
