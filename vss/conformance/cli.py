"""
``vss-conformance``: check that a node speaks docs/protocol.md.

    VSS_PU_SECRET=... VSS_PASSWORD=... vss-conformance \\
        --pu tcp:127.0.0.1:7100 --cu tcp:127.0.0.1:7101 --device cam1 --user alice

The suite logs in as the PU ``--device`` (replacing that device's session on the node
while it runs) and as the CU ``--user``, who must be granted the device with every
action. Secrets come from ``VSS_PU_SECRET`` / ``VSS_PASSWORD`` or ``--pu-secret-file`` /
``--password-file``, never from the command line. ``tls:`` endpoint strings give TLS.
``--cu ws://HOST:PORT/ws/cu`` runs the CU checks over the WebSocket transport a browser
uses (``wss://`` with TLS).

One line per check (``PASS name  description``, ``FAIL name  reason``, ``SKIP name
reason``), then ``N passed, N failed, N skipped``. Exit status: 0 when nothing failed,
1 when a check failed (or the node stayed NOT_READY for ``--wait-ready`` seconds: it says
so), 2 for a
usage error. A node that answers NOT_READY (still loading its data) is waited for first,
each wait printed on stderr.
"""

import json
import os
import sys

from twisted.internet import defer, task
from twisted.python import usage

from vss.conformance import runner
from vss.conformance.checks import CHECKS, Context, NodeNotReady, wait_ready
from vss.version import VersionOption


class Options(VersionOption, usage.Options):
    program = "vss-conformance"
    synopsis = ("VSS_PU_SECRET=... VSS_PASSWORD=... vss-conformance --pu ENDPOINT --cu ENDPOINT "
                "--device ID --user NAME [--json] [--only NAME] [--slow]")
    longdesc = __doc__
    optParameters = [
        ["pu", None, None, "Client endpoint of the node's PU listener (tcp:HOST:PORT, tls:...)."],
        ["cu", None, None, "Client endpoint of the node's CU listener, or the ws:// (wss://) "
                           "URL of its CU link over a WebSocket (http listener, /ws/cu)."],
        ["device", None, None, "Device id the suite logs in as (its PU)."],
        ["user", None, None, "User the suite logs in as (its CU), granted --device."],
        ["pu-secret-file", None, None, "File holding the device's secret [else $VSS_PU_SECRET]."],
        ["password-file", None, None, "File holding the user's password [else $VSS_PASSWORD]."],
        ["timeout", None, 5.0, "Seconds to wait for each answer.", float],
        ["wait-ready", None, 60.0, "Seconds to wait for a node that answers NOT_READY.", float],
    ]
    optFlags = [
        ["json", None, "Print one JSON document instead of lines."],
        ["slow", None, "Also run the slow checks (throttling, keepalive timeout)."],
        ["list", None, "List the checks and exit."],
    ]

    def __init__(self):
        super().__init__()
        self["only"] = []

    def opt_only(self, name):
        """Run only this check (repeat, or separate names with commas)."""
        self["only"].extend(n for n in name.split(",") if n)

    def postOptions(self):
        if self["list"]:
            return
        problems = [f"--{name} is required" for name in ("pu", "cu", "device", "user")
                    if not self[name]]
        known = {c.name for c in CHECKS}
        problems += [f"--only: no check named {n!r}" for n in self["only"] if n not in known]
        if self["timeout"] <= 0:
            problems.append("--timeout must be positive")
        self.pu_secret = _secret(self["pu-secret-file"], "VSS_PU_SECRET", "--pu-secret-file",
                                 problems)
        self.password = _secret(self["password-file"], "VSS_PASSWORD", "--password-file",
                                problems)
        if problems:
            raise usage.UsageError("; ".join(problems))


def _secret(path, variable, option, problems):
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            problems.append(f"{option}: {e.strerror}: {path}")
            return ""
        if not value:
            problems.append(f"{option}: {path} is empty")
        return value
    value = os.environ.get(variable, "")
    if not value:
        problems.append(f"the secret: set {variable} or use {option}")
    return value


def main(argv=None, out=None):
    out = out or sys.stdout
    opts = Options()
    try:
        opts.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"vss-conformance: {e}", file=sys.stderr)
        print(f"usage: {Options.synopsis}", file=sys.stderr)
        sys.exit(2)
    if opts["list"]:
        for c in CHECKS:
            print(f"{c.name}  {c.description}{'  [--slow]' if c.slow else ''}", file=out)
        sys.exit(0)

    @defer.inlineCallbacks
    def run(reactor):
        ctx = Context(reactor, opts["pu"], opts["cu"], opts["device"], opts["user"],
                      opts.pu_secret, opts.password, slow=opts["slow"],
                      timeout=opts["timeout"])

        def report(result):
            if not opts["json"]:
                print(result.line(), file=out, flush=True)

        try:
            yield wait_ready(ctx, opts["wait-ready"], report=lambda text: print(f"vss-conformance: {text}",
                                                            file=sys.stderr, flush=True))
        except NodeNotReady as e:
            ctx.close()
            print(f"vss-conformance: {e}; try again later", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        results = yield runner.run(ctx, opts["only"], report)
        summary = runner.summary(results)
        if opts["json"]:
            doc = {
                "pu": opts["pu"],
                "cu": opts["cu"],
                "checks": [r.as_dict() for r in results],
                "passed": sum(r.status == runner.PASS for r in results),
                "failed": sum(r.status == runner.FAIL for r in results),
                "skipped": sum(r.status == runner.SKIP for r in results),
                "summary": summary,
            }
            print(json.dumps(doc, indent=2), file=out, flush=True)
        else:
            print(summary, file=out, flush=True)
        failed = any(r.status == runner.FAIL for r in results)
        # Let aborted links finish closing before the reactor stops.
        yield task.deferLater(reactor, 0.05, lambda: None)
        if failed:
            raise SystemExit(1)

    task.react(run)
