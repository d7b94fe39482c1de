"""
The CMS database schema as numbered migrations, one SQL text per dialect.

Each migration is applied once, in order, in its own transaction, and recorded as one
row of ``schema_version``. Statements are written once with a few type placeholders
that each dialect fills in:

``{KEY}``    text used as a key (PostgreSQL: ``COLLATE "C"`` so that keyset paging orders
             by code point, exactly as SQLite does)
``{BLOB}``   opaque bytes
``{BOOL}``   a boolean
``{INT}``    a 64-bit integer
``{SEQ}``    the change-log sequence column (monotonic, never reused)

Never edit a released migration: append a new one.
"""

from dataclasses import dataclass

DIALECT_TYPES = {
    "sqlite": {
        "KEY": "TEXT",
        "BLOB": "BLOB",
        "BOOL": "INTEGER",
        "INT": "INTEGER",
        "SEQ": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgresql": {
        "KEY": 'TEXT COLLATE "C"',
        "BLOB": "BYTEA",
        "BOOL": "BOOLEAN",
        "INT": "BIGINT",
        "SEQ": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    },
}

#: Created by the migration runner itself, before any migration.
SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version {INT} PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_at {INT} NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple
    #: dialect -> statements replacing ``statements`` for that dialect
    overrides: tuple = ()

    def sql(self, dialect):
        stmts = dict(self.overrides).get(dialect, self.statements)
        types = DIALECT_TYPES[dialect]
        return [s.format(**types) for s in stmts]


_M6_TABLES = (
    # an operator of the console (vss.cms.operators), not a CU user: the password only
    # as a slow verifier (scrypt), never a default one
    "CREATE TABLE operators ("
    " username {KEY} PRIMARY KEY,"
    " verifier TEXT NOT NULL,"
    " role TEXT NOT NULL,"
    " enabled {BOOL} NOT NULL,"
    " created {INT} NOT NULL,"
    " changed {INT} NOT NULL,"
    " last_login {INT},"
    " version {INT} NOT NULL)",
    # append-only (vss.cms.store.audit): the triggers refuse any change or removal
    "CREATE TABLE audit_log ("
    " id {SEQ},"
    " at {INT} NOT NULL,"
    " kind TEXT NOT NULL,"
    " actor {KEY} NOT NULL,"
    " source TEXT NOT NULL,"
    " node_id TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " target {KEY} NOT NULL,"
    " status {INT} NOT NULL,"
    " detail_json TEXT NOT NULL)",
    "CREATE INDEX audit_log_actor ON audit_log (actor, id)",
    "CREATE INDEX audit_log_target ON audit_log (target, id)",
    "CREATE INDEX audit_log_kind ON audit_log (kind, id)",
)
_M6_SQLITE_TRIGGERS = (
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit entries cannot be changed'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit entries cannot be removed'); END",
)
_M6_POSTGRES_TRIGGERS = (
    "CREATE FUNCTION audit_log_immutable() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'audit entries cannot be changed or removed'; END $$",
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log"
    " FOR EACH ROW EXECUTE FUNCTION audit_log_immutable()",
)
#: when a grant stops applying (ms since the epoch); 0: never
_M6_GRANT_EXPIRY = "ALTER TABLE grants ADD COLUMN expires {INT} NOT NULL DEFAULT 0"


