"""
Coverage-guided fuzzing (atheris, libFuzzer) of every parser that reads what a peer
sends. Each target states what must hold for any input; an exception escaping a target,
or a broken property (an ``AssertionError``), is a crash: libFuzzer stops and writes the
input to ``<out>/crash-<sha1>``. Every crash found becomes a regression test in
tests/test_fuzz.py (and a fix).

Targets:

- ``signalling``  the streaming frame decoder (docs/protocol.md 2, 6): one stream fed
  whole and cut at fuzzed points gives the same frames and errors; the decoder holds at
  most a header plus one body; every body decodes to a message or a body error that is
  TRUNCATED_BODY, BAD_UTF8 or TRAILING_BYTES (never MALFORMED_BODY: 6), and the generated
  fast path agrees with construct.
- ``node``        the RGM behind a link (docs/protocol.md 8, 9): fuzzed frames (catalogue
  types, any flags, txid and body) on a fresh link, before login or logged in as a CU
  with a PU online; nothing raises out of ``dataReceived``, no handler fails (no
  ``log.failure``, no INTERNAL_ERROR answer).
- ``rtsp``        the RTSP message parser and the header value parsers (Transport, Range,
  parameters, Digest challenges): never raises, whole and cut input agree, bounded.
- ``sdp``         SDP as the RTSP server and the recorder read it: ``tracks`` raises
  only ``ValueError``, everything else never raises.
- ``rtp``         the H.264 / H.265 / AAC depacketizers (vss/recording/rtpmux.py) fed fuzzed
  packets: never raise, bounded.
- ``export``      the node's ``GET /export`` resource through Twisted's HTTP parser
  (request target checks, query parsing, token checks): every answer is 400, 403, 404,
  405 or 503 (no valid token: no 200) and never 500.

Usage (from the checkout, in the project's venv with the ``test`` extras)::

    python bench/fuzz.py [--runs N] [--seconds S] [--rss-limit-mb M] [--out DIR] TARGET...|all

runs each target in a child process (``python bench/fuzz.py --one TARGET <libFuzzer
options> CORPUS``) and prints, per target, the inputs run, the time, inputs/s, the peak
RSS and the outcome; it exits 1 if any target crashed. ``--runs`` is the number of
inputs (libFuzzer ``-runs``), ``--seconds`` a time limit (``-max_total_time``), whichever
comes first. The corpus of a target starts from seeds written from the protocol's own
vectors and samples, in ``<out>/corpus-<target>``; RTSP, SDP and export also get a
dictionary of their words. A crash file is replayed with
``python bench/fuzz.py --one TARGET <out>/TARGET-crash-...``.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("signalling", "node", "rtsp", "sdp", "rtp", "export")


# ---------------------------------------------------------------------------
# The targets: each returns (test_one_input, seeds). Imported in the child only, inside
# atheris.instrument_imports() so that coverage guides the search through our code.


def _provider(data):
    import atheris

    return atheris.FuzzedDataProvider(data)


def _cuts(fdp, size_hint=1 << 16):
    return [fdp.ConsumeIntInRange(0, size_hint) for _ in range(fdp.ConsumeIntInRange(0, 4))]


def _chunks(data, cuts):
    """``data`` cut at ``cuts`` (positions taken modulo its length, in order)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _plain(value):
    """A body as nested tuples, NaN as a string: construct gives a list field as its
    ``ListContainer``, the fast path as a list; both are lists, and equal."""
    fields = getattr(value, "_fields", None)
    if fields is not None:
        return (type(value).__name__, *(_plain(getattr(value, n)) for n in fields),
                _plain(getattr(value, "ext", ())))
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def target_signalling():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.protocols import codec
        from vss.protocols.codes import ResultCode
    max_body = 4096
    body_errors = {ResultCode.TRUNCATED_BODY, ResultCode.BAD_UTF8, ResultCode.TRAILING_BYTES,
                   ResultCode.UNKNOWN_MESSAGE}

    def one(data):
        fdp = _provider(data)
        cuts = _cuts(fdp)
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        whole = codec.FrameDecoder(max_body).feed(stream)
        dec = codec.FrameDecoder(max_body)
        split = []
        for chunk in _chunks(stream, cuts):
            split += dec.feed(chunk)
            assert dec.buffered <= codec.HEADER_SIZE + max_body, dec.buffered
            if dec.error is not None:  # latched: every later feed repeats it
                assert dec.feed(b"VS") == [dec.error]
                break
        assert repr(whole) == repr(split), (whole, split)
        for item in whole:
            if type(item) is not codec.Frame:
                assert item.fatal and item is whole[-1]
                continue
            msg = codec.decode_body(item)
            if type(msg) is codec.ProtocolError:
                assert msg.code in body_errors, msg
                continue
            # the generated fast path and construct read the same body
            cls = codec.body_class(item.type, item.flags)
            reference = codec._construct_decode(cls, item)
            assert _plain(reference) == _plain(msg.body), (reference, msg.body)

    def seeds():
        sys.path.insert(0, ROOT)
        from tests.test_protocol_vectors import VECTORS, h

        return [h(v.hex) for v in VECTORS]

    return one, seeds


