"""
The browser client every node serves on its HTTP listener (``--http-listen``).

- ``site``: the HTTP root (the page, ``/ws/cu``, ``/media``, ``/hls``) and ``WebClient``.
- ``signalling``: the CU link over a WebSocket, node side; ``client``: the same from
  the client side (``ws://`` endpoints for the conformance suite and ``vssctl``).
- ``media``: a browser's media WebSocket (token, play, pause, seek, speed);
  ``live``: one packager per stream and its bounded viewers; ``hls``: HLS with
  fragmented MP4 from the same packager.
- ``fmp4``: fragmented MP4 (init segment, one fragment per picture) from H.264 access
  units, sans-IO.
"""
