"""
A connection kept up with exponential backoff and jitter, with a preparation step (log
in, register) run on every new connection.

Why not ``twisted.application.internet.ClientService``: when it is stopped while a
connection is made but still being prepared, it cancels the preparation and forgets the
connection, which stays open; closing that connection ourselves then reaches its state
machine in the ``Stopped`` state and raises ``NoTransition``. Links here log in on every
connection and daemons stop at any moment, so this small loop owns the connection from
connect to close instead.

The owner calls ``lost(protocol)`` from its protocol's connection-lost path.

A preparation refused with ``NOT_READY`` (the node is still loading its data) spreads
the next attempt wider: each delay is drawn between half and one and a half times the
backoff step (at most ``NOT_READY_MAX_DELAY``), so that thousands of clients refused
together do not come back together, nor much later than the node is ready.

Several endpoints of one service (``endpoint`` a list: every CMS of a site, one active
and the others standby) are tried in turn: the link stays on the endpoint that works;
once it fails (cannot connect, the preparation is refused, e.g. ``NOT_ACTIVE`` from a
standby CMS, or the connection is lost) the next is tried after a short delay
(``NEXT_DELAY``), and the backoff grows only when a whole round of them failed. A round
in which one answered ``NOT_ACTIVE`` waits at most ``NOT_ACTIVE_MAX_DELAY``: a standby
takes over within seconds, and the nodes should follow it at once.
"""

import random

from twisted.internet import defer
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError

#: The jitter of the delay after a NOT_READY answer (delay x uniform(1 - j, 1 + j)).
NOT_READY_JITTER = 0.5
#: The longest step after a NOT_READY answer: the node is up and will be ready soon
#: (answering NOT_READY costs it next to nothing), so clients do not drift to the
#: longest backoff of a node that cannot be reached.
NOT_READY_MAX_DELAY = 8.0
#: The delay before the next endpoint of a list is tried, within a round.
NEXT_DELAY = 0.1
#: The longest delay after a round in which a peer answered NOT_ACTIVE.
NOT_ACTIVE_MAX_DELAY = 1.0
#: The longest delay after a round in which a node answered HOME_NODE_DOWN or BUSY:
#: the PU's home died and CMS moves it within seconds (or the node is busy with a storm
#: of logins): come back soon, spread wide.
HOME_DOWN_MAX_DELAY = 2.0
#: The delay before following a redirect (a node named the PU's home).
REDIRECT_DELAY = 0.02
#: Answers after which the next attempt is spread wide (NOT_READY_JITTER).
SPREAD = (ResultCode.NOT_READY, ResultCode.HOME_NODE_DOWN, ResultCode.BUSY)


class Redirect(Exception):
    """The preparation learned that the service is elsewhere (a PU's home node, from
    HOME_QUERY): the reconnector tries ``address`` next, at once."""

    def __init__(self, address, why=""):
        super().__init__(why or f"redirected to {address}")
        self.address = address


