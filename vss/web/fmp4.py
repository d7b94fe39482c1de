"""
Fragmented MP4 (ISO/IEC 14496-12, -15) for Media Source Extensions and HLS, written
straight from H.264 access units: no decoding, no transcoding. Sans-IO: bytes in, bytes
out, no Twisted, no PyAV.

- ``parse_sps(sps)``: profile, constraint flags, level, coded picture size and cropping
  of an H.264 sequence parameter set (ITU-T H.264 7.3.2.1.1), enough for the sample
  entry and the codec string ``avc1.PPCCLL`` (RFC 6381) a browser's
  ``MediaSource.isTypeSupported`` wants.
- ``init_segment(sps, pps)``: ``ftyp`` + ``moov`` with one video track (timescale
  90 kHz, the RTP clock), an ``avcC`` holding the parameter sets and an ``mvex``:
  every sample is in a fragment.
- ``fragment(sequence, decode_time, duration, sample, key)``: ``moof`` (``mfhd``,
  ``traf`` with ``tfhd`` default-base-is-moof, ``tfdt`` version 1, ``trun`` of one
  sample with its duration, size and flags) + ``mdat``. One picture per fragment: a
  browser can show each picture as soon as it arrives (low latency), and a viewer can
  join at any fragment whose ``key`` is true.
- ``avcc_sample(nals)``: NAL units (no start codes) as one AVCC sample (4-byte lengths),
  leaving out access unit delimiters and the parameter sets the init segment carries.

The layout is fixed, so every box is packed with ``struct`` in one pass; the cost per
picture is a few microseconds plus one copy of the picture (docs/performance.md).
"""

import struct

TIMESCALE = 90000  # the RTP clock of video: decode times are RTP timestamps
TRACK_ID = 1
NAL_AUD, NAL_SPS, NAL_PPS, NAL_IDR = 9, 7, 8, 5
SAMPLE_KEY = 0x02000000  # sample_depends_on 2: an I picture
SAMPLE_DELTA = 0x01010000  # sample_depends_on 1, sample_is_non_sync_sample
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))


def box(kind, *payload):
    """One box: size, four-character type, payload."""
    data = b"".join(payload)
    return struct.pack(">I4s", 8 + len(data), kind) + data


def full_box(kind, version, flags, *payload):
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# -- H.264 sequence parameter set ---------------------------------------------------------

def unescape(nal):
    """The RBSP of a NAL unit: emulation prevention bytes (00 00 03) removed."""
    if b"\x00\x00\x03" not in nal:
        return bytes(nal)
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _Bits:
    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def u(self, n):
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: a short SPS
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self):
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self):
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def _skip_scaling_list(bits, size):
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def parse_sps(sps):
    """A dict of an H.264 SPS NAL unit (with its one-byte header): ``profile``,
    ``constraints``, ``level``, ``width``, ``height`` (displayed, after cropping).
    Raises ValueError for what is not one."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise ValueError("not an H.264 sequence parameter set")
    try:
        return _parse_sps(unescape(sps))
    except IndexError:
        raise ValueError("truncated sequence parameter set") from None


def _parse_sps(rbsp):
    profile, constraints, level = rbsp[1], rbsp[2], rbsp[3]
    bits = _Bits(rbsp[4:])
    bits.ue()  # seq_parameter_set_id
    chroma = 1
    depth_luma = depth_chroma = 0
    if profile in _HIGH_PROFILES:
        chroma = bits.ue()
        if chroma == 3:
            bits.u(1)  # separate_colour_plane_flag
        depth_luma = bits.ue()  # bit_depth_luma_minus8
        depth_chroma = bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    elif poc_type == 1:
        bits.u(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.u(1):
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    sub_w = 2 if chroma in (1, 2) else 1
    sub_h = 2 if chroma == 1 else 1
    if chroma == 0:
        sub_w = sub_h = 1
    height_mul = 2 - frame_mbs_only
    width = width_mbs * 16 - sub_w * (crop[0] + crop[1])
    height = height_units * 16 * height_mul - sub_h * height_mul * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise ValueError("bad picture size in the sequence parameter set")
    return {"profile": profile, "constraints": constraints, "level": level,
            "width": width, "height": height, "chroma": chroma,
            "depth_luma": depth_luma, "depth_chroma": depth_chroma}


def codec_string(sps):
    """``avc1.PPCCLL`` (RFC 6381) of an SPS NAL unit."""
    return "avc1." + bytes(sps[1:4]).hex()


# -- init segment ----------------------------------------------------------------------

_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _avcc(sps, pps, info):
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): 4-byte NAL lengths, one
    SPS, one PPS; the chroma format and bit depths after them for the High profiles."""
    high = b""
    if info["profile"] in _HIGH_PROFILES:
        high = bytes((0xFC | info["chroma"], 0xF8 | info["depth_luma"],
                      0xF8 | info["depth_chroma"], 0))
    return box(b"avcC", bytes((1, sps[1], sps[2], sps[3], 0xFF, 0xE1)),
               struct.pack(">H", len(sps)), sps, b"\x01", struct.pack(">H", len(pps)), pps,
               high)


