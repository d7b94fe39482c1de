"""
RTP depacketizers for the in-process recorder (``vss.recording.recorder``): the SS's own RTP
packets in, whole access units out. Sans-IO: bytes in, objects out, no Twisted, no
PyAV, and nothing raises on bad input (it is counted and dropped).

- ``H264Depacketizer`` (RFC 6184: single NAL unit, STAP-A, FU-A) and
  ``H265Depacketizer`` (RFC 7798: single NAL unit, aggregation packet, fragmentation
  unit; no DONL, i.e. ``sprop-max-don-diff`` 0) turn the packets of one video track into
  ``AccessUnit`` objects: the picture's NAL units in Annex B (start codes), its RTP
  timestamp extended to 64 bits (32-bit wrap handled) and a keyframe flag (an IDR / IRAP
  picture). An access unit ends at the marker bit or at a new timestamp.
- Loss: a sequence number gap, or a fragment without its start, damages the access unit
  it falls in; that unit is dropped and so is every following one up to the next
  keyframe (a decoder could not use them). Each dropped unit counts in ``lost``; units
  before the first keyframe count in ``skipped``; packets that make no sense in
  ``errors``.
- Bounded: an access unit (or a fragmented NAL) that grows past ``MAX_UNIT_BYTES`` (a
  sender that never sets the marker bit nor changes the timestamp, or garbage) is
  dropped as damaged (``oversize``), so a broken or hostile source cannot make the node
  hold more than that per track; an AAC fragment that grows past its announced size
  is dropped too.
- Parameter sets come from the SDP (``sprop-parameter-sets``; ``sprop-vps``,
  ``sprop-sps``, ``sprop-pps``) and are replaced by the ones seen in-band;
  ``parameter_sets()`` answers the current ones (Annex B), so the muxer can tell when
  they change.
- ``AACDepacketizer`` (RFC 3640 ``mpeg4-generic``, AAC-hbr/lbr: AU-headers with
  ``sizelength``/``indexlength``/``indexdeltalength``) answers ``(timestamp, raw AAC
  frame)`` pairs; ``config`` is the AudioSpecificConfig from the SDP.
"""

import base64
import binascii

from vss.rtsp import sdp as sdplib

START = b"\x00\x00\x00\x01"
MAX_UNIT_BYTES = 16 * 1024 * 1024  # a picture larger than this is not a camera's
WRAP = 1 << 32
HALF = 1 << 31


def rtp_header(data):
    """(payload offset, payload end, marker, sequence, timestamp) of an RTP packet, or
    None if it is not one (too short, version not 2, padding or extension past the
    end)."""
    n = len(data)
    if n < 12 or data[0] >> 6 != 2:
        return None
    b0 = data[0]
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < off + 4:
            return None
        off += 4 + 4 * ((data[off + 2] << 8) | data[off + 3])
    end = n
    if b0 & 0x20:  # padding: the last byte says how much
        end -= data[-1]
    if off >= end:
        return None
    return (off, end, data[1] & 0x80, (data[2] << 8) | data[3],
            int.from_bytes(data[4:8], "big"))


def signed32(d):
    """A difference of 32-bit timestamps as a signed number (-2**31 to 2**31 - 1)."""
    d &= 0xFFFFFFFF
    return d - WRAP if d >= HALF else d


def sender_report(data):
    """(NTP time in seconds, RTP timestamp) of an RTCP packet that starts with a sender
    report (RFC 3550, PT 200), else None."""
    if len(data) < 20 or data[0] >> 6 != 2 or data[1] != 200:
        return None
    ntp = int.from_bytes(data[8:12], "big") + int.from_bytes(data[12:16], "big") / WRAP
    return ntp, int.from_bytes(data[16:20], "big")


class Unwrap:
    """Extends 32-bit RTP timestamps to a monotonic-in-wrap 64-bit count: a step of
    less than 2**31 either way is taken as it is, so a wrap goes on counting up."""

    __slots__ = ("last", "ext")

    def __init__(self):
        self.last = None
        self.ext = 0

    def __call__(self, ts):
        if self.last is None:
            self.ext = ts
        else:
            d = (ts - self.last) % WRAP
            self.ext += d - WRAP if d >= HALF else d
        self.last = ts
        return self.ext


class AccessUnit:
    """One picture: ``nals`` (NAL units without start codes), ``ts`` (64-bit extended RTP
    timestamp), ``key`` (IDR/IRAP)."""

    __slots__ = ("nals", "ts", "key")

    def __init__(self, nals, ts, key):
        self.nals = nals
        self.ts = ts
        self.key = key

    def annexb(self):
        return START + START.join(self.nals)


