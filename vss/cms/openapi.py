"""
The OpenAPI 3.1 description of the MMS admin API (``GET /api/v1/openapi.json``), built
from the same limits and patterns the API enforces (``vss.cms.apirules``). A test
checks it names every route of the resource tree (``vss.cms.mms.iter_routes``); the
console adds its own routes (``vss.cms.console.openapi``).
"""

from vss.cms.apirules import (
    ACTIONS,
    API_PREFIX,
    CRED_ID_RE,
    DAYS,
    DEFAULT_LIMIT,
    DEVICE_ID_RE,
    EVENT_TYPE_RE,
    KINDS,
    MAX_EVENT_TYPES,
    MAX_EXPIRES_IN,
    MAX_LIMIT,
    MAX_SECRET,
    MIN_SECRET,
    MODES,
    NAME_RE,
    NODE_ID_RE,
    RECORD_RANGES,
    STREAMS,
)


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses):
    text = {400: "invalid input", 401: "no or a bad token", 403: "refused (console: "
            "the role or the CSRF check)", 404: "unknown", 405: "method not allowed",
            409: "conflict", 413: "body over 1 MiB", 429: "too many failed logins",
            503: "the database failed, or this CMS is a standby (code NOT_ACTIVE, "
                 "active: the admin URL of the active CMS): try again (see Retry-After)"}
    return {str(s): _json(_ref("Error"), text[s]) for s in (*statuses, 401, 503)}


def _op(summary, ok=None, status=200, body=None, params=(), errors=()):
    op = {"summary": summary, "responses": {str(status): ok or _json(_ref("Deleted"))}}
    op["responses"].update(_errors(*errors))
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(body)}}}
        op["responses"].update(_errors(400, 413, *errors))
    if params:
        op["parameters"] = list(params)
    return op


def _param(name, where="query", description="", schema=None):
    return {"name": name, "in": where, "required": where == "path",
            "description": description, "schema": schema or {"type": "string"}}


