"""
Load process of bench/signalling.py: many PU and CU links to one node, on raw
non-blocking sockets and one epoll loop, so that it costs far less than the node.

Frames are pre-encoded; only the 16-byte header is packed per request (``struct``).
Logins run the real HELLO / SCRAM / REGISTER exchange with the codec and
``vss.protocols.scram``; every bench identity shares one secret and one salt, so the
PBKDF2 is computed once per process. Pipelined: HELLO+AUTH_START, then AUTH_PROOF+REGISTER.

Driven by bench/signalling.py over stdin/stdout, one command or JSON report a line:
``go`` starts the CU traffic, ``mark`` starts the measured window, ``report`` prints
the window's figures, ``quit`` closes everything.

    python bench/_sigload.py CONFIG_JSON
"""

import heapq
import json
import os
import random
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vss.protocols import codec, scram  # noqa: E402
from vss.protocols.codes import ResultCode  # noqa: E402
from vss.protocols.messages import (  # noqa: E402
    AuthProof,
    AuthStart,
    Empty,
    Hello,
    MsgType,
    PtzControl,
    PtzOp,
    PtzStatus,
    Register,
)

HDR = struct.Struct(">2sBBHHII")
HDR_SIZE = 16
pack_hdr = HDR.pack
unpack_hdr = HDR.unpack_from
MAGIC = b"VS"
F_RESP = codec.FLAG_RESPONSE
PTZ = int(MsgType.PTZ_CONTROL)
KEEPALIVE = int(MsgType.KEEPALIVE)
BUSY = int(ResultCode.BUSY)  # the node's login rate: try again later
EMPTY_BODY = codec.encode_body(Empty())
PTZ_STATUS = codec.encode_body(PtzStatus(pan=0.1, tilt=0.0, zoom=0.0, moving=True))
PTZ_STATUS_LEN = len(PTZ_STATUS)

# login steps
L_START, L_CHALLENGE, L_REGISTER, L_DONE, L_FAILED = range(5)


class Conn:
    __slots__ = ("sock", "fd", "role", "ident", "rbuf", "out", "state", "txid", "sent",
                 "nonce", "next_target", "closed", "wants_write")

    def __init__(self, sock, role, ident):
        self.sock = sock
        self.fd = sock.fileno()
        self.role = role
        self.ident = ident
        self.rbuf = b""
        self.out = []
        self.state = L_START
        self.txid = 0
        self.sent = {}  # txid -> perf_counter_ns at send (CU requests)
        self.nonce = None
        self.next_target = 0
        self.closed = False
        self.wants_write = False


