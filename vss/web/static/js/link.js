// The CU link of the page: docs/protocol.md over a WebSocket (/ws/cu, subprotocol
// vss.cu.v1): HELLO, SCRAM login, REGISTER, then requests with their own txids,
// STATE_CHANGE, EVENT_NOTIFY and WALL_NOTIFY notifications, keepalives, BYE.

import { CODES, FLAG_ERROR, FLAG_NOTIFY, FLAG_RESPONSE, FrameReader, T, decode, encode, frame } from "./wire.js";
import { nonce, prove, sameBytes } from "./scram.js";

export class LinkError extends Error {
  constructor(code, message) {
    super(message || CODES[code] || `error 0x${code.toString(16)}`);
    this.code = code;
    this.codeName = CODES[code] || `0x${code.toString(16)}`;
  }
}

export class Link {
  constructor(url, { onNotify = () => {}, onEvent = () => {}, onClosed = () => {},
                    onWall = () => {}, kind = undefined } = {}) {
    this.url = url;
    this.kind = kind;       // CuKind at REGISTER (the wall page: TVWALL)
    this.onWall = onWall;   // WALL_NOTIFY
    this.onNotify = onNotify;
    this.onEvent = onEvent;
    this.onClosed = onClosed;
    this.pending = new Map();
    this.nextTxid = 1;
    this.reader = new FrameReader();
    this.bye = null;
    this.closed = false;
    this.keepalive = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, "vss.cu.v1");
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => resolve(this);
      ws.onerror = () => reject(new Error("CONNECT_FAILED"));
      ws.onmessage = (ev) => this.received(new Uint8Array(ev.data));
      ws.onclose = (ev) => this.lost(ev);
    });
  }

  received(bytes) {
    let frames;
    try { frames = this.reader.feed(bytes); } catch (e) { this.ws.close(); return; }
    for (const f of frames) {
      if (f.flags & FLAG_RESPONSE) {
        const p = this.pending.get(f.txid);
        if (!p) continue;
        this.pending.delete(f.txid);
        if (f.flags & FLAG_ERROR) {
          let message = "";
          try { message = decode.error(f.body).message; } catch (e) { /* keep the code */ }
          p.reject(new LinkError(f.status, message));
        } else {
          try { p.resolve(p.decoder(f.body)); } catch (e) { p.reject(e); }
        }
      } else if (f.type === T.BYE) {
        try { this.bye = decode.bye(f.body); } catch (e) { this.bye = { reason: 0, message: "" }; }
      } else if (f.type === T.STATE_CHANGE) {
        try { this.onNotify(decode.stateChange(f.body)); } catch (e) { /* skipped */ }
      } else if (f.type === T.WALL_NOTIFY) {
        let state = null;
        try { state = decode.wallState(f.body); } catch (e) { /* a bad body is skipped */ }
        if (state) try { this.onWall(state); } catch (e) { console.error(e); }
      } else if (f.type === T.EVENT_NOTIFY) {
        let note = null;
        try { note = decode.eventNotify(f.body); } catch (e) { /* a bad body is skipped */ }
        if (note) try { this.onEvent(note); } catch (e) { console.error(e); }
      } else if (!(f.flags & FLAG_NOTIFY) && f.type === T.KEEPALIVE) {
        this.ws.send(frame(T.KEEPALIVE, FLAG_RESPONSE, f.txid, encode.empty()));
      }
    }
  }

  lost(ev) {
    this.closed = true;
    clearInterval(this.keepalive);
    for (const p of this.pending.values()) p.reject(new LinkError(0x0209, "the link closed"));
    this.pending.clear();
    this.onClosed(this.bye, ev);
  }

  request(type, body, decoder, timeoutMs = 15000) {
    if (this.closed) return Promise.reject(new LinkError(0x0209, "the link closed"));
    const txid = this.nextTxid;
    this.nextTxid = this.nextTxid >= 0x7fffffff ? 1 : this.nextTxid + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(txid)) reject(new LinkError(0x0304, "no answer from the node"));
      }, timeoutMs);
      this.pending.set(txid, {
        decoder,
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.ws.send(frame(type, 0, txid, body));
    });
  }

  // HELLO, AUTH_START/AUTH_PROOF (SCRAM in the page), REGISTER. Resolves {node_id, session_id}.
  async login(user, password) {
    const hello = await this.request(T.HELLO, encode.hello("vss-web/1"), decode.helloAck);
    const cnonce = nonce();
    const challenge = await this.request(T.AUTH_START, encode.authStart(user, cnonce), decode.challenge);
    const { proof, serverSignature } = await prove(user, password, cnonce, challenge);
    const ok = await this.request(T.AUTH_PROOF, encode.authProof(proof), decode.authOk);
    if (!sameBytes(ok.server_signature, serverSignature)) {
      this.ws.close();
      throw new LinkError(0x0201, "the node could not prove who it is");
    }
    const reg = await this.request(T.REGISTER, encode.register(navigator.userAgent.slice(0, 60), this.kind), decode.registered);
    const every = Math.max(1, reg.keepalive) * 1000;
    this.keepalive = setInterval(() => {
      this.request(T.KEEPALIVE, encode.empty(), decode.empty).catch(() => {});
    }, every);
    return { node_id: hello.node_id || reg.node_id, session_id: ok.session_id, keepalive: reg.keepalive };
  }

  close(message = "logged out") {
    if (this.closed) return;
    try { this.ws.send(frame(T.BYE, FLAG_NOTIFY, 0, encode.bye(0x0209, message))); } catch (e) { /* gone */ }
    this.ws.close(1000);
  }

  async devices() {
    const out = [];
    let cursor = "";
    do {
      const page = await this.request(T.DEVICE_LIST, encode.deviceList(cursor, 1000), decode.devices);
      out.push(...page.devices);
      cursor = page.next_cursor;
    } while (cursor);
    return out;
  }

  ptz(p) { return this.request(T.PTZ_CONTROL, encode.ptz(p), decode.ptzStatus); }
  preset(p) { return this.request(T.PRESET, encode.preset(p), decode.presets); }
  mediaOpen(p) { return this.request(T.MEDIA_OPEN, encode.mediaOpen(p), decode.mediaUrl, 30000); }
  mediaClose(session) { return this.request(T.MEDIA_CLOSE, encode.mediaClose(session), decode.empty); }
  recordings(p) { return this.request(T.RECORD_QUERY, encode.recordQuery(p), decode.recordings, 20000); }
  eventSubscribe(p) { return this.request(T.EVENT_SUBSCRIBE, encode.eventSubscribe(p), decode.eventSubscribed); }
  eventQuery(p) { return this.request(T.EVENT_QUERY, encode.eventQuery(p), decode.events, 20000); }
  wallDescribe(p) { return this.request(T.WALL_DESCRIBE, encode.wallDescribe(p), decode.wallState); }
  wallAssign(p) { return this.request(T.WALL_ASSIGN, encode.wallAssign(p), decode.wallState); }
  wallTour(p) { return this.request(T.WALL_TOUR, encode.wallTour(p), decode.wallState); }
  wallReport(tiles) { return this.request(T.WALL_REPORT, encode.wallReport(tiles), decode.empty); }
  eventAck(p) { return this.request(T.EVENT_ACK, encode.eventAck(p), decode.eventAcked); }
}
