"""
The seams of vss, declared in one place. Every implementation is checked with
``zope.interface.verify.verifyObject`` and runs one shared conformance test class.

Records passed across these seams are the record types of ``vss.protocols.messages``
(``DeviceRecord``, ``UserRecord``, ``GrantRecord``, ``Change``) so that what a node holds
is exactly what crosses the wire.
"""

from zope.interface import Attribute, Interface


class IMemoryStore(Interface):
    """The in-memory database of a node's RGM.

    It holds the node's copies of static data (devices, users, grants, received from
    CMS; and its own PUs' configuration and presets, reported by them, kept in their
    state fields: ``vss.rgm.settings``) and the dynamic data of its own PUs and CUs
    (online state, last seen, PTZ position, sessions), plus a few node-level values
    (``meta``, e.g. the last applied sync sequence).

    Reads are synchronous and served from process memory: they sit on the hot path of
    every request. Writes update memory at once and return a Deferred that fires when
    the backend holds them (immediately for the in-process backend, after the server
    acknowledged for Redis). ``load`` fills memory from the backend at start-up, so a
    persistent backend's state survives an RGM restart.
    """

    name = Attribute("Short backend name, e.g. 'memory' or 'redis'.")

    def load():
        """Fill memory from the backend. Returns a Deferred."""

    def flush():
        """A Deferred that fires once every write made so far is held by the backend."""

    def close():
        """Release connections. Returns a Deferred."""

    def ping():
        """A Deferred that fires when the backend answers now, and fails (naming why)
        when it cannot be reached: the node's readiness (``/readyz``)."""

    # static copies
    def put_device(record):
        """Store or replace a ``DeviceRecord``."""

    def remove_device(device_id):
        """Forget a device (its static record and its dynamic state)."""

    def get_device(device_id):
        """The ``DeviceRecord`` or None."""

    def devices():
        """All ``DeviceRecord`` held, in no particular order."""

    def put_user(record):
        """Store or replace a ``UserRecord``."""

    def remove_user(username):
        """Forget a user and the grants whose principal is that user."""

    def get_user(username):
        """The ``UserRecord`` or None."""

    def users():
        """All ``UserRecord`` held."""

    def put_grant(record):
        """Store or replace a ``GrantRecord`` keyed by (principal, device_id). A grant
        whose ``expires`` has passed is held but never in force."""

    def remove_grant(principal, device_id):
        """Forget one grant."""

    def grants():
        """All ``GrantRecord`` held (expired ones too)."""

    def expire_grants(now_ms=None):
        """Take the grants whose expiry is at or before ``now_ms`` (default: now on the
        store's clock) out of force: ``actions_for`` and ``granted_devices`` no longer
        count them. Returns their (principal, device_id) keys."""

    def next_grant_expiry():
        """When the next grant in force expires (ms since the epoch), or None."""

    def put_credential(record):
        """Store or replace a ``StreamCredential`` (its sealed secret, never the secret)
        keyed by its ``cred_id``."""

    def remove_credential(cred_id):
        """Forget one stream credential."""

    def get_credential(cred_id):
        """The ``StreamCredential`` or None."""

    def credentials():
        """All ``StreamCredential`` held."""

    def actions_for(username, device_id):
        """The union (int bitmask of ``Action``) of the grants of ``user:<name>`` and of
        ``group:<g>`` for each group of the user, on ``device_id``. 0 if none."""

    def granted_devices(username):
        """dict device_id -> actions bitmask of everything the user is granted."""

    # dynamic data
    def set_state(device_id, **fields):
        """Merge fields into the device's dynamic state (online, last_seen, node_id,
        pan, tilt, zoom, config, config_version, presets, ...). Values are JSON-able."""

    def get_state(device_id):
        """A dict copy of the device's dynamic state ({} if none)."""

    def put_session(session_id, info):
        """Store a session (dict, JSON-able: role, identity, peer, since...)."""

    def remove_session(session_id):
        """Forget a session."""

    def sessions():
        """dict session_id -> info of every session held."""

    def set_meta(key, value):
        """Store a node-level JSON-able value."""

    def get_meta(key, default=None):
        """A node-level value."""


