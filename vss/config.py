"""
Configuration read once into immutable objects.

A daemon's settings come from its command-line options and, for anything not given
there, from an INI file (``--config``; section ``[node]`` or ``[cms]``). Every problem is
collected and reported together, each naming the bad key.
"""

import configparser
import os
import re
import secrets
import sys
from dataclasses import dataclass, fields

from twisted.python import usage


class ConfigError(usage.UsageError):
    """One or more bad settings; the message names every bad key."""


def read_ini(path, section):
    """The key/value pairs of ``section`` in an INI file (keys with dashes)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except configparser.Error as e:
        raise ConfigError(f"--config: {path} is not a valid INI file: {e}") from None
    if not parser.has_section(section):
        raise ConfigError(f"--config: {path} has no [{section}] section")
    return {k.replace("_", "-"): v for k, v in parser.items(section)}


def merge_options(options, section):
    """Fill options not given on the command line from the config file.

    ``options`` is a ``usage.Options``; values given on the command line win. Unknown
    keys in the file are errors, so a typo never goes unnoticed.
    """
    path = options.get("config")
    if not path:
        return
    known = {p[0] for p in options.optParameters} | {f[0] for f in getattr(options, "optFlags", [])}
    given = getattr(options, "_given", set())
    problems = []
    for key, value in read_ini(path, section).items():
        if key not in known or key == "config":
            problems.append(f"{key}: unknown setting in [{section}] of {path}")
            continue
        if key in given:
            continue
        flag_names = {f[0] for f in getattr(options, "optFlags", [])}
        if key in flag_names:
            options[key] = value.strip().lower() in ("1", "yes", "true", "on")
        else:
            options[key] = value
    if problems:
        raise ConfigError("; ".join(problems))


class TrackingOptions(usage.Options):
    """``usage.Options`` that remembers which options came from the command line."""

    def __init__(self):
        super().__init__()
        self._given = set()

    def opt_config(self, value):
        self["config"] = value

    def parseOptions(self, options=None):
        argv = sys.argv[1:] if options is None else options
        for arg in argv:
            if arg.startswith("--"):
                self._given.add(arg[2:].split("=", 1)[0])
        return super().parseOptions(options)


def positive_number(name, value, cast=float, problems=None, minimum=0, maximum=None):
    try:
        v = cast(value)
    except (TypeError, ValueError):
        problems.append(f"--{name}: {value!r} is not a number")
        return None
    if v <= minimum or (maximum is not None and v > maximum):
        rng = f"> {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        problems.append(f"--{name}: {v} must be {rng}")
        return None
    return v


def read_secret(path, what="secret"):
    """A secret from a file (at least 32 bytes, surrounding whitespace dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    if len(data) < 32:
        raise ConfigError(f"{what}: {path} holds fewer than 32 bytes")
    return data


def secret_option(path, env, option, what, problems):
    """A password or secret a command line takes from a file (``option``, ``path``) or
    else from the environment variable ``env``: the text ('' when there is none). What is
    wrong (an unreadable file, nothing given) is appended to ``problems``, named."""
    value = ""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            problems.append(f"{option}: {e.strerror}")
            return ""
    else:
        value = os.environ.get(env, "")
    if not value:
        problems.append(f"{what}: set {env} or {option}")
    return value


def check_id_format(fmt, problems):
    """``--id-format`` (ids of many simulated devices or decoders): a format with one
    field, else a problem appended."""
    try:
        fmt.format(1)
    except (IndexError, ValueError, KeyError):
        problems.append(f"--id-format: {fmt!r} is not a format with one field")


def check_many(opts, problems):
    """The options of a tool that runs one identity (``--id``) or many (``--count``,
    ``--start``, ``--id-format``) against ``--node``, logging them in ``--ramp`` a
    second (vss-pu, vss-decoder): what is wrong appended to ``problems``."""
    if not opts["node"]:
        problems.append("--node: required")
    if opts["id"] and opts["count"] != 1:
        problems.append("--id: cannot be combined with --count")
    if opts["count"] < 1:
        problems.append("--count: must be >= 1")
    if opts["ramp"] <= 0:
        problems.append("--ramp: must be > 0")
    check_id_format(opts["id-format"], problems)


def many_ids(opts):
    """The identities ``check_many``'s options name, in order."""
    if opts["id"]:
        return [opts["id"]]
    return [opts["id-format"].format(opts["start"] + i) for i in range(opts["count"])]


def load_or_create_secret(path):
    """A node secret kept in the data directory (created with mode 0600 if absent)."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read().strip()
        if len(data) < 32:
            raise ConfigError(f"{path}: the secret is shorter than 32 bytes")
        return data
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    data = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


@dataclass(frozen=True)
class SSSettings:
    """A streaming server worker (``twistd vss-ss``; vss.ss.worker)."""

    ss_id: str
    node: str  # client endpoint of the node's SS control listener
    secret: bytes  # the node secret: checks viewers' tokens, keys the control link
    rtsp_listen: str = "tcp:7555:interface=127.0.0.1"
    media_host: str = "127.0.0.1"
    live_max_lag: float = 2.0
    exit_with_parent: bool = False
    # the control link's mutual TLS (all three or none)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""


@dataclass(frozen=True)
class NodeSettings:
    node_id: str
    pu_listen: str
    cu_listen: str
    rtsp_listen: str
    media_host: str
    cms: str
    cluster_secret_file: str
    node_listen: str
    advertise_host: str
    static: str
    store: str
    data_dir: str
    keepalive: int
    request_timeout: float
    manhole: str
    manhole_keys: str
    route_cache: bool = True
    http_listen: str = ""  # the export HTTP listener ("" = none); vss-node's default is 7580
    retention_interval: float = 60.0  # seconds between retention passes
    retention_days: float = 7.0  # for channels without recording settings (0: keep)
    quota_mb: int = 0  # the node's disk quota for recordings (0: the channels' quotas)
    record_max_streams: int = 32  # recordings at once; more wait in the queue
    record_max_write_mbps: float = 400.0  # their summed write rate, Mb/s
    record_in: str = "auto"  # auto (in the node for H.264/H.265) or process
    live_max_lag: float = 2.0  # seconds a live TCP viewer may lag before it skips (0: off)
    ss_workers: int = 0  # SS worker processes (vss.ss); vss-node's default is one per core
    ss_control_listen: str = "tcp:0:interface=127.0.0.1"  # their control link
    ss_first_port: int | None = None  # the first worker's RTSP port (None: RTSP port + 1)
    ss_stream_viewers: int = 1000  # one stream's viewers on one worker before it spreads
    ss_stream_kbps: int = 0  # the same in kb/s (0: no limit)
    tls_cert: str = ""  # mutual TLS of the links to CMS and between nodes: certificate,
    tls_key: str = ""  # its key,
    tls_ca: str = ""  # and the cluster CA ("" each: plaintext, loopback only)
    allow_plaintext_links: bool = False  # plaintext links to other hosts too (warned)
    store_ca: str = ""  # PEM trust roots of a rediss:// store ("" = the system's)
    store_cert: str = ""  # PEM client certificate for a rediss:// store
    store_key: str = ""  # its private key
    store_password_file: str = ""  # file holding the Redis password (AUTH)
    metrics: bool = True  # /metrics on the HTTP listener, and the latency histograms
    metrics_allow: str = ""  # who may scrape ("" = loopback only), vss.ops.metrics.Access
    metrics_token_file: str = ""  # the bearer token scrapes must carry ("" = none)
    login_rate: float = 2000.0  # logins a second the node takes (0: no limit); more: BUSY

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


def cms_addresses(value):
    """The CMS endpoints of a node's ``--cms``: one, or several separated by commas
    (every CMS of a site, one active and the others standby), in order."""
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


DURATION_RE = re.compile(r"^([0-9]{1,10})\s*([smhdw]?)$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text):
    """Seconds from '3600', '90s', '15m', '12h', '30d' or '2w'."""
    match = DURATION_RE.match((text or "").strip().lower())
    if not match or int(match.group(1)) == 0:
        raise usage.UsageError(f"{text!r} is not a duration like 3600, 15m, 12h, 30d or 2w")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]
