"""
The audit of changes: every request that changes the platform, through the admin API
(scripts with a token, ``vss-admin``) or the console (an operator), becomes one entry of
the audit log (``vss.cms.store.audit``): who (``token:<name>#<id>`` or
``operator:<name>``), when, from where (the client's address), what (the method and
path, the record before and after the change, the request's body) and how it ended (the
HTTP status; refusals are entries too). Secrets are masked everywhere in an entry:
passwords, device secrets, tokens, stream credential secrets and the credentials of a
camera URL never reach the log.

``ChangeAudit.run(call, handler)`` runs one change: it reads the record the request is
about (``subject``), runs the handler, reads the record again and appends the entry. The
entry is written right after the change, not in its transaction: a database that fails
in between loses the entry (logged here), never the change.

The entry's ``detail`` also holds ``seq``, the change-log sequence of the last change
the request handed to CMS (S501): the console waits until every node confirmed it
(S506).
"""

from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from vss.cms import mms
from vss.cms.store.audit import entry
from vss.cms.store.tokens import iso_time
from vss.protocols.errors import VssError

#: keys whose values are secrets wherever they appear in an entry
SECRET_KEYS = frozenset({"password", "secret", "token", "verifier", "sealed", "new_password",
                         "current_password"})
MASK = "***"


