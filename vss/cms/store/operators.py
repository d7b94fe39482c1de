"""
Operator accounts of the console, as the CMS database keeps them.

An operator is a person who manages the platform in a browser (``vss.cms.console``):
not a CU user of the nodes (those log in to nodes to watch cameras; operators log in
to MMS to change what the nodes hold), and never copied to a node. The database keeps
the operator's name, role, a slow password verifier (``vss.cms.operators``: scrypt;
the password itself never), whether the account is enabled, when it was made, last
changed and last logged in, and a version raised by every change.

``IOperatorStore`` is what the SQL stores offer for them; ``OperatorSql`` is its
implementation, mixed into ``vss.cms.store.sql.SqlStaticStore``.
"""

from typing import NamedTuple

from twisted.internet.defer import fail
from zope.interface import Interface

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError

ADMINISTRATOR = "administrator"
AUDITOR = "auditor"
#: every change (administrator) or reading only (auditor)
ROLES = (ADMINISTRATOR, AUDITOR)

_COLS = "username, verifier, role, enabled, created, changed, last_login, version"


class Operator(NamedTuple):
    username: str
    #: the password verifier (``vss.cms.operators.hash_password``), never answered
    verifier: str
    role: str
    enabled: bool
    created: int
    changed: int
    last_login: int | None
    version: int


class LastAdministratorError(VssError):
    """The change would leave no enabled administrator (nobody could manage operators
    in the console any more)."""

    def __init__(self, username):
        super().__init__(ResultCode.CONFLICT, f"{username} is the last enabled "
                         "administrator: make another one first")
        self.username = username


class IOperatorStore(Interface):
    """Operator accounts in the CMS database. Every method returns a Deferred."""

    def add_operator(username, verifier, role, enabled=True):
        """Store a new operator. Deferred ``Operator``; CONFLICT if the name is taken,
        INVALID_ARGUMENT for an unknown role."""

    def get_operator(username):
        """Deferred ``Operator`` (with its verifier) or None."""

    def list_operators():
        """Deferred list of ``Operator``, by name."""

    def update_operator(username, verifier=None, role=None, enabled=None,
                        expected_version=None):
        """Change what is not None. Deferred ``Operator`` as changed; NOT_FOUND,
        CONFLICT (``expected_version`` is not the current one), or
        ``LastAdministratorError`` (the last enabled administrator would be disabled or
        lose the role)."""

    def remove_operator(username):
        """Deferred ``Operator`` as it was; NOT_FOUND or ``LastAdministratorError``."""

    def note_operator_login(username):
        """Record a successful login now. Deferred."""


def _operator(row):
    return Operator(row[0], row[1], row[2], bool(row[3]), int(row[4]), int(row[5]),
                    None if row[6] is None else int(row[6]), int(row[7]))


def _check_role(role):
    if role not in ROLES:
        raise VssError(ResultCode.INVALID_ARGUMENT,
                       f"role must be one of {', '.join(ROLES)}: {role!r}")


class OperatorSql:
    """``IOperatorStore`` for ``SqlStaticStore`` (uses its ``_run``, ``_read``,
    ``_x``, ``_wpool``, ``dialect`` and clock)."""

    def add_operator(self, username, verifier, role, enabled=True):
        try:
            _check_role(role)
        except VssError:
            return fail()
        return self._run(self._wpool, self._add_operator, username, verifier, role,
                         bool(enabled), self._now_ms())

    def _add_operator(self, cur, username, verifier, role, enabled, now):
        self.dialect.begin_write(cur)
        if self._get_operator(cur, username) is not None:
            raise VssError(ResultCode.CONFLICT, f"operator {username!r} exists")
        self._x(cur, f"INSERT INTO operators ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (username, verifier, role, enabled, now, now, None, 1))
        return Operator(username, verifier, role, enabled, now, now, None, 1)

    def get_operator(self, username):
        return self._read(self._get_operator, username)

    def _get_operator(self, cur, username):
        row = self._x(cur, f"SELECT {_COLS} FROM operators WHERE username = ?",
                      (username,)).fetchone()
        return _operator(row) if row else None

    def list_operators(self):
        return self._read(self._list_operators)

    def _list_operators(self, cur):
        rows = self._x(cur, f"SELECT {_COLS} FROM operators ORDER BY username").fetchall()
        return [_operator(r) for r in rows]

    def update_operator(self, username, verifier=None, role=None, enabled=None,
                        expected_version=None):
        if role is not None:
            try:
                _check_role(role)
            except VssError:
                return fail()
        return self._run(self._wpool, self._update_operator, username, verifier, role,
                         enabled, expected_version, self._now_ms())

    def _update_operator(self, cur, username, verifier, role, enabled, expected, now):
        self.dialect.begin_write(cur)
        current = self._get_operator(cur, username)
        if current is None:
            raise VssError(ResultCode.NOT_FOUND, f"no operator {username!r}")
        if expected is not None and expected != current.version:
            raise VssError(ResultCode.CONFLICT, f"version {expected} is not the current "
                           f"version {current.version}")
        new = current._replace(
            verifier=current.verifier if verifier is None else verifier,
            role=current.role if role is None else role,
            enabled=current.enabled if enabled is None else bool(enabled))
        if new == current:
            return current
        if self._demotes_last_administrator(cur, current, new):
            raise LastAdministratorError(username)
        new = new._replace(changed=now, version=current.version + 1)
        self._x(cur, "UPDATE operators SET verifier = ?, role = ?, enabled = ?, changed = ?,"
                " version = ? WHERE username = ?",
                (new.verifier, new.role, new.enabled, now, new.version, username))
        return new

    def _demotes_last_administrator(self, cur, current, new):
        was = current.enabled and current.role == ADMINISTRATOR
        still = new is not None and new.enabled and new.role == ADMINISTRATOR
        if not was or still:
            return False
        row = self._x(cur, "SELECT COUNT(*) FROM operators WHERE role = ? AND enabled = ?"
                      " AND username <> ?", (ADMINISTRATOR, True, current.username)).fetchone()
        return int(row[0]) == 0

    def remove_operator(self, username):
        return self._run(self._wpool, self._remove_operator, username)

    def _remove_operator(self, cur, username):
        self.dialect.begin_write(cur)
        current = self._get_operator(cur, username)
        if current is None:
            raise VssError(ResultCode.NOT_FOUND, f"no operator {username!r}")
        if self._demotes_last_administrator(cur, current, None):
            raise LastAdministratorError(username)
        self._x(cur, "DELETE FROM operators WHERE username = ?", (username,))
        return current

    def note_operator_login(self, username):
        return self._run(self._wpool, self._note_login, username, self._now_ms())

    def _note_login(self, cur, username, now):
        self.dialect.begin_write(cur)
        self._x(cur, "UPDATE operators SET last_login = ? WHERE username = ?", (now, username))
