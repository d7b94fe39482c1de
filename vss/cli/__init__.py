"""
Command lines that are clients of a server's API rather than part of the server.

- ``admin``: ``vss-admin``, the operators' command line over the MMS admin API (and
  the few commands that work on the CMS database directly: ``bootstrap``, ``export``,
  ``certs``).

``vssctl`` is a CU and lives with the CU code (``vss.cu.ctl``); ``vss-pu`` with the PU
agent (``vss.pu.agent``); ``vss-conformance`` with its suite (``vss.conformance.cli``).
"""