class _VideoDepacketizer:
    """What H.264 and H.265 share: sequence checks, access unit assembly, counters."""

    PARAMS = ()  # NAL types of parameter sets, in the order the muxer wants them
    KEY = frozenset()

    def __init__(self, parameter_sets=()):
        self.params = {}  # NAL type -> NAL
        for nal in parameter_sets:
            self._param(nal)
        self.unwrap = Unwrap()
        self.seq = None
        self.nals = []
        self.ts = None  # 32-bit timestamp of the unit being assembled
        self.key = False
        self.damaged = False
        self.fu = None  # list of parts of the fragmented NAL being assembled
        self.waiting_key = True
        self.started = False
        self.units = 0
        self.lost = 0
        self.skipped = 0
        self.errors = 0
        self.gaps = 0
        self.size = 0  # payload bytes of the unit being assembled
        self.oversize = 0

    def parameter_sets(self):
        """The current parameter sets, Annex B, in VPS/SPS/PPS order (b"" if none)."""
        return b"".join(START + self.params[t] for t in self.PARAMS if t in self.params)

    def has_parameter_sets(self):
        return all(t in self.params for t in self.PARAMS)

    def push(self, data):
        """One RTP packet of the track. Returns the access units it completes (a tuple,
        usually empty or one)."""
        try:
            if len(data) > 12 and data[0] == 0x80:  # the usual header: no CSRC, no
                # extension, no padding (read here: this runs for every packet)
                return self._push(data, 12, len(data), data[1] & 0x80,
                                  (data[2] << 8) | data[3], int.from_bytes(data[4:8], "big"))
            head = rtp_header(data)
            if head is None:
                self.errors += 1
                return ()
            return self._push(data, *head)
        except (IndexError, ValueError):
            self.errors += 1
            self.damaged = True
            return ()

    def _push(self, data, off, end, marker, seq, ts):
        gap = self.seq is not None and seq != (self.seq + 1) & 0xFFFF
        if gap and not 0 < (seq - self.seq) & 0xFFFF < 0x8000:
            self.errors += 1  # an old or duplicate packet: ignore it
            return ()
        out = ()
        if self.ts is not None and ts != self.ts:
            # a new picture: the last one had no marker bit (it was lost, if there is
            # a gap)
            self.damaged = self.damaged or gap
            out = self._finish()
        if gap:  # packets of this picture (or its whole predecessor) are missing
            self.gaps += 1
            self.damaged = True
            self.fu = None
        self.seq = seq
        self.ts = ts
        self.size += end - off
        if self.size > MAX_UNIT_BYTES:  # never ends: drop what it holds, keep nothing
            if self.nals or self.fu is not None:
                self.oversize += 1
            self.nals, self.fu, self.size = [], None, 0
            self.damaged = True
            return out
        self._payload(data, off, end)
        if marker:
            out = out + self._finish()
        return out

    def _nal(self, nal):
        if not nal:
            self.errors += 1
            return
        t = self._type(nal)
        if t in self.KEY:
            self.key = True
        if t in self.PARAMS:
            self._param(nal)
        self.nals.append(nal)

    def _param(self, nal):
        if nal:
            self.params[self._type(nal)] = bytes(nal)

    def _finish(self):
        nals, self.nals = self.nals, []
        key, self.key = self.key, False
        damaged, self.damaged = self.damaged or self.fu is not None, False
        ts, self.ts = self.ts, None
        self.fu = None
        self.size = 0
        if not nals and not damaged:
            return ()
        ext = self.unwrap(ts)
        if damaged:
            self.lost += 1
            self.waiting_key = True
            return ()
        if self.waiting_key:
            if not key:
                if self.started:
                    self.lost += 1
                else:
                    self.skipped += 1
                return ()
            self.waiting_key = False
            self.started = True
        self.units += 1
        return (AccessUnit(nals, ext, key),)


class H264Depacketizer(_VideoDepacketizer):
    """RFC 6184, packetization modes 0 and 1."""

    PARAMS = (7, 8)
    KEY = frozenset((5,))

    @staticmethod
    def _type(nal):
        return nal[0] & 0x1F

    def _payload(self, data, off, end):
        t = data[off] & 0x1F
        if 0 < t < 24:
            self._nal(data[off:end])
        elif t == 24:  # STAP-A: [size16 NAL]...
            i = off + 1
            while i + 2 <= end:
                n = (data[i] << 8) | data[i + 1]
                if n == 0 or i + 2 + n > end:
                    self.errors += 1
                    self.damaged = True
                    break
                self._nal(data[i + 2:i + 2 + n])
                i += 2 + n
        elif t == 28:  # FU-A
            if off + 2 > end:
                raise ValueError("short FU-A")
            fu = data[off + 1]
            if fu & 0x80:
                if self.fu is not None:
                    self.damaged = True  # the previous fragmented NAL never ended
                self.fu = [bytes(((data[off] & 0xE0) | (fu & 0x1F),)), data[off + 2:end]]
            elif self.fu is None:
                self.damaged = True  # its start was lost
                return
            else:
                self.fu.append(data[off + 2:end])
            if fu & 0x40:
                nal, self.fu = b"".join(self.fu), None
                self._nal(nal)
        else:  # STAP-B, MTAP, FU-B (interleaved mode) and reserved types
            self.errors += 1
            self.damaged = True


