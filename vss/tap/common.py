"""Pieces shared by the ``vss-node`` and ``vss-cms`` daemons."""

import difflib
import json
import os
import re
import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import usage

from vss.ops.metrics import DEFAULT_ALLOW, Access, AccessError
from vss.version import version_line


class OneLineUsage:
    """A daemon's ``usage.Options`` (put first among the bases): run by twistd, a bad
    option or setting is said in ONE line on stderr, naming it, and the process exits 2.
    (twistd itself prints its whole help before a sub-command's error, and a traceback
    for an error of ``makeService``.) Parsed by code (tests), ``UsageError`` is raised
    as usual."""

    command = "vss"

    def parseOptions(self, options=None):
        try:
            return super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            fail_in_one_line(self.command, explain_usage_error(self, e))


def fail_in_one_line(command, message, code=2):
    """Print ``twistd COMMAND: MESSAGE`` on stderr and exit with ``code``."""
    print(f"twistd {command}: {message}", file=sys.stderr)
    sys.exit(code)


def explain_usage_error(options, error):
    """The text of a usage error, with the nearest option for a misspelt one."""
    text = str(error)
    m = re.match(r"option --?(\S+) not recognized", text) or re.match(
        r"No such option '(\S+)'", text)
    if m is None:
        return text
    wrong = m.group(1)
    known = sorted({p[0] for p in options.optParameters} | {
        f[0] for f in getattr(options, "optFlags", [])} | {"help", "version"})
    near = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
    hint = f" (did you mean --{near[0]}?)" if near else ""
    return f"unknown option --{wrong}{hint}; see --help"


def check_endpoint(name, description, problems, server=True):
    """Parse an endpoint string as Twisted will (without listening or connecting) and
    add a problem naming the option if it cannot be used. Files an ``ssl:`` endpoint
    names are read here too."""
    parse = endpoints.serverFromString if server else endpoints.clientFromString
    try:
        parse(_NO_REACTOR, description)
    except Exception as e:  # noqa: BLE001 - every parse error is the operator's to fix
        reason = str(e) or type(e).__name__
        number = re.search(r"invalid literal for int\(\) with base 10: ('.*')", reason)
        keyword = re.search(r"unexpected keyword argument ('.*')", reason)
        if number:
            reason = f"{number.group(1)} is not a number"
        elif keyword:
            reason = f"no parameter {keyword.group(1)}"
        kind = "listen" if server else "client"
        problems.append(f"--{name}: {description!r} is not a {kind} endpoint ({reason})")


class _NoReactor:
    """Stands in for the reactor while an endpoint string is only parsed: the endpoint
    objects keep it and use it only to listen or connect."""


_NO_REACTOR = _NoReactor()


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


def metrics_options(listener):
    """The metrics options of a daemon whose ``/metrics`` is on ``listener``."""
    return [
        ["metrics", None, None, f"on: Prometheus metrics at /metrics on {listener}; "
         "off: none, and no latency histograms kept [on]."],
        ["metrics-allow", None, None, "Addresses and networks that may read /metrics, "
         f"comma separated [{','.join(DEFAULT_ALLOW)}: this machine only]."],
        ["metrics-token-file", None, None, "File (mode 0600) holding a bearer token every "
         "scrape must send (Authorization: Bearer TOKEN) [none]."],
    ]


def check_metrics_options(opts, problems):
    """Check the metrics options (``metrics`` becomes a bool); problems are added."""
    value = str(opts.get("metrics") or "on").strip().lower()
    if value not in ("on", "off"):
        problems.append(f"--metrics: {opts['metrics']!r} is neither 'on' nor 'off'")
    opts["metrics"] = value != "off"
    try:
        Access.from_options(opts.get("metrics-allow"), opts.get("metrics-token-file"))
    except AccessError as e:
        problems.append(str(e))


def _operator_errors():
    from twisted.internet.error import CannotListenError

    from vss.config import ConfigError
    from vss.errors import VssError

    errors = [ConfigError, VssError, OSError, CannotListenError]
    try:
        from vss.store.redis import StoreUnavailable
    except ImportError:  # txredisapi is an optional dependency
        pass
    else:
        errors.append(StoreUnavailable)
    return tuple(errors)


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
    import atexit
    import sys

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


def link_tls_files(opts, problems):
    """(cert, key, ca) of the mutual TLS of the links between servers (``--tls-cert``,
    ``--tls-key``, ``--tls-ca``): all three or none ("" each), files that exist."""
    files = tuple(opts.get(f"tls-{name}") or "" for name in ("cert", "key", "ca"))
    if any(files) and not all(files):
        problems.append("--tls-cert, --tls-key and --tls-ca: give all three or none")
    for name, path in zip(("cert", "key", "ca"), files, strict=True):
        if path and not os.path.isfile(path):
            problems.append(f"--tls-{name}: no such file {path}")
    return files


def write_json_atomically(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
