"""
A node dies (SIGKILL) or is cut off from CMS while its PUs and viewers are on it: the
scenario of tests/test_node_failover.py and ``bench/failover.py --nodes``.

Real processes on loopback: ``twistd vss-cms`` (SQLite), three ``twistd vss-node``
(``node-a``, ``node-b``, ``node-c``), one ``vss-pu`` process simulating ``count`` PUs all
homed on node-a and given node-a's address only (they learn the others from NODE_LIST).
An observer CU (user ``watcher``, who may view every PU) is logged in to node-b: the
STATE_CHANGE notifications it gets say when each PU went offline and came online again,
and its DEVICE_LIST (what ``vssctl devices`` shows) says where each PU is homed.

``recorded`` PUs are seeded with continuous recording (2 s segments): node-a records
them, their new home goes on, and the watcher's RECORD_QUERY lists both with the gap.
``restart_cms`` kills CMS (SIGKILL) and starts it again on its node port. ``cameras``
are IP cameras (an RTSP URL each) homed on node-a: their home pulls them.

The partition: node-a reaches CMS through a TCP relay of this process
(``LinkRelay``), which can be cut (every connection closed, new ones refused) and
healed while the PUs' links to node-a stay up.
"""

import os
import signal
import threading
import time

from twisted.internet import defer
from twisted.protocols import portforward

from vss.client import SignallingClient, connect
from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    KV,
    Action,
    ChangeKind,
    ConfigSet,
    CuKind,
    DeviceList,
    DeviceRecord,
    MediaOpen,
    MsgType,
    Purpose,
    RecordQuery,
    Role,
    Stream,
)
from vss.testing import records
from vss.testing.processes import (
    Daemon,
    child_env,
    cms_db_path,
    cms_secret_file,
    other_listeners_on_port_0,
    poll,
    read_status,
    seed_cms_db,
    start_cms,
    start_node,
    tool,
)
from vss.testing.rawrtsp import RawRTSP

FAST = 2000  # SCRAM iterations of the seeded records (quick logins)
SECRET = "failover-pu-secret"
WATCHER = ("watcher", "watcher-password")
NODES = ("node-a", "node-b", "node-c")


def device_id(i):
    return f"pu{i:05d}"


class _Relay(portforward.ProxyServer):
    def connectionMade(self):
        if self.factory.relay.cut:
            self.transport.abortConnection()
            return
        self.factory.relay.conns.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.relay.conns.discard(self)
        super().connectionLost(reason)


class LinkRelay:
    """A TCP relay to ``port`` on loopback that can be cut and healed (a partition of
    one link, the others untouched)."""

    def __init__(self, reactor, port):
        self.reactor = reactor
        self.cut = False
        self.conns = set()
        factory = portforward.ProxyFactory("127.0.0.1", port)
        factory.protocol = _Relay
        factory.relay = self
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def partition(self):
        self.cut = True
        for conn in list(self.conns):
            conn.transport.abortConnection()
            if conn.peer is not None and conn.peer.transport is not None:
                conn.peer.transport.abortConnection()

    def heal(self):
        self.cut = False

    def close(self):
        self.partition()
        return self.listening.stopListening()


class Viewer:
    """A live viewer in a thread: one RTSP session (TCP interleaved) whose video
    packets' arrival times (``time.time()``) it keeps until ``stop``."""

    def __init__(self, device_id, url):
        self.device_id = device_id
        self.url = url
        self.arrivals = []
        self.error = None
        self.running = True

    def run(self):
        rtsp = None
        try:
            rtsp = RawRTSP(self.url, timeout=60)
            rtsp.start()
            status, _, _ = rtsp.request("PLAY", self.url.partition("?")[0])
            if status != 200:
                raise AssertionError(f"PLAY answered {status}")
            while self.running:
                channel, _ = rtsp._packet()
                if channel == 0:
                    self.arrivals.append(time.time())
        except Exception as e:  # noqa: BLE001 - kept for the test to report
            self.error = e
        finally:
            if rtsp is not None:
                rtsp.close()

    def playing_since(self, t):
        """The arrival of the first packet after a pause of at least 0.5 s that began
        after ``t`` (the stream stopped at the kill and came back), or None."""
        previous = None
        for a in self.arrivals:
            if previous is not None and previous >= t - 0.5 and a - previous >= 0.5:
                return a
            previous = a
        return None

    def packets_after(self, t):
        return sum(1 for a in self.arrivals if a > t)

    def stop(self):
        self.running = False


