"""
Route caches of a node (S402): which node a device of another node is homed on, as
learned from CMS. ``CmsLink.route_cache`` is a dict; ``NoRouteCache`` is the cache of a
node run with ``--route-cache off`` or without other nodes to route to: it never holds
a route, so every request for another node's device takes the cache-miss path.
"""


class NoRouteCache(dict):
    """A route cache that never holds a route."""

    def __setitem__(self, key, value):
        pass
