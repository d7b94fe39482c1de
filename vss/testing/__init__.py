"""
What tests and benchmarks share (not used by the daemons).

- ``harness``: a node's RGM wired to clients over in-memory transports and a
  ``task.Clock``.
- ``platform``: a central platform and nodes in one process over loopback TCP.
- ``processes``: real ``twistd`` daemons, ``vss-pu`` and ``vssctl`` processes.
- ``records``: builders of static records; ``postgres``: a PostgreSQL server of a
  test's own; ``standby``: two CMS on one PostgreSQL database.
- ``browser``: headless Chromium through Selenium; ``wsmedia``: a browser's media
  WebSocket without a browser; ``rawrtsp``: a blocking raw RTSP client.
- ``summary``: trial's closing counts as one line (``make test``).
"""