def init_segment(sps, pps):
    """``ftyp`` + ``moov`` for one H.264 track with these parameter sets (NAL units
    without start codes). Raises ValueError for an SPS that cannot be read."""
    info = parse_sps(sps)
    w, h = info["width"], info["height"]
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso6avc1mp41")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIIIIH10x", 0, 0, 1000, 0, 0x10000, 0x100),
                    _MATRIX, b"\x00" * 24, struct.pack(">I", TRACK_ID + 1))
    tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII8xHHHH", 0, 0, TRACK_ID, 0, 0, 0, 0, 0, 0),
                    _MATRIX, struct.pack(">II", w << 16, h << 16))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"vss video\x00")
    vmhd = full_box(b"vmhd", 0, 1, b"\x00" * 8)
    dref = full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1))
    dinf = box(b"dinf", dref)
    avc1 = box(b"avc1", b"\x00" * 6, struct.pack(">H", 1), b"\x00" * 16,
               struct.pack(">HHIIIH", w, h, 0x00480000, 0x00480000, 0, 1), b"\x00" * 32,
               struct.pack(">Hh", 0x18, -1), _avcc(sps, pps, info))
    stsd = full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1)
    empty = struct.pack(">I", 0)
    stbl = box(b"stbl", stsd, full_box(b"stts", 0, 0, empty), full_box(b"stsc", 0, 0, empty),
               full_box(b"stsz", 0, 0, empty, empty), full_box(b"stco", 0, 0, empty))
    minf = box(b"minf", vmhd, dinf, stbl)
    mdia = box(b"mdia", mdhd, hdlr, minf)
    trak = box(b"trak", tkhd, mdia)
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", TRACK_ID, 1, 0, 0, 0))
    mvex = box(b"mvex", trex)
    return ftyp + box(b"moov", mvhd, trak, mvex)


# -- fragments -------------------------------------------------------------------------

# moof(8) mfhd(16) traf(8) tfhd(16) tfdt(20) trun(20 + one sample 12) = 100, then the
# mdat header (8)
_MOOF = struct.Struct(">I4s" "I4sII" "I4s" "I4sII" "I4sIQ" "I4sIIi" "III" "I4s")
_MOOF_SIZE = 100
_TRUN_FLAGS = 0x000001 | 0x000100 | 0x000200 | 0x000400  # offset, duration, size, flags


def fragment(sequence, decode_time, duration, sample, key):
    """``moof`` + ``mdat`` of one sample (an AVCC picture) decoded at ``decode_time``
    (90 kHz) for ``duration`` ticks."""
    n = len(sample)
    head = _MOOF.pack(
        _MOOF_SIZE, b"moof",
        16, b"mfhd", 0, sequence & 0xFFFFFFFF,
        _MOOF_SIZE - 8 - 16, b"traf",
        16, b"tfhd", 0x020000, TRACK_ID,  # default-base-is-moof
        20, b"tfdt", 0x01000000, decode_time,
        32, b"trun", _TRUN_FLAGS, 1, _MOOF_SIZE + 8,
        duration, n, SAMPLE_KEY if key else SAMPLE_DELTA,
        8 + n, b"mdat")
    return head + sample


def avcc_sample(nals):
    """NAL units as one AVCC sample; AUDs and parameter sets are left out (the init
    segment holds the parameter sets; a change of them makes a new one)."""
    pack = struct.Struct(">I").pack
    return b"".join(pack(len(nal)) + nal for nal in nals
                    if nal and (nal[0] & 0x1F) not in (NAL_AUD, NAL_SPS, NAL_PPS))
