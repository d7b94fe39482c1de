"""
A node killed with the Redis store leaves no session records behind (real ``twistd``
processes, a real Redis: ``VSS_TEST_REDIS_URL``).

The outside test found 10,014 ``vss:node-a:session:*`` keys for 5,002 live links after
one kill, loaded again at every start. Now a node drops at start the sessions no live
link owns, and every session key expires unless its node keeps writing it.
"""

import os
import signal
import uuid

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.protocols.messages import Action
from vss.testing import records
from vss.testing.processes import (
    Daemon,
    child_env,
    cms_db_path,
    poll,
    read_status,
    seed_cms_db,
    start_cms,
    start_cms_node,
    tool,
)

REDIS_URL = os.environ.get("VSS_TEST_REDIS_URL")
COUNT = 20
FAST = 2000


class KilledNodeSessionTests(unittest.TestCase):
    if not REDIS_URL:
        skip = "set VSS_TEST_REDIS_URL to run the Redis store tests"
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        from vss.store.redis import RedisStore

        self.node_id = f"node-{uuid.uuid4().hex[:10]}"
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        devices = [records.device(f"cam{i:05d}", f"cam{i:05d}-secret", home_node=self.node_id,
                                  iterations=FAST) for i in range(1, COUNT + 1)]
        yield seed_cms_db(reactor, cms_db_path(self.work), devices=devices,
                          users=[records.user("alice", "alice-pw", iterations=FAST)],
                          grants=[records.grant("user:alice", d.device_id, int(Action.VIEW))
                                  for d in devices])
        self.redis = RedisStore(REDIS_URL, self.node_id)
        self.addCleanup(self.wipe)
        self.daemons = []
        self.addCleanup(self.stop_all)
        self.cms, self.cms_ports = yield start_cms(reactor, self.work, ["--heartbeat", "1"])
        self.daemons.append(self.cms)

    @defer.inlineCallbacks
    def wipe(self):
        yield self.redis.wipe()
        yield self.redis.close()

    @defer.inlineCallbacks
    def stop_all(self):
        for d in reversed(self.daemons):
            yield d.stop()

    @defer.inlineCallbacks
    def start_node(self, same_ports=None):
        extra = ["--store", REDIS_URL]
        if same_ports:
            extra += ["--pu-listen", f"tcp:{same_ports['pu']}:interface=127.0.0.1"]
        node, ports = yield start_cms_node(reactor, self.work, self.node_id, self.cms_ports,
                                           extra)
        self.daemons.append(node)
        return node, ports

    def online(self):
        return ((read_status(self.work, self.node_id) or {}).get("rgm") or {}).get("pus_online")

    @defer.inlineCallbacks
    def session_keys(self):
        keys = yield self.redis.namespace_keys()
        return [k for k in keys if k.startswith(self.redis.key("session", ""))]

    @defer.inlineCallbacks
    def test_a_killed_nodes_sessions_are_dropped_at_its_next_start(self):
        node, ports = yield self.start_node()
        pus = Daemon(reactor, [tool("vss-pu"), "--node", f"tcp:127.0.0.1:{ports['pu']}",
                               "--count", str(COUNT), "--id-format", "cam{:05d}"],
                     os.path.join(self.work, "pus.log"),
                     env=child_env(VSS_PU_SECRET="{id}-secret"))
        self.daemons.insert(0, pus)
        yield poll("the PUs online", lambda: self.online() == COUNT)
        yield poll("their sessions in Redis",
                   lambda: self.session_keys().addCallback(lambda k: len(k) == COUNT))

        yield node.stop(signal.SIGKILL)
        os.remove(os.path.join(self.work, self.node_id, "status.json"))
        self.assertEqual(len((yield self.session_keys())), COUNT)  # left behind
        node, ports = yield self.start_node(same_ports=ports)
        yield poll("the PUs online again", lambda: self.online() == COUNT, timeout=60)

        @defer.inlineCallbacks
        def only_live_ones():
            keys = yield self.session_keys()
            return len(keys) == COUNT

        yield poll("one session key per live link", only_live_ones, timeout=30)
        keys = yield self.session_keys()
        ttls = yield defer.gatherResults([
            self.redis._connection().execute_command("TTL", k) for k in keys])
        self.assertTrue(all(0 < int(t) <= self.redis.sessionTTL for t in ttls), ttls)
