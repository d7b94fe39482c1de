"""
``vss-admin``: the operators' command line over the MMS admin API.

::
    vss-admin bootstrap --db sqlite:/var/lib/vss/cms.sqlite3 [--name admin] [--another]
    export VSS_ADMIN_TOKEN=...         # or --token-file FILE; never on the command line
    vss-admin [--api URL] [--json] user add alice --groups ops --password-file pw.txt
    vss-admin device add cam-1 --kind ipc --channels 1 --secret-file cam-1.secret
    vss-admin grant set user:alice cam-1 view,ptz
    vss-admin token create ops --expires-in 90d > ops.token
    vss-admin token list
    vss-admin token revoke 3 [--force]
    vss-admin operator add ann --role administrator --password-file ann.pw
    vss-admin audit --kind change,live --since 12h --target device:cam-1
    vss-admin events --device cam-1 --type motion --since 1h
    vss-admin status
    vss-admin export-static --db sqlite:/var/lib/vss/cms.sqlite3 static.json [--node n1]

``bootstrap`` writes the first admin token straight into the CMS database: a random
token printed once on stdout (only its sha256 is stored). ``export-static`` reads the
database too: it writes the master data as the file ``twistd vss-node --static`` reads.
Every other command talks HTTP to ``--api`` (default ``$VSS_API`` or
http://127.0.0.1:7280).

Secrets (a user's password, a device's secret, the admin token) never come from the
command line, where other users of the machine could read them: they come from a
file, an environment variable or a prompt. Exit status: 0 done, 1 an error (one line on
stderr), 2 a usage error.
"""

import getopt
import getpass
import json
import os
import sys
import tempfile
import time
from io import BytesIO
from urllib.parse import quote, urlencode

from twisted.internet import defer, error, task
from twisted.python import usage
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers

from vss.cms.store import hash_token, make_static_store, new_token
from vss.config import parse_duration
from vss.protocols.jsonrec import to_json
from vss.tls import CertificateError, issue, make_ca
from vss.version import VersionOption

DEFAULT_API = "http://127.0.0.1:7280"
API_PATH = "/api/v1"
TIMEOUT = 30.0
PAGE = 500


class CliError(Exception):
    """An error shown as one line; exit status 1."""


class HttpError(CliError):
    def __init__(self, status, message, field=None):
        phrase = RESPONSES.get(status, b"").decode("ascii", "replace")
        text = f"HTTP {status} {phrase}: {message}"
        if field:
            text += f" (field {field})"
        super().__init__(text)
        self.status = status
        self.message = message
        self.field = field
        self.not_active = False  # a standby CMS answered: nothing was done


# ---------------------------------------------------------------------------
# secrets from files, the environment or a prompt (read before the reactor runs)