class IStaticStore(Interface):
    """The central database of static data (CMS), with its change log.

    Every mutating call runs in one transaction that also appends one entry per changed
    row to the change log, whose sequence is strictly increasing; it returns a Deferred
    firing with the list of ``Change`` entries appended. Reads return Deferreds.
    """

    def open():
        """Connect and migrate the schema to the current version. Deferred."""

    def close():
        """Deferred."""

    def schema_version():
        """Deferred int."""

    def upsert_user(username, verifier, groups, enabled=True):
        """Create or change a user; ``verifier`` is a ``Verifier``. Deferred [Change]."""

    def remove_user(username):
        """Deferred [Change] (a user delete and the deletes of their grants)."""

    def get_user(username):
        """Deferred ``UserRecord`` or None."""

    def list_users(cursor="", limit=1000, held_by=None):
        """Deferred (records, next_cursor); next_cursor '' when done. Ordered by name."""

    def upsert_device(device_id, name, kind, channels, home_node, verifier, source_url="",
                      enabled=True):
        """Create or change a device. Deferred [Change]."""

    def update_device_fields(device_id, **fields):
        """Change some fields of a device (name, home_node, source_url, enabled,
        channels). Deferred [Change]."""

    def remove_device(device_id):
        """Deferred [Change] (a device delete and the deletes of its grants)."""

    def get_device(device_id):
        """Deferred ``DeviceRecord`` or None."""

    def list_devices(cursor="", limit=1000, home_node=None, held_by=None):
        """Deferred (records, next_cursor), ordered by device id; ``held_by``: only the
        devices that node holds (docs/consistency.md)."""

    def device_homes(cursor="", limit=50_000):
        """Deferred ([(device_id, home_node)], next_cursor), ordered by device id."""

    def follow_devices(node_id, device_ids):
        """The node holds these devices from now on; their records and grants are
        logged for it (origin ``follow:<node>``). Deferred [Change]."""

    def register_user(node_id, username):
        """A CU user's first login on the node: it holds the user and the devices the
        user may see from now on. Deferred [Change]."""

    def interest():
        """Deferred (node_devices rows, node_users rows) of (node_id, key)."""

    def changes_for(seq, limit, keep):
        """Deferred (changes, scanned, reload_required): the log entries after ``seq``
        that ``keep(entity, op, key, origin)`` keeps, at most ``limit`` read."""

    def add_credential(record):
        """Store a new ``StreamCredential`` (``created`` and ``version`` are set here).
        Fails with CONFLICT if its id exists. Deferred [Change]."""

    def revoke_credential(cred_id):
        """Revoke a credential now. Deferred [Change]; NOT_FOUND for an unknown id,
        CONFLICT when it is revoked already."""

    def get_credential(cred_id):
        """Deferred ``StreamCredential`` or None."""

    def list_credentials(cursor="", limit=1000, username=None, device_id=None, held_by=None):
        """Deferred (records, next_cursor), ordered by id."""

    def set_grant(principal, device_id, actions):
        """principal is 'user:<name>' or 'group:<name>'. Deferred [Change]."""

    def remove_grant(principal, device_id):
        """Deferred [Change]."""

    def list_grants(cursor="", limit=1000, device_id=None, principal=None, held_by=None):
        """Deferred (records, next_cursor), ordered by (principal, device_id)."""

    def upsert_node(node_id, signalling, media, capacity):
        """Deferred [Change]."""

    def move_devices(moves, failed_node=""):
        """Re-home devices, ``moves`` [(device_id, node_id)], in one transaction (a node
        that died: CMS moves its PUs). ``failed_node``: the home they leave because it
        is down, remembered per device (the first such home) for ``failover_moves``
        until the device's home changes otherwise. Deferred [Change]."""

    def failover_moves(node_id=None):
        """Deferred {device_id: node_id}: devices moved away from a home that was down,
        and that home (only those of ``node_id`` when given): what failback gives back."""

    def set_node_state(node_id, state, load=None):
        """state 'up' or 'down'; load a JSON-able dict. Not logged as a change. Deferred."""

    def list_nodes():
        """Deferred list of dicts (node_id, signalling, media, capacity, state, load,
        applied_seq, last_seen)."""

    def remove_node(node_id):
        """Deferred [Change]."""

    def set_record_settings(device_id, channel, settings):
        """settings: a JSON-able dict. Deferred [Change]."""

    def get_record_settings(device_id, channel):
        """Deferred dict or None."""

    def head_seq():
        """Deferred int: the last sequence in the change log (0 if empty)."""

    def changes_after(seq, limit=1000):
        """Deferred (changes, reload_required): the log entries with a sequence above
        ``seq``, oldest first; reload_required is True when the log was compacted past
        ``seq``."""

    def compact(before_seq):
        """Drop log entries with a sequence below ``before_seq``. Deferred."""

    def set_node_applied(node_id, seq):
        """Record the last sequence a node acknowledged. Deferred."""

    def add_admin_token(name, token_hash, expires_in=None):
        """Store an admin token (its sha256 only), valid for ``expires_in`` seconds or
        until revoked. Deferred token id. Listing, expiry and revocation are
        ``vss.cms.store.tokens.IAdminTokenStore``."""

    def admin_for_token_hash(token_hash):
        """Deferred admin name or None."""


