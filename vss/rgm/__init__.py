"""
The RGM (register manager) of a node: the signalling core every PU and CU talks to,
and the node's side of the links to other nodes and to CMS.

- ``service``: ``RGMService``: sessions, login, keepalive, registration, grants, the
  node's state in its ``IMemoryStore``.
- ``auth``: the server side of SCRAM-SHA-256 and the throttle of failed logins.
- ``relay``: CU to PU requests (S401-S407), with the struct fast paths.
- ``peers``: links between nodes (cluster-secret login, routed requests, S404-S406).
- ``cmslink``: ``CmsLink``, the real ``ICentral``: the reconnecting link to CMS
  (registration, static pulls, routing, sync); ``localcentral``: ``MemoryCentral``, the
  in-process ``ICentral`` of a node run without a central platform (``--static``) and
  of tests.
- ``sync``: applying central changes to the in-memory database (S505) in order.
- ``outbox``: the durable outbox of PU-originated changes (S603).
- ``localcopy``: the memory store's copy on disk, to serve after a restart while CMS
  is down.
- ``settings``: a PU's configuration and presets as its home node holds them.
- ``audit``: the audit of media (AUDIT_REPORT batches); ``expiry``: grant expiry.
"""