class H265Depacketizer(_VideoDepacketizer):
    """RFC 7798 without DONL (``sprop-max-don-diff`` 0)."""

    PARAMS = (32, 33, 34)
    KEY = frozenset((16, 17, 18, 19, 20, 21))

    @staticmethod
    def _type(nal):
        return (nal[0] >> 1) & 0x3F

    def _payload(self, data, off, end):
        if off + 2 > end:
            raise ValueError("short H.265 payload")
        t = (data[off] >> 1) & 0x3F
        if t < 48:
            self._nal(data[off:end])
        elif t == 48:  # aggregation packet: [size16 NAL]...
            i = off + 2
            while i + 2 <= end:
                n = (data[i] << 8) | data[i + 1]
                if n < 2 or i + 2 + n > end:
                    self.errors += 1
                    self.damaged = True
                    break
                self._nal(data[i + 2:i + 2 + n])
                i += 2 + n
        elif t == 49:  # fragmentation unit
            if off + 3 > end:
                raise ValueError("short FU")
            fu = data[off + 2]
            if fu & 0x80:
                if self.fu is not None:
                    self.damaged = True
                head = bytes(((data[off] & 0x81) | ((fu & 0x3F) << 1), data[off + 1]))
                self.fu = [head, data[off + 3:end]]
            elif self.fu is None:
                self.damaged = True
                return
            else:
                self.fu.append(data[off + 3:end])
            if fu & 0x40:
                nal, self.fu = b"".join(self.fu), None
                self._nal(nal)
        else:  # PACI (50) and reserved types
            self.errors += 1
            self.damaged = True


class AACDepacketizer:
    """RFC 3640 ``mpeg4-generic`` AAC with AU-headers (``sizelength`` 13, ``indexlength``
    3 in AAC-hbr). ``push`` answers [(64-bit timestamp, raw AAC frame)]. An access unit
    fragmented over several packets is joined (up to the marker bit)."""

    def __init__(self, config, clock_rate, sizelength=13, indexlength=3,
                 indexdeltalength=3, frame_length=1024):
        self.config = config  # AudioSpecificConfig bytes
        self.clock_rate = clock_rate
        self.sizelength = sizelength
        self.indexlength = indexlength
        self.indexdeltalength = indexdeltalength
        self.frame_length = frame_length
        self.unwrap = Unwrap()
        self.seq = None
        self.frag = None  # (ts, expected size, [parts]) of a fragmented AU
        self.units = 0
        self.lost = 0
        self.errors = 0

    def push(self, data):
        try:
            return self._push(data)
        except (IndexError, ValueError):
            self.errors += 1
            return []

    def _push(self, data):
        head = rtp_header(data)
        if head is None or not self.sizelength:
            self.errors += 1
            return []
        off, end, marker, seq, ts = head
        if self.seq is not None and seq != (self.seq + 1) & 0xFFFF:
            if not 0 < (seq - self.seq) & 0xFFFF < 0x8000:
                self.errors += 1
                return []
            if self.frag is not None:
                self.lost += 1
                self.frag = None
        self.seq = seq
        ext = self.unwrap(ts)
        if off + 2 > end:
            raise ValueError("no AU-headers-length")
        bits = (data[off] << 8) | data[off + 1]
        hbytes = (bits + 7) // 8
        pos = off + 2 + hbytes
        if pos > end:
            raise ValueError("AU headers past the end")
        header = int.from_bytes(data[off + 2:pos], "big") if hbytes else 0
        width = self.sizelength + self.indexlength
        sizes = []
        used, first = 0, True
        while used + (width if first else self.sizelength + self.indexdeltalength) <= bits:
            w = width if first else self.sizelength + self.indexdeltalength
            shift = hbytes * 8 - used - w
            value = (header >> shift) & ((1 << w) - 1)
            sizes.append(value >> (w - self.sizelength))
            used += w
            first = False
        if self.frag is not None:  # the rest of a fragmented AU
            fts, size, parts = self.frag
            parts.append(data[pos:end])
            if sum(len(p) for p in parts) > size:  # more than announced: garbage
                self.frag = None
                self.lost += 1
                return []
            if marker:
                self.frag = None
                au = b"".join(parts)
                if fts == ext and len(au) == size:
                    self.units += 1
                    return [(ext, au)]
                self.lost += 1
            return []
        out = []
        for i, size in enumerate(sizes):
            if pos + size > end:
                if len(sizes) == 1 and not marker:  # the first fragment of a large AU
                    self.frag = (ext, size, [data[pos:end]])
                    return out
                self.errors += 1
                break
            out.append((ext + i * self.frame_length, data[pos:pos + size]))
            pos += size
        self.units += len(out)
        return out


