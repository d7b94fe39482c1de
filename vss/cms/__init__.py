"""
The central platform (``twistd vss-cms``): MMS, CMS and MDP over one database.

- ``daemon``: ``CmsDaemon``, the composition root: the database, CMS with its node
  listener, the admin API and console, metrics, the standby election.
- ``service``: ``CMSService``: the node registry and links, first registration, static
  pulls, routing between nodes (S402-S406), synchronisation (S501-S506, S601-S605),
  events, audit and stream credentials from nodes; ``MDP`` (streaming servers and load).
- ``interest``: S503 node routing: which nodes hold which records.
- ``standby``: which CMS is active when several share one PostgreSQL database.
- ``mms``: the MMS admin API (HTTP JSON under ``/api/v1/``): resources and validation;
  ``openapi``: its OpenAPI document; ``admin_backend``: the ``IAdminBackend`` over the
  database.
- ``console``: the operators' browser console (API additions and the page);
  ``operators``: operator accounts, logins, sessions; ``audit``: the audit of changes.
- ``store``: the database (SQLite or PostgreSQL), its migrations and change log.

The operators' command line (``vss-admin``) is a client of the admin API and lives in
``vss.cli.admin``.
"""
