"""
The SS control link's authentication (docs/protocol.md 9.8), sans-IO.

Both ends hold the node secret (the key that signs stream tokens: an SS checks the
tokens of its viewers with it). The link key is HMAC-SHA256(secret, "vss ss link"), so
the secret itself is never used on the link. The SS sends SS_HELLO with its nonce, the
node answers with its own; the SS proves it knows the key (SS_AUTH), the node answers
with its proof (SsWelcome), so each side knows the other holds the secret and a proof
seen once cannot be replayed with other nonces.
"""

import hashlib
import hmac
import os

NONCE_BYTES = 24


def link_key(secret):
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return hmac.new(secret, b"vss ss link", hashlib.sha256).digest()


def nonce():
    return os.urandom(NONCE_BYTES)


def _proof(key, who, ss_id, ss_nonce, node_nonce):
    msg = who + b"|" + ss_id.encode("utf-8") + b"|" + ss_nonce + node_nonce
    return hmac.new(key, msg, hashlib.sha256).digest()


def ss_proof(key, ss_id, ss_nonce, node_nonce):
    """What the SS sends in SS_AUTH."""
    return _proof(key, b"ss", ss_id, ss_nonce, node_nonce)


def node_proof(key, ss_id, ss_nonce, node_nonce):
    """What the node sends back in SsWelcome."""
    return _proof(key, b"node", ss_id, ss_nonce, node_nonce)


def check(expected, got):
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)
