"""
Which CMS is active when several run on one PostgreSQL database (docs/consistency.md,
"CMS standby").

Every CMS process of a site takes part in an ``Election``: about once a second a
standby asks its ``IActiveLock`` for the lock (a PostgreSQL session advisory lock, held
by a connection of its own: ``vss.cms.store.postgres.PostgresActiveLock``); the one that
gets it runs ``on_active`` (it bumps the database's CMS epoch, which fences the writes
of any CMS active before it, reloads what CMS keeps in memory, then serves). The active
checks about once a second that it still holds the lock; a check that fails, answers
"no" or does not answer within ``timeout`` makes it stand by at once (``on_standby``:
it closes its node links and refuses everything with ``NOT_ACTIVE``) and drop its lock
connection. A CMS killed with ``kill -9`` closes its connection with the process, so
PostgreSQL frees the lock and a standby has it within about a second.

The lock and the clock are injected, so the state machine is tested with ``task.Clock``
and a lock of the test's own (tests/test_standby.py).
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import Attribute, Interface

STANDBY = "standby"
TAKING_OVER = "taking over"
ACTIVE = "active"

#: seconds between two polls of the lock (a standby) or checks of it (the active)
INTERVAL = 1.0
#: seconds the active waits for a check of its lock before it stands by
CHECK_TIMEOUT = 3.0


class IActiveLock(Interface):
    """The lock only the active CMS holds. Every call fires a Deferred; calls are made
    one at a time."""

    description = Attribute("What the lock is, for logs (e.g. 'advisory lock 1448300289/x').")

    def acquire():
        """Try to take the lock without waiting: fires True if this process holds it
        now, False if another does; fails if the database cannot be reached."""

    def check():
        """Fires True while this process still holds the lock, False (or fails) once it
        does not."""

    def release():
        """Give the lock up (close its connection). Never fails."""


class Election(service.Service):
    """One CMS's side of the election. ``on_active()`` (may return a Deferred) runs when
    the lock is won, and the CMS is active once it succeeds; ``on_standby(reason)`` runs
    at once when the lock is lost."""

    log = Logger()

    def __init__(self, lock, clock, on_active, on_standby, interval=INTERVAL,
                 timeout=CHECK_TIMEOUT):
        self.lock = lock
        self.clock = clock
        self.on_active = on_active
        self.on_standby = on_standby
        self.interval = interval
        self.timeout = timeout
        self.state = STANDBY
        self.reason = "starting"  # why this CMS is not active (for readiness and logs)
        self.since = None  # clock seconds when it became active
        self.takeovers = 0
        self._loop = None
        self._pending = None  # (Deferred, issued at) of the call in progress
        self._generation = 0  # bumped on every change of state: late answers are ignored

    @property
    def active(self):
        return self.state == ACTIVE

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._generation += 1
        self.state = STANDBY
        self.reason = "stopping"
        return defer.maybeDeferred(self.lock.release).addErrback(lambda _: None)

    def first_round(self):
        """One try for the lock before this CMS listens (a CMS alone on its database
        is then active as soon as it serves); fires when the try ended, won or not."""
        d = defer.maybeDeferred(self.lock.acquire)
        return d.addCallbacks(self._acquired, self._acquire_failed)

    def tick(self):
        now = self.clock.seconds()
        if self._pending is not None:
            _, issued = self._pending
            if self.state == ACTIVE and now - issued >= self.timeout:
                self._lost(f"the database did not answer the lock check within "
                           f"{self.timeout:g} s")
            return
        if self.state == STANDBY:
            self._call(self.lock.acquire, self._acquired, self._acquire_failed)
        elif self.state == ACTIVE:
            self._call(self.lock.check, self._checked, self._check_failed)

    def _call(self, fn, ok, failed):
        generation = self._generation
        d = defer.maybeDeferred(fn)
        self._pending = (d, self.clock.seconds())

        def done(result, handler):
            if self._pending is not None and self._pending[0] is d:
                self._pending = None
            if generation == self._generation:
                handler(result)

        d.addCallbacks(done, done, callbackArgs=(ok,), errbackArgs=(failed,))
        d.addErrback(lambda f: self.log.failure("election", f))

    # -- standby

    def _acquired(self, held):
        """Fires (a Deferred) once taking over ended, when the lock was won."""
        if not held:
            self.reason = "another CMS is active"
            return None
        self.state = TAKING_OVER
        self._generation += 1
        generation = self._generation
        self.log.info("this CMS holds the {lock}: taking over", lock=self.lock.description)
        d = defer.maybeDeferred(self.on_active)

        def up(_):
            if generation != self._generation:
                return
            self.state = ACTIVE
            self.reason = ""
            self.since = self.clock.seconds()
            self.takeovers += 1
            self.log.info("this CMS is active")

        def failed(f):
            if generation != self._generation:
                return
            self.log.failure("taking over failed; standing by", f)
            self._lost(f"taking over failed: {f.getErrorMessage()}")

        return d.addCallbacks(up, failed)

    def _acquire_failed(self, failure):
        self.reason = f"the database cannot be reached ({failure.getErrorMessage()[:200]})"
        self.log.warn("cannot ask for the {lock}: {error}", lock=self.lock.description,
                      error=failure.getErrorMessage())
        self.lock.release()

    # -- active

    def _checked(self, held):
        if not held:
            self._lost(f"the {self.lock.description} was lost")

    def _check_failed(self, failure):
        self._lost(f"the database cannot be reached ({failure.getErrorMessage()[:200]})")

    def _lost(self, reason):
        was = self.state
        self.state = STANDBY
        self.reason = reason
        self._generation += 1
        self._pending = None
        self.since = None
        self.log.warn("this CMS stands by ({was} before): {reason}", was=was, reason=reason)
        self.lock.release()
        self.on_standby(reason)
