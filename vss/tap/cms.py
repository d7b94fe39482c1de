"""``twistd vss-cms``: options and service of the central platform (MMS, CMS, MDP)."""

import os

from vss.cms.daemon import CmsDaemon
from vss.cms.store import is_postgres
from vss.config import ConfigError, TrackingOptions, merge_options, positive_number
from vss.gctune import tune_gc
from vss.private import restrict_umask
from vss.tap.common import (
    OneLineUsage,
    check_endpoint,
    check_link_listener,
    check_metrics_options,
    fail_in_one_line,
    link_tls_files,
    metrics_options,
)
from vss.version import VersionOption

DEFAULTS = {
    "cms-id": "cms",
    "node-listen": "tcp:7200:interface=127.0.0.1",
    "admin-listen": "tcp:7280:interface=127.0.0.1",
    "data-dir": os.path.join("data", "cms"),
    "heartbeat": "2",
    "node-timeout": "6",
    "rehome-after": "1",
    "failback-after": "30",
    "rehome-batch": "2000",
    "standby": "auto",
    "event-retention-days": "30",
}


class Options(OneLineUsage, VersionOption, TrackingOptions):
    command = "vss-cms"
    program = "vss-cms"
    synopsis = "[options]"
    optFlags = [
        ["failback", None, "A node that comes back takes back the PUs moved away from it "
         "when it died, once it has stayed up --failback-after seconds (default: they stay "
         "where they are, so that nothing flaps)."],
        ["allow-plaintext-links", None, "Allow plaintext node links from addresses that "
         "are not loopback (logged as a warning). Without it --node-listen on another "
         "interface needs --tls-cert, --tls-key and --tls-ca."],
    ]
    longdesc = (
        "Run the central platform: CMS (the database of static data, the node registry, "
        "routing and data synchronisation), MMS (the admin HTTP API on --admin-listen) and "
        "MDP (the registry of the nodes' streaming servers). Create the first admin token "
        "with 'vss-admin bootstrap'."
    )
    optParameters = [
        ["config", "c", None, "INI file with a [cms] section (same keys as the options)."],
        ["cms-id", None, None, f"This platform's id [{DEFAULTS['cms-id']}]."],
        ["db", None, None, "Database: sqlite:PATH or a postgresql:// URL [sqlite:DATA_DIR/vss-cms.sqlite3]."],
        ["node-listen", None, None, f"Endpoint for node links [{DEFAULTS['node-listen']}]."],
        ["admin-listen", None, None, f"Endpoint of the admin HTTP API [{DEFAULTS['admin-listen']}]."],
        ["data-dir", "d", None, f"Data directory [{DEFAULTS['data-dir']}]."],
        ["cluster-secret-file", None, None, "Cluster secret shared with the nodes [DATA_DIR/cluster.secret, created if absent]."],
        ["tls-cert", None, None, "PEM certificate of CMS (from the cluster CA: vss-admin tls "
         "issue, naming the host nodes give in --cms): --node-listen takes mutual TLS only."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None, "PEM certificate(s) of the cluster CA: nodes' certificates "
         "must be signed by it and name the node that logs in."],
        ["heartbeat", None, None, f"Heartbeat interval asked of nodes, seconds [{DEFAULTS['heartbeat']}]."],
        ["node-timeout", None, None, "A node silent this long (seconds) is down "
         f"[{DEFAULTS['node-timeout']}]."],
        ["rehome-after", None, None, "Seconds after a node went down (its link lost or "
         "silent) before its PUs move to the live nodes, by load; 0: they never move "
         f"[{DEFAULTS['rehome-after']}]."],
        ["failback-after", None, None, "With --failback: seconds a node that came back "
         "must stay up before it takes its PUs back (a node that goes down again meanwhile "
         f"takes none) [{DEFAULTS['failback-after']}]."],
        ["rehome-batch", None, None, "At most this many PUs moved to one node per round "
         f"of re-homing (twice a second) [{DEFAULTS['rehome-batch']}]."],
        ["standby", None, None, "on: several vss-cms may run on this PostgreSQL database, "
         "one active (it holds the database's advisory lock) and the others standby, "
         "taking over within seconds; off: this CMS is alone on its database; auto: on "
         "with PostgreSQL, off with SQLite (one process only) [auto]."],
        ["advertise-host", None, None, "Host this CMS is reached at, named by a standby "
         "to nodes and admins [the interface of --node-listen, or this host's name]."],
        ["event-retention-days", None, None, "Days the events and alarms are kept, 0: for "
         f"ever [{DEFAULTS['event-retention-days']}]."],
        ["manhole", None, None, "Endpoint of the operator SSH manhole (off unless set), e.g. tcp:7222:interface=127.0.0.1."],
        ["manhole-keys", None, None, "authorized_keys file for the manhole."],
        *metrics_options("the admin listener (--admin-listen)"),
    ]

    def postOptions(self):
        merge_options(self, "cms")
        for key, value in DEFAULTS.items():
            if self.get(key) is None:
                self[key] = value
        problems = []
        self["heartbeat"] = positive_number("heartbeat", self["heartbeat"], int, problems, 0, 600)
        self["node-timeout"] = positive_number("node-timeout", self["node-timeout"], float,
                                               problems, 0, 3600)
        self["rehome-after"] = positive_number("rehome-after", self["rehome-after"], float,
                                               problems, -1, 86400)
        self["failback-after"] = positive_number("failback-after", self["failback-after"],
                                                 float, problems, -1, 86400)
        self["rehome-batch"] = positive_number("rehome-batch", self["rehome-batch"], int,
                                               problems, 0, 1_000_000)
        self["event-retention-days"] = positive_number(
            "event-retention-days", self["event-retention-days"], int, problems, -1, 36500)
        if self.get("manhole") and not self.get("manhole-keys"):
            problems.append("--manhole-keys: required when --manhole is set")
        if self.get("cluster-secret-file") and not os.path.isfile(self["cluster-secret-file"]):
            problems.append(f"--cluster-secret-file: no such file {self['cluster-secret-file']}")
        for name in ("node-listen", "admin-listen", "manhole"):
            if self.get(name):
                check_endpoint(name, self[name], problems)
        check_metrics_options(self, problems)
        tls = link_tls_files(self, problems)
        check_link_listener("node-listen", self["node-listen"], tls,
                            self["allow-plaintext-links"], problems)
        if problems:
            raise ConfigError("; ".join(problems))
        if not self.get("db"):
            self["db"] = "sqlite:" + os.path.join(self["data-dir"], "vss-cms.sqlite3")
        self["standby"] = standby_from(self["standby"], self["db"])
        if not self.get("cluster-secret-file"):
            self["cluster-secret-file"] = os.path.join(self["data-dir"], "cluster.secret")


def standby_from(value, db):
    """``--standby`` as a bool for the database ``db``, or ConfigError."""
    value = str(value).strip().lower()
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"--standby: {value!r} is none of auto, on, off")
    if value == "on" and not is_postgres(db):
        raise ConfigError("--standby on: a standby CMS needs PostgreSQL (--db "
                          "postgresql://...); an SQLite database serves one vss-cms process "
                          "only")
    return value == "on" or (value == "auto" and is_postgres(db))


def makeService(options):
    from twisted.internet import reactor

    restrict_umask()  # every file of the daemon is its own (0600, directories 0700)
    try:
        tune_gc()  # thousands of long-lived links: vss.gctune
    except ValueError as e:
        fail_in_one_line("vss-cms", str(e))
    daemon = CmsDaemon(dict(options), reactor)
    daemon.exit_status_on_failure = True
    return daemon
