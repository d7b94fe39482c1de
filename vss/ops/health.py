"""
``GET /healthz`` and ``GET /readyz``, unauthenticated, for load balancers, systemd
watchers and orchestrators.

- ``/healthz``: 200 ``{"status": "alive"}`` whenever the process answers HTTP.
- ``/readyz``: 200 ``{"status": "ready"}`` when the daemon can serve, else 503
  ``{"status": "not ready", "reasons": [...]}``. The reasons come from the daemon's
  ``readiness()`` (a Deferred of a list of short texts: ``"cms: not connected"``,
  ``"store: not reachable"``, ``"database: not reachable"``, ``"listener pu: not
  listening"``); a check that takes longer than ``timeout`` seconds is a reason itself.

Nothing else is in the answers (no id, address, version or count): they are open to
whoever reaches the listener. The details are in the log and in ``/metrics``.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger()

#: seconds a readiness check may take
CHECK_TIMEOUT = 3.0


def _json(request, status, payload):
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(payload, sort_keys=True).encode("utf-8") + b"\n"


class Alive(resource.Resource):
    """``/healthz``"""

    isLeaf = True

    def render_GET(self, request):
        return _json(request, 200, {"status": "alive"})


class Ready(resource.Resource):
    """``/readyz``: ``readiness()`` gives a Deferred list of reasons (empty: ready)."""

    isLeaf = True

    def __init__(self, readiness, clock, timeout=CHECK_TIMEOUT):
        super().__init__()
        self.readiness = readiness
        self.clock = clock
        self.timeout = timeout

    def check(self):
        """A Deferred list of reasons, never failing."""
        d = defer.maybeDeferred(self.readiness)
        d.addTimeout(self.timeout, self.clock)

        def failed(f):
            if f.check(defer.TimeoutError):
                return [f"readiness check took more than {self.timeout:g} s"]
            log.failure("readiness check failed", f)
            return ["readiness check failed"]

        return d.addErrback(failed)

    def render_GET(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = self.check()

        def answer(reasons):
            if gone:
                return
            if reasons:
                body = _json(request, 503, {"status": "not ready", "reasons": list(reasons)})
            else:
                body = _json(request, 200, {"status": "ready"})
            request.write(body)
            request.finish()

        d.addCallback(answer).addErrback(lambda f: log.failure("readyz not answered", f))
        return server.NOT_DONE_YET


def probe(d, clock, timeout, reason):
    """A Deferred of ``[]`` when ``d`` succeeds within ``timeout`` seconds, else of
    ``[reason]`` (the failure is logged, not shown)."""
    d.addTimeout(timeout, clock)

    def failed(f):
        log.info("not ready: {reason}: {error}", reason=reason, error=f.getErrorMessage())
        return [reason]

    return d.addCallbacks(lambda _: [], failed)