PAGING = (_param("cursor", description="next_cursor of the previous page"),
          _param("limit", description=f"page size, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})",
                 schema={"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}))


def _page(item):
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": _ref(item)},
                           "next_cursor": {"type": "string",
                                           "description": "'' on the last page"}}}


def _obj(props, required=(), extra=False):
    out = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = list(required)
    return out


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
NAMES = {"type": "array", "items": STR}
SECRET = {"type": "string", "writeOnly": True, "minLength": MIN_SECRET,
          "maxLength": MAX_SECRET}
ACTION_LIST = {"type": "array", "minItems": 1,
               "items": {"type": "string", "enum": list(ACTIONS)}}


def openapi_document():
    name_p = _param("name", "path", "user name")
    id_p = _param("id", "path", "device id")
    node_p = _param("id", "path", "node id")
    token_p = _param("id", "path", "admin token id", {"type": "integer", "minimum": 1})
    cred_p = _param("id", "path", "stream credential id",
                    {"type": "string", "pattern": CRED_ID_RE.pattern})
    when = {"type": ["string", "null"], "format": "date-time"}
    cred_props = {
        "id": {"type": "string", "pattern": CRED_ID_RE.pattern}, "user": STR,
        "device_id": STR, "name": STR,
        "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "created": {"type": "string", "format": "date-time"},
        "expires": {**when, "description": "null: never"}, "revoked": when, "version": INT,
    }
    token_props = {
        "id": INT, "name": STR,
        "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "created": {"type": "string", "format": "date-time"},
        "expires": {**when, "description": "null: never"},
        "last_used": {**when, "description": "kept to the minute; null: never used"},
        "revoked": when,
        "current": {"type": "boolean", "description": "the token of this request"},
    }
    channel_p = _param("channel", "path", "channel, 0-based",
                       {"type": "integer", "minimum": 0})
    slot = _obj({"day": {"type": "string", "enum": list(DAYS)},
                 "start": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
                 "end": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"}},
                ("day", "start", "end"))
    record_props = {
        "mode": {"type": "string", "enum": list(MODES)},
        "stream": {"type": "string", "enum": list(STREAMS)},
        **{f: {"type": "integer", "minimum": lo, "maximum": hi}
           for f, (lo, hi) in RECORD_RANGES.items()},
        "schedule": {"type": "array", "items": slot},
        "event_types": {"type": "array", "maxItems": MAX_EVENT_TYPES, "uniqueItems": True,
                        "items": {"type": "string", "pattern": EVENT_TYPE_RE.pattern},
                        "description": "in event mode, the event types that start an event "
                        "recording; none: every PU event of severity alarm or above"},
    }
    device_props = {
        "device_id": {"type": "string", "pattern": DEVICE_ID_RE.pattern},
        "name": STR,
        "kind": {"type": "string", "enum": list(KINDS)},
        "channels": {"type": "integer", "minimum": 1, "maximum": 65535},
        "home_node": {"type": "string",
                      "description": "assigned (least loaded up node) when empty"},
        "source_url": {"type": "string", "description": "rtsp:// URL of a real camera; "
                       "answered with its credentials masked"},
        "enabled": BOOL,
    }
    schemas = {
        "Error": _obj({"error": STR, "field": STR}, ("error",)),
        "Deleted": _obj({"deleted": STR}, ("deleted",), extra=True),
        "User": _obj({"username": STR, "groups": NAMES, "enabled": BOOL, "version": INT},
                     ("username", "groups", "enabled", "version")),
        "UserCreate": _obj({"username": {"type": "string", "pattern": NAME_RE.pattern},
                            "password": SECRET, "groups": NAMES, "enabled": BOOL},
                           ("username", "password")),
        "UserPatch": _obj({"password": SECRET, "groups": NAMES, "enabled": BOOL,
                           "version": {"type": "integer",
                                       "description": "409 unless current"}}),
        "UserPage": _page("User"),
        "Device": _obj({**device_props, "secret_set": BOOL, "version": INT},
                       ("device_id", "name", "kind", "channels", "home_node", "source_url",
                        "enabled", "secret_set", "version")),
        "DeviceCreate": _obj({**device_props, "secret": SECRET}, ("device_id",)),
        "DevicePatch": _obj({**{k: v for k, v in device_props.items() if k != "device_id"},
                             "secret": SECRET, "version": INT}),
        "DevicePage": _page("Device"),
        "Grant": _obj({"principal": {"type": "string", "pattern": "^(user|group):.+$"},
                       "device_id": STR, "actions": ACTION_LIST, "version": INT,
                       "expires": {**when, "description": "null: never"},
                       "expired": {"type": "boolean", "description": "in lists: the "
                                   "expiry has passed; every node holds it out of force"}},
                      ("principal", "device_id", "actions", "version", "expires")),
        "GrantPut": _obj({"principal": {"type": "string", "pattern": "^(user|group):.+$"},
                          "device_id": STR, "actions": ACTION_LIST,
                          "expires": {**when, "description": "when it stops applying, "
                                      "in the future, with its zone; null: never"}},
                         ("principal", "device_id", "actions")),
        "GrantPage": _page("Grant"),
        "Node": _obj({"node_id": STR, "signalling": STR, "media": STR, "capacity": INT,
                      "state": {"type": "string", "enum": ["up", "down"]},
                      "load": {"type": "object"}, "applied_seq": INT, "last_seen": INT},
                     ("node_id", "signalling", "media", "capacity", "state")),
        "NodeCreate": _obj({"node_id": {"type": "string", "pattern": NODE_ID_RE.pattern},
                            "signalling": STR, "media": STR,
                            "capacity": {"type": "integer", "minimum": 0}}, ("node_id",)),
        "NodePage": _page("Node"),
        "RecordSettingsPut": _obj(record_props),
        "RecordSettings": _obj({"device_id": STR, "channel": INT, **record_props,
                                "stored": BOOL, "reported": {"type": "object"}},
                               ("device_id", "channel", *record_props)),
        "AdminToken": _obj(token_props, tuple(token_props)),
        "AdminTokenList": _obj({"items": {"type": "array", "items": _ref("AdminToken")}},
                               ("items",)),
        "AdminTokenCreate": _obj({"name": {"type": "string", "pattern": NAME_RE.pattern},
                                  "expires_in": {"type": "integer", "minimum": 1,
                                                 "maximum": MAX_EXPIRES_IN,
                                                 "description": "seconds; none: never"}},
                                 ("name",)),
        "AdminTokenCreated": _obj({**token_props,
                                   "token": {"type": "string", "readOnly": True,
                                             "description": "the secret, shown only in "
                                             "this answer"}},
                                  (*token_props, "token")),
        "StreamCredential": _obj(cred_props, tuple(cred_props)),
        "StreamCredentialPage": _page("StreamCredential"),
        "Event": _obj({"id": STR, "node_id": STR, "seq": INT, "device_id": STR,
                       "channel": INT, "type": STR, "phase": {"type": ["string", "integer"]},
                       "severity": {"type": ["string", "integer"]}, "pu_time": STR,
                       "time": STR, "items": {"type": "object"},
                       "acked_by": {"type": ["string", "null"]},
                       "acked_at": {"type": ["string", "null"]},
                       "comment": {"type": ["string", "null"]}},
                      ("id", "node_id", "seq", "device_id", "channel", "type", "phase",
                       "severity", "time", "acked_by")),
        "EventPage": _obj({"items": {"type": "array", "items": _ref("Event")},
                           "truncated": BOOL}, ("items", "truncated")),
        "StreamCredentialCreate": _obj({
            "user": {"type": "string", "pattern": NAME_RE.pattern,
                     "description": "the user it is bound to: it plays while the user "
                     "exists, is enabled and may view the device"},
            "device_id": STR, "name": {"type": "string", "maxLength": 64},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRES_IN,
                           "description": "seconds; none: never"}}, ("user", "device_id")),
        "StreamCredentialCreated": _obj({
            **cred_props,
            "secret": {"type": "string", "readOnly": True,
                       "description": "shown only in this answer; the Digest password"},
            "digest_user": {"type": "string", "description": "the Digest user name (the id)"},
            "path": STR,
            "url": {"type": "string", "description": "rtsp://<the home node's media "
                    "address><path>?cred=<id>.<secret> (empty if the home node is not "
                    "known); any node serves it"}},
            (*cred_props, "secret", "digest_user", "path", "url")),
        "Status": {"type": "object", "additionalProperties": True,
                   "properties": {"nodes": {}, "devices": INT, "head_seq": INT}},
    }
    put_grant = _op("Set the actions of a principal on a device (201 when new)",
                    _json(_ref("Grant")), body="GrantPut", errors=(404,))
    put_grant["responses"]["201"] = _json(_ref("Grant"), "created")
    post_node = _op("Add (201) or change (200) a node", _json(_ref("Node"), "created"), 201,
                    "NodeCreate")
    post_node["responses"]["200"] = _json(_ref("Node"), "changed")
    paths = {
        "/": {"get": _op("Index of the routes", _json({"type": "object"}))},
        "/users": {
            "get": _op("List users", _json(_ref("UserPage")), params=PAGING, errors=(400,)),
            "post": _op("Add a user", _json(_ref("User"), "created"), 201, "UserCreate",
                        errors=(409,)),
        },
        "/users/{name}": {
            "get": _op("Show a user", _json(_ref("User")), params=[name_p], errors=(404,)),
            "patch": _op("Change a user", _json(_ref("User")), body="UserPatch",
                         params=[name_p], errors=(404, 409)),
            "delete": _op("Remove a user and their grants", params=[name_p], errors=(404,)),
        },
        "/devices": {
            "get": _op("List devices", _json(_ref("DevicePage")),
                       params=[*PAGING, _param("home_node")], errors=(400,)),
            "post": _op("Add a device", _json(_ref("Device"), "created"), 201,
                        "DeviceCreate", errors=(409,)),
        },
        "/devices/{id}": {
            "get": _op("Show a device", _json(_ref("Device")), params=[id_p], errors=(404,)),
            "patch": _op("Change a device", _json(_ref("Device")), body="DevicePatch",
                         params=[id_p], errors=(404, 409)),
            "delete": _op("Remove a device and its grants", params=[id_p], errors=(404,)),
        },
        "/devices/{id}/record-settings/{channel}": {
            "get": _op("Recording settings of a channel", _json(_ref("RecordSettings")),
                       params=[id_p, channel_p], errors=(404,)),
            "put": _op("Replace the recording settings of a channel",
                       _json(_ref("RecordSettings")), body="RecordSettingsPut",
                       params=[id_p, channel_p], errors=(404,)),
        },
        "/grants": {
            "get": _op("List grants", _json(_ref("GrantPage")),
                       params=[*PAGING, _param("principal"), _param("device_id")],
                       errors=(400,)),
            "put": put_grant,
            "delete": _op("Remove a grant",
                          params=[_param("principal"), _param("device_id")],
                          errors=(400, 404)),
        },
        "/nodes": {
            "get": _op("List nodes", _json(_ref("NodePage")), params=PAGING, errors=(400,)),
            "post": post_node,
        },
        "/nodes/{id}": {
            "delete": _op("Remove a node (409 while devices are homed on it, unless "
                          "?force=true)", params=[node_p, _param("force")],
                          errors=(404, 409)),
        },
        "/tokens": {
            "get": _op("List admin tokens (never their secret or hash)",
                       _json(_ref("AdminTokenList"))),
            "post": _op("Create an admin token; the answer holds its secret, once",
                        _json(_ref("AdminTokenCreated"), "created"), 201,
                        "AdminTokenCreate"),
        },
        "/tokens/{id}": {
            "get": _op("Show an admin token", _json(_ref("AdminToken")), params=[token_p],
                       errors=(404,)),
            "delete": _op("Revoke an admin token (at once, even the token of this request); "
                          "409 for the last valid token unless ?force=true",
                          _json(_ref("AdminToken"), "revoked"),
                          params=[token_p, _param("force")], errors=(404, 409)),
        },
        "/events": {
            "get": _op("List the stored events and alarms, newest first, with their "
                       "acknowledgement", _json(_ref("EventPage")),
                       params=[_param("device_id"), _param("type"),
                               _param("since", description="ms since the epoch or ISO 8601 "
                                      "with its zone"),
                               _param("until", description="ms since the epoch or ISO 8601 "
                                      "with its zone"),
                               _param("limit", description=f"1..{MAX_LIMIT} (default "
                                      f"{DEFAULT_LIMIT})", schema={
                                          "type": "integer", "minimum": 1,
                                          "maximum": MAX_LIMIT})],
                       errors=(400,)),
        },
        "/stream-credentials": {
            "get": _op("List stream credentials (never their secret)",
                       _json(_ref("StreamCredentialPage")),
                       params=[*PAGING, _param("user"), _param("device_id")], errors=(400,)),
            "post": _op("Make a stream credential for a user and a device (400 unless the "
                        "user is enabled and may view it; 409 where the API has no cluster "
                        "secret to seal it with, as on a database opened offline); the "
                        "answer holds its secret, once",
                        _json(_ref("StreamCredentialCreated"), "created"), 201,
                        "StreamCredentialCreate", errors=(404, 409)),
        },
        "/stream-credentials/{id}": {
            "get": _op("Show a stream credential", _json(_ref("StreamCredential")),
                       params=[cred_p], errors=(404,)),
            "delete": _op("Revoke a stream credential: new sessions are refused at once, "
                          "playing ones end within a second on every node",
                          _json(_ref("StreamCredential"), "revoked"), params=[cred_p],
                          errors=(404, 409)),
        },
        "/status": {"get": _op("Operations status", _json(_ref("Status")))},
        "/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "vss MMS admin API", "version": "1",
                 "description": "Operators' entry point of the vss central platform."},
        "servers": [{"url": API_PREFIX}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an admin token from "
                                           "vss-admin bootstrap or POST /tokens; "
                                           "401 once revoked or expired"}},
        },
    }