def _sample_bodies():
    """{type: [request bodies]} from the hand-written vectors of docs/protocol.md, the
    device named in them replaced by the harness's ``cam1``."""
    import dataclasses

    sys.path.insert(0, ROOT)
    from tests.test_protocol_vectors import VECTORS
    from vss.protocols import codec

    out = {}
    for v in VECTORS:
        if v.flags & (codec.FLAG_RESPONSE | codec.FLAG_ERROR):
            continue
        body = v.body
        if "device_id" in getattr(body, "_fields", ()):
            body = dataclasses.replace(body, device_id="cam1")
        out.setdefault(v.type, []).append(codec.encode_body(body))
    return out


def target_node():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.protocols import codec, link
        from vss.rgm import relay, service
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogPublisher

    from vss.protocols.codes import ResultCode
    from vss.protocols.errors import VssError
    from vss.protocols.messages import CATALOGUE, Action, Config, MsgType, PtzStatus, Role
    from vss.testing.harness import NodeHarness

    assert link and relay  # instrumented above
    h = NodeHarness(keepalive_interval=30, request_timeout=5.0)
    h.add_device("cam1", channels=2)
    h.add_user("alice", grants=[("cam1", Action.VIEW | Action.PTZ | Action.CONFIG
                                 | Action.RECORD)])

    def pu_answer(frame, msg):
        """A PU that answers right: PTZ and configuration, NOT_SUPPORTED otherwise."""
        if frame.type == MsgType.PTZ_CONTROL:
            return PtzStatus(pan=0.0, tilt=0.0, zoom=0.0, moving=False)
        if frame.type in (MsgType.CONFIG_GET, MsgType.CONFIG_SET):
            return Config(items=[], version=1)
        raise VssError(ResultCode.NOT_SUPPORTED, "not here")

    def pu_online():
        if "cam1" not in h.rgm.pu_links:
            h.pu("cam1", on_request=pu_answer, channels=2)
            h.pump()
        assert "cam1" in h.rgm.pu_links

    pu_online()
    failures = []
    globalLogPublisher.addObserver(
        lambda event: failures.append(event) if "log_failure" in event else None)
    types = sorted(CATALOGUE) + [0x7ABC]
    samples = _sample_bodies()
    states = (service.State.NEW, service.State.HELLO, service.State.AUTHENTICATED,
              service.State.REGISTERED)

    def one(data):
        pu_online()
        fdp = _provider(data)
        server = h.rgm.factory(Role.CU).buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        s = server.session
        state = states[fdp.ConsumeIntInRange(0, len(states) - 1)]
        if state != service.State.NEW:
            s.role, s.state, s.identity = Role.CU, state, "alice"
            s.session_id = "fuzz"
            if state == service.State.REGISTERED:
                h.rgm.cu_links[s.session_id] = server
        wire = []
        while fdp.remaining_bytes() > 0 and len(wire) < 16:
            t = types[fdp.ConsumeIntInRange(0, len(types) - 1)]
            flags = fdp.ConsumeIntInRange(0, 7)
            txid = fdp.ConsumeIntInRange(0, 3)
            how = fdp.ConsumeIntInRange(0, 2)
            if how and samples.get(t):  # a valid body of the type, maybe with one byte changed
                body = bytearray(samples[t][fdp.ConsumeIntInRange(0, len(samples[t]) - 1)])
                if how == 2 and body:
                    body[fdp.ConsumeIntInRange(0, len(body) - 1)] = fdp.ConsumeIntInRange(0, 255)
                body = bytes(body)
            else:
                body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            wire.append(codec.encode_frame(t, body, txid, flags))
        if fdp.remaining_bytes() > 0:
            wire.append(fdp.ConsumeBytes(fdp.remaining_bytes()))
        for chunk in wire:
            server.dataReceived(chunk)
            h.pump()
        h.clock.advance(10)
        h.pump()
        server.connectionLost(None)
        h.rgm.cu_links.pop("fuzz", None)
        if failures:
            raise AssertionError(f"a handler failed: {failures[-1]}")
        for frame in codec.FrameDecoder().feed(transport.value()):
            assert type(frame) is codec.Frame, frame
            assert frame.status != ResultCode.INTERNAL_ERROR, codec.decode_body(frame)

    def seeds():
        return [bytes([3, i % 40, 0, 0, 0, 1, 10]) + bytes(10) for i in range(40)]

    return one, seeds


