"""
Authentication on a node: the server side of the SCRAM-SHA-256 exchange and the
throttle of failed logins, per account and per address (docs/protocol.md, 8.2).

Nothing here logs or keeps a secret: the node only holds verifiers (salt, iterations,
StoredKey, ServerKey) received from CMS.
"""

import hashlib
import hmac

from vss.protocols import scram
from vss.protocols.messages import Verifier

#: Failed proofs for one account (or one account from one address) before delays start.
FREE_FAILURES = 3
#: Longest delay imposed, in seconds: a slow-down, never a lock-out.
MAX_DELAY = 60.0
#: An account's (or a pair's) failures are forgotten after this many quiet seconds.
FORGET_AFTER = 600.0
#: Failed proofs from one address, whatever the accounts, before it slows down.
ADDRESS_FREE = 10
#: Seconds for one failure of an address to be forgotten (its count leaks at this pace).
ADDRESS_LEAK = 6.0
#: How long a successful login keeps its (account, address) pair known.
KNOWN_FOR = 30 * 86400.0
#: Entries kept per table before the oldest are dropped (bounded memory under a spray).
MAX_ENTRIES = 100_000


class _Doubling:
    """Failures of one key: from the ``free``-th on, each failure makes the key wait a
    doubling delay (1 s, 2 s, 4 s ... ``max_delay``) before its next attempt."""

    __slots__ = ("failures", "last", "until")

    def __init__(self, now):
        self.failures = 0
        self.last = now
        self.until = 0.0


