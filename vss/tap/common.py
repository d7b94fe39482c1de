"""Pieces shared by the ``vss-node`` and ``vss-cms`` daemons."""

import json
import os

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger


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
            self.log.failure("{name} cannot listen on {desc}", f, name=self.name,
                             desc=self.description)
            self.ready.errback(f)

        d.addCallbacks(listening, failed)

    def stopService(self):
        super().stopService()
        if self.listening is not None:
            port, self.listening = self.listening, None
            return port.stopListening()


class StagedService(service.MultiService):
    """A MultiService that first runs ``prepare()`` (a Deferred: load state, connect)
    and only then starts its children. If preparation fails the process stops, since
    a daemon without its state must not serve."""

    log = Logger()

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.started = defer.Deferred()

    def prepare(self):
        return defer.succeed(None)

    def startService(self):
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
            self.log.failure("cannot start", f)
            self.started.errback(f)
            if self.reactor.running:
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
