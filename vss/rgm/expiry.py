"""
Grant expiry on a node: a grant that carries an expiry (``GrantRecord.expires``, set by
an operator: "a contractor may view this camera until Friday") stops applying at that
time on every node, each on its own clock, whether or not CMS can be reached.

The node's memory store holds the grants in force in the index every request reads
(``actions_for``), and never lets in a grant whose expiry has passed when it arrives;
``GrantExpiry`` takes the others out of force when their time comes: a timer set for the
next expiry (the store keeps them in order), checked again every ``interval`` seconds.
The hot path never reads a clock.
"""

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

#: seconds between two looks at the next expiry (grants given while the timer waits)
CHECK_INTERVAL = 1.0


class GrantExpiry(service.Service):
    """``on_expired(keys)`` is called with the (principal, device_id) of the grants just
    taken out of force (the node checks the sessions they allowed)."""

    log = Logger()
    name = "grant-expiry"

    def __init__(self, store, clock, on_expired=None, interval=CHECK_INTERVAL):
        self.store = store
        self.clock = clock
        self.on_expired = on_expired
        self.interval = interval
        self.expired = 0
        self._loop = None
        self._timer = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._cancel()
        return super().stopService()

    def check(self):
        """Take the grants whose time has come out of force; set the timer for the
        next one when it comes before the next look."""
        self._timer = None
        gone = self.store.expire_grants(self.clock.seconds() * 1000)
        if gone:
            self.expired += len(gone)
            self.log.info("{count} grant(s) expired: {grants}", count=len(gone),
                          grants=", ".join(f"{p} on {d}" for p, d in gone))
            if self.on_expired is not None:
                try:
                    self.on_expired(gone)
                except Exception:  # noqa: BLE001 - a listener never stops the expiry
                    self.log.failure("after grants expired")
        self._arm()

    def _arm(self):
        self._cancel()
        nxt = self.store.next_grant_expiry()
        if nxt is None:
            return
        # every expiry up to now was taken out: the next lies ahead; a millisecond more
        # so the timer never fires a hair before it (floating point)
        delay = max(0.0, (nxt - self.clock.seconds() * 1000.0) / 1000.0) + 0.001
        if delay < self.interval:
            self._timer = self.clock.callLater(delay, self.check)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
