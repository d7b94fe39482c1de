"""
What the admin API accepts: the limits, patterns and value sets that the API's
validation (``vss.cms.mms``) enforces and its OpenAPI document (``vss.cms.openapi``)
publishes, kept in one place so the two cannot disagree.
"""

import re

from vss.protocols.messages import (
    Action,
    PuKind,
)

MAX_BODY = 1024 * 1024


DEFAULT_LIMIT = 100


MAX_LIMIT = 1000


MIN_SECRET = 8


MAX_SECRET = 1024


MAX_TOKEN = 512


#: the longest lifetime a new admin token may be given (ten years)
MAX_EXPIRES_IN = 10 * 366 * 86400


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


TIME_RE = re.compile(r"^([0-9]{1,2}):([0-9]{2})$")


#: query parameters of a camera URL whose value is a credential
SECRET_PARAM_RE = re.compile(
    r"(?i)((?:^|[&;])[^=&;]*(?:pass|pwd|secret|token|auth|key|user)[^=&;]*=)[^&;]*"
)


KINDS = {"ipc": PuKind.IPC, "dvs": PuKind.DVS, "dvr": PuKind.DVR}


ACTIONS = {"view": Action.VIEW, "ptz": Action.PTZ, "config": Action.CONFIG,
           "record": Action.RECORD, "wall": Action.WALL}


MODES = ("off", "continuous", "schedule", "event", "manual")


STREAMS = ("main", "sub")


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


RECORD_DEFAULTS = {
    "mode": "off",
    "stream": "main",
    "segment_seconds": 300,
    "retention_days": 7,
    "quota_mb": 0,
    "pre_event_seconds": 5,
    "post_event_seconds": 10,
    "schedule": [],
    "event_types": [],
}


#: field -> (lowest, highest) of the integer recording settings
RECORD_RANGES = {
    "segment_seconds": (1, 86400),
    "retention_days": (0, 36500),
    "quota_mb": (0, 2**32 - 1),
    "pre_event_seconds": (0, 3600),
    "post_event_seconds": (0, 3600),
}


EVENT_TYPE_RE = re.compile(r"^[a-z0-9._-]{1,32}$")


MAX_EVENT_TYPES = 16


CRED_ID_RE = re.compile(r"^sc-[0-9a-f]{12}$")


API_PREFIX = "/api/v1"
