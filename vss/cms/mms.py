"""
MMS, the operators' entry point: an HTTP JSON admin API under ``/api/v1/``.

``make_admin_site(backend)`` builds the ``twisted.web`` site (``vss.redact.Site``: no
secret in its access log). ``backend`` provides ``vss.interfaces.IAdminBackend``
(``store``, ``publish``, ``assign_home_node``, ``status``): the CMS service, or
``vss.cms.admin_backend.StoreAdminBackend`` over a bare ``IStaticStore``.

Every change an operator makes is one store transaction; its ``Change`` list goes to
``backend.publish`` at once (S501: MMS tells CMS that data changed).

Routes (all need ``Authorization: Bearer <admin token>``; the token is checked by its
sha256 against the store's admin tokens, the first made by ``vss-admin bootstrap``; a
revoked or expired token is refused with 401 and says which)::
    GET                /                     index of the routes
    GET, POST          /users                users (paged)
    GET, PATCH, DELETE /users/{name}
    GET, POST          /devices              devices (paged; ?home_node=)
    GET, PATCH, DELETE /devices/{id}
    GET, PUT           /devices/{id}/record-settings/{channel}
    GET, PUT, DELETE   /grants               grants (paged; ?principal=&device_id=)
    GET, POST          /nodes                node registry
    DELETE             /nodes/{id}
    GET, POST          /tokens               admin tokens (never their secret or hash)
    GET, DELETE        /tokens/{id}          show, revoke (?force=true for the last one)
    GET, POST          /stream-credentials   stream credentials (paged; ?user=&device_id=)
    GET, DELETE        /stream-credentials/{id}  show, revoke
    GET                /events               events and alarms, newest first (?device_id=
                                             &type=&since=&until=&limit=)
    GET                /status               operations status
    GET                /openapi.json         this API as an OpenAPI 3.1 document

Secrets: a user's password and a device's secret are turned into a SCRAM verifier the
moment they are read; they are never stored, answered or logged. Credentials inside a
device's ``source_url`` are masked in every answer.

Errors are JSON, ``{"error": "...", "field": "..."}``: 400 invalid input, 401 no or a
bad token, 404 unknown, 405 wrong method, 409 conflict, 413 body over 1 MiB, 503 the
database failed (lost, locked, timed out: try again, ``Retry-After`` says when), 500
anything else (logged here, never a traceback to the client).

Recording settings are stored per (device, channel) as this JSON (what a node turns
into a ``RecordSettings`` body: ``RecordMode[mode.upper()]``, ``Stream[...]``, days
``mon``..``sun`` = 0..6, times ``HH:MM``), next to what the device last reported
(``reported``, written by active sync and kept by every PUT)::
    {"mode": "schedule", "stream": "main", "segment_seconds": 300,
     "retention_days": 7, "quota_mb": 0, "pre_event_seconds": 5,
     "post_event_seconds": 10, "schedule": [{"day": "mon", "start": "08:00",
     "end": "18:00"}], "event_types": ["motion", "alarm-in"]}
"""

import json
from datetime import datetime
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from vss.cms.apirules import (
    ACTIONS,
    API_PREFIX,
    CRED_ID_RE,
    DAYS,
    DEFAULT_LIMIT,
    DEVICE_ID_RE,
    EVENT_TYPE_RE,
    KINDS,
    MAX_BODY,
    MAX_EVENT_TYPES,
    MAX_EXPIRES_IN,
    MAX_LIMIT,
    MAX_SECRET,
    MAX_TOKEN,
    MIN_SECRET,
    MODES,
    NAME_RE,
    NODE_ID_RE,
    RECORD_DEFAULTS,
    RECORD_RANGES,
    SECRET_PARAM_RE,
    STREAMS,
    TIME_RE,
)
from vss.cms.openapi import openapi_document
from vss.cms.store import hash_token, new_token
from vss.cms.store.tokens import ACTIVE, EXPIRED, LastTokenError, iso_time
from vss.protocols import scram
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    CU_TARGET,
    Action,
    EventPhase,
    PuKind,
    Severity,
    StreamCredential,
    Verifier,
)
from vss.redact import Site
from vss.services import ListenService
from vss.streamcreds import secret as sc
from vss.streamcreds.secret import state

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_LISTEN = "tcp:7280:interface=127.0.0.1"


HTTP_FOR_CODE = {
    ResultCode.INVALID_ARGUMENT: 400,
    ResultCode.FORBIDDEN: 403,
    ResultCode.UNKNOWN_DEVICE: 404,
    ResultCode.NOT_FOUND: 404,
    ResultCode.UNKNOWN_NODE: 404,
    ResultCode.CONFLICT: 409,
    ResultCode.DB_UNAVAILABLE: 503,
    ResultCode.NOT_ACTIVE: 503,
}
#: seconds an admin is told to wait before trying again after a 503
RETRY_AFTER = 5


