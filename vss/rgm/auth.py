"""
Authentication on a node: the server side of the SCRAM-SHA-256 exchange and the
per-source throttle (docs/protocol.md, "Authentication").

Nothing here logs or keeps a secret: the node only holds verifiers (salt, iterations,
StoredKey, ServerKey) received from CMS.
"""

import hashlib
import hmac

from vss.protocols import scram
from vss.protocols.messages import Verifier

#: Failures from one source address allowed before delays start.
FREE_FAILURES = 3
#: Longest delay imposed on a source, in seconds.
MAX_DELAY = 60.0
#: A source's failures are forgotten after this many quiet seconds.
FORGET_AFTER = 600.0


class Throttle:
    """Counts authentication failures per source address. From the ``free``-th failure
    on, each one makes the source wait a doubling delay (1 s, 2 s, 4 s ... ``max_delay``)
    before its next attempt (docs/protocol.md 8.2).
    """

    def __init__(self, clock, free=FREE_FAILURES, max_delay=MAX_DELAY, forget_after=FORGET_AFTER):
        self.clock = clock
        self.free = free
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._sources = {}  # source -> [failures, last_failure, blocked_until]

    def wait(self, source):
        """Seconds the source must still wait before another attempt (0 if none)."""
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        now = self.clock.seconds()
        if now - entry[1] > self.forget_after:
            del self._sources[source]
            return 0.0
        return max(0.0, entry[2] - now)

    def failed(self, source):
        now = self.clock.seconds()
        entry = self._sources.get(source)
        if entry is None or now - entry[1] > self.forget_after:
            entry = self._sources[source] = [0, now, 0.0]
        entry[0] += 1
        entry[1] = now
        over = entry[0] - self.free
        if over >= 0:
            entry[2] = now + min(self.max_delay, 2.0 ** over)
        if len(self._sources) > 100_000:
            self._prune(now)

    def succeeded(self, source):
        self._sources.pop(source, None)

    def failures(self, source):
        entry = self._sources.get(source)
        return entry[0] if entry else 0

    def _prune(self, now):
        for source in [s for s, e in self._sources.items() if now - e[1] > self.forget_after]:
            del self._sources[source]


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
