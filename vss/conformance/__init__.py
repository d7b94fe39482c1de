"""
The protocol conformance suite: ``vss-conformance`` tells an integrator whether a node
speaks docs/protocol.md, by driving any node address as a PU and as a CU.

- ``probe.py``   a raw client link: writes any bytes (well-formed or not), reads and
                 decodes what the node answers, waits for frames or the close, with
                 timeouts; SCRAM login written out step by step so every step is checked.
- ``checks.py``  the checks, one function each with a name and a one-line description,
                 and the ``Context`` they share (endpoints, identities, the suite's own PU).
- ``runner.py``  runs the chosen checks one after another and reports PASS / FAIL / SKIP.
- ``cli.py``     the ``vss-conformance`` command line.
"""