class Load:
    def __init__(self, cfg):
        self.cfg = cfg
        self.sel = selectors.EpollSelector()
        self.conns = {}
        self.dirty = set()
        self.secret = cfg["secret"]
        self._salted = {}
        self.logged_in = 0
        self.login_failed = 0
        self.closed_by_node = 0
        self.running = False
        self.measuring = False
        self.count = 0
        self.errors = 0
        self.lat = []
        self.keepalives = 0
        self.ptz_served = 0
        self.mark_t = None
        self.inflight = cfg["inflight"]
        targets = cfg["targets"]
        self.targets = [self._ptz_body(t) for t in targets]
        self.ka_heap = []
        self.keepalive = cfg["keepalive"]
        self.all_conns = []
        self.stdin_buf = b""
        # logins the node said BUSY to (its login rate): tried again a second later, as
        # a client does (heap of (due, role, identity))
        self.retry_heap = []
        self.busy = 0

    # -- frames

    @staticmethod
    def _ptz_body(device_id):
        return codec.encode_body(PtzControl(device_id=device_id, channel=0,
                                            op=int(PtzOp.CONTINUOUS), pan=0.25, tilt=-0.25,
                                            zoom=0.0, speed=0.5, timeout_ms=500))

    def queue(self, c, data):
        c.out.append(data)
        self.dirty.add(c)

    def request(self, c, mtype, body):
        c.txid += 1
        self.queue(c, pack_hdr(MAGIC, 1, 0, mtype, 0, c.txid, len(body)) + body)
        return c.txid

    def salted(self, salt, iterations):
        key = (salt, iterations)
        s = self._salted.get(key)
        if s is None:
            s = self._salted[key] = scram.salted_password(self.secret, salt, iterations)
        return s

    # -- connections and logins

    def open(self, role, ident):
        port = self.cfg["pu_port"] if role == 1 else self.cfg["cu_port"]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((self.cfg["host"], port))
        s.setblocking(False)
        c = Conn(s, role, ident)
        self.conns[c.fd] = c
        self.sel.register(s, selectors.EVENT_READ, c)
        if self.cfg.get("bare"):  # bench/_sigfloor.py: no login
            c.state = L_DONE
            self.logged_in += 1
            if self.keepalive:
                heapq.heappush(self.ka_heap, (time.monotonic() + random.uniform(0, self.keepalive),
                                              c.fd))
            return c
        c.nonce = os.urandom(24)
        self.request(c, MsgType.HELLO, codec.encode_body(
            Hello(min_version=1, max_version=1, role=role, agent="bench", features=[])))
        self.request(c, MsgType.AUTH_START, codec.encode_body(
            AuthStart(identity=ident, mechanism=scram.MECHANISM, client_nonce=c.nonce)))
        c.state = L_CHALLENGE
        return c

    def login_frame(self, c, frame):
        if frame.status == BUSY:
            self.busy += 1
            c.closed = True
            self.sel.unregister(c.sock)
            c.sock.close()
            heapq.heappush(self.retry_heap, (time.monotonic() + random.uniform(0.5, 1.5),
                                             c.role, c.ident))
            return
        if frame.status:
            c.state = L_FAILED
            self.login_failed += 1
            msg = codec.decode_body(frame)
            sys.stderr.write(f"login of {c.ident} failed at {frame.type:#x}: "
                             f"{frame.status} {getattr(getattr(msg, 'body', None), 'message', '')}\n")
            return
        if frame.type == MsgType.AUTH_START:
            ch = codec.decode_body(frame).body
            salted = self.salted(ch.salt, ch.iterations)
            message = scram.auth_message(c.ident, c.nonce, ch.server_nonce, ch.salt,
                                         ch.iterations)
            self.request(c, MsgType.AUTH_PROOF, codec.encode_body(
                AuthProof(client_proof=scram.client_proof_from_salted(salted, message))))
            self.request(c, MsgType.REGISTER, codec.encode_body(
                Register(kind=1, model="bench", firmware="1", channels=1, attributes=[])))
            c.state = L_REGISTER
        elif frame.type == MsgType.REGISTER:
            c.state = L_DONE
            self.logged_in += 1
            if self.keepalive:
                due = time.monotonic() + random.uniform(0, self.keepalive)
                heapq.heappush(self.ka_heap, (due, c.fd))
            if c.role == 2 and self.running:
                self.start_cu(c)

    # -- traffic

    def start_cu(self, c):
        for _ in range(self.inflight):
            self.send_ptz(c)

    def send_ptz(self, c):
        targets = self.targets
        body = targets[c.next_target]
        c.next_target = (c.next_target + 1) % len(targets)
        c.txid = txid = (c.txid % 0xFFFFFFFF) + 1
        c.sent[txid] = time.perf_counter_ns()
        c.out.append(pack_hdr(MAGIC, 1, 0, PTZ, 0, txid, len(body)) + body)
        self.dirty.add(c)

    def frames(self, c, data):
        buf = c.rbuf + data if c.rbuf else data
        pos = 0
        end = len(buf)
        while end - pos >= HDR_SIZE:
            magic, _v, flags, mtype, status, txid, length = unpack_hdr(buf, pos)
            stop = pos + HDR_SIZE + length
            if stop > end:
                break
            if c.state != L_DONE:
                self.login_frame(c, codec.Frame(1, flags, mtype, status, txid,
                                                buf[pos + HDR_SIZE:stop]))
                if c.closed:
                    return
            elif flags & F_RESP:
                if mtype == PTZ:
                    t0 = c.sent.pop(txid, None)
                    if t0 is not None:
                        if self.measuring:
                            self.count += 1
                            self.lat.append(time.perf_counter_ns() - t0)
                            if status:
                                self.errors += 1
                        elif status:
                            self.errors += 1
                        if self.running:
                            self.send_ptz(c)
                elif mtype == KEEPALIVE:
                    self.keepalives += 1
            elif flags & codec.FLAG_NOTIFY:
                if mtype == MsgType.BYE:
                    sys.stderr.write(f"{c.ident}: node said bye\n")
            elif mtype == PTZ:
                self.ptz_served += 1
                c.out.append(pack_hdr(MAGIC, 1, F_RESP, PTZ, 0, txid, PTZ_STATUS_LEN)
                             + PTZ_STATUS)
                self.dirty.add(c)
            else:
                c.out.append(pack_hdr(MAGIC, 1, F_RESP, mtype, 0, txid, 2) + EMPTY_BODY)
                self.dirty.add(c)
            pos = stop
        c.rbuf = buf[pos:] if pos < end else b""

    def flush(self):
        dirty, self.dirty = self.dirty, set()
        for c in dirty:
            if c.closed or not c.out:
                continue
            data = b"".join(c.out) if len(c.out) > 1 else c.out[0]
            c.out.clear()
            try:
                n = c.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.drop(c)
                continue
            if n < len(data):
                c.out.append(data[n:])
                if not c.wants_write:
                    c.wants_write = True
                    self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            elif c.wants_write:
                c.wants_write = False
                self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def drop(self, c):
        if c.closed:
            return
        c.closed = True
        self.closed_by_node += 1
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def keepalives_due(self, now):
        heap = self.ka_heap
        while heap and heap[0][0] <= now:
            due, fd = heapq.heappop(heap)
            c = self.conns.get(fd)
            if c is None or c.closed:
                continue
            self.request(c, KEEPALIVE, EMPTY_BODY)
            heapq.heappush(heap, (due + self.keepalive, fd))

    # -- main loop

    def command(self, line):
        cmd = line.strip()
        if cmd == "go":
            self.running = True
            for c in self.all_conns:
                if c.role == 2 and c.state == L_DONE:
                    self.start_cu(c)
        elif cmd == "mark":
            self.measuring = True
            self.count = self.errors = self.keepalives = self.ptz_served = 0
            self.lat = []
            self.mark_t = time.perf_counter()
        elif cmd == "report":
            window = time.perf_counter() - self.mark_t if self.mark_t else 0.0
            lat = sorted(self.lat)
            n = len(lat)

            def pct(p):
                return lat[min(n - 1, int(p * n))] / 1e6 if n else None

            report = {"count": self.count, "errors": self.errors, "window": window,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] / 1e6 if n else None,
                      "keepalives": self.keepalives, "ptz_served": self.ptz_served,
                      "links": sum(1 for c in self.all_conns if not c.closed),
                      "closed_by_node": self.closed_by_node}
            self.emit(report)
        elif cmd == "stop":
            self.running = False
        elif cmd == "quit":
            return False
        return True

    def emit(self, obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def poll(self, timeout):
        for key, mask in self.sel.select(timeout):
            c = key.data
            if c is None:
                chunk = os.read(0, 4096)
                if not chunk:
                    return False
                self.stdin_buf += chunk
                while b"\n" in self.stdin_buf:
                    line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
                    if not self.command(line.decode()):
                        return False
                continue
            if mask & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    self.drop(c)
                    continue
                if data:
                    self.frames(c, data)
            if mask & selectors.EVENT_WRITE:
                self.dirty.add(c)
        self.flush()
        return True

    def login_all(self):
        ids = [(1, i) for i in self.cfg["pus"]] + [(2, u) for u in self.cfg["cus"]]
        window = self.cfg.get("login_window", 256)
        deadline = time.monotonic() + self.cfg.get("login_timeout", 600)
        i = 0
        while True:
            now = time.monotonic()
            while self.retry_heap and self.retry_heap[0][0] <= now:
                _due, role, ident = heapq.heappop(self.retry_heap)
                self.all_conns.append(self.open(role, ident))
            pending = (len(self.all_conns) - self.logged_in - self.login_failed
                       - self.closed_by_node - self.busy + len(self.retry_heap))
            while i < len(ids) and pending < window:
                role, ident = ids[i]
                self.all_conns.append(self.open(role, ident))
                i += 1
                pending += 1
            if i >= len(ids) and pending <= 0:
                break
            if time.monotonic() > deadline:
                break
            self.poll(0.05)
        self.emit({"ready": True, "logged_in": self.logged_in, "failed": self.login_failed,
                   "closed": self.closed_by_node, "busy": self.busy})

    def run(self):
        self.login_all()
        self.sel.register(0, selectors.EVENT_READ, None)
        while True:
            timeout = 0.5
            if self.ka_heap:
                now = time.monotonic()
                self.keepalives_due(now)
                if self.ka_heap:
                    timeout = max(0.0, min(timeout, self.ka_heap[0][0] - now))
            if not self.poll(timeout):
                break
        for c in self.all_conns:
            if not c.closed:
                c.sock.close()


def expand(spec):
    """``prefix:start:count`` -> the identities."""
    if not spec:
        return []
    prefix, start, count = spec.split(":")
    return [f"{prefix}{i:05d}" for i in range(int(start), int(start) + int(count))]


def main():
    cfg = json.loads(sys.argv[1])
    cfg["pus"] = expand(cfg["pus"])
    cfg["cus"] = expand(cfg["cus"])
    cfg["targets"] = expand(cfg["targets"]) or ["none"]
    Load(cfg).run()


if __name__ == "__main__":
    main()
