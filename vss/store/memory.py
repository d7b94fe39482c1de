"""
The in-process backend of the RGM's in-memory database (``IMemoryStore``).

Everything lives in plain dicts. Reads are synchronous; writes change the dicts at once
and return an already-fired Deferred. Grants are indexed twice, by principal and by
device, so ``actions_for`` costs one dict lookup per principal of the user (the user
and each of their groups) and removals of a user or a device do not scan every grant.

``RedisStore`` (``vss.store.redis``) extends this class: it keeps the same tables as its
memory and mirrors every change to Redis.
"""

import copy

from twisted.internet import defer
from zope.interface import implementer

from vss.interfaces import IMemoryStore

USER_PREFIX = "user:"
GROUP_PREFIX = "group:"


def _copied(value):
    """A private copy of a JSON-able value (containers are copied, scalars shared)."""
    if isinstance(value, dict | list):
        return copy.deepcopy(value)
    return value


@implementer(IMemoryStore)
class MemoryStore:
    """The default backend: process memory only; nothing survives a restart."""

    name = "memory"

    def __init__(self):
        self._clear_tables()

    def _clear_tables(self):
        self._devices = {}  # device_id -> DeviceRecord
        self._users = {}  # username -> UserRecord
        self._grants = {}  # (principal, device_id) -> GrantRecord
        self._by_principal = {}  # principal -> {device_id: actions}
        self._by_device = {}  # device_id -> {principal, ...}
        self._state = {}  # device_id -> {field: value}
        self._credentials = {}  # cred_id -> StreamCredential
        self._sessions = {}  # session_id -> info dict
        self._meta = {}  # key -> value

    # -- lifecycle -------------------------------------------------------------------

    def load(self):
        return defer.succeed(None)

    def flush(self):
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)

    def ping(self):
        return defer.succeed(None)

    # -- the table operations, shared with RedisStore ------------------------------
    #
    # They change memory only and return what a persistent backend must write.

    def _apply_put_grant(self, record):
        principal, device_id = record.principal, record.device_id
        self._grants[(principal, device_id)] = record
        self._by_principal.setdefault(principal, {})[device_id] = int(record.actions)
        self._by_device.setdefault(device_id, set()).add(principal)

    def _apply_remove_grant(self, principal, device_id):
        """Forget one grant; True if it was held."""
        if self._grants.pop((principal, device_id), None) is None:
            return False
        per_device = self._by_principal.get(principal)
        if per_device is not None:
            per_device.pop(device_id, None)
            if not per_device:
                del self._by_principal[principal]
        principals = self._by_device.get(device_id)
        if principals is not None:
            principals.discard(principal)
            if not principals:
                del self._by_device[device_id]
        return True

    def _apply_remove_device(self, device_id):
        """Forget a device, its state and its grants; the (principal, device_id) keys
        of the grants dropped."""
        self._devices.pop(device_id, None)
        self._state.pop(device_id, None)
        dropped = [(p, device_id) for p in self._by_device.get(device_id, ())]
        for principal, _ in dropped:
            self._apply_remove_grant(principal, device_id)
        return dropped

    def _apply_remove_user(self, username):
        """Forget a user and the grants of ``user:<name>``; the grant keys dropped."""
        self._users.pop(username, None)
        principal = USER_PREFIX + username
        dropped = [(principal, d) for d in self._by_principal.get(principal, ())]
        for _, device_id in dropped:
            self._apply_remove_grant(principal, device_id)
        return dropped

    def _apply_set_state(self, device_id, fields):
        state = self._state.get(device_id)
        if state is None:
            state = self._state[device_id] = {}
        for key, value in fields.items():
            state[key] = _copied(value)

    # -- static copies ---------------------------------------------------------------

    def put_device(self, record):
        self._devices[record.device_id] = record
        return defer.succeed(None)

    def remove_device(self, device_id):
        self._apply_remove_device(device_id)
        return defer.succeed(None)

    def get_device(self, device_id):
        return self._devices.get(device_id)

    def devices(self):
        return list(self._devices.values())

    def put_user(self, record):
        self._users[record.username] = record
        return defer.succeed(None)

    def remove_user(self, username):
        self._apply_remove_user(username)
        return defer.succeed(None)

    def get_user(self, username):
        return self._users.get(username)

    def users(self):
        return list(self._users.values())

    def put_grant(self, record):
        self._apply_put_grant(record)
        return defer.succeed(None)

    def remove_grant(self, principal, device_id):
        self._apply_remove_grant(principal, device_id)
        return defer.succeed(None)

    def grants(self):
        return list(self._grants.values())

    def put_credential(self, record):
        self._credentials[record.cred_id] = record
        return defer.succeed(None)

    def remove_credential(self, cred_id):
        self._credentials.pop(cred_id, None)
        return defer.succeed(None)

    def get_credential(self, cred_id):
        return self._credentials.get(cred_id)

    def credentials(self):
        return list(self._credentials.values())

    def _principals(self, username):
        yield USER_PREFIX + username
        user = self._users.get(username)
        if user is not None:
            for group in user.groups:
                yield GROUP_PREFIX + group

    def actions_for(self, username, device_id):
        """The union of the user's own grants and their groups' grants on the device.

        This is the grant table only: whether the account is enabled is the
        authentication layer's business.
        """
        by_principal = self._by_principal
        actions = 0
        for principal in self._principals(username):
            per_device = by_principal.get(principal)
            if per_device is not None:
                actions |= per_device.get(device_id, 0)
        return actions

    def granted_devices(self, username):
        granted = {}
        for principal in self._principals(username):
            for device_id, actions in self._by_principal.get(principal, {}).items():
                granted[device_id] = granted.get(device_id, 0) | actions
        return granted

    # -- dynamic data ----------------------------------------------------------------

    def set_state(self, device_id, **fields):
        self._apply_set_state(device_id, fields)
        return defer.succeed(None)

    def get_state(self, device_id):
        state = self._state.get(device_id)
        if state is None:
            return {}
        return {key: _copied(value) for key, value in state.items()}

    def put_session(self, session_id, info):
        self._sessions[session_id] = _copied(dict(info))
        return defer.succeed(None)

    def remove_session(self, session_id):
        self._sessions.pop(session_id, None)
        return defer.succeed(None)

    def sessions(self):
        return {sid: _copied(info) for sid, info in self._sessions.items()}

    def set_meta(self, key, value):
        self._meta[key] = _copied(value)
        return defer.succeed(None)

    def get_meta(self, key, default=None):
        if key not in self._meta:
            return default
        return _copied(self._meta[key])