def target_rtsp():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.rtsp import auth, parser
    from twisted.internet import task

    max_header, max_body = 1024, 4096
    clock = task.Clock()
    digest = auth.DigestServer({"alice": "pw"}, clock)
    nonce = digest._nonce(0)
    bound = max(max_header + 4, max_body, 4 + 0xFFFF)

    def one(data):
        fdp = _provider(data)
        kind = "request" if fdp.ConsumeBool() else "response"
        cuts = _cuts(fdp, 4096)
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        whole = parser.MessageParser(kind, max_header, max_body).feed(stream)
        p = parser.MessageParser(kind, max_header, max_body)
        items = []
        for chunk in _chunks(stream, cuts):
            items += p.feed(chunk)
            assert p.buffered() <= bound, p.buffered()
        assert repr(items) == repr(whole), (items, whole)
        for item in items:
            assert isinstance(item, parser.Request | parser.Response | parser.Interleaved
                              | parser.ParseError), item
            if isinstance(item, parser.Request | parser.Response):
                for _name, value in item.headers.items():
                    parser.parse_transport(value)
                    parser.parse_range(value)
                    parser.parse_params(value)
                    auth.parse_challenge(value)
                    digest.check(value, "PLAY", "rtsp://h/x")
                    # the same with the one nonce this server issued, so the checks past
                    # the nonce are reached too
                    digest.check(value.replace("NONCE", nonce), "PLAY")

    def seeds():
        return [
            b"\x01OPTIONS rtsp://h/live/cam1 RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            b"\x01SETUP rtsp://h/live/cam1/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: "
            b"RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 12;timeout=60\r\n\r\n",
            b"\x01ANNOUNCE rtsp://h/live/cam1 RTSP/1.0\r\nCSeq: 2\r\nContent-Type: "
            b"application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n",
            b"\x00RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Digest "
            b"realm=\"vss\", nonce=\"abc\"\r\n\r\n$\x00\x00\x04abcd",
            b"\x01PLAY rtsp://h/x RTSP/1.0\r\nCSeq: 4\r\nRange: npt=0-\r\n\r\n",
            b"\x01PLAY rtsp://h/x RTSP/1.0\r\nCSeq: 5\r\nAuthorization: Digest "
            b"username=\"alice\", realm=\"vss\", nonce=\"NONCE\", uri=\"rtsp://h/x\", "
            b"response=\"0123456789abcdef0123456789abcdef\", qop=auth, nc=1, cnonce=c\r\n\r\n",
            b"\x01PLAY rtsp://h/x RTSP/1.0\r\nCSeq: 6\r\nAuthorization: Basic "
            b"YWxpY2U6cHc=\r\n\r\n",
        ]

    return one, seeds


