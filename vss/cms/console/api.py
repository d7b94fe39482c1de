"""
The admin API as the console and operators use it: ``ConsoleApi`` is the MMS admin API
(``vss.cms.mms.AdminApi``) with

- a second way in: an operator's browser session (cookie ``vss_console``, HttpOnly,
  SameSite=Strict, Secure and named ``__Host-vss_console`` over TLS), beside the bearer
  admin tokens of scripts;
- rights by role: an auditor's change is refused (403), whatever the route;
- a CSRF defence on every change made with a session: the request must carry the
  session's CSRF token in ``X-CSRF-Token`` (a cross-site form or script cannot read or
  send it), and an ``Origin`` or ``Sec-Fetch-Site`` header, when present, must name this
  site (403 else);
- the audit: every change, refused ones included, is recorded (``vss.cms.audit``), and
  answered with ``X-Vss-Change-Seq`` (the change-log sequence the nodes confirm, S506).

and these routes beside the others under ``/api/v1``::

    POST, GET, DELETE  /session            log in (JSON name and password), who am I, log out
    GET, POST          /operators          operator accounts (administrators change them)
    GET, PATCH, DELETE /operators/{name}
    GET                /audit              the audit log, newest first, with filters
"""

import hmac
from datetime import datetime
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from vss.cms import mms
from vss.cms.audit import ChangeAudit, operator_view, peer_of
from vss.cms.operators import IDLE, MAX_AGE, LoginRefused, check_new_password
from vss.cms.store.audit import KINDS, entry
from vss.cms.store.operators import ADMINISTRATOR, AUDITOR, ROLES, LastAdministratorError
from vss.cms.store.tokens import iso_time

COOKIE = "vss_console"
#: over TLS: a cookie only this host, path / and HTTPS may set or send
SECURE_COOKIE = "__Host-vss_console"
CSRF_HEADER = b"x-csrf-token"
#: marks the page's polling, which does not keep a session alive
BACKGROUND_HEADER = b"x-vss-background"
#: longest audit page
MAX_AUDIT_PAGE = 500


def cookie_name(request):
    return SECURE_COOKIE if request.isSecure() else COOKIE


def forbidden(message):
    return mms.ApiError(403, message)


def same_site(request):
    """Why the request comes from another site, or None (its ``Origin`` names this
    host, or is absent; ``Sec-Fetch-Site`` is same-origin, or absent)."""
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in (b"same-origin", b"none"):
        return f"a {fetch_site.decode('ascii', 'replace')} request"
    origin = request.getHeader(b"origin")
    if origin is None:
        return None
    host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
    try:
        parts = urlsplit(origin.decode("latin-1"))
    except ValueError:
        return "a request from an unreadable origin"
    scheme = "https" if request.isSecure() else "http"
    if parts.scheme != scheme or parts.netloc.lower() != host:
        return f"a request from {origin.decode('latin-1', 'replace')}"
    return None


class ConsoleApi(mms.AdminApi):
    """The admin API with operators' sessions, roles, CSRF defence and the audit.
    ``accounts``: a ``vss.cms.operators.OperatorAccounts``."""

    log = Logger()

    def __init__(self, backend, accounts):
        super().__init__(backend)
        self.accounts = accounts
        self.audit = ChangeAudit(self)
        self.last_seq = 0

    @defer.inlineCallbacks
    def published(self, changes):
        if changes:
            self.last_seq = max(self.last_seq, changes[-1].seq)
        yield super().published(changes)

    @defer.inlineCallbacks
    def authenticate(self, request):
        """A bearer token (scripts), else the operator of the session cookie."""
        if request.getHeader(b"authorization") is not None:
            return (yield super().authenticate(request))
        return self.session_principal(request)

    def session_principal(self, request):
        """The operator of the session cookie, or 401. A request marked
        ``X-Vss-Background`` (the page's own polling) does not count as activity: the
        idle time of a console left open still runs out."""
        cookie = request.getCookie(cookie_name(request).encode())
        session = self.accounts.sessions.find(
            cookie.decode("latin-1") if cookie else None,
            touch=request.getHeader(BACKGROUND_HEADER) is None)
        if session is None:
            raise mms.ApiError(401, "your session ended: log in again" if cookie
                               else "log in first (or send a bearer token)")
        return mms.Principal("operator", session.username, session.role, session=session)

    def change(self, call, res, handler):
        """Changes are audited; an operator's must pass the CSRF check and their role."""
        if isinstance(res, Session):  # a login or logout: audited as such, not locked
            return defer.maybeDeferred(handler, call)

        def checked(call):
            self.permit(call)
            return handler(call)

        return self.lock.run(self.audit.run, call, checked)

    def permit(self, call):
        """Raise 403 unless the principal may change things with this request."""
        principal = call.principal
        if principal is None or principal.kind != "operator":
            return
        request = call.request
        sent = request.getHeader(CSRF_HEADER) or b""
        if not hmac.compare_digest(sent, principal.session.csrf.encode()):
            raise forbidden("cross-site request refused: the console's CSRF token is "
                            "missing or wrong (reload the page)")
        elsewhere = same_site(request)
        if elsewhere is not None:
            raise forbidden(f"cross-site request refused ({elsewhere})")
        if principal.role != ADMINISTRATOR:
            raise forbidden(f"the {principal.role} role may not change anything")


