"""
Operators of the console: their passwords, logins and browser sessions.

Operators are people who manage the platform in a browser, on the CMS admin listener;
they are not the CU users of the nodes (who log in to nodes to watch cameras) and they
never reach a node. Each has a role: ``administrator`` (every change) or ``auditor``
(reads everything, changes nothing). Scripts keep using admin tokens.

- Passwords are kept only as a slow verifier: scrypt (n=2^15, r=8, p=1, 16-byte salt,
  32-byte key; about 50-100 ms and 32 MiB per check), computed in a thread, never on the
  reactor. There is no default password: every account is made with one chosen (or
  drawn) for it, at least ``MIN_PASSWORD`` characters long.
- Logins are throttled like node logins (``vss.rgm.auth.Throttle``: per account, per
  address and per pair; a slow-down, never a lock-out). An unknown name costs the same
  check as a wrong password and gets the same answer.
- A login opens a browser session: a random 256-bit cookie value (the server keeps only
  its sha256) with a CSRF token of its own. A session ends after ``IDLE`` seconds
  without a request, ``MAX_AGE`` seconds after the login, at logout, and at once when
  its operator is disabled, removed, given another role or a new password.

Sessions live in the memory of the CMS process: a restart of CMS asks operators to log
in again.
"""

import base64
import functools
import hashlib
import hmac
import secrets
from typing import NamedTuple

from twisted.internet import defer, threads
from twisted.logger import Logger

from vss.cms.store.operators import ROLES
from vss.rgm.auth import Throttle

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
#: seconds without a request before a session ends
IDLE = 30 * 60
#: seconds after the login when a session ends whatever happens
MAX_AGE = 12 * 3600
#: sessions kept at most (the oldest end first)
MAX_SESSIONS = 10_000

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def hash_password(password, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=None):
    """The verifier of ``password``: ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (base64).
    Slow on purpose: call it in a thread."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                         maxmem=2 * 128 * r * n + 1024 * 1024, dklen=KEY_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def check_password(verifier, password):
    """True if ``password`` matches ``verifier`` (constant time in the key). Slow."""
    try:
        scheme, n, r, p, salt, key = verifier.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, key = base64.b64decode(salt), base64.b64decode(key)
    except (AttributeError, ValueError):
        return False
    if scheme != "scrypt" or not 1 < n <= 2**20 or not 0 < r <= 32 or not 0 < p <= 16:
        return False
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                         maxmem=2 * 128 * r * n + 1024 * 1024, dklen=len(key))
    return hmac.compare_digest(got, key)


@functools.cache
def _nobody():
    """Checked when the name is unknown, so that it costs what a wrong password costs
    (made on first use: importing this module stays cheap)."""
    return hash_password(secrets.token_urlsafe(16))


def check_new_password(password):
    """Why ``password`` cannot be an operator's, or None."""
    if not isinstance(password, str):
        return "the password must be a string"
    if len(password) < MIN_PASSWORD:
        return f"the password must have at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password is longer than {MAX_PASSWORD} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        return "the password contains control characters"
    return None


class ConsoleSession(NamedTuple):
    """One operator's browser session (what the server keeps: never the cookie)."""

    key: str  # sha256 of the cookie value
    username: str
    role: str
    csrf: str
    peer: str
    created: float
    last_seen: float