MIGRATIONS = (
    Migration(
        1,
        "devices, users, grants and the change log",
        (
            "CREATE TABLE meta (key {KEY} PRIMARY KEY, value TEXT NOT NULL)",
            # lowest sequence still guaranteed in the log (raised by compact)
            "INSERT INTO meta (key, value) VALUES ('log_watermark', '1')",
            # the row every writer locks first, so log sequences commit in order
            "INSERT INTO meta (key, value) VALUES ('writer', '')",
            "CREATE TABLE devices ("
            " device_id {KEY} PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " kind {INT} NOT NULL,"
            " channels {INT} NOT NULL,"
            " home_node {KEY} NOT NULL,"
            " salt {BLOB} NOT NULL,"
            " iterations {INT} NOT NULL,"
            " stored_key {BLOB} NOT NULL,"
            " server_key {BLOB} NOT NULL,"
            " source_url TEXT NOT NULL,"
            " enabled {BOOL} NOT NULL,"
            " version {INT} NOT NULL)",
            "CREATE INDEX devices_home_node ON devices (home_node, device_id)",
            "CREATE TABLE users ("
            " username {KEY} PRIMARY KEY,"
            " salt {BLOB} NOT NULL,"
            " iterations {INT} NOT NULL,"
            " stored_key {BLOB} NOT NULL,"
            " server_key {BLOB} NOT NULL,"
            " groups_json TEXT NOT NULL,"
            " enabled {BOOL} NOT NULL,"
            " version {INT} NOT NULL)",
            "CREATE TABLE grants ("
            " principal {KEY} NOT NULL,"
            " device_id {KEY} NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,"
            " actions {INT} NOT NULL,"
            " version {INT} NOT NULL,"
            " PRIMARY KEY (principal, device_id))",
            "CREATE INDEX grants_device ON grants (device_id, principal)",
            "CREATE TABLE change_log ("
            " seq {SEQ},"
            " entity {INT} NOT NULL,"
            " op {INT} NOT NULL,"
            " key TEXT NOT NULL,"
            " version {INT} NOT NULL,"
            " origin TEXT NOT NULL,"
            " at {INT} NOT NULL)",
        ),
    ),
    Migration(
        2,
        "node registry and recording settings",
        (
            "CREATE TABLE nodes ("
            " node_id {KEY} PRIMARY KEY,"
            " signalling TEXT NOT NULL,"
            " media TEXT NOT NULL,"
            " capacity {INT} NOT NULL,"
            " state TEXT NOT NULL,"
            " load_json TEXT NOT NULL,"
            " applied_seq {INT} NOT NULL,"
            " last_seen {INT} NOT NULL,"
            " version {INT} NOT NULL)",
            "CREATE TABLE record_settings ("
            " device_id {KEY} NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,"
            " channel {INT} NOT NULL,"
            " settings_json TEXT NOT NULL,"
            " PRIMARY KEY (device_id, channel))",
        ),
    ),
    Migration(
        3,
        "admin tokens",
        (
            "CREATE TABLE admin_tokens ("
            " token_hash {KEY} PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " created {INT} NOT NULL)",
            "CREATE INDEX admin_tokens_name ON admin_tokens (name)",
        ),
    ),
    Migration(
        4,
        "admin token ids, expiry, last use and revocation",
        (
            # rebuilt (SQLite cannot add a primary key to a table); tokens keep working
            "CREATE TABLE admin_tokens_v4 ("
            " id {SEQ},"
            " token_hash {KEY} NOT NULL,"
            " name TEXT NOT NULL,"
            " created {INT} NOT NULL,"
            " expires {INT},"
            " last_used {INT},"
            " revoked {INT})",
            "INSERT INTO admin_tokens_v4 (token_hash, name, created)"
            " SELECT token_hash, name, created FROM admin_tokens ORDER BY created, token_hash",
            "DROP TABLE admin_tokens",
            "ALTER TABLE admin_tokens_v4 RENAME TO admin_tokens",
            "CREATE UNIQUE INDEX admin_tokens_hash ON admin_tokens (token_hash)",
            "CREATE INDEX admin_tokens_name ON admin_tokens (name)",
        ),
    ),
    Migration(
        5,
        "stream credentials",
        (
            # sealed: the Digest HA1 sealed under a key of the cluster secret
            # (vss.streamcreds.secret); revoked rows stay listed (0: not revoked)
            "CREATE TABLE stream_credentials ("
            " cred_id {KEY} PRIMARY KEY,"
            " username {KEY} NOT NULL,"
            " device_id {KEY} NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,"
            " name TEXT NOT NULL,"
            " created {INT} NOT NULL,"
            " expires {INT} NOT NULL,"
            " revoked {INT} NOT NULL,"
            " sealed {BLOB} NOT NULL,"
            " version {INT} NOT NULL)",
            "CREATE INDEX stream_credentials_user ON stream_credentials (username, cred_id)",
            "CREATE INDEX stream_credentials_device ON stream_credentials (device_id, cred_id)",
        ),
    ),
    Migration(
        6,
        "operator accounts, the audit log and grant expiry",
        (*_M6_TABLES, *_M6_SQLITE_TRIGGERS, _M6_GRANT_EXPIRY),
        (("postgresql", (*_M6_TABLES, *_M6_POSTGRES_TRIGGERS, _M6_GRANT_EXPIRY)),),
    ),
    Migration(
        7,
        "events and their acknowledgements",
        (
            # one row per event, under the number its home node gave it (vss.events)
            "CREATE TABLE events ("
            " node_id {KEY} NOT NULL,"
            " seq {INT} NOT NULL,"
            " device_id {KEY} NOT NULL,"
            " channel {INT} NOT NULL,"
            " type {KEY} NOT NULL,"
            " phase {INT} NOT NULL,"
            " severity {INT} NOT NULL,"
            " pu_time {INT} NOT NULL,"
            " node_time {INT} NOT NULL,"
            " items_json TEXT NOT NULL,"
            " PRIMARY KEY (node_id, seq))",
            "CREATE INDEX events_device ON events (device_id, node_time)",
            "CREATE INDEX events_time ON events (node_time)",
            "CREATE TABLE event_acks ("
            " node_id {KEY} NOT NULL,"
            " seq {INT} NOT NULL,"
            " device_id {KEY} NOT NULL,"
            " acked_by {KEY} NOT NULL,"
            " acked_at {INT} NOT NULL,"
            " comment TEXT NOT NULL,"
            " PRIMARY KEY (node_id, seq))",
        ),
    ),
    Migration(
        8,
        "what each node holds: the devices of other nodes it follows, the users registered there",
        (
            # a node follows a device homed elsewhere (a user registered there may see
            # it) or that was homed there once; rows are never removed, so what a node
            # follows only grows (docs/consistency.md, "What each node holds")
            "CREATE TABLE node_devices ("
            " node_id {KEY} NOT NULL,"
            " device_id {KEY} NOT NULL,"
            " PRIMARY KEY (node_id, device_id))",
            "CREATE INDEX node_devices_device ON node_devices (device_id, node_id)",
            # a CU user registered (logged in for the first time) on a node
            "CREATE TABLE node_users ("
            " node_id {KEY} NOT NULL,"
            " username {KEY} NOT NULL,"
            " PRIMARY KEY (node_id, username))",
            "CREATE INDEX node_users_user ON node_users (username, node_id)",
        ),
    ),
    Migration(
        9,
        "grants on CU targets: a grant's device_id may name a wall or decoder (cu:ACCOUNT)",
        # SQLite cannot drop a constraint: the table is made again without the reference
        # to devices (removing a device or an account removes its grants, in the code
        # that logs those changes)
        (
            "CREATE TABLE grants_new ("
            " principal {KEY} NOT NULL,"
            " device_id {KEY} NOT NULL,"
            " actions {INT} NOT NULL,"
            " version {INT} NOT NULL,"
            " expires {INT} NOT NULL DEFAULT 0,"
            " PRIMARY KEY (principal, device_id))",
            "INSERT INTO grants_new (principal, device_id, actions, version, expires)"
            " SELECT principal, device_id, actions, version, expires FROM grants",
            "DROP TABLE grants",
            "ALTER TABLE grants_new RENAME TO grants",
            "CREATE INDEX grants_device ON grants (device_id, principal)",
        ),
        (("postgresql", ("ALTER TABLE grants DROP CONSTRAINT IF EXISTS grants_device_id_fkey",)),),
    ),
    Migration(
        10,
        "PUs moved away from a node that died: the node they go back to with failback",
        (
            # one row per device re-homed because its home was down, naming the first
            # such home (a PU moved twice goes back to where it was homed before the
            # failures); any other change of the home (an operator's move, the failback
            # itself) removes the row (docs/consistency.md, "Re-homing")
            "CREATE TABLE failover_moves ("
            " device_id {KEY} PRIMARY KEY,"
            " from_node {KEY} NOT NULL,"
            " moved_at {INT} NOT NULL)",
            "CREATE INDEX failover_moves_node ON failover_moves (from_node, device_id)",
        ),
    ),
)

CURRENT_VERSION = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, CURRENT_VERSION + 1))
