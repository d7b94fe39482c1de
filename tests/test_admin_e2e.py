"""
``vss-admin`` as an operator runs it, against real processes: admin tokens listed,
created and revoked through a real ``twistd vss-cms``; ``export-static`` writing the
file a real ``twistd vss-node --static FILE`` then runs from, with a CU logging in.
"""

import json
import os
import stat

from twisted.internet import defer, reactor
from twisted.trial import unittest

from vss.cms.store import hash_token
from vss.protocols.messages import Action
from vss.testing import records
from vss.testing.processes import (
    child_env,
    cms_db_path,
    run_tool,
    seed_cms_db,
    start_cms,
    start_node,
)

ROOT_TOKEN = "root-admin-token-for-the-e2e-test"
FAST = 2000  # PBKDF2 iterations of the test identities (the default is slow by design)
TOKEN_KEYS = {"id", "name", "state", "created", "expires", "last_used", "revoked", "current"}


class AdminTokenCommandLineTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.db = cms_db_path(self.work)
        yield seed_cms_db(reactor, self.db, admin_tokens=[("root", ROOT_TOKEN)])
        self.cms, ports = yield start_cms(reactor, self.work)
        self.addCleanup(self.cms.stop)
        self.api = f"http://127.0.0.1:{ports['admin']}"

    def admin(self, *args, token=None):
        env = {"VSS_API": self.api}
        if token:
            env["VSS_ADMIN_TOKEN"] = token
        return run_tool("vss-admin", list(args), env=child_env(**env), cwd=self.work)

    @defer.inlineCallbacks
    def test_list_create_revoke(self):
        out, err, code = yield self.admin("token", "create", "ops", "--expires-in", "1d",
                                          token=ROOT_TOKEN)
        self.assertEqual(code, 0, err)
        ops = out.strip()
        # stdout holds the secret alone, so that it can go straight into a file
        self.assertEqual(out, ops + "\n")
        self.assertTrue(ops.startswith("vssa_"), ops)
        self.assertIn("admin token 2 for 'ops' created (expires ", err)
        self.assertIn("shown only now", err)

        out, err, code = yield self.admin("token", "list", token=ops)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NAME", "STATE", "CREATED", "EXPIRES",
                                            "LAST", "USED"])
        root_row, ops_row = lines[1].split(), lines[2].split()
        self.assertEqual(root_row[:3], ["1", "root", "active"])
        self.assertEqual(root_row[5], "never")  # root never expires
        self.assertEqual(ops_row[:3], ["*2", "ops", "active"])
        self.assertNotEqual(ops_row[5], "never")
        self.assertEqual(lines[3], "* the token of this command")

        out, err, code = yield self.admin("--json", "token", "list", token=ops)
        self.assertEqual(code, 0, err)
        listed = json.loads(out)
        self.assertEqual([(t["id"], t["name"], t["state"], t["current"]) for t in listed],
                         [(1, "root", "active", False), (2, "ops", "active", True)])
        self.assertEqual({frozenset(t) for t in listed}, {frozenset(TOKEN_KEYS)})
        self.assertIsNone(listed[0]["expires"])
        self.assertIsNotNone(listed[0]["last_used"])  # used to create ops
        for text in (ROOT_TOKEN, ops, hash_token(ROOT_TOKEN), hash_token(ops)):
            self.assertNotIn(text, out)

        # the second operator revokes the first token, which fails at once
        out, err, code = yield self.admin("token", "revoke", "1", token=ops)
        self.assertEqual((code, out.strip()), (0, "admin token 1 (root) revoked"), err)
        out, err, code = yield self.admin("user", "list", token=ROOT_TOKEN)
        self.assertEqual(code, 1)
        self.assertRegex(err.strip(), r"^vss-admin: HTTP 401 Unauthorized: the token was "
                                      r"revoked at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

        # lock-out protection: the last valid token needs --force
        out, err, code = yield self.admin("token", "revoke", "2", token=ops)
        self.assertEqual(code, 1, out)
        self.assertIn("last valid", err)
        self.assertIn("--force", err)
        self.assertEqual(len(err.strip().splitlines()), 1)
        out, err, code = yield self.admin("token", "list", token=ops)
        self.assertEqual(code, 0, err)
        out, err, code = yield self.admin("token", "revoke", "2", "--force", token=ops)
        self.assertEqual((code, out.strip()), (0, "admin token 2 (ops) revoked"), err)
        out, err, code = yield self.admin("token", "list", token=ops)
        self.assertEqual(code, 1)
        self.assertIn("HTTP 401 Unauthorized: the token was revoked at", err)

        # locked out: bootstrap on the database makes a way in again
        out, err, code = yield self.admin("bootstrap", "--db", "sqlite:" + self.db,
                                          "--name", "again")
        self.assertEqual(code, 0, err)
        again = out.strip()
        out, err, code = yield self.admin("--json", "token", "list", token=again)
        self.assertEqual(code, 0, err)
        self.assertEqual([(t["name"], t["state"]) for t in json.loads(out)],
                         [("root", "revoked"), ("ops", "revoked"), ("again", "active")])
        out, err, code = yield self.admin("token", "revoke", "1", token=again)
        self.assertEqual(code, 1)
        self.assertIn("HTTP 409 Conflict: admin token 1 is revoked already", err)

    @defer.inlineCallbacks
    def test_json_and_usage_errors(self):
        out, err, code = yield self.admin("--json", "token", "create", "night",
                                          token=ROOT_TOKEN)
        self.assertEqual(code, 0, err)
        created = json.loads(out)
        self.assertEqual((created["name"], created["expires"], set(created)),
                         ("night", None, TOKEN_KEYS | {"token"}))
        out, err, code = yield self.admin("token", "list", token=created["token"])
        self.assertEqual(code, 0, err)
        for args in (("token", "revoke", "abc"), ("token", "create", "x", "--expires-in",
                                                 "soon"), ("token", "revoke"),
                     ("token",)):
            out, err, code = yield self.admin(*args, token=ROOT_TOKEN)
            self.assertEqual(code, 2, (args, out, err))
        out, err, code = yield self.admin("token", "create", "bad name", token=ROOT_TOKEN)
        self.assertEqual(code, 1)
        self.assertIn("HTTP 400 Bad Request", err)
        self.assertIn("(field name)", err)


class ExportStaticTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_export_then_run_a_standalone_node(self):
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        db = cms_db_path(work)
        yield seed_cms_db(
            reactor, db,
            devices=[records.device("cam-1", "cam-1-secret", home_node="n1", iterations=FAST),
                     records.device("cam-2", "cam-2-secret", home_node="", iterations=FAST),
                     records.device("cam-9", "cam-9-secret", home_node="n9", iterations=FAST)],
            users=[records.user("alice", "alice-password", ["ops"], iterations=FAST)],
            grants=[records.grant("user:alice", "cam-1", Action.VIEW | Action.PTZ),
                    records.grant("group:ops", "cam-2", Action.VIEW),
                    records.grant("group:ops", "cam-9", Action.VIEW)])
        static = os.path.join(work, "static.json")
        with open(static, "w") as f:  # an older file is replaced, mode and all
            f.write("old")
        os.chmod(static, 0o644)

        out, err, code = yield run_tool("vss-admin", ["export-static", "--db", "sqlite:" + db,
                                                      static, "--node", "n1"], cwd=work)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.strip(), f"2 devices, 1 users and 2 grants written to {static} "
                                      "(mode 0600; verifiers only, no secrets)")
        self.assertEqual(stat.S_IMODE(os.stat(static).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(work)), ["cms", "static.json"])  # no temp file
        with open(static) as f:
            text = f.read()
        for secret in ("alice-password", "cam-1-secret", "cam-2-secret"):
            self.assertNotIn(secret, text)
        data = json.loads(text)
        self.assertEqual([d["device_id"] for d in data["devices"]], ["cam-1", "cam-2"])
        self.assertEqual(data["users"][0]["verifier"]["$type"], "Verifier")

        every = os.path.join(work, "every.json")
        out, err, code = yield run_tool("vss-admin", ["--json", "export-static", "--db",
                                                      "sqlite:" + db, every])
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"file": every, "devices": 3, "users": 1,
                                           "grants": 3})
        out, err, code = yield run_tool("vss-admin", ["export-static", static])
        self.assertEqual(code, 2)
        self.assertIn("needs --db", err)
        out, err, code = yield run_tool("vss-admin", ["export-static", "--db",
                                                      "sqlite:" + db,
                                                      os.path.join(work, "nope", "x.json")])
        self.assertEqual(code, 1)
        self.assertIn("cannot write in", err)

        # a real node runs from the file; the user logs in with their password
        node, ports = yield start_node(reactor, work, "n1", ["--static", static])
        self.addCleanup(node.stop)

        def ctl(password, *args):
            env = child_env(VSS_NODE=f"tcp:127.0.0.1:{ports['cu']}", VSS_USER="alice",
                            VSS_PASSWORD=password)
            return run_tool("vssctl", ["--json", *args], env=env)

        out, err, code = yield ctl("alice-password", "devices")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(d["device_id"] for d in json.loads(out)["devices"]),
                         ["cam-1", "cam-2"])
        out, err, code = yield ctl("not-her-password", "devices")
        self.assertEqual(code, 1, out)
        self.assertIn("wrong identity or credentials", err)