def _key(cookie):
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """Console sessions by the sha256 of their cookie value, with idle and absolute
    expiry on ``clock``."""

    def __init__(self, clock, idle=IDLE, max_age=MAX_AGE, max_sessions=MAX_SESSIONS):
        self.clock = clock
        self.idle = idle
        self.max_age = max_age
        self.max_sessions = max_sessions
        self._by_key = {}  # key -> ConsoleSession (oldest first)

    def __len__(self):
        return len(self._by_key)

    def open(self, username, role, peer):
        """(cookie value, session) of a new session."""
        self.sweep()
        while len(self._by_key) >= self.max_sessions:
            del self._by_key[next(iter(self._by_key))]
        cookie = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        session = ConsoleSession(_key(cookie), username, role, secrets.token_urlsafe(32),
                                 peer, now, now)
        self._by_key[session.key] = session
        return cookie, session

    def find(self, cookie, touch=True):
        """The live session of ``cookie`` (its idle time starts again with ``touch``),
        or None."""
        if not cookie:
            return None
        key = _key(cookie)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if self._ended(session, now):
            del self._by_key[key]
            return None
        if touch:
            session = session._replace(last_seen=now)
            self._by_key[key] = session
        return session

    def close(self, cookie):
        """End the session of ``cookie``; the session or None."""
        return self._by_key.pop(_key(cookie), None) if cookie else None

    def end_operator(self, username):
        """End every session of ``username``; how many."""
        keys = [k for k, s in self._by_key.items() if s.username == username]
        for k in keys:
            del self._by_key[k]
        return len(keys)

    def of(self, username):
        return [s for s in self._by_key.values() if s.username == username]

    def _ended(self, session, now):
        return now - session.last_seen >= self.idle or now - session.created >= self.max_age

    def sweep(self):
        now = self.clock.seconds()
        for key in [k for k, s in self._by_key.items() if self._ended(s, now)]:
            del self._by_key[key]


class LoginRefused(Exception):
    """A login that did not open a session: ``status`` 401 (wrong name or password, or
    a disabled account) or 429 (throttled: try again in ``retry_after`` seconds)."""

    def __init__(self, status, message, retry_after=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class OperatorAccounts:
    """Operators' logins and sessions over an ``IOperatorStore``. ``run_slow(f, *args)``
    runs a password hash off the reactor (default: Twisted's thread pool)."""

    log = Logger()

    def __init__(self, store, clock=None, run_slow=None, throttle=None, sessions=None,
                 scrypt_n=SCRYPT_N):
        if clock is None:
            from twisted.internet import reactor as clock  # the running reactor's clock
        self.store = store
        self.clock = clock
        self._run_slow = run_slow
        self.scrypt_n = scrypt_n  # the cost of new verifiers (tests make cheap ones)
        self.throttle = throttle if throttle is not None else Throttle(clock)
        self.sessions = sessions if sessions is not None else Sessions(clock)
        self.counters = {"logins": 0, "refused": 0, "throttled": 0}

    def slow(self, f, *args):
        if self._run_slow is not None:
            return defer.maybeDeferred(self._run_slow, f, *args)
        return threads.deferToThread(f, *args)

    def hash(self, password):
        """Deferred verifier of ``password`` (in a thread)."""
        return self.slow(hash_password, password, self.scrypt_n)

    @defer.inlineCallbacks
    def login(self, username, password, peer):
        """(cookie value, ``ConsoleSession``) of a new session, or ``LoginRefused``."""
        wait = self.throttle.wait(username, peer)
        if wait > 0:
            self.counters["throttled"] += 1
            raise LoginRefused(429, f"too many failed logins: try again in {wait:.0f} s",
                               retry_after=max(1, int(wait + 0.999)))
        operator = yield self.store.get_operator(username)
        verifier = operator.verifier if operator is not None else _nobody()
        ok = yield self.slow(check_password, verifier, password or "")
        if operator is None or not ok:
            self.throttle.failed(username, peer)
            self.counters["refused"] += 1
            raise LoginRefused(401, "wrong user name or password")
        if not operator.enabled or operator.role not in ROLES:
            self.counters["refused"] += 1
            raise LoginRefused(401, "this account is disabled")
        self.throttle.succeeded(username, peer)
        self.counters["logins"] += 1
        try:
            yield self.store.note_operator_login(username)
        except Exception:  # noqa: BLE001 - the time of the last login is not worth a refusal
            self.log.failure("cannot record the login of {operator}", operator=username)
        return self.sessions.open(username, operator.role, peer)

    def changed(self, username, before, after):
        """An operator's account changed (``after`` None: removed): the sessions it
        had end unless only what they cannot see changed."""
        if after is None or not after.enabled or after.role != before.role \
                or after.verifier != before.verifier:
            ended = self.sessions.end_operator(username)
            if ended:
                self.log.info("ended {count} console session(s) of {operator}",
                              count=ended, operator=username)
            return ended
        return 0
