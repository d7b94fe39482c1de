"""
The service pieces both daemons are built from: a listener on an endpoint string
(``ListenService``, its bound port read back), a service that prepares its state before
starting its children and stops the process when it cannot (``StagedService``), and the
small helpers they share. The daemons' options live in ``vss.tap``; these are what
their services are made of, so the node and CMS import them without importing ``vss.tap``.
"""

import atexit
import json
import os
import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from vss.config import ConfigError
from vss.protocols.errors import VssError
from vss.store.redislink import StoreUnavailable
from vss.version import version_line


class ListenService(service.Service):
    """Listens on an endpoint string once started; ``port`` is the bound port number
    (useful with ``tcp:0``). ``ready`` fires with it."""

    log = Logger()

    def __init__(self, name, description, factory, reactor):
        self.name = name
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.listening = None
        self.port = None
        self.ready = defer.Deferred()

    def startService(self):
        super().startService()
        d = endpoints.serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port):
            self.listening = port
            self.port = port.getHost().port
            self.log.info("{name} listening on {desc} (port {port})", name=self.name,
                          desc=self.description, port=self.port)
            self.ready.callback(self.port)
            return port

        def failed(f):
            self.log.error("{name} cannot listen on {desc}: {error}", name=self.name,
                           desc=self.description, error=f.getErrorMessage())
            self.ready.errback(f)

        d.addCallbacks(listening, failed)

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            port, self.listening = self.listening, None
            return port.stopListening()


def _operator_errors():
    return (ConfigError, VssError, OSError, CannotListenError, StoreUnavailable)


_OPERATOR_ERRORS = ()
_exiting = []


def exit_nonzero_at_end(code=1):
    """Make the process exit with ``code`` once twistd has finished its own shut-down
    (pid file removed, logs written): twistd itself exits 0 whenever the reactor
    stopped, so a daemon that could not start would look like one that was stopped, to
    systemd and to scripts. Runs from ``atexit`` (registered last, so it runs first)."""
    if _exiting:
        return
    _exiting.append(code)

    def leave():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001,S110 - closed streams
                pass
        os._exit(code)

    atexit.register(leave)


class StagedService(service.MultiService):
    """A MultiService that first runs ``prepare()`` (a Deferred: load state, connect)
    and only then starts its children. If preparation fails the process stops, since
    a daemon without its state must not serve."""

    log = Logger()
    #: the command this daemon is, named with the vss version in its first log line
    program = "vss"
    #: set by the twistd plugins: a start that fails makes the process exit non-zero
    #: (never in a process that only hosts the service, such as a test run)
    exit_status_on_failure = False

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.started = defer.Deferred()
        # the daemon's first line, before anything its set-up has to say
        self.log.info("{line} starting", line=version_line(self.program))

    def prepare(self):
        return defer.succeed(None)

    def startService(self):
        global _OPERATOR_ERRORS
        if not _OPERATOR_ERRORS:
            _OPERATOR_ERRORS = _operator_errors()
        service.Service.startService(self)
        d = defer.maybeDeferred(self.prepare)

        def go(_):
            for svc in self:
                svc.startService()
            return defer.DeferredList(
                [s.ready for s in self if isinstance(s, ListenService)], fireOnOneErrback=True
            )

        def ready(_):
            self.on_ready()
            self.started.callback(self)

        def failed(f):
            if f.check(defer.FirstError):  # a listener: say which
                f = f.value.subFailure
            if f.check(*_OPERATOR_ERRORS):
                # the operator's to fix (a setting, a password, a certificate, a server
                # not there): one line naming it, not a traceback
                self.log.critical("cannot start: {error}", error=f.getErrorMessage())
            else:
                self.log.failure("cannot start", f)
            self.started.errback(f)
            if self.reactor.running:
                if self.exit_status_on_failure:
                    exit_nonzero_at_end()
                self.reactor.stop()

        d.addCallback(go).addCallbacks(ready, failed)

    def on_ready(self):
        pass

    def listeners(self):
        return {s.name: s.port for s in self if isinstance(s, ListenService)}


def write_json_atomically(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
