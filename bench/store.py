"""
Throughput of the RGM's in-memory database (vss.store), one run, backends side by side.

    .venv/bin/python bench/store.py [--redis URL] [--pus 20000] [--rounds 10]

- ``set_state``: every PU reports ``last_seen`` once per round (the keepalive hot path,
  20,000 PUs every 30 s in production); for Redis a round ends when Redis acknowledged
  it (``flush()``), so the figure includes the round trip and the server's work.
- ``load``: a second Redis store reads those device states back (RGM restart).
- ``actions_for``: random (user, device) lookups with 100,000 devices and 10,000 grants
  (half to users, half to groups; each user in 2 of 50 groups).

The Redis part runs in its own namespace (``vss:bench-<pid>:``), wiped afterwards; it is
skipped when no Redis answers at the URL (default: $VSS_TEST_REDIS_URL or
redis://127.0.0.1:6379/15).
"""

import argparse
import os
import platform
import random
import time

from twisted.internet import defer, task

from vss.protocols.messages import DeviceRecord, GrantRecord, UserRecord, Verifier
from vss.store.memory import MemoryStore

VERIFIER = Verifier(salt=b"s" * 16, iterations=4096, stored_key=b"k" * 32, server_key=b"v" * 32)


def set_state_round(store, device_ids, now):
    for device_id in device_ids:
        store.set_state(device_id, last_seen=now)


def bench_memory_set_state(device_ids, rounds):
    store = MemoryStore()
    start = time.perf_counter()
    for r in range(rounds):
        set_state_round(store, device_ids, 1_700_000_000_000 + r)
    return len(device_ids) * rounds / (time.perf_counter() - start)


@defer.inlineCallbacks
def bench_redis(reactor, url, device_ids, rounds):
    from vss.store.redis import RedisStore

    node_id = f"bench-{os.getpid()}"
    store = RedisStore(url, node_id, reactor=reactor)
    other = RedisStore(url, node_id, reactor=reactor)
    try:
        ping = store._connection().execute_command("PING")
        yield ping.addTimeout(3, reactor)
        start = time.perf_counter()
        for r in range(rounds):
            set_state_round(store, device_ids, 1_700_000_000_000 + r)
            yield store.flush()
        writes = len(device_ids) * rounds / (time.perf_counter() - start)
        start = time.perf_counter()
        yield other.load()
        load_seconds = time.perf_counter() - start
        assert len(other._state) == len(device_ids)
        return writes, load_seconds
    finally:
        yield store.wipe()
        yield store.close()
        yield other.close()


def bench_actions_for(devices=100_000, grants=10_000, users=1_000, groups=50, lookups=1_000_000):
    rnd = random.Random(7)
    store = MemoryStore()
    for i in range(devices):
        store.put_device(
            DeviceRecord(
                device_id=f"cam-{i:06d}",
                name=f"camera {i}",
                kind=1,
                channels=1,
                home_node="node-a",
                verifier=VERIFIER,
                source_url="",
                enabled=True,
                version=1,
            )
        )
    group_names = [f"g{g}" for g in range(groups)]
    usernames = [f"user{u}" for u in range(users)]
    for name in usernames:
        store.put_user(
            UserRecord(
                username=name,
                verifier=VERIFIER,
                groups=rnd.sample(group_names, 2),
                enabled=True,
                version=1,
            )
        )
    while len(store.grants()) < grants:
        if rnd.random() < 0.5:
            principal = "user:" + rnd.choice(usernames)
        else:
            principal = "group:" + rnd.choice(group_names)
        device_id = f"cam-{rnd.randrange(devices):06d}"
        store.put_grant(GrantRecord(principal, device_id, rnd.choice((1, 3, 15)), 1))
    granted = [(g.principal, g.device_id) for g in store.grants()]
    queries = []
    for _ in range(lookups):
        if rnd.random() < 0.5:  # half the lookups hit a device someone holds a grant on
            queries.append((rnd.choice(usernames), rnd.choice(granted)[1]))
        else:
            queries.append((rnd.choice(usernames), f"cam-{rnd.randrange(devices):06d}"))
    actions_for = store.actions_for
    hits = 0
    start = time.perf_counter()
    for username, device_id in queries:
        if actions_for(username, device_id):
            hits += 1
    rate = lookups / (time.perf_counter() - start)
    return rate, hits


@defer.inlineCallbacks
def main(reactor):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis",
        default=os.environ.get("VSS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    )
    parser.add_argument("--pus", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device_ids = [f"pu-{i:05d}" for i in range(args.pus)]

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"set_state(last_seen=...), {args.pus} PUs x {args.rounds} rounds")
    memory = bench_memory_set_state(device_ids, args.rounds)
    print(f"  memory : {memory:12,.0f} writes/s")
    try:
        redis, load_seconds = yield bench_redis(reactor, args.redis, device_ids, args.rounds)
    except Exception as e:
        print(f"  redis  : skipped ({args.redis}: {e})")
    else:
        print(f"  redis  : {redis:12,.0f} writes/s acknowledged ({args.redis})")
        print(f"  redis load() of {args.pus} device states: {load_seconds * 1000:.0f} ms")
    rate, hits = bench_actions_for()
    print("actions_for, 100,000 devices, 10,000 grants, 1,000 users in 50 groups")
    print(f"  memory : {rate:12,.0f} lookups/s ({hits:,} of 1,000,000 granted)")


if __name__ == "__main__":
    task.react(main)
