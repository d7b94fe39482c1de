// One video tile's player: the node's media WebSocket (/media/<stream path>?token=,
// subprotocol vss.media.v1) into Media Source Extensions. Messages (docs/protocol.md,
// "Browser media"): "I" codec + init segment, "F" flags + ingest ms + decode time +
// moof/mdat of one picture, and JSON control messages. Each presented picture is
// looked up with requestVideoFrameCallback: its ingest time gives the live latency,
// and in a playback its footage time (the wall-clock time it was recorded).

const TIMESCALE = 90000;
const LIVE_BEHIND = 0.6;     // seconds behind the newest picture before jumping ahead
const LIVE_AHEAD_HIGH = 0.2; // more buffered ahead than this: play faster ...
const LIVE_AHEAD_LOW = 0.1;  // ... until no more than this
const LIVE_CATCH_UP = 1.15;  // the rate that catches up
const KEEP_SECONDS = 20;     // buffered video kept behind the playhead
const MAX_QUEUE = 120;       // appends waiting: more, and the player skips to a keyframe

export class Player {
  constructor(video, { onStatus = () => {}, onFrame = () => {}, onControl = () => {} } = {}) {
    this.video = video;
    this.onStatus = onStatus;
    this.onFrame = onFrame;
    this.onControl = onControl;
    this.queue = [];
    this.times = new Map();   // presentation ms -> {ingest, footage}
    this.frames = 0;
    this.closed = false;
    this.live = true;
    this.anchor = null;       // playback: {pending: true} until the next keyframe, then {dts, at}
    this.offset = null;       // seconds added to decode times (timestampOffset)
    this.codec = null;
    this.skipping = false;
    this.latency = [];
    this.lastFootage = null;
    this.marks = { start: performance.now() };  // when each step of the start happened
  }

  mark(name) { if (!(name in this.marks)) this.marks[name] = performance.now(); }

  // url: ws(s) URL of the media; live: jump to the newest picture; origin: a playback's
  // footage time of npt 0.
  open(url, { live = true, origin = null, speed = 1 } = {}) {
    this.live = live;
    this.origin = origin;
    this.speed = live ? 1 : speed;
    this.source = new MediaSource();
    this.video.src = URL.createObjectURL(this.source);
    this.video.defaultPlaybackRate = this.speed;
    this.video.playbackRate = this.speed;
    this.video.muted = true;
    this.video.playsInline = true;
    this.source.addEventListener("sourceopen", () => this.connect(url), { once: true });
    this.watchFrames();
    this.onStatus("connecting");
  }