def read_secret_file(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip("\r\n")
    except OSError as e:
        raise usage.UsageError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if not value:
        raise usage.UsageError(f"the {what} file {path} is empty")
    return value


def obtain_secret(what, path, env, required=True):
    """From ``path``, else ``$env``, else a prompt on a terminal, else None / error."""
    if path:
        return read_secret_file(path, what)
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        first = getpass.getpass(f"{what}: ")
        if getpass.getpass(f"{what} again: ") != first:
            raise usage.UsageError(f"the two {what}s differ")
        if first:
            return first
    if required:
        raise usage.UsageError(f"no {what}: give a file, set ${env} or run on a terminal")
    return None


def comma_list(text):
    return [p.strip() for p in (text or "").split(",") if p.strip()]


# ---------------------------------------------------------------------------
# output


def table(headers, rows):
    rows = [[str(v) for v in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in [list(headers), *rows])


def fields(obj, order=None):
    keys = order or sorted(obj)
    width = max((len(k) for k in keys), default=0)
    out = []
    for k in keys:
        if k not in obj:
            continue
        v = obj[k]
        if isinstance(v, list | dict):
            v = json.dumps(v, sort_keys=True)
        out.append(f"{k:<{width}}  {v}")
    return "\n".join(out)


def yes_no(v):
    return "yes" if v else "no"


def render_users(items):
    return table(["USER", "GROUPS", "ENABLED", "VERSION"],
                 [[u["username"], ",".join(u["groups"]) or "-", yes_no(u["enabled"]),
                   u["version"]] for u in items])


def render_devices(items):
    return table(["DEVICE", "KIND", "CH", "HOME", "ENABLED", "SECRET", "NAME", "SOURCE"],
                 [[d["device_id"], d["kind"], d["channels"], d["home_node"] or "-",
                   yes_no(d["enabled"]), yes_no(d["secret_set"]), d["name"],
                   d["source_url"] or "-"] for d in items])


def render_grants(items):
    return table(["PRINCIPAL", "DEVICE", "ACTIONS", "UNTIL"],
                 [[g["principal"], g["device_id"], ",".join(g["actions"]),
                   (short_time(g["expires"]) + (" (expired)" if g.get("expired") else ""))
                   if g.get("expires") else "-"] for g in items])


def render_nodes(items):
    return table(["NODE", "STATE", "SIGNALLING", "MEDIA", "CAPACITY", "APPLIED"],
                 [[n["node_id"], n.get("state", "-"), n.get("signalling") or "-",
                   n.get("media") or "-", n.get("capacity", "-"), n.get("applied_seq", "-")]
                  for n in items])


def short_time(iso):
    """'2026-11-25 15:06Z' from an API time; '-' for none."""
    if not iso:
        return "-"
    return iso.replace("T", " ")[:16] + "Z"


def render_tokens(items):
    rows = [[("*" if t.get("current") else "") + str(t["id"]), t["name"], t["state"],
             short_time(t["created"]), short_time(t["expires"]) if t["expires"] else "never",
             short_time(t["last_used"]) if t["last_used"] else "never"]
            for t in items]
    out = table(["ID", "NAME", "STATE", "CREATED", "EXPIRES", "LAST USED"], rows)
    if any(t.get("current") for t in items):
        out += "\n* the token of this command"
    return out


def render_record_settings(s):
    slots = ", ".join(f"{x['day']} {x['start']}-{x['end']}" for x in s.get("schedule", []))
    lines = [
        f"device {s['device_id']} channel {s['channel']}"
        + ("" if s.get("stored") else " (defaults: nothing stored)"),
        f"mode {s['mode']}, stream {s['stream']}, segment {s['segment_seconds']} s, "
        f"keep {s['retention_days']} days"
        + (f", quota {s['quota_mb']} MB" if s.get("quota_mb") else "")
        + f", pre/post event {s['pre_event_seconds']}/{s['post_event_seconds']} s",
    ]
    if slots:
        lines.append(f"schedule {slots}")
    if s.get("event_types"):
        lines.append(f"recorded on the events {', '.join(s['event_types'])}")
    if s.get("reported"):
        lines.append(f"reported by the device: {json.dumps(s['reported'], sort_keys=True)}")
    return "\n".join(lines)


def render_status(s):
    nodes = s.get("nodes", [])
    if isinstance(nodes, dict):  # the CMS service keys its live nodes by id
        nodes = [{"node_id": k, **v} for k, v in sorted(nodes.items())]
    rows = []
    for n in nodes:
        load = n.get("load") or {}
        rows.append([n.get("node_id", "?"), n.get("state", "up"), n.get("devices", "-"),
                     n.get("devices_online", load.get("pus", "-")), load.get("cus", "-"),
                     load.get("streams", "-"), n.get("applied_seq", "-")])
    out = [table(["NODE", "STATE", "DEVICES", "ONLINE", "CLIENTS", "STREAMS", "APPLIED"], rows)
           if rows else "no nodes"]
    servers = [[n.get("node_id", "?"), s.get("ss_id", "?"), s.get("state", "?"),
                s.get("media", ""), s.get("streams", 0), s.get("viewers", 0),
                f"{s.get('bandwidth_kbps', 0) / 1000:.1f}",
                f"{s.get('cpu_permille', 0) / 10:.0f} %", "*" if s.get("chosen") else ""]
               for n in nodes for s in n.get("servers") or []]
    if servers:  # MDP's view of the streaming servers; * the one a new stream goes to
        out.append(table(["NODE", "SS", "STATE", "MEDIA", "STREAMS", "VIEWERS", "MB/S OUT",
                          "CPU", "CHOSEN"], servers))
    totals = {k: v for k, v in s.items() if k != "nodes" and not isinstance(v, list | dict)}
    if totals:
        out.append(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(totals.items())))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# the HTTP client


def api_base(url):
    """The API base of ``--api``: one URL, or several separated by commas (every CMS
    of a site: the call goes to the active one)."""
    bases = []
    for one in [u.strip().rstrip("/") for u in url.split(",") if u.strip()]:
        if not one.startswith(("http://", "https://")):
            raise usage.UsageError(f"--api must be an http:// or https:// URL: {one!r}")
        bases.append(one if one.endswith(API_PATH) else one + API_PATH)
    if not bases:
        raise usage.UsageError("--api: no URL given")
    return ",".join(bases)


class Client:
    """The admin API's client. ``base``: one API base URL, or several separated by
    commas (a CMS with standbys): a call that cannot connect, or that a standby answers
    503 NOT_ACTIVE (nothing was done), goes to the next; the one that served is tried
    first next time."""

    def __init__(self, reactor, base, token, timeout=TIMEOUT):
        self.reactor = reactor
        self.bases = [b for b in base.split(",") if b]
        self.token = token
        self.timeout = timeout
        self.agent = Agent(reactor, connectTimeout=10)

    @property
    def base(self):
        return self.bases[0]

    @defer.inlineCallbacks
    def call(self, method, path, body=None, params=None):
        for i in range(len(self.bases)):
            last = i == len(self.bases) - 1
            try:
                result = yield self._call_one(method, path, body, params)
            except HttpError as e:
                if e.status != 503 or not e.not_active or last:
                    raise
            except CliError as e:
                if not getattr(e, "unsent", False) or last:
                    raise
            else:
                return result
            self.bases.append(self.bases.pop(0))  # the next CMS
        raise AssertionError("not reached")

    @defer.inlineCallbacks
    def _call_one(self, method, path, body=None, params=None):
        url = self.base + path
        params = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        if params:
            url += "?" + urlencode(params)
        headers = Headers({
            b"authorization": [b"Bearer " + self.token.encode("utf-8")],
            b"accept": [b"application/json"],
            b"user-agent": [b"vss-admin"],
        })
        producer = None
        if body is not None:
            headers.setRawHeaders(b"content-type", [b"application/json"])
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        try:
            d = self.agent.request(method.encode("ascii"), url.encode("utf-8"), headers,
                                   producer)
            d.addTimeout(self.timeout, self.reactor)
            response = yield d
            data = yield readBody(response)
        except defer.TimeoutError:
            raise CliError(f"no answer from the admin API at {self.base} within "
                           f"{self.timeout:.0f} s") from None
        except (error.ConnectError, error.DNSLookupError, error.ConnectionLost) as e:
            code = getattr(e, "osError", None)
            reason = os.strerror(code) if isinstance(code, int) else (str(e) or repr(e))
            unreachable = CliError(f"cannot reach the admin API at {self.base}: {reason}")
            # not connected: the request never reached CMS, another may take it
            unreachable.unsent = not isinstance(e, error.ConnectionLost)
            raise unreachable from None
        except (ResponseNeverReceived, ResponseFailed):
            # it may have been done: a caller reads before it tries again
            raise CliError(f"the admin API at {self.base} closed the connection before "
                           "answering") from None
        try:
            payload = json.loads(data.decode("utf-8")) if data.strip() else {}
        except ValueError:
            payload = None
        if response.code >= 400:
            if isinstance(payload, dict) and "error" in payload:
                e = HttpError(response.code, payload["error"], payload.get("field"))
                e.not_active = payload.get("code") == "NOT_ACTIVE"
                raise e
            raise HttpError(response.code, "the server gave no error message")
        if payload is None:
            raise CliError(f"the admin API at {self.base} answered something that is not "
                           "JSON")
        return payload

    @defer.inlineCallbacks
    def all_pages(self, path, params=None, page=PAGE):
        items, cursor = [], ""
        while True:
            result = yield self.call("GET", path, params={**(params or {}), "cursor": cursor,
                                                          "limit": page})
            items.extend(result.get("items", []))
            cursor = result.get("next_cursor", "")
            if not cursor:
                return items


def q(text):
    return quote(text, safe="")


# ---------------------------------------------------------------------------
# commands: each leaf has ``run(client)`` firing with (json value, text)


class GnuOptions(usage.Options):
    #: the keys the positional arguments fill, in order (``synopsis`` names them)
    arguments = ()

    def parseArgs(self, *args):
        if len(args) != len(self.arguments):
            raise usage.UsageError("Wrong number of arguments.")
        self.update(zip(self.arguments, args, strict=True))

    def parseOptions(self, options=None):
        """Options may follow the arguments (``user add alice --groups ops``)."""
        options = sys.argv[1:] if options is None else options
        try:
            opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered = []
        for opt, value in opts:
            if opt.startswith("--"):
                takes_value = opt[2:] + "=" in self.longOpt
            else:
                i = self.shortOpt.find(opt[1])
                takes_value = self.shortOpt[i + 1:i + 2] == ":"
            ordered += [opt, value] if takes_value else [opt]
        super().parseOptions([*ordered, "--", *args])


class Command(GnuOptions):
    optFlags = [["json", "j", "Print the API's JSON answer."]]

    def enabled_change(self, change):
        """``--enable`` / ``--disable`` into ``change["enabled"]`` (neither: no change)."""
        if self["enable"] and self["disable"]:
            raise usage.UsageError("--enable and --disable exclude each other")
        if self["enable"] or self["disable"]:
            change["enabled"] = bool(self["enable"])

    def run(self, client):
        raise NotImplementedError


class UserAdd(Command):
    """Add a user."""

    synopsis = "NAME [--groups G1,G2] [--disabled] [--password-file FILE]"
    longdesc = "The password comes from --password-file, $VSS_USER_PASSWORD or a prompt."
    optFlags = [["disabled", None, "Create the user disabled."]]
    optParameters = [["groups", "g", "", "Comma-separated groups."],
                     ["password-file", "p", None, "File holding the password."]]

    arguments = ("name",)

    def postOptions(self):
        self.password = obtain_secret("password", self["password-file"], "VSS_USER_PASSWORD")

    @defer.inlineCallbacks
    def run(self, client):
        user = yield client.call("POST", "/users", {
            "username": self["name"], "password": self.password,
            "groups": comma_list(self["groups"]), "enabled": not self["disabled"]})
        return user, f"user {user['username']} added"


class UserList(Command):
    """List users."""

    @defer.inlineCallbacks
    def run(self, client):
        items = yield client.all_pages("/users")
        return items, render_users(items)


class UserShow(Command):
    """Show a user."""

    synopsis = "NAME"

    arguments = ("name",)

    @defer.inlineCallbacks
    def run(self, client):
        user = yield client.call("GET", f"/users/{q(self['name'])}")
        return user, fields(user, ["username", "groups", "enabled", "version"])


class UserSet(Command):
    """Change a user's groups, state or password."""

    synopsis = "NAME [--groups G1,G2] [--enable|--disable] [--password [--password-file F]]"
    optFlags = [["enable", None, "Enable the user."], ["disable", None, "Disable the user."],
                ["password", None, "Set a new password ($VSS_USER_PASSWORD or a prompt)."]]
    optParameters = [["groups", "g", None, "Comma-separated groups (replaces them)."],
                     ["password-file", "p", None, "File holding the new password."]]

    arguments = ("name",)

    def postOptions(self):
        self.change = {}
        if self["groups"] is not None:
            self.change["groups"] = comma_list(self["groups"])
        self.enabled_change(self.change)
        if self["password"] or self["password-file"]:
            self.change["password"] = obtain_secret("password", self["password-file"],
                                                    "VSS_USER_PASSWORD")
        if not self.change:
            raise usage.UsageError("nothing to change")

    @defer.inlineCallbacks
    def run(self, client):
        user = yield client.call("PATCH", f"/users/{q(self['name'])}", self.change)
        return user, f"user {user['username']} changed (version {user['version']})"


class UserRemove(Command):
    """Remove a user and their grants."""

    synopsis = "NAME"

    arguments = ("name",)

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("DELETE", f"/users/{q(self['name'])}")
        return result, (f"user {self['name']} removed "
                        f"({result.get('grants_removed', 0)} grants removed)")


class DeviceOptions(Command):
    optParameters = [
        ["name", "n", None, "Display name."],
        ["kind", "k", None, "ipc, dvs or dvr."],
        ["channels", "c", None, "Number of channels.", int],
        ["home-node", None, None, "Home node (default: assigned by CMS)."],
        ["source-url", None, None, "rtsp:// URL of a real camera (prefer --source-url-file "
                                   "when it holds credentials)."],
        ["source-url-file", None, None, "File holding the source URL."],
        ["secret-file", "s", None, "File holding the device secret."],
    ]

    arguments = ("device",)

    def common(self):
        out = {}
        for opt, key in (("name", "name"), ("kind", "kind"), ("channels", "channels"),
                         ("home-node", "home_node")):
            if self[opt] is not None:
                out[key] = self[opt]
        if self["source-url-file"]:
            out["source_url"] = read_secret_file(self["source-url-file"], "source URL")
        elif self["source-url"] is not None:
            out["source_url"] = self["source-url"]
        return out


class DeviceAdd(DeviceOptions):
    """Add a device."""

    synopsis = "DEVICE_ID [options]"
    longdesc = ("The device secret comes from --secret-file, $VSS_DEVICE_SECRET or a prompt; "
                "a camera added by --source-url alone may have none.")
    optFlags = [["disabled", None, "Create the device disabled."]]

    def postOptions(self):
        self.body = {"device_id": self["device"], **self.common(),
                     "enabled": not self["disabled"]}
        secret = obtain_secret("device secret", self["secret-file"], "VSS_DEVICE_SECRET",
                               required=not self.body.get("source_url"))
        if secret is not None:
            self.body["secret"] = secret

    @defer.inlineCallbacks
    def run(self, client):
        device = yield client.call("POST", "/devices", self.body)
        return device, (f"device {device['device_id']} added, home node "
                        f"{device['home_node'] or '(first node it registers at)'}")


class DeviceList(Command):
    """List devices."""

    optParameters = [["home-node", None, None, "Only the devices homed on this node."]]

    @defer.inlineCallbacks
    def run(self, client):
        items = yield client.all_pages("/devices", {"home_node": self["home-node"]})
        return items, render_devices(items)


class DeviceShow(Command):
    """Show a device."""

    synopsis = "DEVICE_ID"

    arguments = ("device",)

    @defer.inlineCallbacks
    def run(self, client):
        device = yield client.call("GET", f"/devices/{q(self['device'])}")
        return device, fields(device, ["device_id", "name", "kind", "channels", "home_node",
                                       "source_url", "enabled", "secret_set", "version"])


class DeviceSet(DeviceOptions):
    """Change a device."""

    synopsis = "DEVICE_ID [options]"
    optFlags = [["enable", None, "Enable the device."], ["disable", None, "Disable it."],
                ["secret", None, "Set a new secret ($VSS_DEVICE_SECRET or a prompt)."]]

    def postOptions(self):
        self.body = self.common()
        self.enabled_change(self.body)
        if self["secret"] or self["secret-file"]:
            self.body["secret"] = obtain_secret("device secret", self["secret-file"],
                                                "VSS_DEVICE_SECRET")
        if not self.body:
            raise usage.UsageError("nothing to change")

    @defer.inlineCallbacks
    def run(self, client):
        device = yield client.call("PATCH", f"/devices/{q(self['device'])}", self.body)
        return device, f"device {device['device_id']} changed (version {device['version']})"


class DeviceRemove(Command):
    """Remove a device and its grants."""

    synopsis = "DEVICE_ID"

    arguments = ("device",)

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("DELETE", f"/devices/{q(self['device'])}")
        return result, (f"device {self['device']} removed "
                        f"({result.get('grants_removed', 0)} grants removed)")


class GrantSet(Command):
    """Set what a user or group may do on a device."""

    synopsis = "user:NAME|group:NAME DEVICE_ID ACTIONS [--until TIME | --for 3d]"
    longdesc = ("ACTIONS is a comma-separated list of view, ptz, config and record (on a wall "
                "or decoder, DEVICE_ID cu:ACCOUNT: wall, who may drive it). With "
                "--until (an ISO time with its zone, e.g. 2026-05-01T18:00:00Z) or --for "
                "(a duration from now: 3600, 12h, 3d), every node stops applying the grant "
                "at that time; without either, it does not expire.")
    optParameters = [["until", None, None, "When the grant stops applying."],
                     ["for", None, None, "How long the grant applies from now."]]

    def parseArgs(self, principal, device_id, actions):
        self["principal"], self["device"] = principal, device_id
        self["actions"] = comma_list(actions)
        if not self["actions"]:
            raise usage.UsageError("give at least one action: view, ptz, config, record")

    def postOptions(self):
        if self["until"] and self["for"]:
            raise usage.UsageError("--until and --for exclude each other")
        self.expires = self["until"] or None
        if self["for"]:
            seconds = parse_duration(self["for"])
            self.expires = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                         time.gmtime(time.time() + seconds))

    @defer.inlineCallbacks
    def run(self, client):
        grant = yield client.call("PUT", "/grants", {
            "principal": self["principal"], "device_id": self["device"],
            "actions": self["actions"], "expires": self.expires})
        until = f" until {grant['expires']}" if grant.get("expires") else ""
        return grant, (f"{grant['principal']} may {','.join(grant['actions'])} on "
                       f"{grant['device_id']}{until}")


