// The signalling protocol of docs/protocol.md in the page: frames (section 2), field
// encoding (3), bodies with their extension block (4), for the messages a CU sends and
// receives. Big-endian throughout; timestamps are u64 milliseconds (safe as Numbers).

export const VERSION = 1;
export const FLAG_RESPONSE = 0x01, FLAG_ERROR = 0x02, FLAG_NOTIFY = 0x04;
export const HEADER = 16;

export const T = {
  HELLO: 0x0001, ERROR: 0x0002, KEEPALIVE: 0x0003, BYE: 0x0004,
  AUTH_START: 0x0010, AUTH_PROOF: 0x0011, REGISTER: 0x0012,
  PTZ_CONTROL: 0x0100, PRESET: 0x0102,
  MEDIA_OPEN: 0x0130, MEDIA_CLOSE: 0x0131, STATE_CHANGE: 0x0140, DEVICE_LIST: 0x0150,
  RECORD_QUERY: 0x0170,
  EVENT_SUBSCRIBE: 0x0191, EVENT_UNSUBSCRIBE: 0x0192, EVENT_NOTIFY: 0x0193, EVENT_ACK: 0x0194,
  EVENT_QUERY: 0x0195,
  WALL_DESCRIBE: 0x01a0, WALL_ASSIGN: 0x01a1, WALL_TOUR: 0x01a2, WALL_STATE: 0x01a3,
  WALL_NOTIFY: 0x01a4, WALL_REPORT: 0x01a5,
};

export const CODES = {
  0x0201: "AUTH_FAILED", 0x0202: "NOT_AUTHENTICATED", 0x0203: "AUTH_THROTTLED",
  0x0204: "UNEXPECTED_MESSAGE", 0x0206: "TOO_MANY_IN_FLIGHT", 0x0207: "KEEPALIVE_TIMEOUT",
  0x0208: "SESSION_REPLACED", 0x0209: "SESSION_CLOSED", 0x020a: "NO_COMMON_VERSION",
  0x0301: "UNKNOWN_DEVICE", 0x0302: "FORBIDDEN", 0x0303: "DEVICE_OFFLINE", 0x0304: "TIMEOUT",
  0x0305: "HOME_NODE_DOWN", 0x0306: "INVALID_ARGUMENT", 0x0307: "NOT_SUPPORTED",
  0x0308: "NOT_FOUND", 0x0309: "CONFLICT", 0x030b: "BUSY", 0x030c: "LIMIT_REACHED",
  0x020b: "NOT_READY", 0x0310: "WALL_OFFLINE", 0x0311: "NOT_A_WALL", 0xffff: "INTERNAL_ERROR",
};

export const ROLE_CU = 2, CU_WEB = 3, CU_TVWALL = 2;
export const PTZ = { CONTINUOUS: 1, ABSOLUTE: 2, RELATIVE: 3, STOP: 4 };
export const PRESET = { SET: 1, GOTO: 2, REMOVE: 3, LIST: 4 };
export const PURPOSE = { LIVE: 1, PLAYBACK: 2 };
export const ACTION = { VIEW: 1, PTZ: 2, CONFIG: 4, RECORD: 8 };
export const PHASE = ["PULSE", "START", "STOP"];  // EventPhase, by value
export const SEVERITY = ["INFO", "WARNING", "ALARM", "CRITICAL"];  // Severity, by value
export const CHANGE = { ONLINE: 1, OFFLINE: 2, CONFIG: 3, PTZ: 4, PRESET: 5, NAME: 6, ALARM: 7 };

const utf8 = new TextEncoder();
const utf8d = new TextDecoder("utf-8", { fatal: true });