# ---------------------------------------------------------------------------
# /session: log in, who am I, log out


def session_view(session):
    return {"username": session.username, "role": session.role, "csrf": session.csrf,
            "idle_seconds": IDLE, "expires": iso_time(int((session.created + MAX_AGE) * 1000)),
            "can_change": session.role == ADMINISTRATOR}


class Session(mms.JsonResource):
    """Log in, who am I, log out; logins and logouts are audited here, as such."""

    requires_auth = False

    @defer.inlineCallbacks
    def do_POST(self, call):
        api, request = self.api, call.request
        body = call.body(("username", "password"))
        username = body.string("username", required=True, max_len=64)
        password = body.string("password", required=True, max_len=1024)
        peer = peer_of(request)
        elsewhere = same_site(request)
        if elsewhere is not None:
            yield _audit(api, "login", f"operator:{username}", peer, 403, elsewhere)
            raise forbidden(f"cross-site login refused ({elsewhere})")
        try:
            cookie, session = yield api.accounts.login(username, password, peer)
        except LoginRefused as e:
            yield _audit(api, "login", f"operator:{username}", peer, e.status, e.message)
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after else {}
            raise mms.ApiError(e.status, e.message, "password" if e.status == 401 else None,
                               headers=headers) from None
        request.addCookie(cookie_name(request).encode(), cookie.encode(), path=b"/",
                          httpOnly=True, secure=request.isSecure() or None,
                          sameSite=b"strict")
        yield _audit(api, "login", f"operator:{username}", peer, 200)
        api.log.info("operator {operator} ({role}) logged in from {peer}",
                     operator=username, role=session.role, peer=peer)
        return 200, session_view(session)

    def do_GET(self, call):
        principal = self.api.session_principal(call.request)
        return 200, session_view(principal.session)

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        api, request = self.api, call.request
        principal = api.session_principal(request)
        sent = request.getHeader(CSRF_HEADER) or b""
        if not hmac.compare_digest(sent, principal.session.csrf.encode()):
            raise forbidden("cross-site request refused: the console's CSRF token is "
                            "missing or wrong")
        cookie = request.getCookie(cookie_name(request).encode())
        api.accounts.sessions.close(cookie.decode("latin-1"))
        request.addCookie(cookie_name(request).encode(), b"", path=b"/", httpOnly=True,
                          secure=request.isSecure() or None, sameSite=b"strict",
                          max_age=b"0")
        yield _audit(api, "logout", principal.label, peer_of(request), 200)
        return 200, {"logged_out": principal.name}


@defer.inlineCallbacks
def _audit(api, kind, actor, peer, status, error=None):
    detail = {"error": error} if error else {}
    try:
        yield api.store.append_audit([entry(api.now_ms(), kind, actor, peer,
                                            action=kind, target=actor, status=status,
                                            detail=detail)])
    except Exception:  # noqa: BLE001 - a login is not refused for a lost entry
        api.log.failure("audit entry not written: {kind} of {actor}", kind=kind, actor=actor)


# ---------------------------------------------------------------------------
# /operators


class Operators(mms.JsonResource):
    child_param = "{name}"

    def make_child(self, text):
        return OperatorResource(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        operators = yield self.api.store.list_operators()
        sessions = self.api.accounts.sessions
        return 200, {"items": [operator_view(o, len(sessions.of(o.username)))
                               for o in operators]}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("username", "password", "role", "enabled"))
        username = body.string("username", required=True, pattern=mms.NAME_RE, max_len=64,
                               what="operator name")
        role = body.choice("role", ROLES, default=AUDITOR)
        enabled = body.boolean("enabled", default=True)
        password = body.string("password", required=True, max_len=1024)
        problem = check_new_password(password)
        if problem is not None:
            raise mms.invalid("password", problem)
        if (yield self.api.store.get_operator(username)) is not None:
            raise mms.ApiError(409, f"operator {username!r} exists", "username")
        verifier = yield self.api.accounts.hash(password)
        operator = yield self.api.store.add_operator(username, verifier, role, enabled)
        return 201, operator_view(operator), {
            "Location": f"{mms.API_PREFIX}/operators/{username}"}


