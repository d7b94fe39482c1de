"""
CUs for people and screens: ``vssctl`` (``ctl``) logs in to a node as a user and runs one
command (devices, control, live and recorded media, recordings, stream credentials);
``events`` holds ``vssctl events`` and ``vssctl ack``; ``wall`` holds ``vssctl wall``
(layouts, tiles, tours of a TV wall or decoder on any node); ``decoder`` is
``vss-decoder``, set-top decoders (many per process) that register as wall CUs, pull what
they are assigned with RTSP and decode it with PyAV.
"""
