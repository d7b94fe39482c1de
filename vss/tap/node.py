"""``twistd vss-node``: options and service of a VSS node (RGM + CDN module + SS)."""

import os
from urllib.parse import urlsplit

from vss.config import (
    ConfigError,
    NodeSettings,
    TrackingOptions,
    cms_addresses,
    merge_options,
    positive_number,
)
from vss.gctune import tune_gc
from vss.node import NodeService
from vss.private import restrict_umask
from vss.rgm.localcentral import MemoryCentral
from vss.tap.common import (
    OneLineUsage,
    check_endpoint,
    check_link_client,
    check_link_listener,
    check_metrics_options,
    fail_in_one_line,
    link_tls_files,
    metrics_options,
)
from vss.version import VersionOption

LISTENERS = ("pu-listen", "cu-listen", "rtsp-listen", "node-listen", "http-listen", "manhole")

DEFAULTS = {
    "pu-listen": "tcp:7100:interface=127.0.0.1",
    "cu-listen": "tcp:7101:interface=127.0.0.1",
    "rtsp-listen": "tcp:7554:interface=127.0.0.1",
    "node-listen": "tcp:7102:interface=127.0.0.1",
    "store": "memory",
    "keepalive": "30",
    "request-timeout": "10",
    "route-cache": "on",
    "http-listen": "tcp:7580:interface=127.0.0.1",
    "retention-interval": "60",
    "retention-days": "7",
    "quota-mb": "0",
    "record-max-streams": "32",
    "record-max-write-mbps": "400",
    "record-in": "auto",
    "live-max-lag": "2",
    "ss-workers": "auto",
    "ss-control-listen": "tcp:0:interface=127.0.0.1",
    "ss-stream-viewers": "1000",
    "ss-stream-mbps": "0",
    "login-rate": "2000",
}


