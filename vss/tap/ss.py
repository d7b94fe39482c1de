"""``twistd vss-ss``: a streaming server worker of a node (vss.ss.worker).

A node starts its own (``vss-node --ss-workers N``); an SS on another host is started by
hand with the node's secret file and the node's ``--ss-control-listen`` address."""

import sys

from vss.config import ConfigError, SSSettings, TrackingOptions, positive_number
from vss.gctune import tune_gc
from vss.private import restrict_umask
from vss.ss.worker import WorkerService
from vss.tap.common import (
    OneLineUsage,
    check_endpoint,
    check_link_client,
    fail_in_one_line,
    link_tls_files,
)
from vss.version import VersionOption

DEFAULTS = {"rtsp-listen": "tcp:7555:interface=127.0.0.1", "live-max-lag": "2"}


class Options(OneLineUsage, VersionOption, TrackingOptions):
    command = "vss-ss"
    program = "vss-ss"
    synopsis = "--ss-id ID --node ENDPOINT --secret-file FILE [options]"
    optFlags = [
        ["exit-with-parent", None, "Stop when the parent process (the node that started "
         "this worker) is gone."],
        ["allow-plaintext-links", None, "Allow the link to a node that is not on loopback "
         "in plaintext (logged as a warning). Without it that link needs --tls-cert, "
         "--tls-key and --tls-ca."],
    ]
    longdesc = (
        "Run a streaming server (SS) for a VSS node: an RTSP server that pulls the streams "
        "the node's CDN module gives it and fans them out to viewers. It links to the "
        "node's SS control listener and proves it holds the node's secret "
        "(DATA_DIR/node.secret of the node)."
    )
    optParameters = [
        ["ss-id", None, None, "This SS's name, unique on its node (1-64 letters, digits, "
         "'-', '_', '.')."],
        ["node", None, None, "Client endpoint of the node's --ss-control-listen, e.g. "
         "tcp:127.0.0.1:7556."],
        ["secret-file", None, None, "File holding the node's secret ('-': read it from "
         "standard input, as a node gives it to the workers it starts)."],
        ["rtsp-listen", None, None, f"Endpoint of this SS's RTSP server [{DEFAULTS['rtsp-listen']}]."],
        ["media-host", None, None, "Host name put in stream URLs [the RTSP interface]."],
        ["live-max-lag", None, None, "Seconds a live TCP viewer may lag before it skips to "
         f"the next keyframe (0: off) [{DEFAULTS['live-max-lag']}]."],
        ["tls-cert", None, None, "PEM certificate of this SS (CN = its --ss-id, from "
         "`vss-admin tls issue`; or its node's): the control link is then mutual TLS."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None, "PEM certificate of the cluster CA the node's certificate "
         "must be signed by."],
    ]

    def postOptions(self):
        for key, value in DEFAULTS.items():
            if self.get(key) is None:
                self[key] = value
        self.settings = settings_from(self)


def _read_secret(path, problems):
    try:
        if path == "-":
            data = sys.stdin.buffer.readline().strip()
        else:
            with open(path, "rb") as f:
                data = f.read().strip()
    except OSError as e:
        problems.append(f"--secret-file: cannot read {path}: {e.strerror}")
        return b""
    if len(data) < 32:
        problems.append(f"--secret-file: {path} holds fewer than 32 bytes")
    return data


def settings_from(opts):
    problems = []
    ss_id = opts.get("ss-id") or ""
    if not ss_id:
        problems.append("--ss-id: required")
    elif len(ss_id) > 64 or not ss_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        problems.append(f"--ss-id: {ss_id!r} must be 1-64 letters, digits, '-', '_' or '.'")
    tls = link_tls_files(opts, problems)
    if not opts.get("node"):
        problems.append("--node: required")
    else:
        check_endpoint("node", opts["node"], problems, server=False)
        check_link_client("node", opts["node"], tls, bool(opts.get("allow-plaintext-links")),
                          problems)
    check_endpoint("rtsp-listen", opts["rtsp-listen"], problems)
    lag = opts["live-max-lag"]
    lag = 0.0 if str(lag).strip() in ("0", "0.0") else positive_number(
        "live-max-lag", lag, float, problems, 0, 3600)
    secret = b""
    if not opts.get("secret-file"):
        problems.append("--secret-file: required")
    else:
        secret = _read_secret(opts["secret-file"], problems)
    if problems:
        raise ConfigError("; ".join(problems))
    rtsp = opts["rtsp-listen"]
    host = opts.get("media-host") or _interface_of(rtsp) or "127.0.0.1"
    return SSSettings(ss_id=ss_id, node=opts["node"], secret=secret, rtsp_listen=rtsp,
                      media_host=host, live_max_lag=lag,
                      exit_with_parent=bool(opts.get("exit-with-parent")),
                      tls_cert=tls[0], tls_key=tls[1], tls_ca=tls[2])


def _interface_of(description):
    for part in description.split(":"):
        if part.startswith("interface="):
            value = part.split("=", 1)[1]
            return "127.0.0.1" if value in ("0.0.0.0", "::") else value
    return None


def makeService(options):
    from twisted.internet import reactor

    restrict_umask()
    try:
        tune_gc()  # thousands of long-lived links: vss.gctune
    except ValueError as e:
        fail_in_one_line("vss-ss", str(e))
    try:
        return WorkerService(options.settings, reactor)
    except (ValueError, OSError) as e:
        fail_in_one_line("vss-ss", f"cannot start: {e}", code=1)


__all__ = ["Options", "makeService", "ConfigError"]