class OperatorResource(mms.JsonResource):
    def __init__(self, api, username):
        super().__init__(api)
        self.username = username

    @defer.inlineCallbacks
    def _current(self):
        operator = yield self.api.store.get_operator(self.username)
        if operator is None:
            raise mms.not_found(f"no operator {self.username!r}")
        return operator

    @defer.inlineCallbacks
    def do_GET(self, call):
        operator = yield self._current()
        return 200, operator_view(operator, len(self.api.accounts.sessions.of(self.username)))

    @defer.inlineCallbacks
    def do_PATCH(self, call):
        body = call.body(("password", "role", "enabled", "version"),
                         ignored=("username", "created", "changed", "last_login", "sessions"))
        if body.has("username") and body.data["username"] != self.username:
            raise mms.invalid("username", "an operator cannot be renamed")
        role = body.choice("role", ROLES)
        enabled = body.boolean("enabled")
        expected = body.integer("version", 1, 2**63)
        password = body.string("password", max_len=1024)
        if password is not None:
            problem = check_new_password(password)
            if problem is not None:
                raise mms.invalid("password", problem)
        before = yield self._current()
        mms.check_version(expected, before.version)
        verifier = (yield self.api.accounts.hash(password)) if password is not None else None
        try:
            after = yield self.api.store.update_operator(self.username, verifier, role,
                                                         enabled, expected)
        except LastAdministratorError as e:
            raise mms.ApiError(409, e.message, "role" if role else "enabled") from None
        self.api.accounts.changed(self.username, before, after)
        return 200, operator_view(after, len(self.api.accounts.sessions.of(self.username)))

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        before = yield self._current()
        try:
            yield self.api.store.remove_operator(self.username)
        except LastAdministratorError as e:
            raise mms.ApiError(409, e.message, "username") from None
        self.api.accounts.changed(self.username, before, None)
        return 200, {"deleted": "operator", "username": self.username}


# ---------------------------------------------------------------------------
# /audit


def audit_view(e):
    return {"id": e.id, "at": iso_ms(e.at), "kind": e.kind, "actor": e.actor,
            "source": e.source, "node_id": e.node_id, "action": e.action,
            "target": e.target, "status": e.status, "detail": e.detail}


def iso_ms(ms):
    text = iso_time(ms)
    return f"{text[:-1]}.{ms % 1000:03d}Z" if text else text


def time_arg(request, name):
    """ms of an ISO 8601 time with its zone in the query, or None."""
    value = mms.query(request, name)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise mms.invalid(name, f"{name} must be a time like 2026-05-01T18:00:00Z") from None
    if when.tzinfo is None:
        raise mms.invalid(name, f"{name} needs its time zone (Z for UTC)")
    return int(when.timestamp() * 1000)


class Audit(mms.JsonResource):
    """``GET /audit?kind=change,live&actor=&target=&q=&node=&since=&until=&cursor=&limit=``:
    newest first. No other method: entries cannot be changed through the API."""

    def do_GET(self, call):
        request = call.request
        cursor, limit = mms.page_args(request)
        limit = min(limit, MAX_AUDIT_PAGE)
        kinds = [k.strip() for k in (mms.query(request, "kind") or "").split(",") if k.strip()]
        for k in kinds:
            if k not in KINDS:
                raise mms.invalid("kind", f"kind must be among {', '.join(KINDS)}")
        if cursor and not cursor.isdigit():
            raise mms.invalid("cursor", "bad cursor")
        d = self.api.store.list_audit(
            cursor=cursor, limit=limit, kinds=kinds or None,
            actor=mms.query(request, "actor"), target=mms.query(request, "target"),
            since=time_arg(request, "since"), until=time_arg(request, "until"),
            node_id=mms.query(request, "node"), text=mms.query(request, "q"))
        return d.addCallback(lambda page: (200, {"items": [audit_view(e) for e in page[0]],
                                                 "next_cursor": page[1]}))


def add_routes(v1, api):
    """Put the console's routes beside the admin API's (``v1`` is its index)."""
    v1.putChild(b"session", Session(api))
    v1.putChild(b"operators", Operators(api))
    v1.putChild(b"audit", Audit(api))

