"""
CUs for people: ``vssctl`` (``ctl``) logs in to a node as a user and runs one command
(devices, control, live and recorded media, recordings, stream credentials);
``events`` holds ``vssctl events`` and ``vssctl ack``.
"""
