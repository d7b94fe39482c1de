"""Builders of static records for tests, demos and load tools."""

from vss.protocols import scram
from vss.protocols.messages import DeviceRecord, GrantRecord, PuKind, UserRecord, Verifier


def verifier(secret, iterations=scram.DEFAULT_ITERATIONS, salt=None):
    salt, iterations, stored, server = scram.make_verifier(secret, salt, iterations)
    return Verifier(salt=salt, iterations=iterations, stored_key=stored, server_key=server)


def device(device_id, secret, home_node="", name=None, kind=PuKind.IPC, channels=1,
           source_url="", enabled=True, version=1, iterations=scram.DEFAULT_ITERATIONS):
    return DeviceRecord(
        device_id=device_id,
        name=name if name is not None else device_id,
        kind=int(kind),
        channels=channels,
        home_node=home_node,
        verifier=verifier(secret, iterations),
        source_url=source_url,
        enabled=enabled,
        version=version,
    )


def user(username, password, groups=(), enabled=True, version=1,
         iterations=scram.DEFAULT_ITERATIONS):
    return UserRecord(
        username=username,
        verifier=verifier(password, iterations),
        groups=list(groups),
        enabled=enabled,
        version=version,
    )


def grant(principal, device_id, actions, version=1, expires=0):
    return GrantRecord(principal=principal, device_id=device_id, actions=int(actions),
                       version=version, expires=expires)
