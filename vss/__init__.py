"""
vss: a distributed-node video surveillance platform on Twisted.

Map of the package (each flow of docs/architecture.md is findable by folder):

- ``vss.protocols``  the binary signalling protocol: construct definitions, typed
  messages, the sans-IO frame decoder and encoder (no Twisted), and the thin Twisted
  protocols for the PU link, the CU link and the inter-node links.
- ``vss.rgm``        the register manager of a node: sessions, authentication,
  keepalive, grants, the CU-to-PU relay (S401, S407) and the in-memory database.
- ``vss.cms``        the central platform: static data, node registry, routing
  (S402-S406), data synchronisation (S501-S506, S601-S605).
- ``vss.cdn``        the CDN module: the only controller of the node's streaming servers.
- ``vss.ss``         streaming servers as worker processes and the link that drives them.
- ``vss.recording``  what is recorded, the recorder, the catalogue, playback, export.
- ``vss.rtsp``       RTSP parser (sans-IO), server, client, RTP fan-out.
- ``vss.events``     events and alarms: numbering, feed, delivery, reports, rules.
- ``vss.web``        the browser client (page, CU link and media over WebSockets, HLS).
- ``vss.store``      in-memory store backends (in-process, Redis).
- ``vss.streamcreds`` long-lived, revocable stream credentials for third-party players
  (stable stream URLs, RTSP Digest).
- ``vss.tap``        ``usage.Options`` and ``makeService`` for ``twistd vss-node``,
  ``twistd vss-cms`` and ``twistd vss-ss``; ``vss.services`` the service pieces the
  daemons are made of; ``vss.node`` and ``vss.cms.daemon`` their composition roots.
- ``vss.cli``, ``vss.cu``, ``vss.pu``, ``vss.conformance``  the command lines
  (``vss-admin``; ``vssctl``, ``vss-decoder``; ``vss-pu``; ``vss-conformance``).
- ``vss.ops``        health, readiness, Prometheus metrics, systemd units.
- ``vss.testing``    fakes and builders shared by tests.
"""

__version__ = "0.1.0"
