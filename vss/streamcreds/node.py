"""
A node's side of stream credentials (``vss.streamcreds``).

``StreamCredentials`` serves three things:

- the streaming server's check of a request that carries no token
  (``RTSPServerFactory.use_credentials``): a ``cred=<id>.<secret>`` in the URL, or an
  RTSP Digest answer for user ``<id>``. The credential, held in the node's memory
  database (passive sync), must be active (neither revoked nor expired), its user must
  exist, be enabled and hold VIEW on its device, and the path must be a live stream of
  that device. A DESCRIBE for a stream nobody watches yet starts it, as a CU's
  MEDIA_OPEN would (the PU asked to publish, the camera or the home node pulled).
- the CU's requests: CRED_CREATE (the secret is made and sealed here, CMS stores the
  sealed form: the secret never leaves this node but to the CU, and only over TLS or to
  a client on this machine), CRED_LIST (the user's own, from the node's copy) and
  CRED_REVOKE (through CMS, which tells every node).
- revocation: ``revalidate`` checks every session a credential opened and ends those
  whose credential no longer holds. It runs at once after every applied change of
  users, grants or credentials (``CmsLink.access_listeners``) and every
  ``SWEEP_INTERVAL`` seconds (expiry).
"""

import ipaddress
import re

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from vss.protocols.codes import ResultCode
from vss.protocols.errors import VssError
from vss.protocols.messages import (
    Action,
    AuditKind,
    CredIssued,
    Creds,
    CredState,
    MediaOpen,
    MsgType,
    Purpose,
    Stream,
    StreamCredential,
)
from vss.rtsp.auth import DigestServer
from vss.streamcreds import secret as sc

SWEEP_INTERVAL = 1.0  # seconds: an expired credential's sessions end within this
MAX_NAME = 64
MAX_EXPIRES_IN = 10 * 366 * 86400  # seconds
_STREAM_NAME = re.compile(r"^(?:ch(\d{1,4})-)?(main|sub)$")


