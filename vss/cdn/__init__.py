"""
The CDN module of a node: the only thing that drives its streaming server (SS, in
``vss.rtsp``). The RGM asks it for live and recorded media; it opens sources on the SS
(a PU publishing, a camera pulled by URL, another node's stream relayed, a playback),
issues the stream tokens the SS checks, and closes what nobody watches.

- ``service``: ``CDNModule`` (MEDIA_OPEN/CLOSE for live and playback, camera pulls,
  cross-node relays) and ``CDNRecording``, the recording interface the RGM's recording
  tasks call (the recorder itself is in ``vss.recording``).
- ``tokens``: short-lived signed stream tokens (``TokenIssuer``) and the SS's check of
  them (``TokenAuthorizer``, an ``IStreamAuthorizer``).
"""