class ICentral(Interface):
    """What a node asks of the central platform (CMS). The real one is the node's CMS
    link; tests use ``vss.rgm.localcentral.MemoryCentral``. Every method returns a
    Deferred that fails with ``vss.protocols.errors.VssError`` carrying a result code.
    tests/test_central_conformance.py runs one test class against both."""

    device_listeners = Attribute("Callables f(device_id, old, new) told after each change "
                                 "of a device the node holds.")
    connected_listeners = Attribute("Callables f() told once the node holds what CMS holds "
                                    "after each (re)connection.")
    access_listeners = Attribute("Callables f() told after users, grants or stream "
                                 "credentials changed.")
    nodes_listeners = Attribute("Callables f(NodeList) told when the up nodes' PU addresses "
                                "are named anew (the PUs' list of nodes to try).")
    local_recordings = Attribute("f(RecordQuery) -> Deferred: how CMS (or the platform) "
                                 "asks this node's own catalogue; None until the node's "
                                 "archive exists.")
    route_cache = Attribute("device id -> home node id of the routes learned (S402): "
                            "``get``, ``pop``, ``clear``; a cache that never holds a route "
                            "where there is nothing to cache.")
    node_endpoints = Attribute("node id -> signalling endpoint of the other nodes known "
                               "up (empty without other nodes).")
    peers = Attribute("The node links to other nodes (``vss.rgm.peers.PeerLinks``), or None "
                      "where nodes cannot be reached directly.")
    counters = Attribute("dict of counters (``cms_requests``, ``routed_direct``...) for "
                         "metrics and status.")

    def registration_info(identity, role):
        """First registration: a ``RegInfo`` for a PU (role PU) or CU (role CU) the node
        does not hold yet, or fail with UNKNOWN_DEVICE / AUTH_FAILED. It names the PU's
        home node; the records may be left out (``device``/``user`` None: the real link
        answers once the node's copy holds them, and the node reads them there)."""

    def pull_static(entity, cursor, limit):
        """One page of the node's own static data: a ``StaticPage``."""

    def route(device_id, inner_type, inner_body):
        """S402: relay a request for a device this node does not hold. Fires with
        (inner_status, inner_body)."""

    def lookup_node(node_id):
        """Another node's addresses by its id, to reach it over a node link when no
        device homed there gives its route (the node holding footage): a ``NodeRoute``
        (``node_up`` false for a registered node that is down), or fail with
        UNKNOWN_NODE."""

    def home_of(device_id):
        """Where a PU is homed now, for a PU that asks (HOME_QUERY): a ``Route`` (its
        extension block names the home's PU address and the home epoch: docs/protocol.md
        13), or fail with UNKNOWN_DEVICE / CENTRAL_UNAVAILABLE."""

    def node_addresses():
        """The up nodes' PU addresses as CMS last named them, least loaded first: a
        list of ``NodeAddress`` (empty when not known). Synchronous."""

    def report_change(change):
        """S603: a ``SyncChange`` from one of the node's PUs. Fires with ``SyncAck``
        (its ``change_id`` is the one the change travelled under: the real link sends it
        through its durable outbox, which numbers it)."""

    def presence(device_id, online):
        """One of the node's PUs came online or went offline (dynamic data, so not
        logged: CMS passes it on to the other nodes so their device lists show it)."""

    def synchronised():
        """True once the node holds a synchronised copy of the static data (restored at
        start from its own store or data directory, or loaded from CMS), so that it can
        check logins itself; until then logins are answered NOT_READY. Synchronous."""

    def store_credential(record):
        """CRED_STORE: a stream credential a user of the node made (sealed secret only).
        Fires with the ``StreamCredential`` as stored; FORBIDDEN when the user may not
        view the device, NOT_SUPPORTED without a central platform."""

    def revoke_credential(cred_id, username):
        """CRED_REVOKE: ``username`` revokes one of their stream credentials. Fires
        with it as revoked."""

    def report_audit(report):
        """AUDIT_REPORT: an ``AuditReport`` of the media users started on the node
        (``vss.rgm.audit``). Fires with ``AuditAck`` once CMS holds it."""

    def report_events(report):
        """EVENT_REPORT: an ``EventReport`` of events numbered on the node
        (``vss.events.report``). Fires with ``EventReportAck`` once CMS holds them."""

    def ack_event(ack):
        """EVENT_ACK: an operator (``ack.username``, set by the node) acknowledges an
        event. Fires with ``EventAcked``; CONFLICT when it was acknowledged already."""

    def query_events(query):
        """EVENT_QUERY: the stored events of the devices ``query.username`` may view,
        newest first. Fires with ``Events``."""

    def record_settings(device_id, channel):
        """RECORD_SETTINGS_GET: the recording settings held for a channel
        (``RecordSettings``); NOT_FOUND when nothing was ever stored for it."""

    def query_recordings(body, timeout=None):
        """RECORD_QUERY across nodes: fires with the response frame of the merged
        listing (an error status raises ``VssError``); CENTRAL_UNAVAILABLE when it
        cannot be asked now."""

    def status():
        """A dict for operators: connected, routes cached, what is held, counters.
        Synchronous."""


