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
- ``vss.cdn``        the CDN module: the only controller of the node's streaming server.
- ``vss.rtsp``       RTSP parser (sans-IO), server, client, RTP fan-out.
- ``vss.store``      in-memory store backends (in-process, Redis).
- ``vss.streamcreds`` long-lived, revocable stream credentials for third-party players
  (stable stream URLs, RTSP Digest).
- ``vss.tap``        ``usage.Options`` and ``makeService`` for ``twistd vss-node`` and
  ``twistd vss-cms``.
- ``vss.testing``    fakes and builders shared by tests.
"""

__version__ = "0.1.0"