class Options(OneLineUsage, VersionOption, TrackingOptions):
    command = "vss-node"
    program = "vss-node"
    synopsis = "--node-id ID [options]"
    optFlags = [
        ["allow-plaintext-links", None, "Allow the links to CMS, to other nodes and to SS "
         "workers in plaintext to and from addresses that are not loopback (logged as a "
         "warning). "
         "Without it such a link needs --tls-cert, --tls-key and --tls-ca."],
    ]
    longdesc = (
        "Run a VSS node: the RGM signalling core that PUs and CUs log in to, its "
        "in-memory database, the CDN module and its streaming server. Listen addresses "
        "are Twisted endpoint strings: tcp:PORT:interface=ADDR, or "
        "ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem for TLS (see docs/operations.md)."
    )
    optParameters = [
        ["config", "c", None, "INI file with a [node] section (same keys as the options)."],
        ["node-id", None, None, "This node's id, as registered in CMS."],
        ["pu-listen", None, None, f"Endpoint for PU links [{DEFAULTS['pu-listen']}]."],
        ["cu-listen", None, None, f"Endpoint for CU links [{DEFAULTS['cu-listen']}]."],
        ["rtsp-listen", None, None, f"Endpoint of the streaming server [{DEFAULTS['rtsp-listen']}]."],
        ["media-host", None, None, "Host name put in stream URLs [the RTSP interface]."],
        ["cms", None, None, "Client endpoint of CMS, tcp:HOST:PORT (mutual TLS with "
         "--tls-cert/--tls-key/--tls-ca; CMS's certificate must name HOST). Several, "
         "comma separated, for a CMS with standbys: the node follows the active one."],
        ["node-listen", None, None, f"Endpoint for links from CMS-routed peers [{DEFAULTS['node-listen']}]."],
        ["advertise-host", None, None, "Host other nodes use to reach this node [the node-listen interface]."],
        ["cluster-secret-file", None, None, "File holding the cluster secret shared by CMS and nodes."],
        ["tls-cert", None, None, "PEM certificate of this node (CN = node id, from the "
         "cluster CA: vss-admin tls issue): mutual TLS on the links to CMS and between "
         "nodes (--node-listen then takes TLS only)."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None, "PEM certificate(s) of the cluster CA: CMS's and other "
         "nodes' certificates must be signed by it."],
        ["static", None, None, "Run without CMS: JSON file of static data (devices, users, grants)."],
        ["store", None, None, "In-memory database: memory, redis://host:port/db or "
         f"rediss://[user@]host:port/db (Redis over TLS) [{DEFAULTS['store']}]."],
        ["store-ca", None, None, "PEM file of the CA certificates a rediss:// server's "
         "certificate must verify against [the system's trust roots]."],
        ["store-cert", None, None, "PEM client certificate for a rediss:// server that asks "
         "for one (with --store-key)."],
        ["store-key", None, None, "PEM private key of --store-cert."],
        ["store-password-file", None, None, "File holding the Redis password (AUTH; the ACL "
         "user, if any, goes in the URL). Never put the password in the URL."],
        ["data-dir", "d", None, "Data directory [./data/NODE_ID]."],
        ["keepalive", None, None, f"Keepalive interval announced to peers, seconds [{DEFAULTS['keepalive']}]."],
        ["request-timeout", None, None, f"Seconds to wait for a PU's answer [{DEFAULTS['request-timeout']}]."],
        ["route-cache", None, None, "on: cache the home node of other nodes' PUs and reach it "
         "directly; off: every such request takes the cache-miss path through CMS "
         f"(measurement and troubleshooting) [{DEFAULTS['route-cache']}]."],
        ["http-listen", None, None, "Endpoint of the HTTP listener: the browser client, "
         "export downloads (GET /export?token=), /healthz, /readyz and /metrics; or 'off' "
         f"[{DEFAULTS['http-listen']}]."],
        ["retention-interval", None, None, "Seconds between retention passes over the "
         f"recordings [{DEFAULTS['retention-interval']}]."],
        ["retention-days", None, None, "Days recordings of a channel without recording "
         f"settings are kept; 0 keeps them [{DEFAULTS['retention-days']}]."],
        ["quota-mb", None, None, "Disk quota of this node's recordings in MB, oldest deleted "
         "first across devices; 0: the sum of the channels' quotas, if all have one "
         f"[{DEFAULTS['quota-mb']}]."],
        ["record-max-streams", None, None, "Recordings at once; more wait in the queue "
         f"(event > manual > schedule) [{DEFAULTS['record-max-streams']}]."],
        ["record-max-write-mbps", None, None, "Summed write rate of the recordings at once, "
         f"Mb/s (main streams count 4, sub streams 1) [{DEFAULTS['record-max-write-mbps']}]."],
        ["record-in", None, None, "Where recordings are written: auto (inside the node for "
         "H.264/H.265, a child process for other codecs) or process (a child process per "
         f"recording) [{DEFAULTS['record-in']}]."],
        ["login-rate", None, None, "Logins a second this node takes (AUTH_START of PUs "
         "and CUs; a burst of as many): more are answered BUSY, to try again within a "
         "second or two, and never count as failures (a storm of PUs whose node died is "
         f"not an attack); 0: no limit [{DEFAULTS['login-rate']}]."],
        ["live-max-lag", None, None, "Seconds a live RTSP/TCP viewer may fall behind the "
         "stream before what is queued for it is dropped and it resumes at the next "
         f"keyframe; 0: no bound (playbacks are never bound) [{DEFAULTS['live-max-lag']}]."],
        ["ss-workers", None, None, "Streaming server workers: separate processes that "
         "serve the live viewers, each on its own RTSP port (the --rtsp-listen port + 1, "
         "+ 2, ...; port 0: any). auto: one per core; 0: none, the node's own SS serves "
         "every viewer (small sites). Not with an ssl: --rtsp-listen (workers serve plain "
         f"RTSP) [{DEFAULTS['ss-workers']}]."],
        ["ss-first-port", None, None, "RTSP port of the first SS worker, the next ones "
         "following it; 0: any free port [the --rtsp-listen port + 1]."],
        ["ss-control-listen", None, None, "Endpoint of the SS control link the workers (and "
         "a twistd vss-ss on another host) link to "
         f"[{DEFAULTS['ss-control-listen']}]."],
        ["ss-stream-viewers", None, None, "Viewers of one stream on one SS worker before "
         "another worker pulls it too and new viewers go there; 0: no limit "
         f"[{DEFAULTS['ss-stream-viewers']}]."],
        ["ss-stream-mbps", None, None, "The same limit in Mb/s sent for one stream by one SS "
         f"worker; 0: no limit [{DEFAULTS['ss-stream-mbps']}]."],
        ["manhole", None, None, "Endpoint of the operator SSH manhole (off unless set), e.g. tcp:7122:interface=127.0.0.1."],
        ["manhole-keys", None, None, "authorized_keys file for the manhole."],
        *metrics_options("the HTTP listener (--http-listen)"),
    ]

    def postOptions(self):
        merge_options(self, "node")
        for key, value in DEFAULTS.items():
            if self.get(key) is None:
                self[key] = value
        self.settings = settings_from(self)


