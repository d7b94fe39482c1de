"""
The binary signalling protocol (docs/protocol.md) and the one Twisted protocol that
carries it on every link.

- ``messages``: the message catalogue, defined with ``construct``; the executable form
  of docs/protocol.md.
- ``codec``: frames: the header, the encoder, the sans-IO streaming decoder and the
  struct fast paths (no Twisted).
- ``codes``: the result codes; ``errors``: ``VssError`` and the mapping of failures to
  result codes.
- ``scram``: SCRAM-SHA-256 with stored verifiers (no Twisted).
- ``listing``: the RECORD_QUERY listing codec (recordings across nodes) and gap
  arithmetic.
- ``jsonrec``: records and bodies as JSON-able values (static-data files, the admin API).
- ``link``: ``Link``, the Twisted protocol of every signalling link, and its factory.
- ``reconnect``: a connection kept up with backoff and jitter and a preparation step.
"""