SDP_H264 = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "a=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0IAH5WoFAFuQA==,aM48gA==\r\n"
    "a=control:trackID=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/16000/1\r\n"
    "a=fmtp:97 streamtype=5;mode=AAC-hbr;config=1408;sizelength=13;indexlength=3;"
    "indexdeltalength=3\r\na=control:trackID=1\r\n")
SDP_H265 = (
    "v=0\r\ns=cam\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n"
    "a=fmtp:96 sprop-vps=QAEMAf//;sprop-sps=QgEBAWAAAAMAAAMAAAMAAAMAlqAB4CAAfA==;"
    "sprop-pps=RAHA8vA8kAA=\r\n")


def target_sdp():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.recording import rtpmux
        from vss.rtsp import sdp

    def one(data):
        text = data.decode("utf-8", "replace")  # as the RTSP server reads a body
        try:
            sdp.tracks(text)
        except ValueError:
            pass
        sdp.session_control(text)
        sdp.controls(text)
        sdp.for_viewers(text, "rtsp://127.0.0.1:8554/live/cam1", "token=t")
        rtpmux.media_of(text)
        rtpmux.video_depacketizer(text)
        found = rtpmux.aac_depacketizer(text)
        if found is not None:
            rtpmux.adts_header(found[1].config, 100)

    def seeds():
        return [SDP_H264.encode(), SDP_H265.encode()]

    return one, seeds


def target_rtp():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.recording import rtpmux

    def one(data):
        fdp = _provider(data)
        which = fdp.ConsumeIntInRange(0, 2)
        if which == 2:
            config = fdp.ConsumeBytes(2).ljust(2, b"\x10")
            dep = rtpmux.AACDepacketizer(config, fdp.ConsumeIntInRange(1, 96000),
                                         fdp.ConsumeIntInRange(0, 32),
                                         fdp.ConsumeIntInRange(0, 16),
                                         fdp.ConsumeIntInRange(0, 16))
        else:
            cls = rtpmux.H264Depacketizer if which == 0 else rtpmux.H265Depacketizer
            dep = cls([fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))
                       for _ in range(fdp.ConsumeIntInRange(0, 3))])
        while fdp.remaining_bytes() > 0:
            packet = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1500))
            rtpmux.rtp_header(packet)
            rtpmux.sender_report(packet)
            for out in dep.push(packet):
                if which == 2:
                    ts, frame = out
                    assert isinstance(ts, int) and isinstance(frame, bytes | bytearray)
                    rtpmux.adts_header(dep.config, len(frame))
                else:
                    out.annexb()
        if which != 2:
            dep.parameter_sets()
            assert dep.size <= rtpmux.MAX_UNIT_BYTES

    def seeds():
        def pkt(seq, ts, payload, marker=True):
            return (bytes([0x80, 0x60 | (0x80 if marker else 0)]) + seq.to_bytes(2, "big")
                    + ts.to_bytes(4, "big") + bytes(4) + payload)

        def framed(which, packets):
            out = bytes([which])
            for p in packets:
                out += len(p).to_bytes(2, "big") + p
            return out

        h264 = [pkt(1, 0, b"\x67\x42\x00\x1f", False), pkt(2, 0, b"\x68\xce\x3c\x80", False),
                pkt(3, 0, b"\x7c\x85" + bytes(20), False), pkt(4, 0, b"\x7c\x45" + bytes(20)),
                pkt(5, 3000, b"\x18\x00\x02\x41\x9a\x00\x02\x41\x9b")]
        h265 = [pkt(1, 0, b"\x40\x01\x0c\x01"), pkt(2, 0, b"\x62\x01\x93" + bytes(20), False),
                pkt(3, 0, b"\x62\x01\x53" + bytes(20))]
        aac = [pkt(1, 0, b"\x00\x10\x00\x48" + bytes(9))]
        return [framed(0, h264), framed(1, h265), framed(2, aac)]

    return one, seeds