class GrantList(Command):
    """List grants."""

    optParameters = [["principal", None, None, "Only this principal's grants."],
                     ["device", None, None, "Only the grants on this device."]]

    @defer.inlineCallbacks
    def run(self, client):
        items = yield client.all_pages("/grants", {"principal": self["principal"],
                                                   "device_id": self["device"]})
        return items, render_grants(items)


class GrantRemove(Command):
    """Remove a grant."""

    synopsis = "PRINCIPAL DEVICE_ID"

    arguments = ("principal", "device")

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("DELETE", "/grants", params={
            "principal": self["principal"], "device_id": self["device"]})
        return result, f"grant of {self['principal']} on {self['device']} removed"


class NodeAdd(Command):
    """Register (or change) a VSS node."""

    synopsis = "NODE_ID [--signalling HOST:PORT] [--media HOST:PORT] [--capacity N]"
    optParameters = [["signalling", None, "", "Signalling address of the node."],
                     ["media", None, "", "Media (RTSP) address of the node."],
                     ["capacity", None, 0, "Devices the node is sized for.", int]]

    arguments = ("node",)

    @defer.inlineCallbacks
    def run(self, client):
        node = yield client.call("POST", "/nodes", {
            "node_id": self["node"], "signalling": self["signalling"],
            "media": self["media"], "capacity": self["capacity"]})
        return node, f"node {node['node_id']} registered ({node['state']})"