export class Writer {
  constructor() { this.parts = []; this.size = 0; }
  raw(bytes) { this.parts.push(bytes); this.size += bytes.length; return this; }
  num(n, width, set) {
    const b = new Uint8Array(width);
    set(new DataView(b.buffer), n);
    return this.raw(b);
  }
  u8(n) { return this.num(n, 1, (v, x) => v.setUint8(0, x)); }
  u16(n) { return this.num(n, 2, (v, x) => v.setUint16(0, x)); }
  u32(n) { return this.num(n, 4, (v, x) => v.setUint32(0, x)); }
  u64(n) { return this.num(n, 8, (v, x) => v.setBigUint64(0, BigInt(Math.max(0, Math.floor(x))))); }
  f32(n) { return this.num(n, 4, (v, x) => v.setFloat32(0, x)); }
  bool(b) { return this.u8(b ? 1 : 0); }
  bytes(b) { return this.u16(b.length).raw(b); }
  str(s) { return this.bytes(utf8.encode(s)); }
  list(items, each) { this.u16(items.length); for (const i of items) each(this, i); return this; }
  ext() { return this.u16(0); }  // no extension records
  done() {
    const out = new Uint8Array(this.size);
    let i = 0;
    for (const p of this.parts) { out.set(p, i); i += p.length; }
    return out;
  }
}

export class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.i = 0;
  }
  need(n) { if (this.i + n > this.b.length) throw new Error("TRUNCATED_BODY"); }
  u8() { this.need(1); return this.v.getUint8(this.i++); }
  u16() { this.need(2); const x = this.v.getUint16(this.i); this.i += 2; return x; }
  u32() { this.need(4); const x = this.v.getUint32(this.i); this.i += 4; return x; }
  u64() { this.need(8); const x = Number(this.v.getBigUint64(this.i)); this.i += 8; return x; }
  f32() { this.need(4); const x = this.v.getFloat32(this.i); this.i += 4; return x; }
  bool() { return this.u8() !== 0; }
  bytes() { const n = this.u16(); this.need(n); const x = this.b.slice(this.i, this.i + n); this.i += n; return x; }
  str() { return utf8d.decode(this.bytes()); }
  list(each) { const n = this.u16(); const out = []; for (let k = 0; k < n; k++) out.push(each(this)); return out; }
  ext() {  // skip the records of the extension block, keep them raw
    return this.list((r) => { const tag = r.u16(); const n = r.u16(); r.need(n); const value = r.b.slice(r.i, r.i + n); r.i += n; return { tag, value }; });
  }
  end() { if (this.i !== this.b.length) throw new Error("TRAILING_BYTES"); }
}

export function frame(type, flags, txid, body, status = 0) {
  const out = new Uint8Array(HEADER + body.length);
  const v = new DataView(out.buffer);
  out[0] = 0x56; out[1] = 0x53; out[2] = VERSION; out[3] = flags;
  v.setUint16(4, type); v.setUint16(6, status); v.setUint32(8, txid); v.setUint32(12, body.length);
  out.set(body, HEADER);
  return out;
}

// A stream of bytes in, whole frames out (the node sends one per message anyway).
export class FrameReader {
  constructor(maxBody = 1 << 20) { this.buf = new Uint8Array(0); this.maxBody = maxBody; }
  feed(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf); joined.set(bytes, this.buf.length);
    const frames = [];
    let i = 0;
    while (joined.length - i >= HEADER) {
      const v = new DataView(joined.buffer, i);
      if (joined[i] !== 0x56 || joined[i + 1] !== 0x53) throw new Error("BAD_MAGIC");
      const length = v.getUint32(12);
      if (length > this.maxBody) throw new Error("FRAME_TOO_LARGE");
      if (joined.length - i < HEADER + length) break;
      frames.push({ version: joined[i + 2], flags: joined[i + 3], type: v.getUint16(4),
                    status: v.getUint16(6), txid: v.getUint32(8),
                    body: joined.slice(i + HEADER, i + HEADER + length) });
      i += HEADER + length;
    }
    this.buf = joined.slice(i);
    return frames;
  }
}

// -- bodies a CU sends ------------------------------------------------------------------

