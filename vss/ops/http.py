"""
Where ``/healthz``, ``/readyz`` and ``/metrics`` are served.

- On a node: its HTTP listener (``--http-listen``, the one of the export downloads).
  ``NodeHttpRoot`` answers the three paths and hands every other request to the export
  resource, which keeps its own rules (``GET /export?token=`` only, 404 else).
- On CMS: the admin listener (``--admin-listen``), beside ``/api/v1/`` (``add_to``);
  these three paths need no admin token.
"""

from twisted.web import resource

from vss.ops.health import Alive, Ready
from vss.redact import Site


def ops_resources(readiness, clock, metrics=None):
    """``{b"healthz": ..., b"readyz": ..., b"metrics": ...}`` (``metrics``: a
    ``vss.ops.metrics.MetricsResource``, or None when metrics are off)."""
    out = {b"healthz": Alive(), b"readyz": Ready(readiness, clock)}
    if metrics is not None:
        out[b"metrics"] = metrics
    return out


class NodeHttpRoot(resource.Resource):
    """The node's HTTP root: the operations paths, else ``fallback`` (the export)."""

    isLeaf = True

    def __init__(self, ops, fallback):
        super().__init__()
        self.ops = {b"/" + name: res for name, res in ops.items()}
        self.fallback = fallback

    def render(self, request):
        res = self.ops.get(request.path)
        if res is None:
            return self.fallback.render(request)
        return res.render(request)


def node_site(ops, fallback):
    """The node's HTTP site: its access log shows no token (``vss.redact.Site``)."""
    return Site(NodeHttpRoot(ops, fallback))


def add_to(root, ops):
    """Put the operations resources under ``root`` (the CMS admin site's root)."""
    for name, res in ops.items():
        root.putChild(name, res)
