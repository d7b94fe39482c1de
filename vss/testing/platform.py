"""
A central platform and nodes in one process over real loopback TCP (port 0), for
integration tests of routing and synchronisation. The daemons are the real services
(``CmsDaemon``, ``NodeService``), only not in separate processes; a camera can be a
real ``vss-pu`` process logged in to one of them (``Platform.start_pu``).
"""

import os
from dataclasses import replace

from twisted.internet import defer, task

from vss.client import SignallingClient, connect
from vss.cms.daemon import CmsDaemon
from vss.config import NodeSettings
from vss.node import NodeService
from vss.protocols.messages import CuKind, Role, Verifier
from vss.protocols.scram import make_verifier
from vss.testing.processes import start_pu


def verifier(secret):
    salt, it, stored, server = make_verifier(secret)
    return Verifier(salt=salt, iterations=it, stored_key=stored, server_key=server)


@defer.inlineCallbacks
def wait_until(reactor, predicate, timeout=15.0, what="condition"):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@defer.inlineCallbacks
def start_platform(testcase, reactor=None, **kw):
    """A Platform in a fresh directory of ``testcase`` with CMS started; stopped (nodes
    included) when the test ends."""
    if reactor is None:
        from twisted.internet import reactor
    work = os.path.abspath(testcase.mktemp())
    os.makedirs(work)
    platform = Platform(reactor, work, **kw)
    testcase.addCleanup(platform.stop)
    yield platform.start_cms()
    return platform


class Platform:
    def __init__(self, reactor, workdir, heartbeat=1):
        self.reactor = reactor
        self.workdir = workdir
        self.heartbeat = heartbeat
        self.cms = None
        self.nodes = {}
        self.clients = []
        self.pus = []

    @defer.inlineCallbacks
    def start_cms(self, port=0):
        """Start CMS; ``port`` reuses the node port of an earlier run (nodes reconnect
        to the address they know)."""
        data = os.path.join(self.workdir, "cms")
        options = {
            "cms-id": "cms",
            "db": "sqlite:" + os.path.join(data, "cms.sqlite3"),
            "node-listen": f"tcp:{port}:interface=127.0.0.1",
            "admin-listen": "tcp:0:interface=127.0.0.1",
            "data-dir": data,
            "cluster-secret-file": os.path.join(data, "cluster.secret"),
            "heartbeat": self.heartbeat,
            # a node stopped or killed here comes back with its PUs: they are not moved
            # (re-homing is tests/test_node_failover.py's)
            "rehome-after": 0,
        }
        self.cms = CmsDaemon(options, self.reactor)
        self.cms.startService()
        yield self.cms.started
        self.cms_port = self.cms.listeners()["node"]
        return self.cms

    @defer.inlineCallbacks
    def change(self, write):
        """An MMS-style change: the store write (a Deferred of its changes), then the
        changes handed to CMS (S501). Fires with the changes."""
        changes = yield write
        self.cms.cms.publish(changes)
        return changes

    @defer.inlineCallbacks
    def stop_cms(self):
        yield self.cms.stopService()

    def node_settings(self, node_id, store="memory", **overrides):
        """The settings of a node of this platform; ``overrides`` replace any of them
        (e.g. ``pu_listen`` to restart a node on the port its PUs know)."""
        data = os.path.join(self.workdir, node_id)
        return replace(NodeSettings(
            node_id=node_id, pu_listen="tcp:0:interface=127.0.0.1",
            cu_listen="tcp:0:interface=127.0.0.1", rtsp_listen="tcp:0:interface=127.0.0.1",
            media_host="127.0.0.1", cms=f"tcp:127.0.0.1:{self.cms_port}",
            cluster_secret_file=os.path.join(self.workdir, "cms", "cluster.secret"),
            node_listen="tcp:0:interface=127.0.0.1", advertise_host="127.0.0.1", static="",
            store=store, data_dir=data, keepalive=5, request_timeout=3.0, manhole="",
            manhole_keys="", http_listen="tcp:0:interface=127.0.0.1"), **overrides)

    @defer.inlineCallbacks
    def start_node(self, node_id, store="memory", **overrides):
        node = NodeService(self.node_settings(node_id, store, **overrides), self.reactor)
        node.startService()
        yield node.started
        yield node.central.ready
        self.nodes[node_id] = node
        return node

    @defer.inlineCallbacks
    def stop_node(self, node_id):
        node = self.nodes.pop(node_id)
        yield node.stopService()

    def port(self, node_id, name):
        return self.nodes[node_id].listeners()[name]

    @defer.inlineCallbacks
    def login(self, node_id, role, identity, secret, on_request=None, channels=1):
        client = SignallingClient(role, identity, secret,
                                  kind=CuKind.MOC if role == Role.CU else 1,
                                  channels=channels, on_request=on_request)
        yield connect(self.reactor,
                      f"tcp:127.0.0.1:{self.port(node_id, 'pu' if role == Role.PU else 'cu')}",
                      client)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def start_pu(self, node_id, device_id, secret, extra=(), what="the PU to log in"):
        """A real ``vss-pu`` process logged in to ``node_id`` as ``device_id`` (its output
        in ``WORKDIR/pu-DEVICE.log``); fires with its Daemon once the node has it. It is
        stopped with the platform, before the nodes."""
        pu = start_pu(self.reactor, self.workdir, f"tcp:127.0.0.1:{self.port(node_id, 'pu')}",
                      device_id, secret, extra)
        self.pus.append(pu)
        node = self.nodes[node_id]
        yield wait_until(self.reactor, lambda: device_id in node.rgm.pu_links, timeout=30,
                         what=what)
        return pu

    @defer.inlineCallbacks
    def stop(self):
        for pu in reversed(self.pus):
            yield pu.stop()
        for c in self.clients:
            if c.link is not None:
                c.link.abort()
        for node_id in list(self.nodes):
            yield self.stop_node(node_id)
        if self.cms is not None and self.cms.running:
            yield self.stop_cms()