class NodeList(Command):
    """List VSS nodes."""

    @defer.inlineCallbacks
    def run(self, client):
        items = yield client.all_pages("/nodes")
        return items, render_nodes(items)


class NodeRemove(Command):
    """Remove a VSS node."""

    synopsis = "NODE_ID [--force]"
    optFlags = [["force", None, "Remove it even though devices are homed on it."]]

    arguments = ("node",)

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("DELETE", f"/nodes/{q(self['node'])}",
                                   params={"force": "true" if self["force"] else None})
        return result, f"node {self['node']} removed"


class RecordSettingsGet(Command):
    """Show the recording settings of a channel."""

    synopsis = "DEVICE_ID [--channel N]"
    optParameters = [["channel", "c", 0, "Channel (0-based).", int]]

    arguments = ("device",)

    def path(self):
        return f"/devices/{q(self['device'])}/record-settings/{self['channel']}"

    @defer.inlineCallbacks
    def run(self, client):
        settings = yield client.call("GET", self.path())
        return settings, render_record_settings(settings)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_schedule(text):
    """'mon 08:00-18:00, sat 10:00-12:00' -> [{day, start, end}]."""
    slots = []
    for part in comma_list(text):
        try:
            day, span = part.split()
            start, end = span.split("-")
        except ValueError:
            raise usage.UsageError(
                f"--schedule: {part!r} is not like 'mon 08:00-18:00'") from None
        if day.lower()[:3] not in DAYS:
            raise usage.UsageError(f"--schedule: {day!r} is not a day (mon..sun)")
        slots.append({"day": day.lower()[:3], "start": start, "end": end})
    return slots


