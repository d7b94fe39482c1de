"""
The streaming server (SS) of a node, and an RTSP client.

- ``parser``   sans-IO, bounded RTSP 1.0 parser (requests, responses, ``$`` frames)
               and message builders; no Twisted.
- ``sdp``      the few SDP operations a relay needs (list media, rewrite controls).
- ``auth``     Basic and Digest (RFC 2617, MD5), client and server side; no Twisted.
- ``fanout``   the hot path: ``Source`` (one live stream), ``TCPReader`` (one shared
               interleaved buffer per picture, one ``send`` per viewer, bounded queue,
               drop to the next keyframe), ``UDPReader``.
- ``server``   ``RTSPServerFactory``: play and publish on ``/live/<device>/<stream>``,
               every request checked by an ``IStreamAuthorizer`` (``vss.cdn.tokens``),
               session timeouts on the injected clock, hooks for the CDN module;
               ``RTSPServerService`` runs it on an endpoint string (+ UDP pair).
- ``client``   ``pull(url, sink_factory)``: pull a camera or another node's SS over TCP
               interleaved into a sink, e.g. a server source (``pull_into``).
"""
