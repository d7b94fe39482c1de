"""
Stream credentials without I/O: ids, secrets and the form the database keeps.

A credential is ``<id>`` (``sc-`` and 12 hex digits, public: it names the credential in
lists and is the Digest user name) and a secret of 256 random bits (43 URL-safe
characters), shown once. What is stored (CMS database, every node's copy) is
``sealed``: the Digest HA1 of the credential, ``MD5(<id>:vss:<secret>)``, encrypted and
authenticated with AES-256-GCM under a key derived (HKDF-SHA256) from the cluster
secret, with the credential's id, user and device as associated data.

Why this form: RTSP Digest needs, on the server, HA1 or the password itself. HA1 lets
anyone who holds it answer Digest challenges, so it is kept sealed: the database (or a
copy of it, a backup) alone gives neither the secret nor a working HA1; a node (which
holds the cluster secret) unseals it to check a Digest answer, or to check a secret
given in a URL (``MD5(<id>:vss:<given>)`` compared with HA1 in constant time). The
secret itself has 256 bits, so HA1 cannot be inverted to it. A sealed value moved onto
another credential's row does not unseal (associated data).
"""

import hashlib
import hmac
import os
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

REALM = "vss"
ID_PREFIX = "sc-"
ID_RE = re.compile(r"^sc-[0-9a-f]{12}$")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
KEY_INFO = b"vss stream credential v1"
NONCE = 12

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"


def new_id():
    return ID_PREFIX + secrets.token_hex(6)


def new_secret():
    """256 random bits, URL-safe (fits a URL's query and its user-info part)."""
    return secrets.token_urlsafe(32)


def credential_key(cluster_secret):
    """The 32-byte sealing key of a cluster."""

    if isinstance(cluster_secret, str):
        cluster_secret = cluster_secret.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=KEY_INFO).derive(cluster_secret)


def ha1(cred_id, secret):
    """RFC 2617's HA1 (raw 16 bytes) for user ``cred_id`` in realm ``vss``."""
    return hashlib.md5(f"{cred_id}:{REALM}:{secret}".encode()).digest()  # noqa: S324 - Digest


def _aad(cred_id, username, device_id):
    return "\x00".join((cred_id, username, device_id)).encode("utf-8")


def seal(key, cred_id, username, device_id, secret):
    """The stored form of a credential's secret."""

    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, ha1(cred_id, secret),
                                       _aad(cred_id, username, device_id))


def unseal(key, record):
    """HA1 (raw bytes) of a credential record, or None if ``sealed`` was not made with
    this key for this credential."""

    sealed = bytes(record.sealed)
    if len(sealed) <= NONCE:
        return None
    try:
        return AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:],
                                   _aad(record.cred_id, record.username, record.device_id))
    except InvalidTag:
        return None


def secret_matches(key, record, given):
    """True if ``given`` is the credential's secret."""
    stored = unseal(key, record)
    return stored is not None and hmac.compare_digest(stored, ha1(record.cred_id, given))


def state(record, now_ms):
    if record.revoked:
        return REVOKED
    if record.expires and record.expires <= now_ms:
        return EXPIRED
    return ACTIVE


def split_url_credential(value):
    """(id, secret) of a URL's ``cred=<id>.<secret>``, or None."""
    cred_id, sep, given = (value or "").partition(".")
    if not sep or not ID_RE.match(cred_id) or not SECRET_RE.match(given):
        return None
    return cred_id, given


