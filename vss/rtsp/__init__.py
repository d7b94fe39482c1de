"""
The streaming server (SS) of a node, and an RTSP client.

- ``parser``   sans-IO, bounded RTSP 1.0 parser (requests, responses, ``$`` frames)
               and message builders; no Twisted.
- ``sdp``      the few SDP operations a relay needs (list media, rewrite controls).
- ``auth``     Basic and Digest (RFC 2617, MD5), client and server side; no Twisted.
- ``fanout``   the hot path: ``Source`` (one live stream), ``TCPReader`` (one shared
               interleaved buffer per picture, one ``send`` per viewer, bounded queue,
               drop to the next keyframe), ``LagWatch`` (live viewers stay within a
               time bound of live), ``UDPReader``.
- ``server``   ``RTSPServerFactory``: play and publish on ``/live/<device>/<stream>``,
               every request checked by an ``IStreamAuthorizer`` (``vss.cdn.tokens``),
               session timeouts on the injected clock, hooks for the CDN module;
               ``RTSPServerService`` runs it on an endpoint string (+ UDP pair).
- ``client``   ``pull(url, sink_factory)``: pull a camera or another node's SS over TCP
               interleaved (or TLS: ``rtsps://``) into a sink, e.g. a server source
               (``pull_into``).
"""


def ffmpeg_options(url, own_server=False, ca_file=None):
    """FFmpeg (PyAV) options to play or publish ``url`` over RTSP/TCP. For ``rtsps://``:
    the server's certificate is checked against ``ca_file`` (else the system's trust
    roots), except with ``own_server``: a node's child reaching the node's own SS on
    this machine, whose certificate need not name the loopback address."""
    options = {"rtsp_transport": "tcp"}
    if url.lower().startswith("rtsps://"):
        if own_server:
            options["tls_verify"] = "0"
        elif ca_file:
            options["ca_file"] = ca_file
    return options


def start_from_gop(url):
    """``url`` (a live stream URL) asking the streaming server to start from the last GOP
    it kept (``start=gop``, docs/protocol.md, MEDIA_OPEN): the first picture comes at
    once instead of at the camera's next keyframe, up to one GOP behind live."""
    base, sep, query = url.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("start=")] if sep else []
    return base + "?" + "&".join(params + ["start=gop"])