def target_export():
    import atheris

    with atheris.instrument_imports(include=["vss"]):
        from vss.recording import export
    from collections import Counter

    from twisted.internet import defer, task
    from twisted.internet.testing import StringTransport

    clock = task.Clock()
    clock.advance(1_700_000_000)
    tokens = export.ExportTokens(b"fuzz-node-secret", clock)

    class Exporter:
        """No recording here: a valid token gets 404."""

        counters = Counter()
        clock = None

        def busy(self):
            return False

        def make(self, device, stream, from_ms, to_ms, gone=lambda: False):
            return defer.succeed(None)

    site = export.make_site(tokens, Exporter())
    site.timeOut = None
    allowed = {400, 403, 404, 405, 503, 505}
    status_line = re.compile(rb"^HTTP/1\.[01] (\d{3}) ", re.M)

    def one(data):
        # a fresh token each time: one is spent by its first download (and remembered
        # until it expires, so time moves on to keep that memory bounded)
        clock.advance(61)
        valid = tokens.issue("cam1", 0, "main", 1_700_000_000_000, 1_700_000_060_000,
                             ttl=60)[0]
        fdp = _provider(data)
        method = (b"GET", b"HEAD", b"POST", b"PUT")[fdp.ConsumeIntInRange(0, 3)]
        if fdp.ConsumeBool():
            target = b"/export?token=" + valid.encode() + fdp.ConsumeBytes(
                fdp.ConsumeIntInRange(0, 32))
        else:
            target = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        channel = site.buildProtocol(None)
        channel.callLater = clock.callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + rest
                             + b"\r\n\r\n")
        clock.advance(0)
        channel.connectionLost(None)
        for status in status_line.findall(transport.value()):
            assert int(status) in allowed, (int(status), transport.value()[:400])

    def seeds():
        return [b"\x00\x01" + b"/export?token=abc", b"\x00\x00" + b"/export?token=a.b",
                b"\x01\x00" + b"/../etc/passwd", b"\x00\x01\x00"]

    return one, seeds


# ---------------------------------------------------------------------------
# The child: one target under libFuzzer


#: Tokens libFuzzer splices into inputs (``-dict``): the words of each format, and
#: characters that are digits to ``str.isdigit`` but not to ``int`` (a class of bug).
DICTIONARIES = {
    "rtsp": ["RTSP/1.0", "\r\n", "\r\n\r\n", "\n\n", "CSeq: ", "Content-Length: ",
             "Transport: ", "RTP/AVP/TCP;unicast;interleaved=", "client_port=", "Session: ",
             ";timeout=", "Range: npt=", "Authorization: Digest ", "username=\"alice\"",
             "realm=\"vss\"", "nonce=\"NONCE\"", "response=\"", "qop=auth", "Basic ",
             "WWW-Authenticate: ", "$", "\xc2\xb2", "\xef\xbc\x99", "\xd9\xa3"],
    "sdp": ["\r\n", "m=video 0 RTP/AVP 96", "m=audio 0 RTP/AVP 97", "a=rtpmap:96 ",
            "a=rtpmap:97 ", "a=fmtp:96 ", "a=fmtp:97 ", "H264/90000", "H265/90000",
            "MPEG4-GENERIC/", "packetization-mode=", "sprop-parameter-sets=",
            "sprop-max-don-diff=", "sprop-vps=", "mode=AAC-hbr", "sizelength=", "indexlength=",
            "indexdeltalength=", "config=", "a=control:", "c=IN IP4 ", "\xc2\xb2",
            "\xef\xbc\x99", "\xd9\xa3"],
    "export": ["/export", "?token=", "&token=", "%2e", "%2f", "%00", "..", "//", "\\", "=",
               "&", "Host: ", "\r\n", "Transfer-Encoding: chunked", "Content-Length: "],
}