# -- from the SDP


def _fmtp(lines, fmt):
    """The a=fmtp parameters of payload format ``fmt``: {lower-case name: value}."""
    out = {}
    for line in lines:
        if line.startswith(f"a=fmtp:{fmt} "):
            for item in line.split(" ", 1)[1].split(";"):
                name, _, value = item.strip().partition("=")
                if name:
                    out[name.lower()] = value.strip()
    return out


def _b64(value):
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return b""


def _ascii_digits(text):
    """True for a non-empty run of ASCII digits (``str.isdigit`` also takes '²', which
    ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _int(value):
    """An fmtp integer (absent or empty: 0), or None if it is not one."""
    value = (value or "0").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def media_of(sdp):
    """[(track index, kind, encoding, clock rate, channels, fmtp dict)] of an SDP."""
    _, media = sdplib.split(sdp)
    out = []
    for i, lines in enumerate(media):
        parts = lines[0][2:].split()
        if len(parts) < 4:
            continue
        kind, fmt = parts[0], parts[3]
        encoding, rate, channels = {"0": ("PCMU", 8000), "8": ("PCMA", 8000)}.get(
            fmt, ("", 0)) + (1,)
        for line in lines[1:]:
            if line.startswith(f"a=rtpmap:{fmt} "):
                spec = line.split(" ", 1)[1].strip().split("/")
                encoding = spec[0]
                rate = int(spec[1]) if len(spec) > 1 and _ascii_digits(spec[1]) else 0
                channels = int(spec[2]) if len(spec) > 2 and _ascii_digits(spec[2]) else 1
        out.append((i, kind, encoding.upper(), rate, channels, _fmtp(lines, fmt)))
    return out


def video_depacketizer(sdp):
    """(track index, codec name for the muxer ``h264``/``hevc``, depacketizer) of the
    first H.264/H.265 video of an SDP, or None."""
    for index, kind, encoding, _rate, _ch, fmtp in media_of(sdp):
        if kind != "video":
            continue
        if encoding == "H264":
            sets = [_b64(x) for x in fmtp.get("sprop-parameter-sets", "").split(",") if x]
            if _int(fmtp.get("packetization-mode")) not in (0, 1):
                return None  # interleaved mode (or garbage): not supported
            return index, "h264", H264Depacketizer([s for s in sets if s])
        if encoding in ("H265", "HEVC"):
            if _int(fmtp.get("sprop-max-don-diff")) != 0:
                return None  # DONL fields (or garbage): not supported
            sets = [_b64(x) for key in ("sprop-vps", "sprop-sps", "sprop-pps")
                    for x in fmtp.get(key, "").split(",") if x]
            return index, "hevc", H265Depacketizer([s for s in sets if s])
        return None
    return None


def aac_depacketizer(sdp):
    """(track index, depacketizer) of the first mpeg4-generic AAC audio of an SDP, or
    None."""
    for index, kind, encoding, rate, _ch, fmtp in media_of(sdp):
        if kind != "audio" or encoding != "MPEG4-GENERIC":
            continue
        if fmtp.get("mode", "").lower() not in ("aac-hbr", "aac-lbr"):
            continue
        try:
            config = bytes.fromhex(fmtp.get("config", ""))
            sizelength = int(fmtp.get("sizelength", "0"))
            indexlength = int(fmtp.get("indexlength", "0"))
            deltalength = int(fmtp.get("indexdeltalength", "0"))
        except ValueError:
            continue
        if len(config) < 2 or not sizelength or not rate:
            continue
        frame = 960 if config[1] & 0x04 else 1024  # frameLengthFlag
        return index, AACDepacketizer(config, rate, sizelength, indexlength, deltalength,
                                      frame)
    return None


def adts_header(config, size):
    """A 7-byte ADTS header for one raw AAC frame of ``size`` bytes described by the
    AudioSpecificConfig ``config`` (used to let FFmpeg probe the stream)."""
    obj = config[0] >> 3
    freq = ((config[0] & 0x07) << 1) | (config[1] >> 7)
    chans = (config[1] >> 3) & 0x0F
    n = size + 7
    return bytes((0xFF, 0xF1, ((obj - 1) & 0x3) << 6 | freq << 2 | chans >> 2,
                  (chans & 0x3) << 6 | (n >> 11) & 0x3, (n >> 3) & 0xFF,
                  (n & 0x7) << 5 | 0x1F, 0xFC))
