"""
``RawRTSP``: a blocking RTSP client just raw enough to send PLAY and PAUSE with the
headers a test or a benchmark chooses and to read the interleaved media itself (for a
thread; real players are used where a player's behaviour is what is tested).
"""

import socket
import time


class RawRTSP:
    def __init__(self, url, timeout=10):
        self.url = url
        host, port = url.split("://")[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.cseq = 0
        self.session = None

    def request(self, method, uri, headers=()):
        """Send a request; the reply as (status, headers with lower-case names, body)."""
        self.cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines.extend(f"{k}: {v}" for k, v in headers)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self._reply()

    def _read(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _reply(self):
        """The next RTSP reply (interleaved packets before it are skipped)."""
        while True:
            head = self._read(1)
            if head == b"$":
                size = int.from_bytes(self._read(3)[1:], "big")
                self._read(size)
                continue
            while b"\r\n\r\n" not in self.buf:
                data = self.sock.recv(262144)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
            text, _, self.buf = (head + self.buf).partition(b"\r\n\r\n")
            lines = text.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (ln.partition(":") for ln in lines[1:])}
            body = self._read(int(headers.get("content-length", 0)))
            return int(lines[0].split()[1]), headers, body

    def _packet(self):
        head = self._read(4)
        if head[0:1] != b"$":
            raise AssertionError(f"expected media, got {head!r}")
        return head[1], self._read(int.from_bytes(head[2:4], "big"))

    def packets(self, count):
        """Read ``count`` video packets (channel 0): their RTP timestamps."""
        out = []
        while len(out) < count:
            channel, data = self._packet()
            if channel == 0:
                out.append(int.from_bytes(data[4:8], "big"))
        return out

    def first_frame(self):
        """Read media until the marker bit of a video packet (the end of a picture)."""
        while True:
            channel, data = self._packet()
            if channel == 0 and len(data) > 1 and data[1] & 0x80:
                return

    def watch(self, seconds):
        """Read (and drop) media for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._packet()

    def start(self):
        """DESCRIBE and SETUP of the video track over TCP (interleaved 0-1)."""
        base, _, query = self.url.partition("?")
        status, headers, _ = self.request("DESCRIBE", self.url, [("Accept", "application/sdp")])
        assert status == 200, status
        status, headers, _ = self.request(
            "SETUP", f"{base}/streamid=0?{query}",
            [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")])
        assert status == 200, status
        self.session = headers["session"].split(";")[0]

    def close(self):
        self.sock.close()