class RecordSettingsSet(RecordSettingsGet):
    """Change the recording settings of a channel."""

    synopsis = "DEVICE_ID [--channel N] [--mode M] [options]"
    longdesc = "Options not given keep their current value."
    optParameters = [
        ["mode", "m", None, "off, continuous, schedule, event or manual."],
        ["stream", None, None, "main or sub."],
        ["segment", None, None, "Segment length in seconds.", int],
        ["retention-days", None, None, "Days recordings are kept.", int],
        ["quota-mb", None, None, "Storage quota in MB (0: none).", int],
        ["pre-event", None, None, "Seconds kept before an event.", int],
        ["post-event", None, None, "Seconds kept after an event.", int],
        ["schedule", None, None, "Slots like 'mon 08:00-18:00,sat 10:00-12:00' ('' clears)."],
        ["event-types", None, None, "Event mode: the event types that start a recording, "
         "like 'motion,alarm-in' ('' : every alarm the camera raises)."],
    ]
    KEYS = (("mode", "mode"), ("stream", "stream"), ("segment", "segment_seconds"),
            ("retention-days", "retention_days"), ("quota-mb", "quota_mb"),
            ("pre-event", "pre_event_seconds"), ("post-event", "post_event_seconds"))

    def postOptions(self):
        self.change = {key: self[opt] for opt, key in self.KEYS if self[opt] is not None}
        if self["schedule"] is not None:
            self.change["schedule"] = parse_schedule(self["schedule"])
        if self["event-types"] is not None:
            self.change["event_types"] = [t.strip() for t in self["event-types"].split(",")
                                          if t.strip()]
        if not self.change:
            raise usage.UsageError("nothing to change")

    @defer.inlineCallbacks
    def run(self, client):
        current = yield client.call("GET", self.path())
        body = {k: current[k] for k in ("mode", "stream", "segment_seconds", "retention_days",
                                        "quota_mb", "pre_event_seconds", "post_event_seconds",
                                        "schedule", "event_types") if k in current}
        body.update(self.change)
        settings = yield client.call("PUT", self.path(), body)
        return settings, render_record_settings(settings)


class TokenList(Command):
    """List admin tokens (never their secret)."""

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("GET", "/tokens")
        items = result.get("items", [])
        return items, render_tokens(items)


class TokenCreate(Command):
    """Create an admin token; its secret is printed once, on stdout."""

    synopsis = "NAME [--expires-in 30d]"
    longdesc = ("Only the secret goes to stdout (redirect it to a file only you can read); "
                "the rest goes to stderr. --expires-in takes seconds or 15m, 12h, 30d, 2w.")
    optParameters = [["expires-in", "e", None, "Lifetime (default: until revoked)."]]

    arguments = ("name",)

    def postOptions(self):
        self.body = {"name": self["name"]}
        if self["expires-in"] is not None:
            self.body["expires_in"] = parse_duration(self["expires-in"])

    @defer.inlineCallbacks
    def run(self, client):
        token = yield client.call("POST", "/tokens", self.body)
        until = f"expires {token['expires']}" if token["expires"] else "never expires"
        self.note = (f"admin token {token['id']} for {token['name']!r} created ({until}). "
                     "It is shown only now: keep it in a file only you can read and pass it "
                     "with --token-file or $VSS_ADMIN_TOKEN.")
        return token, token["token"]


class TokenRevoke(Command):
    """Revoke an admin token at once."""

    synopsis = "ID [--force]"
    longdesc = ("The last valid token is kept unless --force: without a valid token only "
                "`vss-admin bootstrap --db ...` on the central platform's database can "
                "make a new one.")
    optFlags = [["force", None, "Revoke it even if it is the last valid token."]]

    def parseArgs(self, token_id):
        if not token_id.isdigit():
            raise usage.UsageError(f"a token id is a number (see token list): {token_id!r}")
        self["id"] = token_id

    @defer.inlineCallbacks
    def run(self, client):
        try:
            token = yield client.call("DELETE", f"/tokens/{self['id']}",
                                      params={"force": "true" if self["force"] else None})
        except HttpError as e:
            if e.status == 409 and e.field == "id":
                raise CliError(f"admin token {self['id']} is the last valid one: revoking it "
                               "would lock every operator out of the admin API; give --force "
                               "to revoke it anyway") from None
            raise
        return token, f"admin token {token['id']} ({token['name']}) revoked"


def render_credentials(items):
    rows = [[c["id"], c["user"], c["device_id"], c["state"], short_time(c["created"]),
             short_time(c["expires"]) if c["expires"] else "never", c["name"]]
            for c in items]
    return table(["ID", "USER", "DEVICE", "STATE", "CREATED", "EXPIRES", "NAME"], rows)


def render_issued(c):
    """A new stream credential: how a player uses it (the secret is in it, once)."""
    lines = []
    if c.get("url"):
        lines.append(f"url     {c['url']}")
    lines.append(f"digest  user {c['digest_user']}  password {c['secret']}  "
                 f"(path {c['path']})")
    return "\n".join(lines)


class StreamCredList(Command):
    """List stream credentials (never their secret)."""

    optParameters = [["user", "u", None, "Only this user's."],
                     ["device", "d", None, "Only this device's."]]

    @defer.inlineCallbacks
    def run(self, client):
        items = yield client.all_pages("/stream-credentials", {"user": self["user"],
                                                               "device_id": self["device"]})
        return items, render_credentials(items)


class StreamCredCreate(Command):
    """Make a stream credential of a user for a device; its secret is printed once."""

    synopsis = "USER DEVICE [--name NAME] [--expires-in 30d]"
    longdesc = ("For players and NVRs that keep a stream URL (VLC, an NVR, Home Assistant). "
                "The credential plays the device's live streams on any node while the user "
                "exists, is enabled and may view the device, until it expires or is revoked. "
                "stdout gets the URL (rtsp://...?cred=ID.SECRET) and the Digest user and "
                "password; keep them like a password.")
    optParameters = [["name", "n", "", "A label (which player or NVR uses it)."],
                     ["expires-in", "e", None, "Lifetime (default: until revoked)."]]

    arguments = ("user", "device")

    def postOptions(self):
        self.body = {"user": self["user"], "device_id": self["device"], "name": self["name"]}
        if self["expires-in"] is not None:
            self.body["expires_in"] = parse_duration(self["expires-in"])

    @defer.inlineCallbacks
    def run(self, client):
        c = yield client.call("POST", "/stream-credentials", self.body)
        until = f"expires {c['expires']}" if c["expires"] else "never expires"
        self.note = (f"stream credential {c['id']} of {c['user']} for {c['device_id']} created "
                     f"({until}). The secret is shown only now; revoke it with "
                     f"`vss-admin stream-cred revoke {c['id']}`.")
        return c, render_issued(c)


class StreamCredRevoke(Command):
    """Revoke a stream credential: its sessions end on every node within a second."""

    synopsis = "ID"

    arguments = ("id",)

    @defer.inlineCallbacks
    def run(self, client):
        c = yield client.call("DELETE", f"/stream-credentials/{q(self['id'])}")
        return c, f"stream credential {c['id']} of {c['user']} for {c['device_id']} revoked"


class OperatorList(Command):
    """List the operators of the console (never their password)."""

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("GET", "/operators")
        items = result.get("items", [])
        return items, table(
            ["OPERATOR", "ROLE", "ENABLED", "SESSIONS", "LAST LOGIN"],
            [[o["username"], o["role"], yes_no(o["enabled"]), o["sessions"],
              short_time(o["last_login"]) if o["last_login"] else "never"] for o in items])