class ApiError(Exception):
    """An answer other than success: an HTTP status and a JSON error."""

    def __init__(self, status, message, field=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def payload(self):
        out = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class NotActive(ApiError):
    """503 from a standby CMS: ``active`` is the admin URL of the active CMS (also in
    the ``X-Vss-Active-Cms`` header), or '' when not known."""

    def __init__(self, why, active):
        headers = {"Retry-After": "1"}
        if active:
            headers["X-Vss-Active-Cms"] = active
        super().__init__(503, f"this CMS is a standby: {why}", headers=headers)
        self.active = active

    def payload(self):
        return {"error": self.message, "code": "NOT_ACTIVE", "active": self.active}


def invalid(field, message):
    return ApiError(400, message, field)


def not_found(message):
    return ApiError(404, message)


# ---------------------------------------------------------------------------
# views: what the API answers (never a verifier, never a credential)


def mask_url(url):
    """``url`` with its user information and credential query values masked."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = SECRET_PARAM_RE.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def kind_name(kind):
    try:
        return PuKind(kind).name.lower()
    except ValueError:
        return str(kind)


def action_names(bits):
    return [name for name, flag in ACTIONS.items() if bits & flag]


def user_view(r):
    return {"username": r.username, "groups": list(r.groups), "enabled": bool(r.enabled),
            "version": int(r.version)}


def device_view(r):
    return {
        "device_id": r.device_id,
        "name": r.name,
        "kind": kind_name(r.kind),
        "channels": int(r.channels),
        "home_node": r.home_node,
        "source_url": mask_url(r.source_url),
        "enabled": bool(r.enabled),
        "secret_set": bool(r.verifier.stored_key),
        "version": int(r.version),
    }


def grant_view(g, now_ms=None):
    """A grant as answered; ``expires`` null when it never expires; ``expired`` (with
    ``now_ms``) true once that time has passed (every node holds it out of force)."""
    out = {"principal": g.principal, "device_id": g.device_id,
           "actions": action_names(g.actions), "version": int(g.version),
           "expires": iso_time(g.expires) if g.expires else None}
    if now_ms is not None:
        out["expired"] = bool(g.expires) and g.expires <= now_ms
    return out


def expiry_of(body, now_ms, field="expires"):
    """ms since the epoch of an ISO 8601 time with its zone (``2026-05-01T18:00:00Z``),
    0 for null or empty (never); a time not in the future is refused."""
    value = body.string(field, max_len=64)
    if not value:
        return 0
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(field, f"{field} must be a time like 2026-05-01T18:00:00Z") from None
    if when.tzinfo is None:
        raise invalid(field, f"{field} needs its time zone (Z for UTC)")
    ms = int(when.timestamp() * 1000)
    if ms <= now_ms:
        raise invalid(field, f"{field} must be in the future")
    return ms


def node_view(n):
    return {k: n[k] for k in ("node_id", "signalling", "media", "capacity", "state", "load",
                              "applied_seq", "last_seen") if k in n}


def token_view(t, current=None):
    """An admin token as answered: never its secret, never its hash; times in UTC."""
    return {"id": int(t.id), "name": t.name, "state": t.state,
            "created": iso_time(t.created), "expires": iso_time(t.expires),
            "last_used": iso_time(t.last_used), "revoked": iso_time(t.revoked),
            "current": t.id == current}


def make_verifier(secret):
    salt, iterations, stored, server_key = scram.make_verifier(secret)
    return Verifier(salt=salt, iterations=iterations, stored_key=stored, server_key=server_key)


#: a device created for its source URL alone has no secret: it cannot log in over the
#: PU link (no proof matches an empty stored key)
NO_SECRET = Verifier(salt=b"", iterations=0, stored_key=b"", server_key=b"")


# ---------------------------------------------------------------------------
# reading input


class Body:
    """A JSON object from a request, read field by field with validation."""

    def __init__(self, data, allowed, ignored=()):
        self.data = data
        unknown = sorted(set(data) - set(allowed) - set(ignored))
        if unknown:
            raise invalid(unknown[0], f"unknown field {unknown[0]!r}")

    def has(self, field):
        return field in self.data

    def string(self, field, required=False, default=None, pattern=None, max_len=256,
               min_len=0, what=None):
        if field not in self.data or self.data[field] is None:
            if required:
                raise invalid(field, f"{field} is required")
            return default
        value = self.data[field]
        if not isinstance(value, str):
            raise invalid(field, f"{field} must be a string")
        if len(value) > max_len:
            raise invalid(field, f"{field} is longer than {max_len} characters")
        if len(value) < min_len:
            raise invalid(field, f"{field} must have at least {min_len} characters")
        if pattern is not None and not pattern.match(value):
            raise invalid(field, f"{field} {value!r} is not a valid {what or field}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise invalid(field, f"{field} contains control characters")
        return value

    def secret(self, field, required=False):
        """A password or device secret: the verifier made from it, or None."""
        value = self.string(field, required=required, max_len=MAX_SECRET, min_len=MIN_SECRET)
        return None if value is None else make_verifier(value)

    def integer(self, field, lo, hi, default=None, required=False):
        if field not in self.data or self.data[field] is None:
            if required:
                raise invalid(field, f"{field} is required")
            return default
        value = self.data[field]
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(field, f"{field} must be an integer")
        if not lo <= value <= hi:
            raise invalid(field, f"{field} must be between {lo} and {hi}")
        return value

    def boolean(self, field, default=None):
        if field not in self.data or self.data[field] is None:
            return default
        value = self.data[field]
        if not isinstance(value, bool):
            raise invalid(field, f"{field} must be true or false")
        return value

    def names(self, field, default=None):
        if field not in self.data or self.data[field] is None:
            return default
        value = self.data[field]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid(field, f"{field} must be a list of strings")
        for v in value:
            if not NAME_RE.match(v):
                raise invalid(field, f"{v!r} in {field} is not a valid name")
        return sorted(set(value))

    def choice(self, field, choices, default=None):
        value = self.string(field, default=default)
        if value is not None and value.lower() not in choices:
            raise invalid(field, f"{field} must be one of {', '.join(choices)}")
        return None if value is None else value.lower()


def source_url(body, field="source_url"):
    value = body.string(field, max_len=2048)
    if not value:
        return value
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme.lower() not in ("rtsp", "rtsps") or not host:
        raise invalid(field, "source_url must be an rtsp:// or rtsps:// URL with a host")
    return value


def principal_of(body):
    value = body.string("principal", required=True, max_len=80)
    kind, sep, name = value.partition(":")
    if kind not in ("user", "group") or not sep or not NAME_RE.match(name):
        raise invalid("principal", "principal must be 'user:NAME' or 'group:NAME'")
    return value


def actions_of(body):
    value = body.data.get("actions")
    if value is None:
        raise invalid("actions", "actions is required")
    if isinstance(value, str):
        value = [a.strip() for a in value.split(",") if a.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise invalid("actions", "actions must be a non-empty list of "
                                 + "|".join(ACTIONS))
    bits = 0
    for a in value:
        flag = ACTIONS.get(a.lower())
        if flag is None:
            raise invalid("actions", f"unknown action {a!r} (use {', '.join(ACTIONS)})")
        bits |= flag
    return int(bits)


def _minutes(field, value):
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str) and TIME_RE.match(value):
        h, m = TIME_RE.match(value).groups()
        if int(m) > 59:
            raise invalid(field, f"{field} time {value!r} is not HH:MM")
        minutes = int(h) * 60 + int(m)
    else:
        raise invalid(field, f"{field} times are 'HH:MM' or minutes since midnight")
    if not 0 <= minutes <= 1440:
        raise invalid(field, f"{field} times lie between 00:00 and 24:00")
    return minutes


def _hhmm(minutes):
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def event_types_of(body):
    """The event types that start an event recording of the channel (docs/protocol.md
    9.7: in EVENT mode; none listed: every event of severity ALARM or above a PU raises)."""
    value = body.data.get("event_types")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_EVENT_TYPES or not all(
            isinstance(t, str) and EVENT_TYPE_RE.match(t) for t in value):
        raise invalid("event_types", f"event_types is a list of at most {MAX_EVENT_TYPES} "
                      "event types (1 to 32 of a-z 0-9 . _ -)")
    return sorted(set(value))


def schedule_of(body):
    value = body.data.get("schedule")
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 7 * 48:
        raise invalid("schedule", "schedule must be a list of {day, start, end}")
    out = []
    for slot in value:
        if not isinstance(slot, dict) or set(slot) - {"day", "start", "end"}:
            raise invalid("schedule", "each schedule entry is {day, start, end}")
        day = slot.get("day")
        if isinstance(day, str) and day.lower()[:3] in DAYS:
            day = DAYS.index(day.lower()[:3])
        if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day < 7:
            raise invalid("schedule", "day is mon..sun or 0..6 (0 is Monday)")
        start = _minutes("schedule", slot.get("start"))
        end = _minutes("schedule", slot.get("end"))
        if start >= end:
            raise invalid("schedule", "a schedule entry must end after it starts")
        out.append({"day": DAYS[day], "start": _hhmm(start), "end": _hhmm(end)})
    return out


def page_args(request):
    cursor = query(request, "cursor", "")
    raw = query(request, "limit", None)
    if raw is None or raw == "":
        return cursor, DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"limit must be between 1 and {MAX_LIMIT}")
    return cursor, limit


def query(request, name, default=None):
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return default
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(name, f"{name} is not UTF-8") from None


# ---------------------------------------------------------------------------
# the request and the resource tree


class AdminRequest(server.Request):
    """Keeps at most ``max_body`` bytes of a request body; a bigger body is dropped as
    it arrives and the request answered 413."""

    max_body = MAX_BODY
    body_too_large = False
    _body_seen = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class JsonResource(resource.Resource):
    """A node of the API tree. Methods are ``do_<METHOD>(call)`` returning (or firing
    with) ``(status, payload)`` or ``(status, payload, headers)``; raising ``ApiError``
    answers that error. ``child_param`` names the path segment a dynamic child takes
    (e.g. ``"{name}"``) and ``make_child(text)`` builds it."""

    requires_auth = True
    child_param = None

    def __init__(self, api):
        super().__init__()
        self.api = api

    def getChild(self, name, request):
        if name == b"":
            return self  # a trailing slash
        if self.child_param is not None:
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                return NotFound(self.api, self.requires_auth)
            return self.make_child(text)
        return NotFound(self.api, self.requires_auth)

    def make_child(self, text):
        raise NotImplementedError

    def methods(self):
        return sorted(n[3:] for n in dir(self) if n.startswith("do_"))

    def render(self, request):
        return self.api.handle(self, request)


class NotFound(JsonResource):
    isLeaf = True

    def __init__(self, api, requires_auth=True):
        super().__init__(api)
        self.requires_auth = requires_auth


class Directory(JsonResource):
    """Static children only; nothing to answer itself (404)."""

    def __init__(self, api, children, requires_auth=True):
        super().__init__(api)
        self.requires_auth = requires_auth
        for name, child in children.items():
            self.putChild(name, child)


class Index(JsonResource):
    def __init__(self, api):
        super().__init__(api)
        self.putChild(b"users", Users(api))
        self.putChild(b"devices", Devices(api))
        self.putChild(b"grants", Grants(api))
        self.putChild(b"nodes", Nodes(api))
        self.putChild(b"status", Status(api))
        self.putChild(b"tokens", Tokens(api))
        self.putChild(b"stream-credentials", StreamCredentials(api))
        self.putChild(b"events", EventsResource(api))
        self.putChild(b"openapi.json", OpenApi(api))

    def do_GET(self, call):
        return 200, {"api": "vss-mms", "version": 1, "admin": call.admin,
                     "routes": [{"path": p, "methods": m} for p, m in iter_routes(self)],
                     "openapi": f"{API_PREFIX}/openapi.json"}


# -- users


class Users(JsonResource):
    child_param = "{name}"

    def make_child(self, text):
        return User(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        cursor, limit = page_args(call.request)
        records, next_cursor = yield self.api.store.list_users(cursor=cursor, limit=limit)
        return 200, {"items": [user_view(r) for r in records], "next_cursor": next_cursor}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("username", "password", "groups", "enabled"))
        username = body.string("username", required=True, pattern=NAME_RE, max_len=64,
                               what="user name")
        groups = body.names("groups", default=[])
        enabled = body.boolean("enabled", default=True)
        verifier = body.secret("password", required=True)
        if (yield self.api.store.get_user(username)) is not None:
            raise ApiError(409, f"user {username!r} exists", "username")
        changes = yield self.api.store.upsert_user(username, verifier, groups, enabled)
        yield self.api.published(changes)
        user = yield self.api.store.get_user(username)
        return 201, user_view(user), {"Location": f"{API_PREFIX}/users/{quote(username)}"}


class User(JsonResource):
    def __init__(self, api, username):
        super().__init__(api)
        self.username = username

    @defer.inlineCallbacks
    def _current(self):
        user = yield self.api.store.get_user(self.username)
        if user is None:
            raise not_found(f"no user {self.username!r}")
        return user

    @defer.inlineCallbacks
    def do_GET(self, call):
        user = yield self._current()
        return 200, user_view(user)

    @defer.inlineCallbacks
    def do_PATCH(self, call):
        body = call.body(("password", "groups", "enabled", "version"), ignored=("username",))
        if body.has("username") and body.data["username"] != self.username:
            raise invalid("username", "a user cannot be renamed")
        groups = body.names("groups")
        enabled = body.boolean("enabled")
        expected = body.integer("version", 1, 2**63)
        verifier = body.secret("password")
        user = yield self._current()
        check_version(expected, user.version)
        if verifier is None and groups in (None, sorted(user.groups)) \
                and enabled in (None, user.enabled):
            return 200, user_view(user)  # nothing changes: no new version, nothing to sync
        changes = yield self.api.store.upsert_user(
            self.username,
            verifier if verifier is not None else user.verifier,
            groups if groups is not None else list(user.groups),
            enabled if enabled is not None else user.enabled,
        )
        yield self.api.published(changes)
        user = yield self._current()
        return 200, user_view(user)

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        yield self._current()
        changes = yield self.api.store.remove_user(self.username)
        yield self.api.published(changes)
        return 200, {"deleted": "user", "username": self.username,
                     "grants_removed": sum(1 for c in changes if c.key != self.username)}


def check_version(expected, current):
    if expected is not None and expected != current:
        raise ApiError(409, f"version {expected} is not the current version {current}",
                       "version")


# -- devices


class Devices(JsonResource):
    child_param = "{id}"

    def make_child(self, text):
        return Device(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        cursor, limit = page_args(call.request)
        home = query(call.request, "home_node")
        records, next_cursor = yield self.api.store.list_devices(cursor=cursor, limit=limit,
                                                                 home_node=home)
        return 200, {"items": [device_view(r) for r in records], "next_cursor": next_cursor}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("device_id", "name", "kind", "channels", "home_node", "secret",
                          "source_url", "enabled"))
        device_id = body.string("device_id", required=True, pattern=DEVICE_ID_RE, max_len=128,
                                what="device id")
        name = body.string("name", default=device_id, max_len=128) or device_id
        kind = KINDS[body.choice("kind", tuple(KINDS), default="ipc")]
        channels = body.integer("channels", 1, 65535, default=1)
        home = body.string("home_node", default="", max_len=64)
        url = source_url(body) or ""
        enabled = body.boolean("enabled", default=True)
        verifier = body.secret("secret", required=not url)
        if (yield self.api.store.get_device(device_id)) is not None:
            raise ApiError(409, f"device {device_id!r} exists", "device_id")
        home = yield self.api.home_for(device_id, home)
        changes = yield self.api.store.upsert_device(
            device_id, name, kind, channels, home, verifier or NO_SECRET, url, enabled
        )
        yield self.api.published(changes)
        device = yield self.api.store.get_device(device_id)
        return 201, device_view(device), {"Location": f"{API_PREFIX}/devices/{quote(device_id)}"}


class Device(JsonResource):
    def __init__(self, api, device_id):
        super().__init__(api)
        self.device_id = device_id
        self.putChild(b"record-settings", RecordSettingsDir(api, device_id))

    @defer.inlineCallbacks
    def do_GET(self, call):
        device = yield self.api.device(self.device_id)
        return 200, device_view(device)

    @defer.inlineCallbacks
    def do_PATCH(self, call):
        body = call.body(("name", "kind", "channels", "home_node", "secret", "source_url",
                          "enabled", "version"), ignored=("device_id", "secret_set"))
        if body.has("device_id") and body.data["device_id"] != self.device_id:
            raise invalid("device_id", "a device cannot be renamed; add a new one")
        fields = {}
        if body.has("name"):
            fields["name"] = body.string("name", required=True, max_len=128, min_len=1)
        kind = body.choice("kind", tuple(KINDS))
        if body.has("channels"):
            fields["channels"] = body.integer("channels", 1, 65535, required=True)
        if body.has("enabled"):
            fields["enabled"] = body.boolean("enabled")
        expected = body.integer("version", 1, 2**63)
        home = body.string("home_node", max_len=64)
        url = source_url(body)
        verifier = body.secret("secret")
        device = yield self.api.device(self.device_id)
        check_version(expected, device.version)
        if url is not None and url != mask_url(device.source_url):
            fields["source_url"] = url  # a masked URL sent back unchanged keeps the real one
        if home is not None:
            fields["home_node"] = yield self.api.home_for(self.device_id, home)
        fields = {k: v for k, v in fields.items() if v is not None}
        if verifier is not None or (kind is not None and KINDS[kind] != device.kind):
            merged = {"name": device.name, "channels": device.channels,
                      "home_node": device.home_node, "source_url": device.source_url,
                      "enabled": device.enabled, **fields}
            changes = yield self.api.store.upsert_device(
                self.device_id, merged["name"],
                KINDS[kind] if kind is not None else device.kind, merged["channels"],
                merged["home_node"], verifier if verifier is not None else device.verifier,
                merged["source_url"], merged["enabled"],
            )
        elif fields:
            changes = yield self.api.store.update_device_fields(self.device_id, **fields)
        else:
            changes = []
        yield self.api.published(changes)
        device = yield self.api.device(self.device_id)
        return 200, device_view(device)

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        yield self.api.device(self.device_id)
        changes = yield self.api.store.remove_device(self.device_id)
        yield self.api.published(changes)
        return 200, {"deleted": "device", "device_id": self.device_id,
                     "grants_removed": sum(1 for c in changes if c.key != self.device_id)}


class RecordSettingsDir(JsonResource):
    child_param = "{channel}"

    def __init__(self, api, device_id):
        super().__init__(api)
        self.device_id = device_id

    def make_child(self, text):
        return RecordSettings(self.api, self.device_id, text)


class RecordSettings(JsonResource):
    def __init__(self, api, device_id, channel):
        super().__init__(api)
        self.device_id = device_id
        self.channel_text = channel

    @defer.inlineCallbacks
    def _device_channel(self):
        device = yield self.api.device(self.device_id)
        text = self.channel_text
        if not (text.isascii() and text.isdigit()) or int(text) >= device.channels:
            raise not_found(f"device {self.device_id!r} has no channel {text!r} "
                            f"(channels 0..{device.channels - 1})")
        return device, int(text)

    def _view(self, channel, stored):
        out = {"device_id": self.device_id, "channel": channel}
        out.update(RECORD_DEFAULTS)
        if stored:
            out.update({k: stored[k] for k in RECORD_DEFAULTS if k in stored})
            if "reported" in stored:
                out["reported"] = stored["reported"]
        out["stored"] = bool(stored and any(k in stored for k in RECORD_DEFAULTS))
        return out

    @defer.inlineCallbacks
    def do_GET(self, call):
        _, channel = yield self._device_channel()
        stored = yield self.api.store.get_record_settings(self.device_id, channel)
        return 200, self._view(channel, stored)

    @defer.inlineCallbacks
    def do_PUT(self, call):
        body = call.body(tuple(RECORD_DEFAULTS), ignored=("device_id", "channel", "stored",
                                                          "reported"))
        settings = {
            "mode": body.choice("mode", MODES, default=RECORD_DEFAULTS["mode"]),
            "stream": body.choice("stream", STREAMS, default=RECORD_DEFAULTS["stream"]),
        }
        for field, (lo, hi) in RECORD_RANGES.items():
            settings[field] = body.integer(field, lo, hi, default=RECORD_DEFAULTS[field])
        settings["schedule"] = schedule_of(body)
        settings["event_types"] = event_types_of(body)
        if settings["mode"] == "schedule" and not settings["schedule"]:
            raise invalid("schedule", "mode schedule needs at least one schedule entry")
        _, channel = yield self._device_channel()
        if body.has("channel") and str(body.data["channel"]) != str(channel):
            raise invalid("channel", "channel differs from the one in the path")
        stored = (yield self.api.store.get_record_settings(self.device_id, channel)) or {}
        if "reported" in stored:
            settings["reported"] = stored["reported"]  # the device's own report stays
        changes = yield self.api.store.set_record_settings(self.device_id, channel, settings)
        yield self.api.published(changes)
        return 200, self._view(channel, settings)


# -- grants


class Grants(JsonResource):
    @defer.inlineCallbacks
    def do_GET(self, call):
        cursor, limit = page_args(call.request)
        records, next_cursor = yield self.api.store.list_grants(
            cursor=cursor, limit=limit, device_id=query(call.request, "device_id"),
            principal=query(call.request, "principal"),
        )
        now = self.api.now_ms()
        return 200, {"items": [grant_view(g, now) for g in records],
                     "next_cursor": next_cursor}

    @defer.inlineCallbacks
    def do_PUT(self, call):
        body = call.body(("principal", "device_id", "actions", "expires"),
                         ignored=("version", "expired"))
        principal = principal_of(body)
        device_id = body.string("device_id", required=True, max_len=128)
        actions = actions_of(body)
        now = self.api.now_ms()
        expires = expiry_of(body, now)
        if device_id.startswith(CU_TARGET):  # who may drive a wall or decoder
            if actions != Action.WALL:
                raise invalid("actions", "a grant on a wall (cu:ACCOUNT) is ['wall'] only")
            if (yield self.api.store.get_user(device_id[len(CU_TARGET):])) is None:
                raise not_found(f"no account {device_id[len(CU_TARGET):]!r}")
        else:
            if actions & Action.WALL:
                raise invalid("actions", "'wall' is granted on a wall: device_id cu:ACCOUNT")
            yield self.api.device(device_id)
        if principal.startswith("user:"):
            if (yield self.api.store.get_user(principal[5:])) is None:
                raise not_found(f"no user {principal[5:]!r}")
        current, _ = yield self.api.store.list_grants(principal=principal, device_id=device_id,
                                                      limit=1)
        if current and current[0].actions == actions and current[0].expires == expires:
            return 200, grant_view(current[0], now)  # already so: nothing to sync
        changes = yield self.api.store.set_grant(principal, device_id, actions, expires)
        yield self.api.published(changes)
        grant = changes[-1].grant
        return (201 if not current else 200), grant_view(grant, now)

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        data = call.optional_body()
        body = Body(data, ("principal", "device_id"), ignored=("actions", "version"))
        for field in ("principal", "device_id"):
            if not body.has(field):
                value = query(call.request, field)
                if value is not None:
                    body.data[field] = value
        principal = principal_of(body)
        device_id = body.string("device_id", required=True, max_len=128)
        changes = yield self.api.store.remove_grant(principal, device_id)
        if not changes:
            raise not_found(f"no grant of {principal!r} on {device_id!r}")
        yield self.api.published(changes)
        return 200, {"deleted": "grant", "principal": principal, "device_id": device_id}


# -- nodes


class Nodes(JsonResource):
    child_param = "{id}"

    def make_child(self, text):
        return Node(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        cursor, limit = page_args(call.request)
        nodes = yield self.api.store.list_nodes()
        after = [n for n in nodes if n["node_id"] > cursor]
        page = after[:limit]
        next_cursor = page[-1]["node_id"] if len(after) > limit else ""
        return 200, {"items": [node_view(n) for n in page], "next_cursor": next_cursor}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("node_id", "signalling", "media", "capacity"))
        node_id = body.string("node_id", required=True, pattern=NODE_ID_RE, max_len=64,
                              what="node id")
        signalling = body.string("signalling", default="", max_len=256)
        media = body.string("media", default="", max_len=256)
        capacity = body.integer("capacity", 0, 2**32 - 1, default=0)
        existing = yield self.api.node(node_id)
        changes = yield self.api.store.upsert_node(node_id, signalling, media, capacity)
        yield self.api.published(changes)
        node = yield self.api.node(node_id)
        status = 200 if existing is not None else 201
        return status, node_view(node), {"Location": f"{API_PREFIX}/nodes/{quote(node_id)}"}


class Node(JsonResource):
    def __init__(self, api, node_id):
        super().__init__(api)
        self.node_id = node_id

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        if (yield self.api.node(self.node_id)) is None:
            raise not_found(f"no node {self.node_id!r}")
        homed, _ = yield self.api.store.list_devices(limit=1, home_node=self.node_id)
        if homed and query(call.request, "force") not in ("1", "true", "yes"):
            raise ApiError(409, f"devices are homed on node {self.node_id!r}; move them "
                                "first or force the removal", "node_id")
        changes = yield self.api.store.remove_node(self.node_id)
        yield self.api.published(changes)
        return 200, {"deleted": "node", "node_id": self.node_id}


# -- admin tokens


def forced(request):
    return query(request, "force") in ("1", "true", "yes")


class Tokens(JsonResource):
    child_param = "{id}"

    def make_child(self, text):
        return Token(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        tokens = yield self.api.store.list_admin_tokens()
        return 200, {"items": [token_view(t, call.token_id) for t in tokens]}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("name", "expires_in"))
        name = body.string("name", required=True, pattern=NAME_RE, max_len=64,
                           what="token name")
        expires_in = body.integer("expires_in", 1, MAX_EXPIRES_IN)
        secret = new_token()
        token_id = yield self.api.store.add_admin_token(name, hash_token(secret),
                                                        expires_in=expires_in)
        token = yield self.api.store.get_admin_token(token_id)
        self.api.log.info("admin {admin} created admin token {id} ({name})",
                          admin=call.admin, id=token_id, name=name)
        # the only time the secret leaves the server
        return 201, {**token_view(token, call.token_id), "token": secret}, {
            "Location": f"{API_PREFIX}/tokens/{token_id}"}


class Token(JsonResource):
    def __init__(self, api, text):
        super().__init__(api)
        self.text = text

    def _id(self):
        if not (self.text.isascii() and self.text.isdigit()) or len(self.text) > 18:
            raise not_found(f"no admin token {self.text!r}")
        return int(self.text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        token = yield self.api.store.get_admin_token(self._id())
        if token is None:
            raise not_found(f"no admin token {self.text}")
        return 200, token_view(token, call.token_id)

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        token_id = self._id()
        try:
            token = yield self.api.store.revoke_admin_token(token_id,
                                                            force=forced(call.request))
        except LastTokenError as e:
            raise ApiError(409, f"{e.message}; add ?force=true to revoke it anyway (then "
                                "only vss-admin bootstrap can make a new one)", "id") from None
        self.api.log.info("admin {admin} revoked admin token {id} ({name})",
                          admin=call.admin, id=token_id, name=token.name)
        return 200, token_view(token, call.token_id)


# -- stream credentials (vss.streamcreds)


def credential_view(c, now_ms):
    """A stream credential as answered: never its secret nor its sealed form."""

    return {"id": c.cred_id, "user": c.username, "device_id": c.device_id, "name": c.name,
            "state": state(c, now_ms), "created": iso_time(c.created),
            "expires": iso_time(c.expires) if c.expires else None,
            "revoked": iso_time(c.revoked) if c.revoked else None, "version": int(c.version)}


class StreamCredentials(JsonResource):
    child_param = "{id}"

    def make_child(self, text):
        return StreamCredentialResource(self.api, text)

    @defer.inlineCallbacks
    def do_GET(self, call):
        cursor, limit = page_args(call.request)
        records, next_cursor = yield self.api.store.list_credentials(
            cursor=cursor, limit=limit, username=query(call.request, "user"),
            device_id=query(call.request, "device_id"))
        now = self.api.now_ms()
        return 200, {"items": [credential_view(c, now) for c in records],
                     "next_cursor": next_cursor}

    @defer.inlineCallbacks
    def do_POST(self, call):
        body = call.body(("user", "device_id", "name", "expires_in"))
        username = body.string("user", required=True, pattern=NAME_RE, max_len=64,
                               what="user name")
        device_id = body.string("device_id", required=True, max_len=128, what="device id")
        name = body.string("name", default="", max_len=64, what="name")
        expires_in = body.integer("expires_in", 1, MAX_EXPIRES_IN)
        key = getattr(self.api.backend, "credential_key", None)
        if key is None:
            raise ApiError(409, "stream credentials need the cluster secret: make them on "
                           "the running central platform")
        device = yield self.api.device(device_id)
        cred_id, secret = sc.new_id(), sc.new_secret()
        expires = self.api.now_ms() + expires_in * 1000 if expires_in else 0
        record = StreamCredential(cred_id, username, device_id, name, 0, expires, 0,
                                  sc.seal(key, cred_id, username, device_id, secret), 0)
        try:
            changes = yield self.api.store.add_credential(record)
        except VssError as e:
            if e.code == ResultCode.FORBIDDEN:  # the user, or the grant, is missing
                raise invalid("user", e.message) from None
            raise
        yield self.api.published(changes)
        stored = changes[-1].credential
        self.api.log.info("admin {admin} made stream credential {id} of {user} for {device}",
                          admin=call.admin, id=cred_id, user=username, device=device_id)
        path = f"/live/{device_id}/main"
        node = (yield self.api.node(device.home_node)) if device.home_node else None
        base = node["media"] if node else ""
        view = credential_view(stored, self.api.now_ms())
        # the only time the secret leaves the server
        return 201, {**view, "secret": secret, "path": path,
                     "url": f"{base}{path}?cred={cred_id}.{secret}" if base else "",
                     "digest_user": cred_id}, {
            "Location": f"{API_PREFIX}/stream-credentials/{cred_id}"}


class StreamCredentialResource(JsonResource):
    def __init__(self, api, text):
        super().__init__(api)
        self.text = text

    def _id(self):
        if not CRED_ID_RE.match(self.text):
            raise not_found(f"no stream credential {self.text!r}")
        return self.text

    @defer.inlineCallbacks
    def do_GET(self, call):
        record = yield self.api.store.get_credential(self._id())
        if record is None:
            raise not_found(f"no stream credential {self.text}")
        return 200, credential_view(record, self.api.now_ms())

    @defer.inlineCallbacks
    def do_DELETE(self, call):
        changes = yield self.api.store.revoke_credential(self._id())
        yield self.api.published(changes)
        record = changes[-1].credential
        self.api.log.info("admin {admin} revoked stream credential {id} of {user}",
                          admin=call.admin, id=record.cred_id, user=record.username)
        return 200, credential_view(record, self.api.now_ms())


# -- status and description


def event_view(entry):
    """An event and its acknowledgement as the API answers it."""
    e = entry.event

    def name(enum, value):
        try:
            return enum(value).name.lower()
        except ValueError:
            return value

    return {"id": f"{e.node_id}/{e.seq}", "node_id": e.node_id, "seq": e.seq,
            "device_id": e.device_id, "channel": e.channel, "type": e.type,
            "phase": name(EventPhase, e.phase), "severity": name(Severity, e.severity),
            "pu_time": iso_time(e.pu_time), "time": iso_time(e.node_time),
            "items": {kv.key: kv.value for kv in e.items},
            "acked_by": entry.acked_by or None,
            "acked_at": iso_time(entry.acked_at) if entry.acked_at else None,
            "comment": entry.comment or None}


def time_arg(request, name):
    """A query time: ms since the epoch, or ISO 8601 with its zone; None when absent."""
    raw = query(request, name)
    if raw is None or raw == "":
        return None
    if raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, f"{name} must be ms since the epoch or ISO 8601") from None
    if when.tzinfo is None:
        raise invalid(name, f"{name} must name its time zone (Z or +HH:MM)")
    return int(when.timestamp() * 1000)


class EventsResource(JsonResource):
    """The stored events and alarms, newest first (``vss.cms.store.events``)."""

    @defer.inlineCallbacks
    def do_GET(self, call):
        request = call.request
        _cursor, limit = page_args(request)
        since, until = time_arg(request, "since"), time_arg(request, "until")
        if since is not None and until is not None and until <= since:
            raise invalid("until", "until must be after since")
        entries, truncated = yield self.api.store.list_events(
            device_id=query(request, "device_id", ""), type=query(request, "type", ""),
            since=since or 0, until=until or 0, limit=limit)
        return 200, {"items": [event_view(e) for e in entries], "truncated": truncated}


class Status(JsonResource):
    @defer.inlineCallbacks
    def do_GET(self, call):
        status = yield defer.maybeDeferred(self.api.backend.status)
        if not isinstance(status, dict):
            status = {"status": status}
        return 200, status


class OpenApi(JsonResource):
    def do_GET(self, call):
        return 200, openapi_document()


def iter_routes(res, prefix=""):
    """(path, methods) of every route under ``res`` (an API resource), e.g.
    ``("/users/{name}", ["DELETE", "GET", "PATCH"])``."""
    methods = res.methods()
    if methods:
        yield prefix or "/", methods
    for name, child in sorted(res.children.items()):
        if isinstance(child, JsonResource):
            yield from iter_routes(child, f"{prefix}/{name.decode()}")
    if res.child_param is not None:
        yield from iter_routes(res.make_child("sample"), f"{prefix}/{res.child_param}")


# ---------------------------------------------------------------------------
# the API object: authentication, dispatch, answers


class Principal:
    """Who makes a request: an admin token (``kind`` "token", every right) or, on the
    console, an operator (``kind`` "operator", the rights of ``role``)."""

    ADMINISTRATOR = "administrator"

    def __init__(self, kind, name, role=ADMINISTRATOR, token_id=None, session=None):
        self.kind = kind
        self.name = name
        self.role = role
        self.token_id = token_id
        #: the console session of an operator (``vss.cms.operators``), or None
        self.session = session

    @property
    def label(self):
        """``token:<name>#<id>`` or ``operator:<name>``: who, in logs and the audit."""
        if self.kind == "token":
            return f"token:{self.name}#{self.token_id}"
        return f"{self.kind}:{self.name}"


class Call:
    """One request as a handler sees it."""

    def __init__(self, api, request, principal=None):
        self.api = api
        self.request = request
        self.principal = principal
        #: the admin token's name (for a token) or the principal's label
        self.admin = None if principal is None else (
            principal.name if principal.kind == "token" else principal.label)
        #: the id of the admin token of this request
        self.token_id = None if principal is None else principal.token_id

    def _raw(self):
        content = getattr(self.request, "content", None)
        if content is None:
            return b""
        content.seek(0)
        data = content.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        return data

    def optional_body(self):
        data = self._raw()
        return self._parse(data) if data.strip() else {}

    def body(self, allowed, ignored=()):
        data = self._raw()
        if not data.strip():
            raise invalid("", "a JSON object body is required")
        return Body(self._parse(data), allowed, ignored)

    @staticmethod
    def _parse(data):
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise invalid("", "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise invalid("", "the body must be a JSON object")
        return value


class AdminApi:
    log = Logger()

    def __init__(self, backend):
        self.backend = backend
        self.store = backend.store
        #: answers given, by (method, status): for ``/metrics``
        self.answered = {}
        # one change at a time, so that "check, then write" holds within the API
        self.lock = defer.DeferredLock()
        self.clock = getattr(backend, "clock", None)  # else the reactor

    def now_ms(self):
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        return int(clock.seconds() * 1000)

    # -- helpers for handlers

    @defer.inlineCallbacks
    def published(self, changes):
        """S501: hand the changes to CMS. The data is committed whatever happens
        here; a node that misses the notification catches up from the change log."""
        if not changes:
            return
        try:
            yield defer.maybeDeferred(self.backend.publish, list(changes))
        except Exception:
            self.log.failure("publishing {count} changes (up to seq {seq}) failed",
                             count=len(changes), seq=changes[-1].seq)

    @defer.inlineCallbacks
    def device(self, device_id):
        device = yield self.store.get_device(device_id)
        if device is None:
            raise not_found(f"no device {device_id!r}")
        return device

    @defer.inlineCallbacks
    def node(self, node_id):
        nodes = yield self.store.list_nodes()
        for n in nodes:
            if n["node_id"] == node_id:
                return n
        return None

    @defer.inlineCallbacks
    def home_for(self, device_id, home):
        """``home`` if it names a known node; the assigned node if it is empty."""
        if home:
            if (yield self.node(home)) is None:
                raise invalid("home_node", f"no node {home!r}")
            return home
        assigned = yield defer.maybeDeferred(self.backend.assign_home_node, device_id)
        return assigned or ""

    # -- request handling

    def handle(self, res, request):
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.maybeDeferred(self._dispatch, res, request)
        d.addErrback(self._error, request)
        d.addCallback(self._answer, request, gone)
        d.addErrback(self.log.failure, "cannot answer an admin API request")
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _dispatch(self, res, request):
        method = request.method.decode("ascii", "replace").upper()
        standby = self.backend.not_active()
        if standby is not None:  # a standby CMS: the active one serves (vss.cms.standby)
            why, active = standby
            if not res.requires_auth:
                raise NotActive("the active CMS serves this", "")
            try:  # only who may use the API learns where the active CMS is
                yield self.authenticate(request)
            except VssError as e:
                if e.code != ResultCode.NOT_ACTIVE:  # the token's touch: not a standby's
                    raise
            raise NotActive(why, active)
        principal = None
        if res.requires_auth:
            principal = yield self.authenticate(request)
        if getattr(request, "body_too_large", False):
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        methods = res.methods()
        if not methods:
            raise not_found("no such resource")
        handler = getattr(res, "do_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            raise ApiError(405, f"method {method} not allowed here",
                           headers={"Allow": ", ".join(methods)})
        call = Call(self, request, principal)
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            result = yield self.change(call, res, handler)
            self.log.info("admin {admin} {method} {path}: {status}", admin=call.admin,
                          method=method, path=request.path.decode("utf-8", "replace"),
                          status=result[0])
        else:
            result = yield defer.maybeDeferred(handler, call)
        return result

    def change(self, call, res, handler):
        """Run a handler that changes something: one at a time (``lock``)."""
        return self.lock.run(defer.maybeDeferred, handler, call)

    @defer.inlineCallbacks
    def authenticate(self, request):
        """The ``Principal`` of the request's bearer token, or ApiError 401."""
        challenge = {"WWW-Authenticate": 'Bearer realm="vss"'}
        header = request.getHeader(b"authorization")
        scheme, _, token = (header or b"").strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise ApiError(401, "a bearer token is required", headers=challenge)
        found = None
        if len(token) <= MAX_TOKEN:
            found = yield self.store.authenticate_admin_token(hash_token(token))
        if found is not None and found.state == ACTIVE:
            return Principal("token", found.name, token_id=found.id)
        peer = request.getClientAddress()
        peer = getattr(peer, "host", str(peer))
        if found is None:
            self.log.info("admin API: refused a token from {peer}", peer=peer)
            raise ApiError(401, "the token is not valid", headers=challenge)
        self.log.info("admin API: refused {state} admin token {id} ({name}) from {peer}",
                      state=found.state, id=found.id, name=found.name, peer=peer)
        if found.state == EXPIRED:
            message = f"the token expired at {iso_time(found.expires)}"
        else:
            message = f"the token was revoked at {iso_time(found.revoked)}"
        raise ApiError(401, message, headers=challenge)

    def _error(self, failure, request):
        exc = failure.value
        if isinstance(exc, ApiError):
            return exc.status, exc.payload(), exc.headers
        if isinstance(exc, VssError):
            status = HTTP_FOR_CODE.get(exc.code, 500)
            if status == 500:
                self.log.failure("admin API {method} {path}", failure,
                                 method=request.method.decode("ascii", "replace"),
                                 path=request.path.decode("utf-8", "replace"))
            if status == 503:
                # The database failed: the admin is told, and the change was not
                # published (it can only have been written if the failure struck
                # during the commit itself; a read shows it then).
                self.log.warn("admin API {method} {path}: {error}",
                              method=request.method.decode("ascii", "replace"),
                              path=request.path.decode("utf-8", "replace"), error=exc.message)
                return status, {"error": exc.message}, {"Retry-After": str(RETRY_AFTER)}
            return status, {"error": exc.message}, {}
        self.log.failure("admin API {method} {path} failed", failure,
                         method=request.method.decode("ascii", "replace"),
                         path=request.path.decode("utf-8", "replace"))
        return 500, {"error": "internal error"}, {}

    def _answer(self, result, request, gone):
        if len(result) == 2:
            (status, payload), headers = result, {}
        else:
            status, payload, headers = result
        method = request.method.decode("ascii", "replace").upper()
        key = (method if method in METHODS else "other", status)
        self.answered[key] = self.answered.get(key, 0) + 1
        if gone:
            return
        data = json.dumps(payload, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name.encode("ascii"), value.encode("utf-8"))
        if status == 413:
            request.setHeader(b"connection", b"close")
        request.setHeader(b"content-length", str(len(data)).encode("ascii"))
        request.write(data)
        request.finish()


def make_admin_resource(backend, api=None):
    """The resource tree: ``/api/v1/...``; anything else answers a JSON 404. ``api``:
    the ``AdminApi`` (or a subclass: the console's) answering it."""
    api = api if api is not None else AdminApi(backend)
    v1 = Index(api)
    root = Directory(api, {b"api": Directory(api, {b"v1": v1}, requires_auth=False)},
                     requires_auth=False)
    return root, v1


def make_admin_service(backend, reactor, description=DEFAULT_LISTEN):
    """A service listening with the admin site on ``description`` (an endpoint string;
    loopback only unless told otherwise: the API changes the whole platform)."""

    return ListenService("admin-api", description, make_admin_site(backend), reactor)


def make_admin_site(backend):
    """The ``Site`` of the admin API for an ``IAdminBackend`` (or the CMS service)."""
    root, _ = make_admin_resource(backend)
    site = Site(root, requestFactory=AdminRequest, parsePOSTFormSubmission=False)
    site.noisy = False
    return site
