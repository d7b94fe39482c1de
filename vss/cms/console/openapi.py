"""The console's routes (``/session``, ``/operators``, ``/audit``) added to the admin
API's OpenAPI 3.1 document (``vss.cms.mms.openapi_document``)."""

from vss.cms import openapi as mms
from vss.cms.apirules import NAME_RE
from vss.cms.openapi import _json, _obj, _op, _param, _ref
from vss.cms.store.audit import KINDS
from vss.cms.store.operators import ROLES

STR, INT, BOOL = mms.STR, mms.INT, mms.BOOL
WHEN = {"type": ["string", "null"], "format": "date-time"}


def console_openapi(doc):
    """``doc`` (the admin API's document) with the console's routes and schemas."""
    schemas = doc["components"]["schemas"]
    operator_props = {
        "username": {"type": "string", "pattern": NAME_RE.pattern},
        "role": {"type": "string", "enum": list(ROLES)}, "enabled": BOOL,
        "created": WHEN, "changed": WHEN, "last_login": WHEN, "version": INT,
        "sessions": {"type": "integer", "description": "console sessions open now"},
    }
    password = {"type": "string", "writeOnly": True, "minLength": 10, "maxLength": 1024}
    schemas.update({
        "Login": _obj({"username": STR, "password": password}, ("username", "password")),
        "ConsoleSession": _obj({
            "username": STR, "role": {"type": "string", "enum": list(ROLES)},
            "csrf": {"type": "string", "description": "send it as X-CSRF-Token with every "
                     "change made with this session"},
            "idle_seconds": INT, "expires": WHEN, "can_change": BOOL},
            ("username", "role", "csrf")),
        "Operator": _obj(operator_props, tuple(operator_props)),
        "OperatorList": _obj({"items": {"type": "array", "items": _ref("Operator")}},
                             ("items",)),
        "OperatorCreate": _obj({"username": operator_props["username"], "password": password,
                                "role": operator_props["role"], "enabled": BOOL},
                               ("username", "password")),
        "OperatorPatch": _obj({"password": password, "role": operator_props["role"],
                               "enabled": BOOL, "version": INT}),
        "AuditEntry": _obj({
            "id": INT, "at": {"type": "string", "format": "date-time"},
            "kind": {"type": "string", "enum": list(KINDS)},
            "actor": {"type": "string", "description": "token:<name>#<id>, "
                      "operator:<name> or user:<name>"},
            "source": {"type": "string", "description": "the client's address"},
            "node_id": {"type": "string", "description": "the node that reported it "
                        "(media), else empty"},
            "action": STR, "target": STR,
            "status": {"type": "integer", "description": "HTTP status of a change or a "
                       "login; 0 for media"},
            "detail": {"type": "object", "description": "before, after, request (secrets "
                       "masked), error, seq; for media: channel, stream, from, to, via"}},
            ("id", "at", "kind", "actor", "source", "node_id", "action", "target", "status",
             "detail")),
        "AuditPage": mms._page("AuditEntry"),
    })
    name_p = _param("name", "path", "operator name")
    login = _op("Log in: answers the session and sets its cookie (HttpOnly, "
                "SameSite=Strict; Secure over TLS); 401 wrong name or password, 429 "
                "throttled (Retry-After)", _json(_ref("ConsoleSession")), body="Login",
                errors=(403, 429))
    doc["paths"].update({
        "/session": {
            "post": login,
            "get": _op("The session of the cookie sent", _json(_ref("ConsoleSession"))),
            "delete": _op("Log out (needs X-CSRF-Token)", errors=(403,)),
        },
        "/operators": {
            "get": _op("List operators (never their password)", _json(_ref("OperatorList"))),
            "post": _op("Add an operator (administrators)", _json(_ref("Operator"), "created"),
                        201, "OperatorCreate", errors=(403, 409)),
        },
        "/operators/{name}": {
            "get": _op("Show an operator", _json(_ref("Operator")), params=[name_p],
                       errors=(404,)),
            "patch": _op("Change an operator; their sessions end when they are disabled "
                         "or get another role or password (409: the last enabled "
                         "administrator)", _json(_ref("Operator")), body="OperatorPatch",
                         params=[name_p], errors=(403, 404, 409)),
            "delete": _op("Remove an operator", params=[name_p], errors=(403, 404, 409)),
        },
        "/audit": {
            "get": _op("The audit log, newest first; entries cannot be changed",
                       _json(_ref("AuditPage")),
                       params=[*mms.PAGING,
                               _param("kind", description="comma-separated: "
                                      + ",".join(KINDS)),
                               _param("actor", description="part of the actor"),
                               _param("target", description="part of the target"),
                               _param("q", description="part of any field"),
                               _param("node", description="node id"),
                               _param("since", description="ISO time with its zone"),
                               _param("until", description="ISO time with its zone")],
                       errors=(400,)),
        },
    })
    doc["components"]["securitySchemes"]["console"] = {
        "type": "apiKey", "in": "cookie", "name": "vss_console",
        "description": "an operator's console session (POST /session); changes need "
                       "X-CSRF-Token too; an auditor's changes are refused (403)"}
    doc["security"] = [{"bearer": []}, {"console": []}]
    return doc
