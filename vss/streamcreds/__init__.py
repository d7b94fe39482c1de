"""
Stream credentials: long-lived, revocable credentials that third-party players and
NVRs (VLC, an NVR, Home Assistant) put in a stable stream URL, since they cannot ask a
node for a fresh 60 s token.

A user creates one for a device (``vssctl stream-cred create``, or an operator with
``vss-admin stream-cred create``); it is bound to that user and that device: it plays
the device's live streams on any node while the user exists, is enabled and holds the
VIEW grant on the device, until it expires or is revoked. It is static data: stored in
the CMS database, copied to every node by passive sync (S501-S506), listed and revoked
at the centre; revocation reaches every node at once and ends the sessions playing with
it there (``StreamCredentials.revalidate``).

Files and roles:

``secret.py``  sans-IO: ids and secrets, the sealed form kept in the database, checking
               a secret or a Digest answer, states
``node.py``    a node's side: the streaming server's check of an RTSP request, the
               CU's requests (create, list, revoke) and the revocation of sessions

What a player uses (``<id>`` is public, ``<secret>`` is shown once, at creation):

- RTSP Digest (RFC 2617, MD5, realm ``vss``): user ``<id>``, password ``<secret>``,
  e.g. ``rtsp://<id>:<secret>@node:7554/live/cam-1/main``; the secret never crosses
  the network.
- the URL, for players and NVRs that cannot do Digest:
  ``rtsp://node:7554/live/cam-1/main?cred=<id>.<secret>``; the secret crosses the
  network in clear with every request, as a camera password would, and is masked in
  every log line of vss (``vss.redact``: the streaming server logs paths, never URLs).

Basic authentication is not offered: it would send the secret in clear on every
request, without the URL form's honesty about it.
"""