def write_dictionary(name, path):
    """The tokens of ``name`` in libFuzzer's dictionary format (each token is a str whose
    code points are its bytes)."""
    with open(path, "w") as f:
        for token in DICTIONARIES[name]:
            escaped = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}"
                              for b in token.encode("latin-1"))
            f.write(f'"{escaped}"\n')


def run_one(name, libfuzzer_args):
    import atheris

    one, seeds = globals()[f"target_{name}"]()
    corpus = [a for a in libfuzzer_args if not a.startswith("-")]
    if corpus and os.path.isdir(corpus[0]) and not os.listdir(corpus[0]):
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus[0], f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


# ---------------------------------------------------------------------------
# The driver

DONE = re.compile(r"Done (\d+) runs in (\d+) second")
RSS = re.compile(r"rss: (\d+)Mb")
EXECS = re.compile(r"^#(\d+)\s", re.M)


def fuzz(name, runs, seconds, rss_limit_mb, out):
    corpus = os.path.join(out, f"corpus-{name}")
    os.makedirs(corpus, exist_ok=True)
    args = [sys.executable, os.path.abspath(__file__), "--one", name,
            f"-runs={runs}", f"-rss_limit_mb={rss_limit_mb}", "-print_final_stats=1",
            f"-artifact_prefix={out}{os.sep}{name}-", "-max_len=4096"]
    if seconds:
        args.append(f"-max_total_time={int(seconds)}")
    if name == "node":  # structured input: let it be long from the start
        args.append("-len_control=0")
    if name in DICTIONARIES:
        path = os.path.join(out, f"{name}.dict")
        write_dictionary(name, path)
        args.append(f"-dict={path}")
    args.append(corpus)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    output = proc.communicate()[0].decode("utf-8", "replace")
    wall = time.monotonic() - started
    done = DONE.findall(output)
    execs = [int(x) for x in EXECS.findall(output)]
    inputs = int(done[-1][0]) if done else (max(execs) if execs else 0)
    rss = max([int(x) for x in RSS.findall(output)] or [0])
    crashed = proc.returncode != 0
    return {"target": name, "inputs": inputs, "seconds": round(wall, 1),
            "inputs_per_s": round(inputs / wall) if wall else 0, "rss_mb": rss,
            "ok": not crashed, "returncode": proc.returncode,
            "output": output if crashed else output[-4000:]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:
        return run_one(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help=f"{', '.join(TARGETS)} or all")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--seconds", type=float, default=0, help="time limit per target")
    ap.add_argument("--rss-limit-mb", type=int, default=1024)
    ap.add_argument("--out", help="corpus and crash files (default: a temporary directory)")
    ap.add_argument("--verbose", action="store_true", help="print libFuzzer's output")
    opts = ap.parse_args(argv)
    names = list(TARGETS) if opts.targets == ["all"] else opts.targets
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    out = opts.out or tempfile.mkdtemp(prefix="vss-fuzz-")
    os.makedirs(out, exist_ok=True)
    print(f"# fuzz: {len(names)} target(s), runs={opts.runs} seconds={opts.seconds or '-'} "
          f"rss limit {opts.rss_limit_mb} MB, python {sys.version.split()[0]}, out {out}")
    print(f"{'target':<12}{'inputs':>12}{'seconds':>10}{'inputs/s':>10}{'peak RSS':>10}  result")
    failed = False
    for name in names:
        r = fuzz(name, opts.runs, opts.seconds, opts.rss_limit_mb, out)
        result = "ok" if r["ok"] else f"CRASH (exit {r['returncode']})"
        print(f"{name:<12}{r['inputs']:>12,}{r['seconds']:>10}{r['inputs_per_s']:>10,}"
              f"{r['rss_mb']:>8} MB  {result}", flush=True)
        if opts.verbose or not r["ok"]:
            print(r["output"][-6000:])
        failed = failed or not r["ok"]
    if not opts.out and not failed:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
