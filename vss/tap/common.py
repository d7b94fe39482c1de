"""Pieces shared by the ``vss-node`` and ``vss-cms`` daemons."""

import difflib
import os
import re
import sys

from twisted.internet import endpoints
from twisted.python import usage

from vss.ops.metrics import DEFAULT_ALLOW, Access, AccessError
from vss.tls import client_host_port, listen_interface, plaintext_problem


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


_TLS_COMES = "TLS comes with --tls-cert, --tls-key and --tls-ca"


def check_link_listener(name, listen, tls, allow_plaintext, problems):
    """A listener of links between servers (``--NAME``): a tcp: endpoint, taking
    mutual TLS when ``tls`` (cert, key, ca) is given, else on loopback only unless
    ``allow_plaintext`` (--allow-plaintext-links)."""
    interface = listen_interface(listen)
    if interface is None:
        problems.append(f"--{name}: {listen!r} must be a tcp: endpoint ({_TLS_COMES})")
    elif not all(tls):
        problem = plaintext_problem(f"--{name}", interface, allow_plaintext)
        if problem:
            problems.append(problem)


def check_link_client(name, address, tls, allow_plaintext, problems):
    """The address of a server a link goes to (``--NAME``): tcp:HOST:PORT, and the
    same rule as ``check_link_listener`` for plaintext."""
    try:
        host, _port = client_host_port(address)
    except ValueError:
        problems.append(f"--{name}: {address!r} must be tcp:HOST:PORT ({_TLS_COMES})")
        return
    if not all(tls):
        problem = plaintext_problem(f"--{name}", host, allow_plaintext)
        if problem:
            problems.append(problem)


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


