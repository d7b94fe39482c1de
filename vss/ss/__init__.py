"""
Streaming servers (SS) as worker processes of a node, and the link the CDN module
drives them over (docs/architecture.md, "Streaming server workers"; docs/protocol.md 9.8).

- ``auth``: the SS control link's challenge and proofs (sans-IO, no Twisted),
- ``placement``: which SS gets a stream: the policy the node's CDN module and MDP share,
- ``worker``: one SS process (``twistd vss-ss``, or a child the node spawns): an RTSP
  server that pulls each stream it is given once from the node and fans it out,
- ``pool``: the node's side: spawns, watches and restarts its workers, authenticates
  their links, keeps their load and places streams on them.
"""