class OperatorAdd(Command):
    """Add an operator of the console (administrator: every change; auditor: reads)."""

    synopsis = "NAME --role administrator|auditor [--password-file FILE] [--disabled]"
    longdesc = ("The password (at least 10 characters) comes from --password-file, "
                "$VSS_OPERATOR_PASSWORD or a prompt; the platform keeps only a slow "
                "verifier of it. There is no default password.")
    optFlags = [["disabled", None, "Create the account disabled."]]
    optParameters = [["role", "r", "auditor", "administrator or auditor."],
                     ["password-file", "p", None, "File holding the password."]]

    arguments = ("name",)

    def postOptions(self):
        self.password = obtain_secret("password", self["password-file"],
                                      "VSS_OPERATOR_PASSWORD")

    @defer.inlineCallbacks
    def run(self, client):
        o = yield client.call("POST", "/operators", {
            "username": self["name"], "password": self.password, "role": self["role"],
            "enabled": not self["disabled"]})
        return o, f"operator {o['username']} ({o['role']}) added"


class OperatorSet(Command):
    """Change an operator's role, state or password (their sessions end)."""

    synopsis = "NAME [--role R] [--enable|--disable] [--password [--password-file F]]"
    optFlags = [["enable", None, "Enable the account."], ["disable", None, "Disable it."],
                ["password", None, "Set a new password ($VSS_OPERATOR_PASSWORD or a prompt)."]]
    optParameters = [["role", "r", None, "administrator or auditor."],
                     ["password-file", "p", None, "File holding the new password."]]

    arguments = ("name",)

    def postOptions(self):
        self.change = {}
        if self["role"]:
            self.change["role"] = self["role"]
        self.enabled_change(self.change)
        if self["password"] or self["password-file"]:
            self.change["password"] = obtain_secret("password", self["password-file"],
                                                    "VSS_OPERATOR_PASSWORD")
        if not self.change:
            raise usage.UsageError("nothing to change")

    @defer.inlineCallbacks
    def run(self, client):
        o = yield client.call("PATCH", f"/operators/{q(self['name'])}", self.change)
        return o, f"operator {o['username']} changed ({o['role']}, " \
                  f"{'enabled' if o['enabled'] else 'disabled'})"


class OperatorRemove(Command):
    """Remove an operator (their sessions end)."""

    synopsis = "NAME"

    arguments = ("name",)

    @defer.inlineCallbacks
    def run(self, client):
        result = yield client.call("DELETE", f"/operators/{q(self['name'])}")
        return result, f"operator {self['name']} removed"


def render_audit(items):
    rows = []
    for e in items:
        where = e["source"] + (f" via {e['node_id']}" if e["node_id"] else "")
        if not e["status"]:
            result = "-"
        else:
            result = ("ok " if e["status"] < 400 else "refused ") + str(e["status"])
        rows.append([e["at"].replace("T", " ")[:19], e["kind"], e["actor"], e["action"],
                     e["target"], where or "-", result])
    return table(["TIME (UTC)", "KIND", "WHO", "ACTION", "ABOUT", "FROM", "RESULT"], rows)


class AuditCommand(Command):
    """The audit log: changes, logins, live views, playbacks, exports (newest first)."""

    synopsis = ("[--kind change,live,...] [--actor X] [--target X] [--text X] [--node N] "
                "[--since T] [--until T] [--limit N]")
    longdesc = ("Filters match any part of a field, in any case. --since and --until are "
                "ISO times with their zone (2026-05-01T18:00:00Z) or durations back from "
                "now (15m, 12h, 7d). Entries cannot be changed or removed.")
    optParameters = [["kind", "k", None, "Comma-separated: change, login, logout, live, "
                                         "playback, export, lost."],
                     ["actor", None, None, "Who: operator:ann, token:, user:bob ..."],
                     ["target", None, None, "About what: device:cam-1, user:bob ..."],
                     ["text", None, None, "Anywhere, the details included."],
                     ["node", None, None, "Reported by this node."],
                     ["since", None, None, "From this time."],
                     ["until", None, None, "Before this time."],
                     ["limit", "n", 100, "How many entries at most.", int]]

    def postOptions(self):
        self.params = {"kind": self["kind"], "actor": self["actor"], "target": self["target"],
                       "q": self["text"], "node": self["node"],
                       "since": _when(self["since"]), "until": _when(self["until"])}
        if not 1 <= self["limit"] <= 100_000:
            raise usage.UsageError("--limit is between 1 and 100000")

    @defer.inlineCallbacks
    def run(self, client):
        items, cursor = [], ""
        while len(items) < self["limit"]:
            page = yield client.call("GET", "/audit", params={
                **self.params, "cursor": cursor, "limit": min(500, self["limit"] - len(items))})
            items.extend(page.get("items", []))
            cursor = page.get("next_cursor", "")
            if not cursor:
                break
        return items, render_audit(items) if items else "no entry"


def render_events(items):
    rows = []
    for e in items:
        items_text = " ".join(f"{k}={v}" for k, v in sorted(e["items"].items()))
        acked = f"{e['acked_by']} {e['acked_at'][:19].replace('T', ' ')}" if e["acked_by"] \
            else "-"
        rows.append([e["time"].replace("T", " ")[:19], e["device_id"], str(e["channel"]),
                     e["type"], str(e["phase"]), str(e["severity"]), items_text or "-",
                     e["id"], acked])
    return table(["TIME (UTC)", "DEVICE", "CH", "TYPE", "PHASE", "SEVERITY", "DETAILS", "ID",
                  "ACKNOWLEDGED"], rows)


class EventsCommand(Command):
    """Events and alarms the nodes reported (newest first), with who acknowledged them."""

    synopsis = "[--device D] [--type T] [--since T] [--until T] [--limit N]"
    longdesc = ("--since and --until are ISO times with their zone (2026-05-01T18:00:00Z) "
                "or durations back from now (15m, 12h, 7d).")
    optParameters = [["device", "d", None, "One device."],
                     ["type", "t", None, "One event type (motion, offline ...)."],
                     ["since", None, None, "From this time."],
                     ["until", None, None, "Before this time."],
                     ["limit", "n", 100, "How many events at most (1..1000).", int]]

    def postOptions(self):
        if not 1 <= self["limit"] <= 1000:
            raise usage.UsageError("--limit is between 1 and 1000")
        self.params = {"device_id": self["device"], "type": self["type"],
                       "since": _when(self["since"]), "until": _when(self["until"]),
                       "limit": self["limit"]}

    @defer.inlineCallbacks
    def run(self, client):
        page = yield client.call("GET", "/events", params=self.params)
        items = page.get("items", [])
        more = "\n(more: narrow the range or raise --limit)" if page.get("truncated") else ""
        return items, (render_events(items) + more) if items else "no event"


