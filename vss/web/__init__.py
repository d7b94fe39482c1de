"""
The browser client every node serves on its HTTP listener (``--http-listen``).

- ``fmp4``: fragmented MP4 (init segment, one fragment per picture) from H.264 access
  units, sans-IO.
"""