def mask(value, key=None):
    """``value`` with its secrets masked (dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    lowered = (key or "").lower()
    if lowered in SECRET_KEYS:
        return MASK if value not in (None, "") else value
    if isinstance(value, str) and lowered.endswith("url"):
        return mms.mask_url(value.split("?cred=")[0] if "?cred=" in value else value)
    return value


def operator_view(o, sessions=0):
    """An operator account as answered: never its verifier."""
    return {"username": o.username, "role": o.role, "enabled": bool(o.enabled),
            "created": iso_time(o.created), "changed": iso_time(o.changed),
            "last_login": iso_time(o.last_login), "version": int(o.version),
            "sessions": sessions}


def peer_of(request):
    peer = request.getClientAddress()
    return getattr(peer, "host", str(peer))


def route_of(request):
    """The path segments after ``/api/v1`` (decoded)."""
    path = request.path.decode("utf-8", "replace")
    if path.startswith(mms.API_PREFIX):
        path = path[len(mms.API_PREFIX):]
    return [unquote(p) for p in path.split("/") if p]


class Subject:
    """What a change is about: ``target`` (``device:cam-1``) and how to read its record
    as answered (``read()``: a Deferred view, or None when it does not exist)."""

    def __init__(self, target, read=None):
        self.target = target
        self.read = read


class ChangeAudit:
    """Audits the changes made through ``api`` (a ``vss.cms.mms.AdminApi``)."""

    log = Logger()

    def __init__(self, api):
        self.api = api
        self.store = api.store
        self.entries = 0

    # -- what a request is about

    def subject(self, call):
        """The ``Subject`` of a change request (None: the response names it)."""
        request, store = call.request, self.store
        segments = route_of(request)
        try:
            body = call.optional_body()
        except mms.ApiError:
            body = {}

        def field(name):
            value = body.get(name) if isinstance(body, dict) else None
            if value is None:
                value = mms.query(request, name)
            return value if isinstance(value, str) else None

        head = segments[0] if segments else ""
        key = segments[1] if len(segments) > 1 else None
        if head == "users":
            name = key or field("username")
            return Subject(f"user:{name}", self._reader(store.get_user, name, mms.user_view))
        if head == "devices":
            device_id = key or field("device_id")
            if len(segments) >= 4 and segments[2] == "record-settings":
                channel = segments[3]
                return Subject(f"device:{device_id}/channel:{channel}",
                               self._settings_reader(device_id, channel))
            return Subject(f"device:{device_id}",
                           self._reader(store.get_device, device_id, mms.device_view))
        if head == "grants":
            principal, device_id = field("principal"), field("device_id")
            return Subject(f"grant:{principal}|{device_id}",
                           self._grant_reader(principal, device_id))
        if head == "nodes":
            node_id = key or field("node_id")
            return Subject(f"node:{node_id}", self._node_reader(node_id))
        if head == "tokens":
            if key is None or not key.isdigit():
                return None
            return Subject(f"token:#{key}", self._reader(
                store.get_admin_token, int(key), lambda t: mms.token_view(t)))
        if head == "stream-credentials":
            if key is None:
                return None
            return Subject(f"stream-credential:{key}", self._reader(
                store.get_credential, key,
                lambda c: mms.credential_view(c, self.api.now_ms())))
        if head == "operators":
            name = key or field("username")
            return Subject(f"operator:{name}",
                           self._reader(store.get_operator, name, operator_view))
        return Subject("/" + "/".join(segments))

    def _reader(self, get, key, view):
        if key is None:
            return None

        def read():
            return get(key).addCallback(lambda r: None if r is None else view(r))

        return read

    def _settings_reader(self, device_id, channel):
        if device_id is None or not str(channel).isdigit():
            return None
        return lambda: self.store.get_record_settings(device_id, int(channel))

    def _grant_reader(self, principal, device_id):
        if not principal or not device_id:
            return None

        @defer.inlineCallbacks
        def read():
            found, _ = yield self.store.list_grants(principal=principal, device_id=device_id,
                                                    limit=1)
            return mms.grant_view(found[0]) if found else None

        return read

    def _node_reader(self, node_id):
        if not node_id:
            return None

        @defer.inlineCallbacks
        def read():
            for n in (yield self.store.list_nodes()):
                if n["node_id"] == node_id:
                    return {k: n[k] for k in ("node_id", "signalling", "media", "capacity")}
            return None

        return read

    @defer.inlineCallbacks
    def _read(self, subject):
        if subject is None or subject.read is None:
            return None
        try:
            return mask((yield subject.read()))
        except Exception:  # noqa: BLE001 - a record that cannot be read is left out
            return None

    # -- one change

    @defer.inlineCallbacks
    def run(self, call, handler):
        """Run ``handler(call)`` (a change) and audit it; its result or its failure."""
        request = call.request
        method = request.method.decode("ascii", "replace").upper()
        subject = self.subject(call)
        before = yield self._read(subject)
        try:
            body = call.optional_body()
        except mms.ApiError:
            body = None
        self.api.last_seq = 0
        failure = result = None
        try:
            result = yield defer.maybeDeferred(handler, call)
            status, payload = result[0], result[1]
        except Exception as e:  # noqa: BLE001 - recorded, then raised again below
            failure = Failure()
            payload = None
            if isinstance(e, mms.ApiError):
                status = e.status
            elif isinstance(e, VssError):
                status = mms.HTTP_FOR_CODE.get(e.code, 500)
            else:
                status = 500
        after = (yield self._read(subject)) if status < 400 else before
        detail = {"before": before, "after": after}
        if body:
            detail["request"] = mask(body)
        if failure is not None:
            exc = failure.value
            detail["error"] = getattr(exc, "message", None) or "internal error"
            if getattr(exc, "field", None):
                detail["field"] = exc.field
        elif subject is None or subject.read is None:
            detail["after"] = mask(payload) if isinstance(payload, dict) else None
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1", "replace")
        if agent:
            detail["client"] = agent[:120]
        target = subject.target if subject is not None else self._target_of(payload)
        seq = self.api.last_seq
        if seq:
            detail["seq"] = seq
        path = request.uri.decode("utf-8", "replace")
        if path.startswith(mms.API_PREFIX):
            path = path[len(mms.API_PREFIX):]
        record = entry(self.api.now_ms(), "change", call.principal.label if call.principal
                       else "anonymous", peer_of(request), action=f"{method} {path}",
                       target=target, status=status, detail=detail)
        try:
            yield self.store.append_audit([record])
            self.entries += 1
        except Exception:  # noqa: BLE001 - the change stands; the lost entry is logged
            self.log.failure("audit entry not written: {actor} {action} {target} {status}",
                             actor=record.actor, action=record.action, target=target,
                             status=status)
        if failure is not None:
            failure.raiseException()
        if seq:
            headers = dict(result[2]) if len(result) > 2 else {}
            headers["X-Vss-Change-Seq"] = str(seq)
            result = (result[0], result[1], headers)
        return result

    @staticmethod
    def _target_of(payload):
        if isinstance(payload, dict):
            if "token" in payload and "id" in payload:
                return f"token:#{payload['id']}"
            if "digest_user" in payload and "id" in payload:
                return f"stream-credential:{payload['id']}"
        return ""
