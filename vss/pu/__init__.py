"""
The PU agent (``vss-pu``): one process simulating one or thousands of PUs (IPC, DVS,
DVR) that log in to their node, answer control requests with real state and publish
real video.

- ``agent``: the PUs' links, registration, reconnection and the command line.
- ``device``: a simulated device's state (PTZ motion, presets, configuration).
- ``media``: the publisher (a child process encoding a test pattern or a file).
- ``dvr``: the footage a simulated DVR holds.
"""