def live_stream_of(path):
    """(device_id, channel, Stream) of a live path ``/live/<device>/<[chN-]main|sub>``,
    or None (a playback path, or anything else)."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0] or parts[1] != "live" or not parts[2]:
        return None
    m = _STREAM_NAME.match(parts[3])
    if m is None:
        return None
    return parts[2], int(m.group(1) or 0), Stream.MAIN if m.group(2) == "main" else Stream.SUB


def shown(record):
    """A credential as a CU sees it: without its sealed secret."""
    return StreamCredential(*(getattr(record, n) for n in record._fields[:7]), b"",
                            record.version)


def safe_for_secrets(link):
    """True if a secret may be sent on this signalling link: TLS, or a client on this
    machine."""
    transport = getattr(link, "transport", None)
    if transport is not None and ISSLTransport.providedBy(transport):
        return True
    try:
        address = ipaddress.ip_address(link.peer_host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class StreamCredentials(service.Service):
    log = Logger()

    def __init__(self, key, store, central, cdn, clock, sweep_interval=SWEEP_INTERVAL,
                 audit=None):
        self.key = key  # the sealing key (secret.credential_key of the cluster secret)
        self.audit = audit  # vss.rgm.audit.AuditReporter, or None
        self.store = store
        self.central = central
        self.cdn = cdn  # the CDN module: its SS (rtsp), ensure_source, media_base
        self.clock = clock
        self.sweep_interval = sweep_interval
        self.digest = DigestServer(None, clock, realm=sc.REALM, ha1_for=self._ha1)
        self.counters = {"allowed": 0, "refused": 0, "ended": 0, "created": 0, "revoked": 0}
        self._sweep = None

    def startService(self):
        super().startService()
        self._sweep = task.LoopingCall(self.revalidate)
        self._sweep.clock = self.clock
        self._sweep.start(self.sweep_interval, now=False)

    def stopService(self):
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        return super().stopService()

    def now_ms(self):
        return int(self.clock.seconds() * 1000)

    # -- the streaming server's check

    def challenges(self):
        return self.digest.challenges()

    def _ha1(self, cred_id):
        record = self.store.get_credential(cred_id)
        if record is None:
            return None
        raw = sc.unseal(self.key, record)
        return raw.hex() if raw is not None else None

    def authorize(self, request, url, method, peer=None):
        """(True, info) for a request a live stream credential allows, (False, reason)
        for one it does not, None for a request that carries none. A DESCRIBE allowed
        starts a live view: it goes to the audit (``peer``: the player's address)."""
        header = request.headers.get("Authorization") or ""
        if url.cred is not None:
            given = sc.split_url_credential(url.cred)
            record = self.store.get_credential(given[0]) if given is not None else None
            if record is None or not sc.secret_matches(self.key, record, given[1]):
                return self._refused("unknown stream credential or wrong secret")
        elif header.strip().lower().startswith("digest "):
            cred_id = self.digest.check(header, request.method, request.uri)
            record = self.store.get_credential(cred_id) if cred_id else None
            if record is None:
                return self._refused("Digest answer not valid")
        else:
            return None
        if method != "play":
            return self._refused(f"stream credential {record.cred_id} only plays")
        problem = self.refusal(record, url.path)
        if problem is not None:
            return self._refused(f"stream credential {record.cred_id}: {problem}")
        self.counters["allowed"] += 1
        device_id, channel, stream = live_stream_of(url.path)
        if self.audit is not None and request.method == "DESCRIBE":
            self.audit.note(AuditKind.LIVE, record.username, device_id, channel, stream,
                            peer=peer or "", via=f"stream credential {record.cred_id}")
        return True, {"cred": record.cred_id, "user": record.username, "device": device_id,
                      "start": lambda: self._start(device_id, channel, stream, url.path)}

    def _refused(self, reason):
        self.counters["refused"] += 1
        return False, reason

    def refusal(self, record, path):
        """Why ``record`` may not play ``path`` now, or None if it may."""
        state = sc.state(record, self.now_ms())
        if state != sc.ACTIVE:
            return state
        user = self.store.get_user(record.username)
        if user is None or not user.enabled:
            return f"user {record.username} is {'disabled' if user else 'removed'}"
        if not self.store.actions_for(record.username, record.device_id) & Action.VIEW:
            return f"{record.username} may no longer view {record.device_id}"
        stream = live_stream_of(path)
        if stream is None or stream[0] != record.device_id:
            return f"it is for the live streams of {record.device_id} only"
        device = self.store.get_device(record.device_id)
        if device is None:
            return f"no device {record.device_id}"
        if device.channels and stream[1] >= device.channels:
            return f"no channel {stream[1]}"
        return None

    def _start(self, device_id, channel, stream, path):
        record = self.store.get_device(device_id)
        if record is None:
            return defer.fail(VssError(ResultCode.UNKNOWN_DEVICE))
        body = MediaOpen(device_id=device_id, channel=channel, stream=stream,
                         purpose=Purpose.LIVE, start_time=0, transport=0)
        return self.cdn.ensure_source(record, body, path)

    # -- revocation

    def revalidate(self):
        """End every session opened with a stream credential that no longer holds
        (revoked, expired, removed, its user disabled or removed, no VIEW grant)."""
        rtsp = self.cdn.rtsp
        for s in list(rtsp.sessions.values()):
            auth = s.auth
            if not isinstance(auth, dict) or "cred" not in auth:
                continue
            record = self.store.get_credential(auth["cred"])
            problem = "removed" if record is None else self.refusal(record, s.path)
            if problem is not None:
                self.counters["ended"] += 1
                self.log.info("ending session {sid} on {path}: stream credential {id} "
                              "{problem}", sid=s.id, path=s.path, id=auth["cred"],
                              problem=problem)
                rtsp.end_session(s, f"stream credential {auth['cred']}: {problem}")

    # -- the CU's requests

    def handle(self, link, username, type, body):
        if type == MsgType.CRED_CREATE:
            return self.create(link, username, body)
        if type == MsgType.CRED_LIST:
            return self.list(username, body)
        return self.revoke(username, body)

    @defer.inlineCallbacks
    def create(self, link, username, body):
        if not self.store.actions_for(username, body.device_id) & Action.VIEW:
            raise VssError(ResultCode.FORBIDDEN, f"{username} may not view {body.device_id}")
        if self.store.get_device(body.device_id) is None:
            raise VssError(ResultCode.UNKNOWN_DEVICE, f"no device {body.device_id}")
        if len(body.name) > MAX_NAME:
            raise VssError(ResultCode.INVALID_ARGUMENT, f"a name has at most {MAX_NAME} "
                           "characters")
        if body.expires_in > MAX_EXPIRES_IN:
            raise VssError(ResultCode.INVALID_ARGUMENT, "expires_in: at most ten years")
        if not safe_for_secrets(link):
            raise VssError(ResultCode.FORBIDDEN, "a stream credential's secret is only sent "
                           "over TLS or to a client on this node's machine: connect with a "
                           "tls: endpoint, or ask an operator (vss-admin stream-cred create)")
        cred_id, secret = sc.new_id(), sc.new_secret()
        expires = self.now_ms() + body.expires_in * 1000 if body.expires_in else 0
        record = StreamCredential(cred_id, username, body.device_id, body.name, 0, expires,
                                  0, sc.seal(self.key, cred_id, username, body.device_id,
                                             secret), 0)
        stored = yield self.central.store_credential(record)
        held = self.store.get_credential(stored.cred_id)
        if held is None or held.version <= stored.version:
            self.store.put_credential(stored)  # usable here at once; sync brings the same
        self.counters["created"] += 1
        self.log.info("{user} made stream credential {id} for {device}", user=username,
                      id=cred_id, device=body.device_id)
        return CredIssued(credential=shown(stored), secret=secret,
                          url=f"{self.cdn.media_base}/live/{body.device_id}/main?cred="
                              f"{cred_id}.{secret}")

    def list(self, username, body):
        mine = [c for c in self.store.credentials() if c.username == username
                and (not body.device_id or c.device_id == body.device_id)]
        return Creds(credentials=[shown(c) for c in sorted(mine, key=lambda c: (c.created,
                                                                                 c.cred_id))])

    @defer.inlineCallbacks
    def revoke(self, username, body):
        revoked = yield self.central.revoke_credential(body.cred_id, username)
        held = self.store.get_credential(revoked.cred_id)
        if held is None or held.version <= revoked.version:
            self.store.put_credential(revoked)
        self.counters["revoked"] += 1
        self.revalidate()
        return CredState(credential=shown(revoked))

    def status(self):
        return {"held": len(self.store.credentials()), **self.counters}
