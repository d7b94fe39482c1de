"""
Just enough SDP (RFC 4566) for an RTSP relay: list the media of a publisher's SDP and
rewrite it for viewers with our own absolute control URLs. No Twisted here.
"""

from vss.rtsp.fanout import Track


def split(sdp):
    """(session lines, [media lines...]) of an SDP text."""
    session, media = [], []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def tracks(sdp):
    """The ``Track`` list of an SDP, or raise ValueError."""
    _, media = split(sdp)
    if not media:
        raise ValueError("SDP without media")
    out = []
    for i, lines in enumerate(media):
        parts = lines[0][2:].split()
        if len(parts) < 4:
            raise ValueError(f"bad media line {lines[0]!r}")
        kind, fmt = parts[0], parts[3]
        encoding = {"0": "PCMU", "8": "PCMA", "26": "JPEG"}.get(fmt, "")
        for line in lines[1:]:
            if line.startswith(f"a=rtpmap:{fmt} "):
                encoding = line.split(" ", 1)[1].split("/")[0]
        out.append(Track(i, kind, encoding or "unknown"))
    return out


def session_control(sdp):
    """The session-level a=control value, or None."""
    session, _ = split(sdp)
    for line in session:
        if line.startswith("a=control:"):
            return line[len("a=control:"):].strip()
    return None


def controls(sdp):
    """The a=control value of each media (None where absent)."""
    _, media = split(sdp)
    out = []
    for lines in media:
        value = None
        for line in lines[1:]:
            if line.startswith("a=control:"):
                value = line[len("a=control:"):].strip()
        out.append(value)
    return out


def npt_length(sdp):
    """Seconds of a session-level ``a=range:npt=0-<end>`` with a finite end, else None."""
    session, _ = split(sdp)
    for line in session:
        if line.startswith("a=range:npt="):
            start, _, end = line[len("a=range:npt="):].partition("-")
            try:
                if float(start) == 0 and end.strip():
                    length = float(end)
                    return length if 0 < length < 10 * 366 * 86400 else None
            except ValueError:
                return None
    return None


def for_viewers(sdp, base_url, query="", duration=None):
    """The publisher's SDP with connection data neutralised and each media's control
    replaced by ``<base_url>/trackID=<i>[?query]`` (absolute, so clients need no URL
    resolution and keep the token). The session's range is ``npt=0-`` (live), or
    ``npt=0-<duration>`` for a stream of known length (a playback: ``duration``, else the
    publisher's own finite range, as a relayed playback's origin gives it)."""
    session, media = split(sdp)
    q = f"?{query}" if query else ""
    if duration is None:
        duration = npt_length(sdp)
    out = []
    for line in session:
        if line.startswith("a=control:") or line.startswith("a=range:"):
            continue
        if line.startswith("c="):
            line = "c=IN IP4 0.0.0.0"
        out.append(line)
    if not any(line.startswith("c=") for line in out):
        out.append("c=IN IP4 0.0.0.0")
    out.append(f"a=range:npt=0-{duration:.3f}" if duration else "a=range:npt=0-")
    for i, lines in enumerate(media):
        m = lines[0].split()
        if len(m) >= 2:
            m[1] = "0"
        out.append(" ".join(m))
        for line in lines[1:]:
            if line.startswith("a=control:") or line.startswith("c="):
                continue
            out.append(line)
        out.append(f"a=control:{base_url}/trackID={i}{q}")
    return "\r\n".join(out) + "\r\n"
