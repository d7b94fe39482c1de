"""
``StoreAdminBackend``: the ``IAdminBackend`` of the MMS admin API over an
``IStaticStore`` alone.

The CMS service wraps it (or provides the same surface itself): ``publish`` becomes
S501, the hand-over of an operator's changes to CMS, and ``assign_home_node`` /
``status`` see the live node links. Without them, the defaults here read the node
registry the store keeps (state and load as the nodes last reported them).
"""

from twisted.internet import defer
from zope.interface import implementer

from vss.interfaces import IAdminBackend

#: page size when counting devices homed on a node
COUNT_PAGE = 5000


@defer.inlineCallbacks
def count_devices(store, home_node):
    """Deferred number of devices homed on ``home_node`` (every device for None)."""
    total, cursor = 0, ""
    while True:
        records, cursor = yield store.list_devices(cursor=cursor, limit=COUNT_PAGE,
                                                   home_node=home_node)
        total += len(records)
        if not cursor:
            return total


@implementer(IAdminBackend)
class StoreAdminBackend:
    """``publish(changes)``, ``assign_home_node(device_id)`` and ``status()`` may be
    given as callables; each default works from ``store`` alone. ``credential_key``
    (from the cluster secret) lets operators make stream credentials."""

    def __init__(self, store, publish=None, assign_home_node=None, status=None,
                 credential_key=None, not_active=None):
        self.store = store
        self._not_active = not_active
        self.credential_key = credential_key  # seals stream credentials (vss.streamcreds)
        self._publish = publish
        self._assign = assign_home_node
        self._status = status

    def not_active(self):
        return None if self._not_active is None else self._not_active()

    def publish(self, changes):
        if self._publish is None:
            return defer.succeed(None)
        return defer.maybeDeferred(self._publish, changes)

    def assign_home_node(self, device_id):
        if self._assign is not None:
            return defer.maybeDeferred(self._assign, device_id)
        return self._least_loaded()

    @defer.inlineCallbacks
    def _least_loaded(self):
        """The up node with the fewest devices homed on it (then by id), or ''."""
        nodes = yield self.store.list_nodes()
        best = None
        for node in nodes:
            if node["state"] != "up":
                continue
            homed = yield count_devices(self.store, node["node_id"])
            key = (homed, node["node_id"])
            if best is None or key < best:
                best = key
        return best[1] if best else ""

    def status(self):
        if self._status is not None:
            return defer.maybeDeferred(self._status)
        return self._registry_status()

    @defer.inlineCallbacks
    def _registry_status(self):
        nodes = yield self.store.list_nodes()
        out = []
        for node in nodes:
            load = node.get("load") or {}
            homed = yield count_devices(self.store, node["node_id"])
            out.append({
                "node_id": node["node_id"],
                "state": node["state"],
                "signalling": node["signalling"],
                "media": node["media"],
                "capacity": node["capacity"],
                "load": load,
                "devices": homed,
                # what the node reported in its last heartbeat; 0 while it is down
                "devices_online": int(load.get("pus", 0)) if node["state"] == "up" else 0,
                "applied_seq": node["applied_seq"],
                "last_seen": node["last_seen"],
            })
        unassigned = yield count_devices(self.store, "")
        total = yield count_devices(self.store, None)
        head = yield self.store.head_seq()
        return {
            "nodes": out,
            "nodes_up": sum(1 for n in out if n["state"] == "up"),
            "devices": total,
            "devices_unassigned": unassigned,
            "devices_online": sum(n["devices_online"] for n in out),
            "head_seq": head,
        }