  connect(url) {
    this.mark("sourceopen");
    const ws = new WebSocket(url, "vss.media.v1");
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.mark("wsopen");
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") this.control(JSON.parse(ev.data));
      else this.media(new Uint8Array(ev.data));
    };
    ws.onclose = (ev) => {
      if (!this.closed) this.onStatus(this.error ? "error" : "ended", this.error || ev.reason || "the stream ended");
    };
    ws.onerror = () => { this.error = this.error || "the media connection failed"; };
  }

  send(obj) { if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj)); }

  play(at = null) {
    if (!this.live) this.anchor = { pending: true, at: null, key: null };
    this.userPaused = false;
    const msg = { op: "play" };
    if (at != null) msg.at = at;
    if (!this.live && this.speed !== 1) msg.speed = this.speed;
    this.send(msg);
  }
  pause() { this.userPaused = true; this.send({ op: "pause" }); this.video.pause(); }
  // A playback's speed: the node sends the footage that much faster (its Scale), the
  // video plays its pictures (dated as recorded) at that rate.
  setSpeed(speed) {
    if (this.live) return;
    this.speed = speed;
    this.video.defaultPlaybackRate = speed;
    this.video.playbackRate = speed;
    if (!this.userPaused) this.send({ op: "play", speed });
  }

  control(msg) {
    if (msg.type === "error") { this.error = msg.message; this.onStatus("error", msg.message); return; }
    if (msg.type === "playing" && !this.live && this.anchor && this.anchor.pending
        && this.origin != null && msg.npt != null) {
      const at = this.origin + Math.round(msg.npt * 1000);
      const key = this.anchor.key;
      if (!key) {
        this.anchor.at = at;  // the playback's first keyframe is still to come
      } else {
        // the keyframe came before the answer (a relayed playback answers late):
        // it is the asked position; date it and what followed it
        this.anchor = { dts: key.dts, at };
        for (const entry of this.times.values()) {
          if (entry.footage == null && entry.dts >= key.dts) entry.footage = this.footageOf(entry.dts);
        }
        this.video.currentTime = key.t;
      }
    }
    this.onControl(msg);
  }

  media(bytes) {
    const kind = bytes[0];
    if (kind === 0x49) {  // "I"
      const n = bytes[1];
      const codec = new TextDecoder().decode(bytes.subarray(2, 2 + n));
      const init = bytes.subarray(2 + n);
      const type = `video/mp4; codecs="${codec}"`;
      if (!MediaSource.isTypeSupported(type)) {
        this.error = `this browser cannot play ${codec}`;
        this.onStatus("error", this.error);
        this.ws.close();
        return;
      }
      if (!this.buffer) {
        this.buffer = this.source.addSourceBuffer(type);
        this.buffer.mode = "segments";
        this.buffer.addEventListener("updateend", () => this.pump());
      } else if (codec !== this.codec && this.buffer.changeType) {
        this.queue.push({ changeType: type });
      }
      this.codec = codec;
      this.queue.push({ data: init, init: true });
      this.pump();
      return;
    }
    if (kind !== 0x46 || !this.buffer) return;  // "F"
    this.mark("fragment");
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const key = (bytes[1] & 1) === 1;
    const ingest = Number(v.getBigUint64(4));
    const dts = Number(v.getBigUint64(12));
    if (this.skipping && !key) return;
    this.skipping = false;
    if (this.queue.length > MAX_QUEUE) {  // the page cannot keep up: to the next keyframe
      this.queue = this.queue.filter((q) => q.init || q.changeType || q.offset != null);
      this.skipping = !key;
      if (!key) return;
    }
    if (this.offset == null) {
      // set between appends (the init segment's may still be running: setting it then
      // throws, and the keyframe would be lost)
      this.offset = -dts / TIMESCALE;
      this.queue.push({ offset: this.offset });
    }
    let footage = null;
    const t = dts / TIMESCALE + this.offset;
    if (!this.live && this.anchor) {
      if (this.anchor.pending && key) {
        if (this.anchor.at != null) this.anchor = { dts, at: this.anchor.at, jump: true };
        else this.anchor.key = { dts, t };  // dated when the answer comes
      }
      if (!this.anchor.pending) footage = this.footageOf(dts);
    }
    this.times.set(Math.round(t * 1000), { ingest, footage, dts });
    if (this.times.size > 2000) {
      const old = [...this.times.keys()].slice(0, 1000);
      for (const k of old) this.times.delete(k);
    }
    this.queue.push({ data: bytes.subarray(20), t, jump: this.anchor && this.anchor.jump });
    if (this.anchor && this.anchor.jump) this.anchor.jump = false;
    this.pump();
  }

  footageOf(dts) { return this.anchor.at + Math.round((dts - this.anchor.dts) / 90); }

  pump() {
    const b = this.buffer;
    if (!b || b.updating || this.closed) return;
    const next = this.queue.shift();
    if (!next) { this.trim(); return; }
    if (next.data && !next.init) this.mark("append");
    try {
      if (next.changeType) { b.changeType(next.changeType); this.pump(); return; }
      if (next.offset != null) { b.timestampOffset = next.offset; this.pump(); return; }
      b.appendBuffer(next.data);
    } catch (e) {
      if (e.name === "QuotaExceededError") { this.queue.unshift(next); this.trim(true); return; }
      this.error = `the video could not be played (${e.name})`;
      this.onStatus("error", this.error);
      return;
    }
    const video = this.video;
    if (next.jump) video.currentTime = next.t;
    if (video.paused && !this.userPaused && b.buffered.length) {
      if (video.currentTime < b.buffered.start(0)) video.currentTime = b.buffered.start(0);
      video.play().catch(() => {});
    }
    if (this.live && b.buffered.length) {
      // live: far behind the newest picture, jump; a little behind, play a little
      // faster until close again (the browser keeps some pictures ahead: the latency)
      const end = b.buffered.end(b.buffered.length - 1);
      const behind = end - video.currentTime;
      if (behind > LIVE_BEHIND) {
        video.currentTime = Math.max(b.buffered.start(b.buffered.length - 1), end - 0.04);
      } else {
        const rate = behind > LIVE_AHEAD_HIGH ? LIVE_CATCH_UP : behind < LIVE_AHEAD_LOW ? 1 : video.playbackRate;
        if (video.playbackRate !== rate) video.playbackRate = rate;
      }
    }
  }

  trim(force = false) {
    const b = this.buffer;
    if (!b || b.updating || !b.buffered.length) return;
    const start = b.buffered.start(0);
    const keep = this.video.currentTime - (force ? 2 : KEEP_SECONDS);
    if (keep - start > 5 || (force && keep > start)) b.remove(start, keep);
  }

  watchFrames() {
    const video = this.video;
    if (!video.requestVideoFrameCallback) return;
    const each = (now, meta) => {
      if (this.closed) return;
      this.frames += 1;
      const found = this.times.get(Math.round(meta.mediaTime * 1000));
      let latency = null;
      if (found) {
        latency = performance.timeOrigin + meta.presentationTime - found.ingest;
        if (this.live) this.latency.push(latency);
        if (found.footage != null) this.lastFootage = found.footage;
      }
      if (this.frames === 1) { this.mark("frame"); this.onStatus("playing"); }
      this.onFrame({ frames: this.frames, mediaTime: meta.mediaTime, latency, footage: found ? found.footage : null,
                     width: meta.width, height: meta.height });
      video.requestVideoFrameCallback(each);
    };
    video.requestVideoFrameCallback(each);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
    try { if (this.source.readyState === "open") this.source.endOfStream(); } catch (e) { /* closing */ }
    this.video.removeAttribute("src");
    this.video.load();
  }
}
