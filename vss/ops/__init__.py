"""
What operators watch and run a daemon with, the same on ``vss-node`` and ``vss-cms``.

- ``vss.ops.metrics``     Prometheus metrics: counters kept as plain integers by the parts
  that count, read at scrape time by a collector; the ``/metrics`` resource and who may
  read it (loopback by default, other networks and a bearer token when configured).
- ``vss.ops.collectors``  the node's and the central platform's collectors.
- ``vss.ops.health``      ``/healthz`` (the process answers) and ``/readyz`` (it can
  serve, else the reasons why not).
- ``vss.ops.http``        those resources on the node's HTTP listener and the CMS admin
  listener.
- ``vss.ops.systemd``     the systemd units shipped with the package
  (``python -m vss.ops.systemd DIR`` writes them for the venv it runs from).
"""
