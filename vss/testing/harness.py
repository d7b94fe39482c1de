"""
A node's RGM wired to clients over in-memory transports (``twisted.test.iosim``) and
a ``task.Clock``: for unit tests of the signalling core without sockets.
"""

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from vss.client import SignallingClient
from vss.protocols.link import SignallingLink
from vss.protocols.messages import Action, CuKind, PuKind, Role
from vss.rgm.localcentral import MemoryCentral
from vss.rgm.service import RGMConfig, RGMService
from vss.store.memory import MemoryStore
from vss.testing import records

ITERATIONS = 4096


class NodeHarness:
    def __init__(self, node_id="node-a", central=None, clock=None, **config):
        self.clock = clock or task.Clock()
        self.store = MemoryStore()
        self.central = central or MemoryCentral()
        self.rgm = RGMService(
            RGMConfig(node_id=node_id, node_secret=b"test-node-secret", **config),
            self.store,
            self.central,
            self.clock,
        )
        self.rgm.startService()
        self.central.nodes[node_id] = self.rgm
        self.pumps = []

    def stop(self):
        self.rgm.stopService()
        self.pump()

    def add_device(self, device_id, secret="pu-secret", channels=1, home=None, kind=PuKind.IPC):
        rec = records.device(device_id, secret, home_node=self.rgm.node_id if home is None else home,
                             channels=channels, kind=kind, iterations=ITERATIONS)
        self.central.add_device(rec)
        return rec

    def add_user(self, name, password="cu-password", grants=(), groups=()):
        self.central.add_user(records.user(name, password, groups=groups, iterations=ITERATIONS))
        for device_id, actions in grants:
            g = records.grant(f"user:{name}", device_id, actions)
            self.central.add_grant(g)
            self.store.put_grant(g)

    def connect(self, client, role, peer=None):
        """Connect a client link to the RGM's listener for ``role``; returns the pump.
        ``peer``: the client's address as the node sees it (default 127.0.0.1)."""
        server = self.rgm.factory(role).buildProtocol(None)
        link = SignallingLink(client, self.clock)
        client.clock = self.clock
        server_transport = iosim.makeFakeServer(server)
        if peer is not None:
            server_transport.peerAddress = IPv4Address("TCP", peer, 40000)
        pump = iosim.connect(
            server,
            server_transport,
            link,
            iosim.makeFakeClient(link),
            greet=False,
        )
        # FakeTransport reports IPv4 peers; connectionMade is called by iosim.connect.
        self.pumps.append(pump)
        self.pump()
        return link, server, pump

    def login(self, client, role, peer=None):
        link, server, pump = self.connect(client, role, peer)
        d = client.login(link)
        self.pump()
        return d, link, server

    def pu(self, device_id, secret="pu-secret", on_request=None, channels=1):
        client = SignallingClient(Role.PU, device_id, secret, kind=PuKind.IPC, channels=channels,
                                  on_request=on_request)
        return client, self.login(client, Role.PU)

    def cu(self, name, password="cu-password", on_notify=None, peer=None, kind=CuKind.MOC):
        client = SignallingClient(Role.CU, name, password, kind=kind, on_notify=on_notify)
        return client, self.login(client, Role.CU, peer)

    def pump(self, limit=1000):
        """Move bytes both ways until every link is quiet."""
        for _ in range(limit):
            moved = False
            for p in list(self.pumps):
                moved = p.pump() or moved
            if not moved:
                return


ALL = Action.VIEW | Action.PTZ | Action.CONFIG | Action.RECORD
