"""
Events and alarms: what happens at a device (motion, an alarm input, video loss, a PU
going offline, a recording failing, a disk filling), from the device to the operators
who watch it, on any node, kept by CMS and acknowledged (docs/protocol.md, EVENT_*).

- ``hub.py``     ``EventHub``: the node's side. Numbers the events of the devices homed
                 here (EVENT_RAISE from a PU, and the node's own events), keeps a bounded
                 history (the node's *feed*), pushes EVENT_NOTIFY to the CUs whose
                 subscriptions match and who may VIEW the device, replays what a CU
                 missed when it resumes, and subscribes to other nodes' feeds over the
                 node links for devices homed there (no CMS on the event path).
- ``report.py``  ``EventReporter``: the events numbered here go to CMS in batches off the
                 hot path (EVENT_REPORT), for storage.
- ``rules.py``   actions: a per device, per type rule starts an event recording.

CMS's side is ``CMSService.on_event_report``/``on_event_ack``/``on_event_query`` with the
``events`` and ``event_acks`` tables (``vss.cms.store.events``).
"""