const wTile = (w, t) => w.u16(t.x).u16(t.y).u16(t.width).u16(t.height);
const wTileState = (w, a) => w.u16(a.tile).str(a.device_id).u16(a.channel).u8(a.stream)
  .list(a.tour, (x, d) => x.str(d)).u16(a.dwell).u16(a.tour_index).u64(a.since)
  .u64(a.frames).u32(a.errors).str(a.last_error);

export const encode = {
  hello: (agent) => new Writer().u8(1).u8(1).u8(ROLE_CU).str(agent).list([], () => {}).ext().done(),
  authStart: (identity, nonce) => new Writer().str(identity).str("SCRAM-SHA-256").bytes(nonce).ext().done(),
  authProof: (proof) => new Writer().bytes(proof).ext().done(),
  register: (model, kind = CU_WEB) => new Writer().u8(kind).str(model).str("1").u16(0).list([], () => {}).ext().done(),
  empty: () => new Writer().ext().done(),
  bye: (reason, message) => new Writer().u16(reason).str(message).ext().done(),
  deviceList: (cursor, limit) => new Writer().str(cursor).u16(limit).ext().done(),
  ptz: (p) => new Writer().str(p.device).u16(p.channel || 0).u8(p.op).f32(p.pan || 0)
    .f32(p.tilt || 0).f32(p.zoom || 0).f32(p.speed ?? 0.5).u32(p.timeout_ms || 0).ext().done(),
  preset: (p) => new Writer().str(p.device).u16(p.channel || 0).u8(p.op).u16(p.preset || 0)
    .str(p.name || "").ext().done(),
  mediaOpen: (p) => new Writer().str(p.device).u16(p.channel || 0).u8(p.stream || 0)
    .u8(p.purpose).u64(p.start || 0).u8(1).ext().done(),
  mediaClose: (session) => new Writer().str(session).ext().done(),
  recordQuery: (p) => new Writer().str(p.device).u16(p.channel || 0).u8(p.stream || 0)
    .u64(p.from).u64(p.to).ext().done(),
  // EVENT_SUBSCRIBE: empty devices and groups mean every device the user may view
  eventSubscribe: (p) => new Writer().list(p.devices || [], (w, x) => w.str(x))
    .list(p.groups || [], (w, x) => w.str(x)).list(p.types || [], (w, x) => w.str(x))
    .u64(p.resume_after || 0).ext().done(),
  eventUnsubscribe: (subscription) => new Writer().u32(subscription).ext().done(),
  // EVENT_ACK and EVENT_QUERY: `username` is set by the node; a CU sends it empty
  eventAck: (p) => new Writer().str(p.node_id).u64(p.seq).str(p.device_id).str("")
    .str(p.comment || "").ext().done(),
  // WALL_DESCRIBE from the wall itself (wall_id ""): its layout and what it showed
  wallDescribe: (p) => new Writer().str("").u8(p.layout).list(p.tiles || [], wTile)
    .list(p.assignments || [], wTileState).ext().done(),
  wallAssign: (p) => new Writer().str(p.wall).u16(p.tile).str(p.device).u16(p.channel || 0)
    .u8(p.stream || 0).ext().done(),
  // WALL_TOUR: `devices` cycled every `dwell` seconds; none (dwell 0) stops the tour
  wallTour: (p) => new Writer().str(p.wall).u16(p.tile).list(p.devices, (w, d) => w.str(d))
    .u8(p.stream || 0).u16(p.dwell || 0).ext().done(),
  wallReport: (tiles) => new Writer().list(tiles, (w, t) => w.u16(t.tile).str(t.device_id)
    .u64(t.frames).u32(t.errors).str(t.last_error || "")).ext().done(),
  eventQuery: (p) => new Writer().str(p.device_id || "").str(p.type || "")
    .u64(p.from_time || 0).u64(p.to_time || 0).u16(p.limit || 0).str("").ext().done(),
};

// -- bodies a CU receives ---------------------------------------------------------------