def _when(text):
    """An ISO time as given, or a duration back from now as an ISO time."""
    if not text or "T" in text:
        return text
    seconds = parse_duration(text)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


class StatusCommand(Command):
    """Operations status: nodes, devices online."""

    @defer.inlineCallbacks
    def run(self, client):
        status = yield client.call("GET", "/status")
        return status, render_status(status)


def group(name, commands):
    """A command with sub-commands (``user add``, ``user list`` ...)."""

    class Group(usage.Options):
        subCommands = [[n, None, cls, cls.__doc__ or f"{name} {n}"] for n, cls in commands]

        def postOptions(self):
            if self.subCommand is None:
                raise usage.UsageError(
                    f"{name}: give one of {', '.join(n for n, _ in commands)}")

    Group.__name__ = f"{name.title().replace('-', '')}Options"
    return Group


class Bootstrap(usage.Options):
    synopsis = "--db sqlite:PATH|postgresql://... [--name admin] [--another]"
    longdesc = ("Create an admin token directly in the CMS database. The token is random, "
                "printed once on stdout; only its sha256 is stored.")
    optFlags = [["another", None, "Add a token even though an admin exists."],
                ["json", "j", "Print the token as JSON."]]
    optParameters = [["db", "d", None, "The CMS database (as for twistd vss-cms)."],
                     ["name", "n", "admin", "Name of the admin the token belongs to."]]

    def postOptions(self):
        if not self["db"]:
            raise usage.UsageError("bootstrap needs --db")


class ExportStatic(GnuOptions):
    synopsis = "--db sqlite:PATH|postgresql://... FILE [--node NODE_ID]"
    longdesc = ("Write the master data of the CMS database (devices, users with their "
                "verifiers, grants) as the static file of a standalone node "
                "(twistd vss-node --static FILE). The file holds no password or secret, "
                "only verifiers, and is written mode 0600, atomically (a temporary file "
                "renamed over FILE).")
    optFlags = [["json", "j", "Print the file and the counts written as JSON."]]
    optParameters = [["db", "d", None, "The CMS database (as for twistd vss-cms)."],
                     ["node", "n", None, "Only the devices homed on this node (or on none) "
                                         "and the grants on them."]]

    arguments = ("file",)

    def postOptions(self):
        if not self["db"]:
            raise usage.UsageError("export-static needs --db")


class TlsCa(GnuOptions):
    """Make the cluster CA."""

    synopsis = "--dir DIR"
    longdesc = ("Make the certificate authority of a cluster's links between servers: "
                "DIR/ca.pem (give it to CMS and every node as --tls-ca) and DIR/ca.key "
                "(mode 0600; keep it off the servers). Refused if DIR holds a CA already.")
    optFlags = [["json", "j", "Print the files written as JSON."]]
    optParameters = [["dir", "d", None, "Directory of the CA (created mode 0700)."]]

    def postOptions(self):
        if not self["dir"]:
            raise usage.UsageError("tls ca needs --dir")


class TlsIssue(GnuOptions):
    """Issue a server's certificate from the cluster CA."""

    synopsis = "--dir DIR NAME [--host HOST ...]"
    longdesc = ("Issue the certificate of one server, signed by the CA in DIR: NAME is a "
                "node id (its certificate must name it: CMS and the other nodes check) or "
                "the name of CMS; each --host (a host name or an address the others reach "
                "it by: CMS's certificate must name the host of the nodes' --cms) is added "
                "as a subject alternative name. Writes DIR/NAME.pem and DIR/NAME.key "
                "(mode 0600); copy both to that server with DIR/ca.pem.")
    optFlags = [["json", "j", "Print the files written as JSON."]]
    optParameters = [["dir", "d", None, "Directory of the CA (vss-admin tls ca)."],
                     ["days", None, "825", "Validity in days."]]

    def __init__(self):
        super().__init__()
        self["hosts"] = []

    def opt_host(self, value):
        """A host name or address the certificate is also for (repeatable)."""
        self["hosts"].append(value)

    arguments = ("name",)

    def postOptions(self):
        if not self["dir"]:
            raise usage.UsageError("tls issue needs --dir")
        if not str(self["days"]).isdigit() or int(self["days"]) < 1:
            raise usage.UsageError(f"--days: {self['days']!r} is not a number of days")


