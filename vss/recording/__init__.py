"""Recording: what the node records, how it writes it, and how it is found and played back.

The RGM decides what to record (``tasks``, ``settings``); the CDN module's recorder
writes it (``recorder`` with ``live``, ``child``, ``segments``, ``rtpmux``); the
catalogue indexes it; ``playback``, ``remote``, ``export``, ``dvr`` and ``archive`` serve
it back, here or across nodes. The listing codec (RECORD_QUERY answers) is part of the
protocol: ``vss.protocols.listing``.

- ``tasks``: recording tasks (split, stack, queue) and the ``RecordingManager``.
- ``settings``: per-channel record settings fetched from CMS and kept in sync.
- ``recorder``: the CDN module's recording interface (start, stop, status), the choice
  between in process and a child, restarts, the disk-full alarm.
- ``live``: the in-process writer (a reader of the SS's source) and the pre-event buffer.
- ``child``: the child-process recorder (``python -m vss.recording.child``).
- ``segments``: the files both write (``.part`` sealing, names aligned on UTC).
- ``rtpmux``: RTP depacketizers (H.264, H.265, AAC) for the in-process writer.
- ``catalogue``: the segment index (SQLite) and retention.
- ``playback``: playback of recorded segments through the SS (a child per playback).
- ``remote``: playback and listing of another node's recordings (relayed).
- ``export``: ``GET /export``: a time range as one MP4, with signed tokens.
- ``dvr``: footage kept on a PU (DVR/NVR) listed and played like recordings.
- ``archive``: RECORD_QUERY across nodes, the retention loop, the parts wired into a node.
"""