function body(bytes, fields) {
  const r = new Reader(bytes);
  const out = fields(r);
  out.ext = r.ext();
  r.end();
  return out;
}

const kv = (r) => ({ key: r.str(), value: r.str() });
const eventRecord = (r) => ({ node_id: r.str(), seq: r.u64(), device_id: r.str(), channel: r.u16(),
                              type: r.str(), phase: r.u8(), severity: r.u8(), pu_time: r.u64(),
                              node_time: r.u64(), items: r.list(kv) });

const tile = (r) => ({ x: r.u16(), y: r.u16(), width: r.u16(), height: r.u16() });
const tileState = (r) => ({ tile: r.u16(), device_id: r.str(), channel: r.u16(), stream: r.u8(),
                            tour: r.list((x) => x.str()), dwell: r.u16(), tour_index: r.u16(),
                            since: r.u64(), frames: r.u64(), errors: r.u32(), last_error: r.str() });

export const decode = {
  wallState: (b) => body(b, (r) => ({ wall_id: r.str(), node_id: r.str(), kind: r.u8(), layout: r.u8(),
                                       tiles: r.list(tile), assignments: r.list(tileState), version: r.u32() })),
  error: (b) => body(b, (r) => ({ message: r.str() })),
  helloAck: (b) => body(b, (r) => ({ version: r.u8(), node_id: r.str(), agent: r.str(), features: r.list((x) => x.str()) })),
  challenge: (b) => body(b, (r) => ({ salt: r.bytes(), iterations: r.u32(), server_nonce: r.bytes() })),
  authOk: (b) => body(b, (r) => ({ server_signature: r.bytes(), session_id: r.str() })),
  registered: (b) => body(b, (r) => ({ node_id: r.str(), keepalive: r.u16(), server_time: r.u64() })),
  bye: (b) => body(b, (r) => ({ reason: r.u16(), message: r.str() })),
  devices: (b) => body(b, (r) => ({
    devices: r.list((x) => ({ device_id: x.str(), name: x.str(), kind: x.u8(), channels: x.u16(),
                              online: x.bool(), node_id: x.str(), actions: x.u8() })),
    next_cursor: r.str() })),
  ptzStatus: (b) => body(b, (r) => ({ pan: r.f32(), tilt: r.f32(), zoom: r.f32(), moving: r.bool() })),
  presets: (b) => body(b, (r) => ({ presets: r.list((x) => ({ preset: x.u16(), name: x.str(), pan: x.f32(), tilt: x.f32(), zoom: x.f32() })) })),
  mediaUrl: (b) => body(b, (r) => ({ url: r.str(), session_id: r.str(), expires: r.u64() })),
  empty: (b) => body(b, () => ({})),
  recordings: (b) => body(b, (r) => ({
    segments: r.list((x) => ({ start: x.u64(), end: x.u64(), bytes: x.u64(), node_id: x.str() })),
    gaps: r.list((x) => ({ start: x.u64(), end: x.u64() })),
    missing: r.list((x) => x.str()),
    exports: r.list((x) => ({ node_id: x.str(), url: x.str(), expires: x.u64() })),
    truncated: r.bool() })),
  eventSubscribed: (b) => body(b, (r) => ({ subscription: r.u32(), head: r.u64(), replayed: r.u32(), gap: r.bool() })),
  eventNotify: (b) => body(b, (r) => ({ feed_id: r.u64(), event: eventRecord(r) })),
  eventAcked: (b) => body(b, (r) => ({ node_id: r.str(), seq: r.u64(), acked_by: r.str(), acked_at: r.u64() })),
  events: (b) => body(b, (r) => ({
    events: r.list((x) => ({ event: eventRecord(x), acked_by: x.str(), acked_at: x.u64(), comment: x.str() })),
    truncated: r.bool() })),
  stateChange: (b) => body(b, (r) => ({ device_id: r.str(), channel: r.u16(), change: r.u8(), timestamp: r.u64(), items: r.list(kv) })),
};
