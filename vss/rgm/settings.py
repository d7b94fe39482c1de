"""
A PU's configuration and presets as its home node holds them.

They are static data of the device (docs/architecture.md, "Data held where"): the device
is where they change (S601, STATE_CHANGE CONFIG and PRESET), CMS's database keeps what
it acknowledged (S603-S605, ``reported`` in the device's settings), and the home node
keeps a copy in its memory database (state fields below, per channel), journalled with
the memory store's local copy (``vss.rgm.localcopy``) so that a restart restores it.

State fields: channel 0 uses ``config`` (dict), ``config_version`` (int) and ``presets``
(dict preset number -> name); channel N > 0 the same names with ``@N``.
"""

from vss.protocols.messages import ChangeKind

#: The change kinds this module applies.
KINDS = (ChangeKind.CONFIG, ChangeKind.PRESET)


def fields(channel):
    """(config, config_version, presets) state field names of a channel."""
    if not channel:
        return "config", "config_version", "presets"
    return f"config@{channel}", f"config_version@{channel}", f"presets@{channel}"


def apply(store, device_id, channel, kind, items):
    """Apply a CONFIG change (items merged into the configuration; ``_version`` is the
    configuration's version) or a PRESET change (items are every preset: number ->
    name) to the store."""
    config_field, version_field, presets_field = fields(channel)
    if kind == ChangeKind.CONFIG:
        state = store.get_state(device_id)
        config = dict(state.get(config_field, {}))
        config.update({k: v for k, v in items.items() if k != "_version"})
        version = items.get("_version")
        try:
            version = int(version) if version is not None else state.get(version_field, 0)
        except ValueError:
            version = state.get(version_field, 0)
        store.set_state(device_id, **{config_field: config, version_field: version})
    elif kind == ChangeKind.PRESET:
        store.set_state(device_id, **{presets_field: dict(items)})


def held(store, device_id):
    """[(channel, kind, items)] restoring what the store holds for the device (for the
    local copy's snapshot)."""
    state = store.get_state(device_id)
    channels = set()
    for name in state:
        base, _, number = name.partition("@")
        if base in ("config", "presets") and (not number or number.isdigit()):
            channels.add(int(number or 0))
    out = []
    for channel in sorted(channels):
        config_field, version_field, presets_field = fields(channel)
        if config_field in state:
            items = dict(state[config_field])
            items["_version"] = str(state.get(version_field, 0))
            out.append((channel, ChangeKind.CONFIG, items))
        if presets_field in state:
            out.append((channel, ChangeKind.PRESET, dict(state[presets_field])))
    return out