class Options(VersionOption, usage.Options):
    program = "vss-admin"
    synopsis = "Usage: vss-admin [--api URL] [--token-file FILE] COMMAND [options]"
    longdesc = ("Operate the vss central platform over its admin API. The admin token "
                "comes from $VSS_ADMIN_TOKEN or --token-file.")
    optFlags = [["json", "j", "Print the API's JSON answers."]]
    optParameters = [
        ["api", "a", None, "Admin API base URL; several, comma separated, for a CMS with "
         f"standbys: the active one is used (default $VSS_API or {DEFAULT_API})."],
        ["token-file", "t", None, "File holding the admin token."],
    ]
    subCommands = [
        ["bootstrap", None, Bootstrap, "Create an admin token in the database."],
        ["user", None, group("user", [("add", UserAdd), ("list", UserList),
                                      ("show", UserShow), ("set", UserSet),
                                      ("remove", UserRemove)]), "Users (CU accounts)."],
        ["device", None, group("device", [("add", DeviceAdd), ("list", DeviceList),
                                          ("show", DeviceShow), ("set", DeviceSet),
                                          ("remove", DeviceRemove)]), "Devices (PUs)."],
        ["grant", None, group("grant", [("set", GrantSet), ("list", GrantList),
                                        ("remove", GrantRemove)]), "Grants."],
        ["node", None, group("node", [("add", NodeAdd), ("list", NodeList),
                                      ("remove", NodeRemove)]), "VSS nodes."],
        ["record-settings", None, group("record-settings", [("get", RecordSettingsGet),
                                                            ("set", RecordSettingsSet)]),
         "Recording settings of a device channel."],
        ["token", None, group("token", [("list", TokenList), ("create", TokenCreate),
                                        ("revoke", TokenRevoke)]), "Admin tokens."],
        ["stream-cred", None, group("stream-cred", [("list", StreamCredList),
                                                    ("create", StreamCredCreate),
                                                    ("revoke", StreamCredRevoke)]),
         "Stream credentials: stable stream URLs for players and NVRs."],
        ["operator", None, group("operator", [("list", OperatorList), ("add", OperatorAdd),
                                              ("set", OperatorSet),
                                              ("remove", OperatorRemove)]),
         "Operators of the console (the central platform's web page)."],
        ["audit", None, AuditCommand, "The audit log (changes, logins, media)."],
        ["events", None, EventsCommand, "Events and alarms, with their acknowledgements."],
        ["status", None, StatusCommand, "Operations status."],
        ["export-static", None, ExportStatic,
         "Write the database's master data as a node's --static file."],
        ["tls", None, group("tls", [("ca", TlsCa), ("issue", TlsIssue)]),
         "Certificates of the links between servers (mutual TLS)."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("give a command")
        if self.subCommand in DATABASE_COMMANDS:
            return
        self.base = api_base(self["api"] or os.environ.get("VSS_API") or DEFAULT_API)
        if self["token-file"]:
            self.token = read_secret_file(self["token-file"], "token").strip()
        else:
            self.token = os.environ.get("VSS_ADMIN_TOKEN", "").strip()
        if not self.token:
            raise usage.UsageError("no admin token: set $VSS_ADMIN_TOKEN or give --token-file")

    def leaf(self):
        sub = self.subOptions
        while getattr(sub, "subOptions", None) is not None and not isinstance(sub, Command):
            sub = sub.subOptions
        return sub


# ---------------------------------------------------------------------------
# bootstrap and export-static: straight to the database

#: the commands that work on the database itself (or on local files), not over the API
DATABASE_COMMANDS = ("bootstrap", "export-static", "tls")


def open_store(reactor, spec):
    try:
        return make_static_store(spec, reactor=reactor)
    except ValueError as e:
        raise CliError(str(e)) from None


@defer.inlineCallbacks
def bootstrap(reactor, spec, name, another=False):
    """Deferred token (the only time it exists outside the operator's hands). Refused
    while a valid (neither revoked nor expired) token exists, unless ``another``."""

    store = open_store(reactor, spec)
    try:
        yield store.open()
        if (yield store.count_admin_tokens()) and not another:
            raise CliError("a valid admin token exists already; use --another to add one "
                           "more")
        token = new_token()
        yield store.add_admin_token(name, hash_token(token))
    finally:
        yield store.close()
    return token


def write_private_file(path, data):
    """Write ``data`` (bytes) to ``path`` atomically, mode 0600: a temporary file in the
    same directory, flushed to disk, then renamed over ``path``. A reader sees the old
    file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        # mkstemp creates the file mode 0600, whatever the umask
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as e:
        raise CliError(f"cannot write in {directory}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CliError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


@defer.inlineCallbacks
def export_static(reactor, spec, path, node=None):
    """Write the static file; Deferred {"file", "devices", "users", "grants"}."""

    store = open_store(reactor, spec)
    try:
        yield store.open()
        devices, users, grants = yield store.export_static(home_node=node)
    finally:
        yield store.close()
    # the format of vss.rgm.localcentral.MemoryCentral.save / from_file
    data = {"devices": [to_json(r) for r in devices], "users": [to_json(r) for r in users],
            "grants": [to_json(r) for r in grants]}
    write_private_file(path, json.dumps(data, indent=1).encode("utf-8") + b"\n")
    return {"file": os.path.abspath(path), "devices": len(devices), "users": len(users),
            "grants": len(grants)}


def tls_command(name, sub):
    """``tls ca`` / ``tls issue``: (the files written, the text saying what they are)."""

    try:
        if name == "ca":
            cert, key = make_ca(sub["dir"])
            return {"ca": cert, "ca_key": key}, (
                f"CA certificate (--tls-ca of every server): {cert}\n"
                f"CA key (mode 0600; keep it off the servers): {key}")
        cert, key = issue(sub["dir"], sub["name"], sub["hosts"], days=int(sub["days"]))
        return {"cert": cert, "key": key}, (
            f"certificate of {sub['name']} (--tls-cert): {cert}\n"
            f"its key (--tls-key, mode 0600): {key}")
    except CertificateError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{e.filename or sub['dir']}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------
# main


@defer.inlineCallbacks
def run(reactor, config, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if config.subCommand == "bootstrap":
            sub = config.subOptions
            token = yield bootstrap(reactor, sub["db"], sub["name"], sub["another"])
            if sub["json"]:
                out.write(json.dumps({"name": sub["name"], "token": token}) + "\n")
            else:
                out.write(token + "\n")
            err.write(f"admin token for {sub['name']!r} created. It is shown only now: keep it "
                      "in a file only you can read and pass it with --token-file or "
                      "$VSS_ADMIN_TOKEN.\n")
            return
        if config.subCommand == "export-static":
            sub = config.subOptions
            done = yield export_static(reactor, sub["db"], sub["file"], sub["node"])
            if sub["json"] or config["json"]:
                out.write(json.dumps(done, indent=1, sort_keys=True) + "\n")
            else:
                out.write(f"{done['devices']} devices, {done['users']} users and "
                          f"{done['grants']} grants written to {sub['file']} (mode 0600; "
                          "verifiers only, no secrets)\n")
            return
        if config.subCommand == "tls":
            sub = config.subOptions.subOptions
            done, text = tls_command(config.subOptions.subCommand, sub)
            if sub["json"] or config["json"]:
                out.write(json.dumps(done, indent=1, sort_keys=True) + "\n")
            else:
                out.write(text + "\n")
            return
        leaf = config.leaf()
        client = Client(reactor, config.base, config.token)
        value, text = yield leaf.run(client)
        if leaf["json"] or config["json"]:
            out.write(json.dumps(value, indent=1, sort_keys=True) + "\n")
        else:
            out.write(text + "\n")
        note = getattr(leaf, "note", None)
        if note:
            err.write(note + "\n")
    except CliError as e:
        err.write(f"vss-admin: {e}\n")
        raise SystemExit(1) from None
    except Exception as e:  # a bug or a broken database: one line, not a traceback
        err.write(f"vss-admin: {e.__class__.__name__}: {e}\n")
        raise SystemExit(1) from None


def parse(argv):
    config = Options()
    try:
        config.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"vss-admin: {e}\nTry vss-admin --help (or COMMAND --help).\n")
        raise SystemExit(2) from None
    return config


def main(argv=None):
    config = parse(sys.argv[1:] if argv is None else argv)
    task.react(run, [config])
