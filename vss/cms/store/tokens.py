"""
Admin tokens: the bearer secrets of the MMS admin API, as the CMS database keeps them.

A token is a random string handed to an operator once; the database keeps only its
sha256 (``hash_token``) with an id, a name, when it was made, when it expires (never
when None), when it was last used and when it was revoked. Times are milliseconds
since the epoch on the store's clock.

A token is *valid* while it is neither revoked nor expired. ``IAdminTokenStore`` is what
the SQL stores offer on top of ``vss.interfaces.IStaticStore``.
"""

import hashlib
import secrets
from datetime import UTC, datetime
from typing import NamedTuple

from zope.interface import Interface

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"

#: ``last_used`` is written at most this often per token (a write per request would
#: make every read of the API a database write)
TOUCH_INTERVAL_MS = 60_000

TOKEN_PREFIX = "vssa_"


def hash_token(token):
    """The sha256 hex digest under which an admin token is stored."""
    if isinstance(token, str):
        token = token.encode("utf-8")
    return hashlib.sha256(token).hexdigest()


def new_token():
    """A fresh random admin token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class AdminToken(NamedTuple):
    """One admin token as listed: never its secret, never its hash."""

    id: int
    name: str
    created: int
    expires: int | None
    last_used: int | None
    revoked: int | None
    #: ACTIVE, EXPIRED or REVOKED at the time of the read
    state: str


def token_state(expires, revoked, now_ms):
    if revoked is not None:
        return REVOKED
    if expires is not None and expires <= now_ms:
        return EXPIRED
    return ACTIVE


def iso_time(ms):
    """``2026-11-25T15:06:08Z`` for a time in milliseconds; None stays None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LastTokenError(VssError):
    """Revoking this token would leave no valid admin token (nobody could use the API
    any more)."""

    def __init__(self, token_id):
        super().__init__(
            ResultCode.CONFLICT,
            f"admin token {token_id} is the last valid one: revoking it would lock every "
            "operator out of the admin API",
        )
        self.token_id = token_id


class IAdminTokenStore(Interface):
    """Admin tokens in the CMS database. Every method returns a Deferred."""

    def add_admin_token(name, token_hash, expires_in=None):
        """Store a token's hash under ``name``; ``expires_in`` seconds from now (None:
        never). Deferred id (the same token stored again keeps its id and gets the new
        name)."""

    def admin_for_token_hash(token_hash):
        """Deferred name of the admin of a valid token, or None."""

    def authenticate_admin_token(token_hash):
        """Deferred ``AdminToken`` of that hash (in whatever state), or None. A valid
        token's ``last_used`` is brought up to date (at most once a minute)."""

    def get_admin_token(token_id):
        """Deferred ``AdminToken`` or None."""

    def list_admin_tokens():
        """Deferred list of ``AdminToken``, revoked ones too, by id."""

    def revoke_admin_token(token_id, force=False):
        """Revoke a token now. Deferred ``AdminToken`` as revoked; fails with
        ``VssError`` NOT_FOUND (no such id), CONFLICT (revoked already) or
        ``LastTokenError`` (it is the last valid token and ``force`` is false)."""

    def count_admin_tokens(valid_only=True):
        """Deferred number of (valid) admin tokens."""