def settings_from(opts):
    problems = []
    node_id = opts.get("node-id")
    if not node_id:
        problems.append("--node-id: required")
    elif len(node_id) > 64 or not node_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append(f"--node-id: {node_id!r} must be 1-64 letters, digits, '-', '_' or '.'")
    keepalive = positive_number("keepalive", opts["keepalive"], int, problems, 0, 3600)
    timeout = positive_number("request-timeout", opts["request-timeout"], float, problems, 0, 600)
    if opts.get("cms") and opts.get("static"):
        problems.append("--static: cannot be used with --cms")
    if not opts.get("cms") and not opts.get("static"):
        problems.append("--cms: required (or --static FILE to run without a central platform)")
    if opts.get("static") and not os.path.isfile(opts["static"]):
        problems.append(f"--static: no such file {opts['static']}")
    elif opts.get("static"):
        _check_static(opts["static"], problems)
    for name in LISTENERS:
        value = str(opts.get(name) or "").strip()
        if value and not (name == "http-listen" and value.lower() == "off"):
            check_endpoint(name, value, problems)
    for address in cms_addresses(opts.get("cms")):
        check_endpoint("cms", address, problems, server=False)
    store = opts["store"]
    store_files = _store_files(opts, store, problems)
    tls = link_tls_files(opts, problems)
    allow_plaintext = bool(opts.get("allow-plaintext-links"))
    if opts.get("cms") and not opts.get("static"):
        _check_links(opts, tls, allow_plaintext, problems)
    if opts.get("cms") and not opts.get("cluster-secret-file"):
        problems.append("--cluster-secret-file: required with --cms")
    elif opts.get("cluster-secret-file") and not os.path.isfile(opts["cluster-secret-file"]):
        problems.append(f"--cluster-secret-file: no such file {opts['cluster-secret-file']}")
    route_cache = str(opts["route-cache"]).strip().lower()
    if route_cache not in ("on", "off"):
        problems.append(f"--route-cache: {opts['route-cache']!r} is neither 'on' nor 'off'")
    retention_interval = positive_number("retention-interval", opts["retention-interval"], float,
                                         problems, 0, 86400)
    retention_days = _non_negative("retention-days", opts["retention-days"], float, problems)
    quota_mb = _non_negative("quota-mb", opts["quota-mb"], int, problems)
    max_streams = positive_number("record-max-streams", opts["record-max-streams"], int,
                                  problems, 0, 100_000)
    max_write = positive_number("record-max-write-mbps", opts["record-max-write-mbps"], float,
                                problems, 0, 1_000_000)
    live_max_lag = _non_negative("live-max-lag", opts["live-max-lag"], float, problems)
    login_rate = _non_negative("login-rate", opts["login-rate"], float, problems)
    if live_max_lag is not None and live_max_lag > 3600:
        problems.append(f"--live-max-lag: {live_max_lag} must be <= 3600")
    record_in = str(opts["record-in"]).strip().lower()
    if record_in not in ("auto", "process"):
        problems.append(f"--record-in: {opts['record-in']!r} is neither 'auto' nor 'process'")
    http_listen = str(opts["http-listen"]).strip()
    if http_listen.lower() == "off":
        http_listen = ""
    if opts.get("manhole") and not opts.get("manhole-keys"):
        problems.append("--manhole-keys: required when --manhole is set")
    check_metrics_options(opts, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    rtsp = opts["rtsp-listen"]
    media_host = opts.get("media-host") or _interface_of(rtsp) or "127.0.0.1"
    ss_workers = _ss_workers(opts, rtsp, problems)
    ss_first_port = None
    if opts.get("ss-first-port") is not None:
        ss_first_port = _non_negative("ss-first-port", opts["ss-first-port"], int, problems)
        if ss_first_port is not None and ss_first_port + ss_workers > 65535:
            problems.append(f"--ss-first-port: {ss_first_port} leaves no room for "
                            f"{ss_workers} workers")
    check_endpoint("ss-control-listen", opts["ss-control-listen"], problems)
    if ss_workers:  # the SS control link: workers may be on other hosts
        check_link_listener("ss-control-listen", opts["ss-control-listen"], tls,
                            allow_plaintext, problems)
    ss_viewers = _non_negative("ss-stream-viewers", opts["ss-stream-viewers"], int, problems)
    ss_mbps = _non_negative("ss-stream-mbps", opts["ss-stream-mbps"], float, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return NodeSettings(
        node_id=node_id,
        pu_listen=opts["pu-listen"],
        cu_listen=opts["cu-listen"],
        rtsp_listen=rtsp,
        media_host=media_host,
        cms=opts.get("cms") or "",
        cluster_secret_file=opts.get("cluster-secret-file") or "",
        node_listen=opts["node-listen"],
        advertise_host=opts.get("advertise-host") or _interface_of(opts["node-listen"]) or "127.0.0.1",
        static=opts.get("static") or "",
        store=store,
        **store_files,
        data_dir=opts.get("data-dir") or os.path.join("data", node_id),
        keepalive=keepalive,
        request_timeout=timeout,
        manhole=opts.get("manhole") or "",
        manhole_keys=opts.get("manhole-keys") or "",
        route_cache=route_cache != "off",
        http_listen=http_listen,
        retention_interval=retention_interval,
        retention_days=retention_days,
        quota_mb=quota_mb,
        record_max_streams=max_streams,
        record_max_write_mbps=max_write,
        record_in=record_in,
        live_max_lag=live_max_lag,
        ss_workers=ss_workers,
        ss_control_listen=opts["ss-control-listen"],
        ss_first_port=ss_first_port,
        ss_stream_viewers=ss_viewers or 0,
        ss_stream_kbps=int((ss_mbps or 0) * 1000),
        login_rate=login_rate,
        tls_cert=tls[0], tls_key=tls[1], tls_ca=tls[2],
        allow_plaintext_links=allow_plaintext,
        metrics=opts["metrics"],
        metrics_allow=opts.get("metrics-allow") or "",
        metrics_token_file=opts.get("metrics-token-file") or "",
    )


def _check_links(opts, tls, allow_plaintext, problems):
    """The links to CMS and from other nodes: tcp: endpoints, TLS added by --tls-*;
    in plaintext only on loopback unless --allow-plaintext-links."""

    for address in cms_addresses(opts["cms"]):
        check_link_client("cms", address, tls, allow_plaintext, problems)
    check_link_listener("node-listen", opts["node-listen"], tls, allow_plaintext, problems)


def _store_files(opts, store, problems):
    """The store's TLS and password files as NodeSettings fields, checked."""
    files = {name: opts.get(f"store-{name.replace('_', '-')}") or ""
             for name in ("ca", "cert", "key", "password_file")}
    if store.startswith(("redis://", "rediss://")):
        try:
            has_password = urlsplit(store).password is not None
        except ValueError:
            has_password = False  # the store reports the bad URL
        if has_password:
            problems.append("--store: a password in the URL would show in ps and in logs; "
                            "put it in a file and give --store-password-file FILE")
        if not store.startswith("rediss://") and (files["ca"] or files["cert"] or files["key"]):
            problems.append("--store-ca/--store-cert/--store-key: need a rediss:// store")
    elif store != "memory":
        problems.append(f"--store: {store!r} is neither 'memory' nor a redis:// or rediss:// URL")
    elif any(files.values()):
        problems.append("--store-ca/--store-cert/--store-key/--store-password-file: "
                        "need a Redis store")
    if bool(files["cert"]) != bool(files["key"]):
        problems.append("--store-cert and --store-key: give both or neither")
    for name, path in files.items():
        if path and not os.path.isfile(path):
            problems.append(f"--store-{name.replace('_', '-')}: no such file {path}")
    return {f"store_{name}": path for name, path in files.items()}


def _check_static(path, problems):
    """A static-data file the node could not read is named, with what is wrong."""

    try:
        MemoryCentral.from_file(path)
    except OSError as e:
        problems.append(f"--static: cannot read {path}: {e.strerror}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, KeyError):
            reason = f"a record lacks {e}"
        elif isinstance(e, AttributeError):
            reason = "it must hold one JSON object with devices, users and grants"
        else:
            reason = str(e)
        problems.append(f"--static: {path} is not a static-data file ({reason})")


def _non_negative(name, value, cast, problems):
    try:
        v = cast(value)
    except (TypeError, ValueError):
        problems.append(f"--{name}: {value!r} is not a number")
        return None
    if v < 0:
        problems.append(f"--{name}: {v} must be >= 0")
        return None
    return v


def _ss_workers(opts, rtsp, problems):
    """``--ss-workers``: auto is one per core (none with an ssl: RTSP listener)."""
    value = str(opts["ss-workers"]).strip().lower()
    tls = rtsp.split(":", 1)[0].lower() == "ssl"
    if value == "auto":
        return 0 if tls else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        problems.append(f"--ss-workers: {value!r} is neither 'auto' nor a number")
        return 0
    if n < 0 or n > 256:
        problems.append(f"--ss-workers: {n} is not within 0..256")
        return 0
    if n and tls:
        problems.append("--ss-workers: SS workers serve plain RTSP; with an ssl: "
                        "--rtsp-listen use 0")
    return n


def _interface_of(description):
    for part in description.split(":"):
        if part.startswith("interface="):
            return part.split("=", 1)[1]
    return None


def makeService(options):
    from twisted.internet import reactor

    restrict_umask()  # every file of the daemon is its own (0600, directories 0700)
    try:
        tune_gc()  # thousands of long-lived links: vss.gctune
    except ValueError as e:
        fail_in_one_line("vss-node", str(e))
    try:
        node = NodeService(options.settings, reactor)
    except (ValueError, OSError) as e:  # ConfigError too: a setting the operator fixes
        message = f"{e.strerror}: {e.filename}" if getattr(e, "strerror", None) else str(e)
        fail_in_one_line("vss-node", f"cannot start: {message}", code=1)
    node.exit_status_on_failure = True
    return node