class Throttle:
    """How often failed logins may be tried again (docs/protocol.md 8.2).

    Three independent counts, each keyed by what an attacker cannot borrow from someone
    else:

    - per **account** (the identity named in AUTH_START, known or not): from its 3rd
      failure on, a doubling delay (1 s, 2 s, ... 60 s) before the account may be tried
      again, from any address; forgotten after 10 quiet minutes, never reset by a
      success (so neither the account's owner nor anybody else hands an attacker fresh
      free guesses);
    - per **address**: a count that leaks one failure every ``ADDRESS_LEAK`` seconds;
      above ``ADDRESS_FREE`` the address waits until it is back under (at most 60 s),
      whatever account it names: guesses spread over many accounts slow down too;
    - per **(account, address) pair**: like the account's count, reset by a success of
      that pair.

    A pair that logged in successfully (a *known* pair, remembered for 30 days) is held
    back only by its own pair count: failures of an attacker elsewhere, or of other
    accounts behind the same address (one NAT, one PU agent), never slow down the users
    and devices that already logged in from there. A success never resets another
    account's count, nor the address's. Every delay is bounded: an attacker can make a
    victim's new address wait at most ``MAX_DELAY`` seconds between attempts, never lock
    the account.
    """

    def __init__(self, clock, free=FREE_FAILURES, max_delay=MAX_DELAY,
                 forget_after=FORGET_AFTER, address_free=ADDRESS_FREE,
                 address_leak=ADDRESS_LEAK, known_for=KNOWN_FOR, max_entries=MAX_ENTRIES):
        self.clock = clock
        self.free = free
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.address_free = address_free
        self.address_leak = address_leak
        self.known_for = known_for
        self.max_entries = max_entries
        self._accounts = {}  # identity -> _Doubling
        self._pairs = {}  # (identity, source) -> _Doubling
        self._addresses = {}  # source -> [level, time of level]
        self._known = {}  # (identity, source) -> time of the last success (insertion order)

    # -- asking

    def wait(self, identity, source):
        """Seconds before ``identity`` may be tried again from ``source`` (0 if now)."""
        now = self.clock.seconds()
        pair = (identity, source)
        wait = self._doubling_wait(self._pairs, pair, now)
        if not self.known(identity, source):
            wait = max(wait, self._doubling_wait(self._accounts, identity, now),
                       self._address_wait(source, now))
        return wait

    def known(self, identity, source):
        """True if ``identity`` logged in from ``source`` within ``known_for``."""
        when = self._known.get((identity, source))
        if when is None:
            return False
        if self.clock.seconds() - when > self.known_for:
            del self._known[(identity, source)]
            return False
        return True

    def failures(self, identity=None, source=None):
        """Counts, for tests and operators: of the account, of the pair, or the
        address's current level."""
        if identity is not None and source is not None:
            entry = self._pairs.get((identity, source))
            return entry.failures if entry else 0
        if identity is not None:
            entry = self._accounts.get(identity)
            return entry.failures if entry else 0
        return self._address_level(source, self.clock.seconds())

    # -- telling

    def failed(self, identity, source):
        """A proof failed (never call this for a login the node could not check)."""
        now = self.clock.seconds()
        self._fail(self._accounts, identity, now)
        self._fail(self._pairs, (identity, source), now)
        level = self._address_level(source, now) + 1.0
        self._addresses[source] = [level, now]
        for table in (self._accounts, self._pairs, self._addresses):
            if len(table) > self.max_entries:
                self._prune(table, now)

    def succeeded(self, identity, source):
        """A proof succeeded: the pair becomes known and its own count starts afresh."""
        pair = (identity, source)
        self._pairs.pop(pair, None)
        self._known.pop(pair, None)
        self._known[pair] = self.clock.seconds()  # the newest last: pruned in order
        if len(self._known) > self.max_entries:
            for key in list(self._known)[: len(self._known) - self.max_entries]:
                del self._known[key]

    # -- the counts

    def _fail(self, table, key, now):
        entry = table.get(key)
        if entry is None or now - entry.last > self.forget_after:
            entry = table[key] = _Doubling(now)
        entry.failures += 1
        entry.last = now
        over = entry.failures - self.free
        if over >= 0:
            entry.until = now + min(self.max_delay, 2.0 ** over)

    def _doubling_wait(self, table, key, now):
        entry = table.get(key)
        if entry is None:
            return 0.0
        if now - entry.last > self.forget_after:
            del table[key]
            return 0.0
        return max(0.0, entry.until - now)

    def _address_level(self, source, now):
        entry = self._addresses.get(source)
        if entry is None:
            return 0.0
        level = entry[0] - (now - entry[1]) / self.address_leak
        if level <= 0:
            del self._addresses[source]
            return 0.0
        return level

    def _address_wait(self, source, now):
        over = self._address_level(source, now) - self.address_free
        if over <= 0:
            return 0.0
        return min(self.max_delay, over * self.address_leak)

    def _prune(self, table, now):
        if table is self._addresses:
            for source in list(table):
                self._address_level(source, now)  # drops the drained ones
        else:
            for key in [k for k, e in table.items() if now - e.last > self.forget_after]:
                del table[key]
        if len(table) > self.max_entries:
            # Still full of fresh entries (a spray): drop the oldest half.
            for key in list(table)[: len(table) // 2]:
                del table[key]


class ScramExchange:
    """One SCRAM exchange on one link: ``challenge`` then ``verify``."""

    def __init__(self, identity, client_nonce, verifier, node_secret):
        self.identity = identity
        self.client_nonce = client_nonce
        self.server_nonce = scram.nonce()
        self.verifier = verifier
        if verifier is None:
            # Unknown identity: a stable fake salt so the answer looks like a real one.
            self.salt = scram.fake_salt(node_secret, identity)
            self.iterations = scram.DEFAULT_ITERATIONS
        else:
            self.salt = verifier.salt
            self.iterations = verifier.iterations
        self.message = scram.auth_message(
            identity, client_nonce, self.server_nonce, self.salt, self.iterations
        )

    def verify(self, proof):
        """The server signature if ``proof`` is right, else None."""
        if self.verifier is None:
            return None
        if not scram.verify_proof(self.verifier.stored_key, self.message, proof):
            return None
        return scram.server_signature(self.verifier.server_key, self.message)


def node_verifier(cluster_secret, node_id):
    """The verifier of a node's identity, derived from the cluster secret that CMS and
    every node hold; the secret itself never crosses the wire."""
    salt = hmac.new(cluster_secret, b"node-salt:" + node_id.encode(), hashlib.sha256).digest()[:16]
    salt, it, stored, server = scram.make_verifier(cluster_secret.decode("latin-1"), salt, 4096)
    return Verifier(salt=salt, iterations=it, stored_key=stored, server_key=server)