class Reconnector:
    log = Logger()

    def __init__(self, endpoint, factory, prepare, clock, initial=0.5, max_delay=10.0,
                 factor=2.0, jitter=0.1, name="link", names=None, make_endpoint=None):
        self.endpoints = list(endpoint) if isinstance(endpoint, (list, tuple)) else [endpoint]
        self.names = list(names or ())  # the endpoints as the operator gave them, for logs
        self.index = 0  # the endpoint tried now
        self._tried = 0  # endpoints that failed in this round
        self._not_active = False  # one answered NOT_ACTIVE in this round
        self.factory = factory
        self.prepare = prepare
        self.clock = clock
        self.initial = initial
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.name = name
        self.running = False
        self.protocol = None
        self.failures = 0
        self._timer = None
        self._connecting = None
        self._stopping = None
        self._spread = False  # the next delay uses NOT_READY_JITTER
        self._prepared_protocol = None  # the connection prepared last
        self.make_endpoint = make_endpoint  # f(address) -> endpoint, to follow a Redirect
        self._redirected = False
        self._down_delay = False  # the next delay at most HOME_DOWN_MAX_DELAY
        self._stay = False  # BUSY: the same endpoint again (it is up, only loaded)
        self.redirects = 0

    @property
    def endpoint(self):
        return self.endpoints[self.index]

    def start(self):
        self.running = True
        self._attempt()

    def _attempt(self):
        self._timer = None
        if not self.running:
            return
        d = self._connecting = self.endpoint.connect(self.factory)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol):
        self._connecting = None
        self.protocol = protocol
        if not self.running:
            protocol.transport.loseConnection()
            return
        d = defer.maybeDeferred(self.prepare, protocol)
        d.addCallbacks(self._prepared, self._prepare_failed, callbackArgs=(protocol,),
                       errbackArgs=(protocol,))

    def _prepared(self, _, protocol):
        self.failures = 0
        self._tried = 0
        self._not_active = False
        self._prepared_protocol = protocol

    def use(self, endpoints, names, current=None):
        """Replace the endpoints (a refreshed list of addresses); the one named
        ``current`` (the one in use) keeps the index, else the list starts over."""
        self.endpoints = list(endpoints)
        self.names = list(names)
        self.index = self.names.index(current) if current in self.names else 0
        self._tried = 0

    def _follow(self, address):
        if self.make_endpoint is None:
            return False
        if address not in self.names:
            self.endpoints.append(self.make_endpoint(address))
            self.names.append(address)
        self.index = self.names.index(address)
        self._redirected = True
        self.redirects += 1
        return True

    def _prepare_failed(self, failure, protocol):
        if failure.check(Redirect) and self._follow(failure.value.address):
            pass  # the next attempt goes there at once
        elif failure.check(VssError) and failure.value.code in SPREAD:
            self._spread = True
            self._down_delay = failure.value.code != ResultCode.NOT_READY
            self._stay = failure.value.code == ResultCode.BUSY
            self.log.info("{name}: not now ({error}); trying again later",
                          name=self.name, error=failure.value.message)
        elif failure.check(VssError) and failure.value.code == ResultCode.NOT_ACTIVE:
            self._not_active = True
            self.log.info("{name}: {endpoint} is not active ({error}); trying the next",
                          name=self.name, endpoint=self._describe(), error=failure.value.message)
        else:
            self.log.info("{name}: setting up the connection failed: {error}", name=self.name,
                          error=failure.getErrorMessage())
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()  # lost() then schedules the next attempt

    def _connect_failed(self, failure):
        self._connecting = None
        if not self.running:
            return
        self.log.info("{name}: cannot connect: {error}", name=self.name,
                      error=failure.getErrorMessage())
        self._schedule()

    def lost(self, protocol):
        """The owner's protocol lost its connection."""
        if protocol is not self.protocol:
            return
        self.protocol = None
        if self.running:
            if self._prepared_protocol is protocol:  # a link that worked was lost
                self._prepared_protocol = None
                if len(self.endpoints) > 1:
                    self.log.info("{name}: lost {endpoint}; trying the next", name=self.name,
                                  endpoint=self._describe())
            self._schedule()
        elif self._stopping is not None:
            d, self._stopping = self._stopping, None
            d.callback(None)

    def _describe(self):
        if self.index < len(self.names):
            return self.names[self.index]
        return f"address {self.index + 1}"

    def _schedule(self):
        if self._redirected:  # the named endpoint, at once: not a failure
            self._redirected = False
            self._tried = 0
            self.last_delay = REDIRECT_DELAY
            self._timer = self.clock.callLater(self.last_delay, self._attempt)
            return
        if self._stay:  # a loaded node: back to it within a second or two, spread wide
            self._stay = self._spread = self._down_delay = False
            self.last_delay = HOME_DOWN_MAX_DELAY * random.uniform(0.25, 1.0)
            self._timer = self.clock.callLater(self.last_delay, self._attempt)
            return
        if len(self.endpoints) > 1:
            self.index = (self.index + 1) % len(self.endpoints)
            self._tried += 1
            if self._tried < len(self.endpoints):  # the next of this round, soon
                self.last_delay = NEXT_DELAY * random.uniform(0.5, 1.5)
                self._timer = self.clock.callLater(self.last_delay, self._attempt)
                return
            self._tried = 0
        delay = min(self.max_delay, self.initial * self.factor ** min(self.failures, 64))
        if self._not_active:
            delay = min(delay, NOT_ACTIVE_MAX_DELAY)
            self._not_active = False
        if self._spread:
            delay = min(delay, HOME_DOWN_MAX_DELAY if self._down_delay else NOT_READY_MAX_DELAY)
            self._down_delay = False
        jitter = NOT_READY_JITTER if self._spread else self.jitter
        self._spread = False
        delay *= random.uniform(1 - jitter, 1 + jitter)
        self.last_delay = delay
        self.failures += 1
        self._timer = self.clock.callLater(delay, self._attempt)

    def stop(self):
        """Stop reconnecting and close the connection; fires once it is closed."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self.protocol is None:
            return defer.succeed(None)
        self._stopping = defer.Deferred()
        self.protocol.transport.loseConnection()
        return self._stopping