class NodeFailoverScenario:
    def __init__(self, reactor, work, count, cms_extra=(), relay_node_a=False, recorded=(),
                 cameras=None):
        self.reactor = reactor
        self.work = work
        self.count = count
        self.recorded = tuple(recorded)
        #: {device_id: rtsp URL}: IP cameras homed on node-a, pulled by their home
        self.cameras = dict(cameras or {})
        # CMS's default re-homing, named: start_cms turns it off for other tests
        self.cms_extra = ["--rehome-after", "1", *cms_extra]
        self.relay_node_a = relay_node_a
        self.daemons = []
        self.nodes = {}  # node_id -> (daemon, ports)
        self.cms_ports = None
        self.cms = None  # the CMS Daemon
        self.relay = None
        self.pus = None
        self.watcher = None
        self.online_at = {}  # device_id -> time of its last ONLINE the watcher saw
        self.offline_at = {}  # device_id -> time of its last OFFLINE
        self.viewers = []

    def device_ids(self):
        return [device_id(i) for i in range(self.count)]

    # -- processes

    def seed(self):
        v = records.verifier(SECRET, FAST)  # one secret for every PU: computed once
        devices = [DeviceRecord(device_id=d, name=d, kind=1, channels=1, home_node="node-a",
                                verifier=v, source_url=self.cameras.get(d, ""), enabled=True,
                                version=1)
                   for d in [*self.device_ids(), *self.cameras]]
        grants = [records.grant(f"user:{WATCHER[0]}", d, Action.VIEW | Action.CONFIG)
                  for d in [*self.device_ids(), *self.cameras]]
        recording = [(d, 0, {"mode": "continuous", "stream": "main", "segment_seconds": 2,
                             "retention_days": 1}) for d in self.recorded]
        return seed_cms_db(self.reactor, cms_db_path(self.work), devices=devices,
                           users=[records.user(*WATCHER, iterations=FAST)], grants=grants,
                           record_settings=recording)

    @defer.inlineCallbacks
    def start_cms(self, node_port=0):
        """``node_port``: listen for nodes there (a CMS started again where the nodes
        know it)."""
        extra = list(self.cms_extra)
        if node_port:
            extra += ["--node-listen", f"tcp:{node_port}:interface=127.0.0.1"]
        daemon, self.cms_ports = yield start_cms(self.reactor, self.work, extra)
        self.cms = daemon
        self.daemons.append(daemon)
        return daemon

    @defer.inlineCallbacks
    def restart_cms(self):
        """SIGKILL CMS and start it again on the same node port (the nodes find it
        there again); fires once it listens."""
        port = self.cms_ports["node"]
        yield self.cms.stop(signal.SIGKILL)
        self.daemons.remove(self.cms)
        yield self.start_cms(port)

    @defer.inlineCallbacks
    def start_node(self, node_id):
        cms_port = self.cms_ports["node"]
        if node_id == "node-a" and self.relay_node_a:
            if self.relay is None:
                self.relay = LinkRelay(self.reactor, cms_port)
            cms_port = self.relay.port
        daemon, ports = yield start_node(
            self.reactor, self.work, node_id,
            ["--keepalive", "5", "--request-timeout", "5",
             "--cms", f"tcp:127.0.0.1:{cms_port}",
             "--cluster-secret-file", cms_secret_file(self.work),
             *other_listeners_on_port_0()])
        self.daemons.append(daemon)
        self.nodes[node_id] = (daemon, ports)
        yield poll(f"{node_id} to register with CMS", lambda: self.connected(node_id),
                   timeout=60, reactor=self.reactor)
        return daemon

    def connected(self, node_id):
        status = read_status(self.work, node_id) or {}
        return status.get("central", {}).get("connected")

    def pu_address(self, node_id):
        return f"tcp:127.0.0.1:{self.nodes[node_id][1]['pu']}"

    def start_pus(self):
        self.pus = Daemon(self.reactor, [
            tool("vss-pu"), "--node", self.pu_address("node-a"), "--count", str(self.count),
            "--start", "0", "--id-format", "pu{:05d}", "--ramp", "1000", "--quiet"],
            os.path.join(self.work, "pus.log"), env=child_env(VSS_PU_SECRET=SECRET))
        self.daemons.append(self.pus)
        return self.pus

    def pus_online(self, node_id):
        status = read_status(self.work, node_id) or {}
        return status.get("rgm", {}).get("pus_online", 0)

    def spread(self):
        """{node_id: PUs online there} from the nodes' status files."""
        return {n: self.pus_online(n) for n in self.nodes}

    # -- the observer CU

    @defer.inlineCallbacks
    def watch(self, node_id="node-b"):
        client = SignallingClient(Role.CU, WATCHER[0], WATCHER[1], kind=CuKind.MOC,
                                  on_notify=self._notified)
        # a first login of a user who may see 10,000 PUs: the node gets them all first
        yield connect(self.reactor, f"tcp:127.0.0.1:{self.nodes[node_id][1]['cu']}", client,
                      request_timeout=120)
        self.watcher = client
        return client

    def _notified(self, msg):
        if msg.type != MsgType.STATE_CHANGE:
            return
        now = self.reactor.seconds()
        if msg.body.change == ChangeKind.ONLINE:
            self.online_at[msg.body.device_id] = now
        elif msg.body.change == ChangeKind.OFFLINE:
            self.offline_at[msg.body.device_id] = now

    @defer.inlineCallbacks
    def devices(self):
        """Every PU as the watcher's node lists it (``vssctl devices``): DeviceInfo."""
        out, cursor = [], ""
        while True:
            page = (yield self.watcher.request(MsgType.DEVICE_LIST,
                                               DeviceList(cursor=cursor, limit=1000))).body
            out += page.devices
            cursor = page.next_cursor
            if not cursor:
                return out

    @defer.inlineCallbacks
    def view(self, device_id, small=True):
        """A live viewer of ``device_id`` through the watcher's node (MEDIA_OPEN, then
        RTSP in a thread); fires once its first packets arrived. ``small``: the PU is
        first set to a small stream (320x180, 10 fps: CONFIG_SET), so that the encoders
        of many viewed PUs fit a small test machine beside the platform."""
        if small:
            yield self.watcher.request(MsgType.CONFIG_SET, ConfigSet(
                device_id=device_id, channel=0, expected_version=0, items=[
                    KV(key="video.resolution", value="320x180"),
                    KV(key="video.fps", value="10"),
                    KV(key="video.bitrate_kbps", value="200")]), timeout=30)
        body = MediaOpen(device_id=device_id, channel=0, stream=0, purpose=Purpose.LIVE,
                         start_time=0, transport=0)
        for attempt in range(3):  # a loaded machine: the PU's answer may come late
            try:
                url = (yield self.watcher.request(MsgType.MEDIA_OPEN, body,
                                                  timeout=60)).body.url
                break
            except VssError as e:
                if e.code != ResultCode.TIMEOUT or attempt == 2:
                    raise
        viewer = Viewer(device_id, url)
        self.viewers.append(viewer)
        threading.Thread(target=viewer.run, daemon=True).start()
        yield poll(f"the viewer of {device_id} to play",
                   lambda: len(viewer.arrivals) > 10 or viewer.error, timeout=60,
                   reactor=self.reactor)
        if viewer.error is not None:
            raise viewer.error
        return viewer

    def recordings(self, device_id, frm_ms, to_ms):
        """The catalogue of ``device_id``'s main stream across the nodes, as the watcher
        gets it (RECORD_QUERY; what ``vssctl recordings`` shows): Recordings."""
        return self.watcher.request(MsgType.RECORD_QUERY, RecordQuery(
            device_id=device_id, channel=0, stream=Stream.MAIN, from_time=frm_ms,
            to_time=to_ms), timeout=30).addCallback(lambda m: m.body)

    def online_since(self, t0):
        """The PUs the watcher saw come online after ``t0``."""
        return {d: t for d, t in self.online_at.items() if t >= t0}

    # -- failures

    def kill(self, node_id):
        """SIGKILL a node; fires with the time of the kill (once it ended)."""
        t0 = self.reactor.seconds()
        return self.nodes[node_id][0].stop(signal.SIGKILL).addCallback(lambda _: t0)

    @defer.inlineCallbacks
    def stop_all(self):
        for viewer in self.viewers:
            viewer.stop()
        if self.watcher is not None and self.watcher.link is not None:
            self.watcher.link.close()
        for daemon in reversed(self.daemons):
            yield daemon.stop(timeout=10.0)
        if self.relay is not None:
            yield self.relay.close()


def percentile(values, p):
    """The ``p``-th percentile (0-100) of ``values`` (nearest rank)."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]

