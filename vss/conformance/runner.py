"""
Runs conformance checks one after another and reports each as PASS, FAIL or SKIP.

Checks run in the order of ``checks.CHECKS``, the slow ones (``--slow``) last; each gets a
deadline so a node that never answers fails the check instead of hanging the suite, and
whatever links it opened are dropped before the next one starts.
"""

from dataclasses import asdict, dataclass

from twisted.internet import defer
from twisted.logger import Logger

from vss.conformance.checks import CHECKS, Skip

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

log = Logger()


@dataclass
class Result:
    name: str
    status: str
    description: str
    reason: str = ""
    seconds: float = 0.0

    def line(self):
        if self.status == PASS:
            return f"PASS {self.name}  {self.description}"
        return f"{self.status} {self.name}  {self.reason}"

    def as_dict(self):
        return asdict(self)


def select(only=()):
    """The checks to run, in order (slow ones last). ``only``: names to keep."""
    unknown = [n for n in only if n not in {c.name for c in CHECKS}]
    if unknown:
        raise KeyError(", ".join(unknown))
    chosen = [c for c in CHECKS if not only or c.name in only]
    return [c for c in chosen if not c.slow] + [c for c in chosen if c.slow]


def deadline(ctx, chk):
    """Seconds a whole check may take."""
    if chk.name == "keepalive_timeout":
        interval = ctx.keepalive_interval or 30
        return 3 * interval + max(2.0, interval) + 4 * ctx.timeout
    if chk.name == "auth_throttled":
        return 90.0 + 4 * ctx.timeout
    return 12 * ctx.timeout + 10.0


@defer.inlineCallbacks
def run_one(ctx, chk):
    started = ctx.clock.seconds()
    if chk.slow and not ctx.slow:
        return Result(chk.name, SKIP, chk.description, "slow check: run with --slow")
    limit = deadline(ctx, chk)
    try:
        d = defer.maybeDeferred(chk.function, ctx)
        d.addTimeout(limit, ctx.clock)
        yield d
    except Skip as e:
        result = Result(chk.name, SKIP, chk.description, str(e))
    except defer.TimeoutError:
        result = Result(chk.name, FAIL, chk.description, f"did not finish within {limit:g} s")
    except Exception as e:  # a check's failure, whatever its type, is a FAIL line
        reason = str(e) or type(e).__name__
        if not hasattr(e, "__module__") or "conformance" not in type(e).__module__:
            reason = f"{type(e).__name__}: {reason}"
        result = Result(chk.name, FAIL, chk.description, reason)
    else:
        result = Result(chk.name, PASS, chk.description)
    finally:
        ctx.cleanup()
    result.seconds = round(ctx.clock.seconds() - started, 3)
    log.debug("{name}: {status}", name=chk.name, status=result.status)
    return result


@defer.inlineCallbacks
def run(ctx, only=(), report=None):
    """Run the chosen checks; ``report(result)`` is called as each one ends. Fires with
    the list of results."""
    results = []
    try:
        for chk in select(only):
            result = yield run_one(ctx, chk)
            results.append(result)
            if report is not None:
                report(result)
    finally:
        ctx.close()
    return results


def summary(results):
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, SKIP)}
    return f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped"
