"""
S503, node routing: which nodes hold a record, so that CMS sends each change only to
the nodes whose copy it touches (docs/consistency.md, "What each node holds").

A node holds:

- the devices homed on it, in full (verifier included);
- the devices it *follows*: homed elsewhere but seen by a user registered on it, or
  homed on it once (it still gets the move and the delete);
- every grant on a device it holds, and every grant on a CU target (``cu:<wall>``: who
  may drive a TV wall or decoder, checked on the operator's node, which may be any);
- the users registered on it (a CU logs in there for the first time: REG_INFO) and
  their stream credentials.

What a node follows and which users are registered where are rows of the DB
(``node_devices``, ``node_users``) that only grow, so the index below, read from them
at start and kept by the changes as CMS publishes them in log order, only grows too:
filtering a fetch by what a node holds *now* gives every entry it needed *then*.

``Interest`` is in memory and pure (no I/O): CMS feeds it the changes in sequence order
(``apply``) and asks it where a change goes (``nodes_for``) or whether a node keeps a
log entry (``keeps``, for SYNC_FETCH).
"""

from vss.protocols.messages import CU_TARGET, ChangeOp, Entity

FOLLOW_ORIGIN = "follow:"
#: ``nodes_for``'s answer for a change every node must see (a record it cannot place)
EVERY_NODE = None


def follower_of(origin):
    """The node a ``follow:<node>`` entry was written for, else None."""
    if origin.startswith(FOLLOW_ORIGIN):
        return origin[len(FOLLOW_ORIGIN):]
    return None


class Interest:
    def __init__(self):
        self.homes = {}  # device_id -> home node id ('' when none)
        self.followers = {}  # device_id -> set of node ids following it
        self.user_nodes = {}  # username -> set of node ids it is registered on
        self.groups = {}  # username -> tuple of group names
        self.members = {}  # group -> set of usernames

    # -- loading

    def load_rows(self, node_devices, node_users):
        for node_id, device_id in node_devices:
            self.followers.setdefault(device_id, set()).add(node_id)
        for node_id, username in node_users:
            self.user_nodes.setdefault(username, set()).add(node_id)

    def set_user(self, username, groups):
        old = self.groups.get(username, ())
        for g in old:
            members = self.members.get(g)
            if members is not None:
                members.discard(username)
                if not members:
                    del self.members[g]
        if groups is None:
            self.groups.pop(username, None)
            return
        self.groups[username] = tuple(groups)
        for g in groups:
            self.members.setdefault(g, set()).add(username)

    # -- where records are held

    def device_nodes(self, device_id):
        nodes = set(self.followers.get(device_id, ()))
        home = self.homes.get(device_id)
        if home:
            nodes.add(home)
        return nodes

    def holds_device(self, node_id, device_id):
        return self.homes.get(device_id) == node_id or \
            node_id in self.followers.get(device_id, ())

    def principal_nodes(self, principal):
        """The nodes a user of this principal is registered on."""
        kind, _, name = principal.partition(":")
        if kind == "user":
            return set(self.user_nodes.get(name, ()))
        nodes = set()
        for username in self.members.get(name, ()):
            nodes |= self.user_nodes.get(username, set())
        return nodes

    # -- S503

    def apply(self, c, cache=None):
        """Take one published change into the index (in log order). Returns the
        principal's newly added view to follow: [(node_id, device_id)] for a grant
        to users registered on nodes that do not hold its device yet, and [(node_id,
        username)] as ('user', node_id, username) for a user whose groups grew."""
        follower = follower_of(c.origin)
        gains = []
        if c.entity == Entity.DEVICE:
            home = self.homes.get(c.key)
            if c.op == ChangeOp.DELETE:
                if home:
                    self.followers.setdefault(c.key, set()).add(home)
                self.homes.pop(c.key, None)
            elif c.device is not None:
                if home and home != c.device.home_node:
                    self.followers.setdefault(c.key, set()).add(home)
                self.homes[c.key] = c.device.home_node
            if follower is not None:
                self.followers.setdefault(c.key, set()).add(follower)
        elif c.entity == Entity.USER:
            if cache is not None:
                cache.clear()  # a user's groups decide a principal's nodes
            if follower is not None:
                self.user_nodes.setdefault(c.key, set()).add(follower)
            if c.op == ChangeOp.DELETE:
                self.set_user(c.key, None)
            elif c.user is not None:
                old = set(self.groups.get(c.key, ()))
                self.set_user(c.key, c.user.groups)
                if set(c.user.groups) - old:
                    gains += [("user", n, c.key) for n in self.user_nodes.get(c.key, ())]
        elif c.entity == Entity.GRANT and c.op == ChangeOp.UPSERT and follower is None \
                and c.grant is not None:
            principal = c.grant.principal
            if cache is None:
                nodes = self.principal_nodes(principal)
            else:
                nodes = cache.get(principal)
                if nodes is None:
                    nodes = cache[principal] = self.principal_nodes(principal)
            if c.grant.device_id.startswith(CU_TARGET):
                return gains  # a wall is no device to follow
            for node_id in nodes:
                if not self.holds_device(node_id, c.grant.device_id):
                    gains.append(("device", node_id, c.grant.device_id))
        return gains

    def nodes_for(self, c):
        """The nodes whose copy the change touches, or EVERY_NODE."""
        follower = follower_of(c.origin)
        if follower is not None:
            return {follower}
        if c.entity == Entity.DEVICE:
            nodes = self.device_nodes(c.key)
            if c.device is not None and c.device.home_node:
                nodes.add(c.device.home_node)
            return nodes
        if c.entity == Entity.GRANT:
            device_id = c.key.partition("|")[2]
            if device_id.startswith(CU_TARGET):
                return EVERY_NODE
            return self.device_nodes(device_id)
        if c.entity == Entity.USER:
            return set(self.user_nodes.get(c.key, ()))
        if c.entity == Entity.CREDENTIAL:
            if c.credential is None:
                return EVERY_NODE
            return set(self.user_nodes.get(c.credential.username, ()))
        return set()  # the node registry: no node holds it

    def keeps(self, node_id, entity, op, key, origin):
        """Whether a log entry (read back by SYNC_FETCH) is for ``node_id``. Stream
        credentials are placed by their record (``keeps_record``)."""
        follower = follower_of(origin)
        if follower is not None:
            return follower == node_id
        if entity == Entity.DEVICE:
            return self.holds_device(node_id, key)
        if entity == Entity.GRANT:
            device_id = key.partition("|")[2]
            return device_id.startswith(CU_TARGET) or self.holds_device(node_id, device_id)
        if entity == Entity.USER:
            return node_id in self.user_nodes.get(key, ())
        return entity == Entity.CREDENTIAL

    def keeps_record(self, node_id, c):
        if c.entity != Entity.CREDENTIAL or c.credential is None:
            return True
        return node_id in self.user_nodes.get(c.credential.username, ())