class IStreamAuthorizer(Interface):
    """How the streaming server checks a token in an RTSP URL."""

    def check(token, path, method):
        """Return (True, info) if the token allows ``method`` on ``path`` now, else
        (False, reason). ``info`` is whatever the issuer attached (device, session)."""


class IAdminBackend(Interface):
    """What the MMS admin API (``vss.cms.mms``) needs of the central platform.

    ``vss.cms.admin_backend.StoreAdminBackend`` implements it over an ``IStaticStore``
    alone; the CMS service provides the same surface with its live node registry."""

    store = Attribute("The ``IStaticStore`` holding the static data.")
    credential_key = Attribute("The key stream credentials are sealed with "
                               "(``vss.streamcreds.secret.credential_key`` of the cluster "
                               "secret), or None: then none can be made here.")

    def publish(changes):
        """S501: the ``Change`` list of one store transaction made by an operator; may
        return a Deferred. Called after every change."""

    def assign_home_node(device_id):
        """Deferred node id for a new device without a home ('' if no node fits)."""

    def status():
        """Operations status: a dict (or a Deferred dict) with ``nodes`` (state, load,
        devices homed and online per node) and totals."""

    def not_active():
        """None while this CMS serves; else (why, the active CMS's admin URL or '')
        when it is a standby: the admin API then answers 503 and serves nothing."""


class IRecorder(Interface):
    """The recording interface of a node's CDN module: the only path from the RGM's
    recording task manager (``vss.recording.tasks``) to the streaming server, which writes
    what it receives for a (device, channel, stream) into segment files."""

    def start(device_id, channel, stream, segment_seconds):
        """Start recording; files are cut every ``segment_seconds`` (on multiples of it
        since the epoch). A Deferred that fires once recording runs, or fails with a
        ``VssError`` (e.g. NOT_SUPPORTED, DEVICE_OFFLINE)."""

    def stop(device_id, channel, stream):
        """Stop recording and close the open segment. A Deferred."""
