"""
The SS control link over mutual TLS, with real processes: a standalone ``twistd
vss-node`` given ``--tls-cert/--tls-key/--tls-ca`` takes TLS only on its
``--ss-control-listen``; the worker it starts presents the node's certificate, an SS
started by hand on "another host" its own (``vss-admin tls issue far1``). An SS without
TLS, or with a certificate of the CA issued to somebody else, is refused; a plaintext
control link off loopback is refused at start on both sides (docs/operations.md,
"Streaming server workers").
"""

import os
import socket

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.test_link_tls import cluster_ca, tls_args
from vss.protocols.messages import Action
from vss.rgm.localcentral import MemoryCentral
from vss.testing import records
from vss.testing.processes import Daemon, poll, run_tool, start_node, tool

DEADLINE = 60  # generous: the CI machine has 2 shared cores


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlLinkTLS(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        self.files = cluster_ca(os.path.join(self.work, "ca"), "node-b", "far1", "other")
        static = os.path.join(self.work, "static.json")
        c = MemoryCentral()
        c.add_device(records.device("cam1", "cam1-secret", home_node="node-b"))
        c.add_user(records.user("alice", "alice-pw"))
        c.add_grant(records.grant("user:alice", "cam1", int(Action.VIEW)))
        c.save(static)
        self.control = free_port()
        self.node, self.ports = yield start_node(reactor, self.work, "node-b", [
            "--static", static, "--ss-workers", "1",
            "--ss-control-listen", f"tcp:{self.control}:interface=127.0.0.1",
            *tls_args(self.files["node-b"])])
        self.addCleanup(self.node.stop)

    def vss_ss(self, ss_id, *extra):
        d = Daemon(reactor, [
            tool("twistd"), "-n", "--pidfile=", "vss-ss", "--ss-id", ss_id,
            "--node", f"tcp:127.0.0.1:{self.control}",
            "--secret-file", os.path.join(self.work, "node-b", "node.secret"),
            "--rtsp-listen", "tcp:0:interface=127.0.0.1", *extra],
            os.path.join(self.work, f"{ss_id}.log"), cwd=self.work)
        self.addCleanup(d.stop)
        return d

    @defer.inlineCallbacks
    def test_workers_link_over_mutual_tls_and_others_are_refused(self):
        # the worker the node started links with the node's own certificate
        yield poll("the node's worker to link", lambda: "streaming server ss1 up at"
                   in self.node.output(), timeout=DEADLINE)
        # an SS by hand with its own certificate links too
        far = self.vss_ss("far1", *tls_args(self.files["far1"]))
        yield poll("far1 to link", lambda: "streaming server far1 up at" in self.node.output(),
                   timeout=DEADLINE)
        yield poll("far1 to say so", lambda: "linked to its node" in far.output(),
                   timeout=DEADLINE)
        # without TLS: the handshake never completes, the node never has it
        plain = self.vss_ss("plain1")
        # with a certificate of the cluster issued to another name
        other = self.vss_ss("spy1", *tls_args(self.files["other"]))
        yield poll("spy1 to be refused", lambda: "the node refused the link" in other.output(),
                   timeout=DEADLINE)
        self.assertRegex(other.output(), r"the link's TLS certificate is for .*other, not spy1")
        self.assertIn("streaming server spy1 from", self.node.output())
        yield poll("plain1 to be refused", lambda: "the node refused the link" in
                   plain.output(), timeout=DEADLINE)
        self.assertIn("this SS needs --tls-cert, --tls-key and --tls-ca too", plain.output())
        self.assertNotIn("streaming server plain1 up", self.node.output())
        self.assertNotIn("streaming server spy1 up", self.node.output())
        self.assertNotIn("linked to its node", plain.output())


class PlaintextOffLoopback(unittest.TestCase):
    @defer.inlineCallbacks
    def test_both_sides_refuse_a_plaintext_control_link_off_loopback_at_start(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        out, err, code = yield run_tool("twistd", [
            "-n", "--pidfile=", "vss-node", "--node-id", "n1", "--data-dir", work,
            "--static", static, "--ss-workers", "1",
            "--ss-control-listen", "tcp:7590:interface=0.0.0.0"])
        self.assertNotEqual(code, 0)
        self.assertIn("--ss-control-listen: a plaintext link on 0.0.0.0 (not loopback) is "
                      "refused", err)
        secret = os.path.join(work, "node.secret")
        with open(secret, "wb") as f:
            f.write(b"s" * 64)
        out, err, code = yield run_tool("twistd", [
            "-n", "--pidfile=", "vss-ss", "--ss-id", "far1", "--node", "tcp:10.0.0.5:7590",
            "--secret-file", secret])
        self.assertNotEqual(code, 0)
        self.assertIn("--node: a plaintext link on 10.0.0.5 (not loopback) is refused", err)
