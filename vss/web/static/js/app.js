// The browser client: login, device tree with pushed online state, live view in a grid
// of 1/4/9/16, PTZ pad and presets, recordings timeline with playback and export, the
// recent events of the cameras one may view (pushed live, acknowledged with a comment),
// the selected camera sent to a tile of a TV wall or decoder on any node.
// Plain ES modules, no framework, nothing fetched from anywhere but this node.

import { Link } from "./link.js";
import { Player } from "./player.js";
import { ACTION, CHANGE, PHASE, PRESET, PTZ, PURPOSE, SEVERITY } from "./wire.js";

const $ = (id) => document.getElementById(id);
const wsBase = () => `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;

const state = {
  link: null,
  user: "",
  devices: new Map(),
  layout: 1,
  tiles: [],
  selected: 0,
  view: { span: 6 * 3600000, end: Date.now() + 6 * 3600000 * 0.05 },
  recordings: null,
  selection: null,
  events: new Map(),  // "node/seq" -> {event, feed_id, acked_by, acked_at, comment}
  feed: null,         // {node, user, last}: the last feed id seen, to resume after a reconnect
  ackDrafts: new Map(),
};
window.vss = state;  // read by the tests and by operators at the console

// -- messages a person can act on ------------------------------------------------------

const LOGIN_MESSAGES = {
  AUTH_FAILED: "Wrong user name or password.",
  AUTH_THROTTLED: "Too many failed attempts from this address. Wait a minute and try again.",
  NOT_READY: "The node is starting. Try again in a few seconds.",
  INSECURE_CONTEXT: "This page must be opened over HTTPS (or on the node's own machine) to log in securely.",
  CONNECT_FAILED: "The node cannot be reached. Check the address and that the node is running.",
};

const SESSION_MESSAGES = {
  SESSION_CLOSED: "Your session was ended by the node",
  SESSION_REPLACED: "You logged in somewhere else",
  KEEPALIVE_TIMEOUT: "Your session expired (no contact with the node for too long)",
  NOT_AUTHENTICATED: "Your session expired before the login finished",
};

function explain(err) {
  const name = err.codeName || err.message;
  if (name === "FORBIDDEN") return "You do not have access to this camera.";
  if (name === "DEVICE_OFFLINE") return "The camera is offline.";
  if (name === "UNKNOWN_DEVICE") return "This camera no longer exists.";
  if (name === "HOME_NODE_DOWN") return "The node this camera is on cannot be reached.";
  if (name === "NOT_FOUND") return err.message || "Nothing was recorded there.";
  if (name === "TIMEOUT") return "The camera did not answer in time.";
  return err.message || String(err);
}

function notice(text, kind = "error") {
  const n = $("notice");
  n.textContent = text;
  n.className = `notice ${kind}`;
  n.hidden = !text;
  clearTimeout(notice.timer);
  if (text && kind !== "fatal") notice.timer = setTimeout(() => { n.hidden = true; }, 8000);
}

// -- login -----------------------------------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  const user = $("user").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  const button = $("login-button");
  error.hidden = true;
  button.disabled = true;
  button.textContent = "Signing in…";
  const link = new Link(`${wsBase()}/ws/cu`, { onNotify: stateChanged, onEvent: eventNotified, onClosed: sessionEnded });
  try {
    await link.open();
    const session = await link.login(user, password);
    state.link = link;
    state.user = user;
    state.node = session.node_id;
    $("password").value = "";
    await enterApp();
  } catch (e) {
    link.onClosed = () => {};
    if (!link.closed && link.ws) link.ws.close();
    error.textContent = LOGIN_MESSAGES[e.codeName] || LOGIN_MESSAGES[e.message] || `Login failed: ${explain(e)}`;
    error.hidden = false;
    document.body.dataset.state = "login-failed";
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

function sessionEnded(bye) {
  for (const tile of state.tiles) stopTile(tile);
  const reason = bye && SESSION_MESSAGES[codeName(bye.reason)];
  const text = reason
    ? `${reason}${bye.message ? ` (${bye.message})` : ""}. Please sign in again.`
    : "The connection to the node was lost. Please sign in again.";
  state.link = null;
  $("app").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = text;
  error.hidden = false;
  document.body.dataset.state = "session-ended";
}

function codeName(code) {
  return { 0x0209: "SESSION_CLOSED", 0x0208: "SESSION_REPLACED", 0x0207: "KEEPALIVE_TIMEOUT",
           0x0202: "NOT_AUTHENTICATED" }[code];
}

function logout() {
  for (const tile of state.tiles) stopTile(tile);
  const link = state.link;
  state.link = null;
  if (link) { link.onClosed = () => {}; link.close(); }
  state.events.clear();
  state.ackDrafts.clear();
  delete $("event-list").dataset.ready;
  renderEvents();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = true;
  document.body.dataset.state = "login";
}

// -- devices ---------------------------------------------------------------------------

async function enterApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("who").textContent = state.user;
  $("node-id").textContent = `node ${state.node}`;
  setLayout(window.innerWidth < 700 ? 1 : state.layout);
  const devices = await state.link.devices();
  state.devices = new Map(devices.map((d) => [d.device_id, d]));
  renderDevices();
  document.body.dataset.state = "ready";
  startEvents();
}

function renderDevices() {
  const list = $("device-list");
  const filter = $("filter").value.trim().toLowerCase();
  list.textContent = "";
  const byNode = new Map();
  for (const d of [...state.devices.values()].sort((a, b) => a.device_id.localeCompare(b.device_id))) {
    if (filter && !`${d.device_id} ${d.name}`.toLowerCase().includes(filter)) continue;
    const node = d.node_id || state.node;
    if (!byNode.has(node)) byNode.set(node, []);
    byNode.get(node).push(d);
  }
  if (!byNode.size) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = state.devices.size ? "No camera matches." : "No camera is granted to you yet.";
    list.append(li);
  }
  for (const [node, devices] of byNode) {
    const head = document.createElement("li");
    head.className = "group";
    head.textContent = node === state.node ? `${node} (this node)` : node;
    list.append(head);
    for (const d of devices) {
      const li = document.createElement("li");
      li.className = `device ${d.online ? "online" : "offline"}`;
      li.dataset.device = d.device_id;
      li.tabIndex = 0;
      li.innerHTML = `<span class="dot"></span><span class="name"></span><span class="id"></span>`;
      li.querySelector(".name").textContent = d.name || d.device_id;
      li.querySelector(".id").textContent = d.online ? d.device_id : `${d.device_id} · offline`;
      li.title = d.online ? "Show live video" : "Offline";
      li.onclick = () => watch(d.device_id);
      li.onkeydown = (e) => { if (e.key === "Enter") watch(d.device_id); };
      list.append(li);
    }
  }
}

function stateChanged(change) {
  const d = state.devices.get(change.device_id);
  if (change.change === CHANGE.ONLINE || change.change === CHANGE.OFFLINE) {
    if (d) { d.online = change.change === CHANGE.ONLINE; renderDevices(); }
  } else if (change.change === CHANGE.PTZ) {
    const tile = state.tiles[state.selected];
    if (tile && tile.device === change.device_id) showPosition(Object.fromEntries(change.items.map((i) => [i.key, Number(i.value)])));
  }
}

// -- grid and tiles --------------------------------------------------------------------

function setLayout(n) {
  state.layout = n;
  for (const b of document.querySelectorAll(".layouts button")) b.classList.toggle("on", Number(b.dataset.n) === n);
  const grid = $("grid");
  grid.className = `grid n${n}`;
  while (state.tiles.length > n) stopTile(state.tiles.pop()) || grid.lastChild.remove();
  while (state.tiles.length < n) {
    const el = document.createElement("div");
    el.className = "tile empty";
    el.innerHTML = `<video muted playsinline></video><div class="label"></div><div class="status">Choose a camera</div><div class="badge"></div>`;
    const tile = { el, index: state.tiles.length, device: null, player: null, mode: "live" };
    el.onclick = () => select(tile.index);
    grid.append(el);
    state.tiles.push(tile);
  }
  select(Math.min(state.selected, n - 1));
}

function select(i) {
  state.selected = i;
  state.tiles.forEach((t, k) => t.el.classList.toggle("selected", k === i));
  const tile = state.tiles[i];
  const d = tile && tile.device ? state.devices.get(tile.device) : null;
  $("selected-label").textContent = d ? `${d.name || d.device_id} · ${tile.mode === "live" ? "live" : "playback"}` : "";
  showControls(d);
  loadTimeline();
}

function stopTile(tile) {
  if (tile.player) tile.player.close();
  if (tile.session && state.link) state.link.mediaClose(tile.session).catch(() => {});
  tile.player = null;
  tile.session = null;
}

function tileStatus(tile, status, message) {
  const el = tile.el;
  el.dataset.status = status;
  const box = el.querySelector(".status");
  box.textContent = status === "connecting" ? "Connecting…" : status === "playing" ? "" : message || status;
  box.className = `status ${status}`;
  el.classList.toggle("empty", !tile.device);
}

async function watch(deviceId, { at = null, tile = state.tiles[state.selected] } = {}) {
  const d = state.devices.get(deviceId);
  if (!d || !tile) return;
  stopTile(tile);
  tile.device = deviceId;
  tile.mode = at == null ? "live" : "playback";
  tile.el.dataset.device = deviceId;
  tile.el.dataset.mode = tile.mode;
  tile.el.dataset.frames = "0";
  delete tile.el.dataset.footage;
  tile.el.querySelector(".label").textContent = `${d.name || deviceId}${at == null ? "" : " · playback"}`;
  tile.el.querySelector(".badge").textContent = at == null ? "LIVE" : "";
  tile.el.querySelector(".badge").className = `badge ${at == null ? "live" : ""}`;
  select(tile.index);
  tileStatus(tile, "connecting");
  const opening = tile.opening = {};
  let media;
  try {
    media = await state.link.mediaOpen({ device: deviceId, purpose: at == null ? PURPOSE.LIVE : PURPOSE.PLAYBACK, start: at || 0 });
  } catch (e) {
    if (tile.opening !== opening) return;
    tileStatus(tile, "error", explain(e));
    tile.el.dataset.error = e.codeName || "ERROR";
    return;
  }
  if (tile.opening !== opening) return;
  const url = new URL(media.url.replace(/^rtsp/, "http"));
  const video = tile.el.querySelector("video");
  const origin = at == null ? null : playbackOrigin(at);
  const player = new Player(video, {
    onStatus: (s, m) => tileStatus(tile, s, m),
    onFrame: (f) => {
      tile.el.dataset.frames = String(f.frames);
      tile.el.dataset.mediaTime = f.mediaTime.toFixed(3);
      if (f.latency != null) tile.el.dataset.latency = String(Math.round(f.latency));
      if (f.footage != null) {
        tile.el.dataset.footage = String(f.footage);
        if (tile.index === state.selected) drawCursor(f.footage);
        tile.el.querySelector(".badge").textContent = clock(f.footage);
      }
    },
    onControl: (msg) => {
      if (msg.type === "refused") notice(msg.status === 457 ? "Nothing was recorded at that time." : `The playback refused: ${msg.message}`);
      if (msg.type === "paused") $("play-pause").textContent = "Play";
      if (msg.type === "playing") $("play-pause").textContent = "Pause";
    },
  });
  tile.player = player;
  tile.session = media.session_id;
  player.open(`${wsBase()}/media${url.pathname}?token=${encodeURIComponent(url.searchParams.get("token"))}`,
              { live: at == null, origin, speed: Number($("speed").value) || 1 });
  if (at != null) player.ws_ready = waitOpen(player).then(() => player.play());
  showControls(d);
}

state.watch = watch;  // the benchmark opens cameras through it

function waitOpen(player) {
  return new Promise((resolve) => {
    const check = () => (player.ws && player.ws.readyState === 1 ? resolve() : setTimeout(check, 20));
    check();
  });
}

// The footage time of a playback's npt 0: the asked time, or the start of the first
// recording after it (the node's rule, docs/protocol.md 9.3).
function playbackOrigin(at) {
  const segs = state.recordings ? state.recordings.segments : [];
  const next = segs.filter((s) => s.end > at).sort((a, b) => a.start - b.start)[0];
  return next ? Math.max(at, next.start) : at;
}

// -- PTZ -------------------------------------------------------------------------------

function showControls(d) {
  const can = d && d.actions & ACTION.PTZ;
  $("ptz-none").hidden = !!d;
  $("ptz").hidden = !can;
  $("ptz-denied").hidden = !d || !!can;
  if (can) loadPresets(d.device_id);
}

function showPosition(p) {
  const el = $("ptz-position");
  if (p.pan == null) return;
  el.textContent = `pan ${p.pan.toFixed(2)} · tilt ${p.tilt.toFixed(2)} · zoom ${p.zoom.toFixed(2)}`;
  el.dataset.pan = p.pan; el.dataset.tilt = p.tilt; el.dataset.zoom = p.zoom;
}

function current() {
  const tile = state.tiles[state.selected];
  return tile && tile.device;
}

async function ptz(op, pan = 0, tilt = 0, zoom = 0) {
  const device = current();
  if (!device) return;
  try {
    const s = await state.link.ptz({ device, op, pan, tilt, zoom, speed: 0.5, timeout_ms: op === PTZ.CONTINUOUS ? 800 : 0 });
    showPosition(s);
  } catch (e) { notice(explain(e)); }
}

async function loadPresets(device) {
  const ul = $("presets");
  ul.textContent = "";
  try {
    const { presets } = await state.link.preset({ device, op: PRESET.LIST });
    for (const p of presets) {
      const li = document.createElement("li");
      const go = document.createElement("button");
      go.className = "ghost";
      go.textContent = p.name || `Preset ${p.preset}`;
      go.onclick = async () => {
        try { await state.link.preset({ device, op: PRESET.GOTO, preset: p.preset }); ptz(PTZ.RELATIVE); } catch (e) { notice(explain(e)); }
      };
      li.append(go);
      ul.append(li);
    }
    if (!presets.length) ul.innerHTML = `<li class="muted">No presets yet.</li>`;
    state.presets = presets;
  } catch (e) {
    ul.innerHTML = `<li class="muted"></li>`;
    ul.firstChild.textContent = explain(e);
  }
}

async function savePreset(ev) {
  ev.preventDefault();
  const device = current();
  if (!device) return;
  const used = new Set((state.presets || []).map((p) => p.preset));
  let n = 1;
  while (used.has(n) && n < 255) n += 1;
  try {
    await state.link.preset({ device, op: PRESET.SET, preset: n, name: $("preset-name").value.trim() || `Preset ${n}` });
    $("preset-name").value = "";
    loadPresets(device);
  } catch (e) { notice(explain(e)); }
}

// -- timeline --------------------------------------------------------------------------

function clock(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

async function loadTimeline() {
  const device = current();
  const tl = $("timeline");
  const track = tl.querySelector(".track");
  const { span, end } = state.view;
  const start = end - span;
  $("day-label").textContent = `${new Date(start).toISOString().slice(0, 16).replace("T", " ")} – ${new Date(end).toISOString().slice(11, 16)} UTC`;
  drawTicks(start, end);
  track.textContent = "";
  state.recordings = null;
  const info = $("timeline-info");
  if (!device) { info.textContent = "Select a camera to see its recordings."; return; }
  info.textContent = "Loading recordings…";
  try {
    const r = await state.link.recordings({ device, from: start, to: end });
    if (current() !== device) return;
    state.recordings = r;
    for (const s of r.segments) bar(track, s.start, s.end, "segment", start, end);
    for (const g of r.gaps) bar(track, g.start, g.end, "gap", start, end);
    tl.dataset.segments = String(r.segments.length);
    const recorded = r.segments.reduce((n, s) => n + Math.min(s.end, end) - Math.max(s.start, start), 0);
    info.textContent = r.segments.length
      ? `${recorded < 120000 ? `${Math.round(recorded / 1000)} s` : `${Math.round(recorded / 60000)} min`} recorded in this span · click to play from a time, drag to select a range to export`
      : "Nothing recorded in this span.";
    if (r.missing.length) info.textContent += ` · not listed: ${r.missing.join(", ")}`;
  } catch (e) {
    info.textContent = explain(e);
  }
}

function bar(track, from, to, kind, start, end) {
  const el = document.createElement("div");
  el.className = kind;
  const a = Math.max(from, start), b = Math.min(to, end);
  if (b <= a) return;
  el.style.left = `${((a - start) / (end - start)) * 100}%`;
  el.style.width = `${Math.max(0.2, ((b - a) / (end - start)) * 100)}%`;
  track.append(el);
}

function drawTicks(start, end) {
  const ticks = $("timeline").querySelector(".ticks");
  ticks.textContent = "";
  const step = end - start <= 3600000 ? 600000 : end - start <= 21600000 ? 3600000 : 4 * 3600000;
  for (let t = Math.ceil(start / step) * step; t < end; t += step) {
    const el = document.createElement("span");
    el.style.left = `${((t - start) / (end - start)) * 100}%`;
    el.textContent = new Date(t).toISOString().slice(11, 16);
    ticks.append(el);
  }
}

function timeAt(ev) {
  const rect = $("timeline").getBoundingClientRect();
  const x = Math.min(Math.max(0, ev.clientX - rect.left), rect.width);
  const { span, end } = state.view;
  return Math.round(end - span + (x / rect.width) * span);
}

function drawCursor(ms) {
  const { span, end } = state.view;
  const el = $("timeline").querySelector(".cursor");
  const f = (ms - (end - span)) / span;
  el.hidden = f < 0 || f > 1;
  el.style.left = `${f * 100}%`;
}

function timelineEvents() {
  const tl = $("timeline");
  let down = null;
  tl.addEventListener("pointerdown", (ev) => { down = { t: timeAt(ev), x: ev.clientX }; tl.setPointerCapture(ev.pointerId); });
  tl.addEventListener("pointermove", (ev) => {
    if (!down || Math.abs(ev.clientX - down.x) < 5) return;
    const a = Math.min(down.t, timeAt(ev)), b = Math.max(down.t, timeAt(ev));
    state.selection = { from: a, to: b };
    const sel = tl.querySelector(".selection");
    const { span, end } = state.view;
    sel.hidden = false;
    sel.style.left = `${((a - (end - span)) / span) * 100}%`;
    sel.style.width = `${((b - a) / span) * 100}%`;
    $("export").disabled = false;
    $("timeline-info").textContent = `Selected ${clock(a)} – ${clock(b)} UTC (${Math.round((b - a) / 1000)} s): Export downloads it as MP4`;
  });
  tl.addEventListener("pointerup", (ev) => {
    if (!down) return;
    const moved = Math.abs(ev.clientX - down.x) >= 5;
    down = null;
    if (!moved) playAt(timeAt(ev));
  });
}

function playAt(ms) {
  const device = current();
  if (!device) return;
  drawCursor(ms);
  const tile = state.tiles[state.selected];
  $("play-pause").disabled = false;
  $("speed").disabled = false;
  $("play-pause").textContent = "Pause";
  if (tile.mode === "playback" && tile.player && tile.device === device && tile.player.ws && tile.player.ws.readyState === 1) {
    tile.player.play(ms);  // a seek on the same playback
    return;
  }
  watch(device, { at: ms, tile });
}

async function exportRange() {
  const device = current();
  const sel = state.selection;
  if (!device || !sel) return;
  try {
    const r = await state.link.recordings({ device, from: sel.from, to: sel.to });
    if (!r.exports.length) { notice("Nothing closed was recorded in that range yet."); return; }
    for (const x of r.exports) {
      const a = document.createElement("a");
      a.href = x.url;
      a.download = `${device}-${new Date(sel.from).toISOString().replace(/[:.]/g, "")}.mp4`;
      a.rel = "noopener";
      document.body.append(a);
      a.click();
      a.remove();
    }
    notice(`Export of ${clock(sel.from)} – ${clock(sel.to)} started.`, "ok");
  } catch (e) { notice(explain(e)); }
}

// -- events ----------------------------------------------------------------------------

const EVENTS_SHOWN = 100;
const FEED_KEY = "vss.events.feed";

function loadFeed() {
  try { return JSON.parse(sessionStorage.getItem(FEED_KEY)) || { node: "", user: "", last: 0 }; } catch (e) { return { node: "", user: "", last: 0 }; }
}

function saveFeed() {
  try { sessionStorage.setItem(FEED_KEY, JSON.stringify(state.feed)); } catch (e) { /* private mode */ }
}

const eventKey = (e) => `${e.node_id}/${e.seq}`;

// On login: subscribe to the events of every camera the user may view (resuming after the
// last feed id this page saw on this node, for the same user), then list the stored ones.
async function startEvents() {
  if (!state.feed) state.feed = loadFeed();
  const same = state.feed.node === state.node && state.feed.user === state.user;
  if (!same) {
    state.events.clear();
    state.feed = { node: state.node, user: state.user, last: 0 };
    saveFeed();
  }
  const link = state.link;
  renderEvents();
  try {
    const sub = await link.eventSubscribe({ resume_after: state.feed.last });
    if (state.link !== link) return;
    state.eventSubscription = sub.subscription;
    if (sub.gap) notice("Some events were missed while the page was away; the list shows the stored ones.", "ok");
    if (!state.feed.last) { state.feed.last = sub.head; saveFeed(); }
  } catch (e) {
    if (state.link === link) eventsMessage(`Live events are not available: ${explain(e)}`);
    return;
  }
  try {
    const { events } = await link.eventQuery({ limit: EVENTS_SHOWN });
    if (state.link !== link) return;
    for (const entry of events) remember(entry.event, entry);
    renderEvents();
  } catch (e) {
    if (state.link === link) notice(`The stored events could not be listed: ${explain(e)}`);
  }
  if (state.link === link) $("event-list").dataset.ready = "1";
}

function eventNotified(note) {
  if (note.feed_id > state.feed.last) { state.feed.last = note.feed_id; saveFeed(); }
  remember(note.event, { feed_id: note.feed_id });
  // a burst of events (a replay after a reconnect, many cameras) is drawn once
  if (!eventNotified.timer) eventNotified.timer = setTimeout(() => { eventNotified.timer = null; renderEvents(); }, 50);
}

function remember(event, extra) {
  const key = eventKey(event);
  const known = state.events.get(key) || { acked_by: "", acked_at: 0, comment: "" };
  // what is known of the acknowledgement is kept when the event comes again without it
  const entry = { ...known, event };
  if (extra.feed_id) entry.feed_id = extra.feed_id;
  if (extra.acked_by) Object.assign(entry, { acked_by: extra.acked_by, acked_at: extra.acked_at, comment: extra.comment });
  state.events.set(key, entry);
  if (state.events.size > EVENTS_SHOWN * 2) {
    for (const old of sortedEvents().slice(EVENTS_SHOWN)) state.events.delete(eventKey(old.event));
  }
}

function sortedEvents() {
  return [...state.events.values()].sort((a, b) => (b.event.node_time - a.event.node_time) || (b.event.seq - a.event.seq));
}

function eventsMessage(text) {
  const list = $("event-list");
  list.textContent = "";
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = text;
  list.append(li);
}

function when(ms) {
  const iso = new Date(ms).toISOString();
  const today = iso.slice(0, 10) === new Date().toISOString().slice(0, 10);
  return today ? iso.slice(11, 19) : `${iso.slice(5, 10)} ${iso.slice(11, 19)}`;
}

function renderEvents() {
  const list = $("event-list");
  const active = document.activeElement && document.activeElement.closest && document.activeElement.closest(".event");
  const focusKey = active && document.activeElement.classList.contains("ack-comment") ? active.dataset.event : null;
  const entries = sortedEvents().slice(0, EVENTS_SHOWN);
  const open = entries.filter((e) => !e.acked_by && e.event.severity >= 2 && e.event.phase !== 2).length;
  $("event-count").textContent = open ? String(open) : "";
  $("events-jump").hidden = !open;
  $("events-jump").textContent = open === 1 ? "1 alarm" : `${open} alarms`;
  const ended = endedAt(entries);
  list.textContent = "";
  if (!entries.length) { eventsMessage("No events yet."); return; }
  for (const entry of entries) list.append(eventRow(entry, ended));
  if (focusKey) {
    const input = list.querySelector(`.event[data-event="${CSS.escape(focusKey)}"] .ack-comment`);
    if (input) input.focus();
  }
}

// When each condition listed (a START) ended: the first STOP after it of the same camera,
// channel and type.
function endedAt(entries) {
  const out = new Map();
  const open = new Map();
  for (const { event: e } of [...entries].reverse()) {  // oldest first
    const what = `${e.device_id}\u0000${e.channel}\u0000${e.type}`;
    if (e.phase === 1) open.set(what, eventKey(e));
    else if (e.phase === 2 && open.has(what)) { out.set(open.get(what), e.node_time); open.delete(what); }
  }
  return out;
}

function eventRow(entry, ended = new Map()) {
  const e = entry.event;
  const key = eventKey(e);
  const d = state.devices.get(e.device_id);
  const severity = SEVERITY[e.severity] || String(e.severity);
  const phase = PHASE[e.phase] || String(e.phase);
  const li = document.createElement("li");
  li.className = `event sev-${severity.toLowerCase()}${entry.acked_by ? " acked" : ""}`;
  li.dataset.event = key;
  li.dataset.device = e.device_id;
  li.dataset.time = String(e.node_time);
  li.dataset.acked = entry.acked_by ? "1" : "0";
  li.tabIndex = 0;
  li.title = "Play back from this time";
  li.innerHTML = `<div class="head"><span class="sev"></span><span class="type"></span><span class="time"></span></div>
    <div class="phase"></div><div class="where"></div><div class="ack"></div>`;
  li.querySelector(".sev").textContent = severity;
  li.querySelector(".type").textContent = e.type;
  li.querySelector(".phase").textContent = phase === "PULSE" ? ""
    : phase === "START" ? (ended.has(key) ? `start · ended ${when(ended.get(key))}` : "start · ongoing") : phase.toLowerCase();
  li.querySelector(".time").textContent = when(e.node_time);
  const items = e.items.map((kv) => `${kv.key}=${kv.value}`).join(" ");
  li.querySelector(".where").textContent = `${d ? d.name || e.device_id : e.device_id}${e.channel ? ` · ch ${e.channel}` : ""}${items ? ` · ${items}` : ""}`;
  const ack = li.querySelector(".ack");
  if (entry.acked_by) {
    ack.textContent = `Acknowledged by ${entry.acked_by} at ${when(entry.acked_at)}${entry.comment ? `: ${entry.comment}` : ""}`;
  } else if (state.ackDrafts.has(key)) {
    const form = document.createElement("form");
    form.className = "ack-form";
    form.innerHTML = `<input class="ack-comment" maxlength="512" placeholder="Comment" aria-label="Comment"><button type="submit">OK</button><button type="button" class="ghost cancel">Cancel</button>`;
    const input = form.querySelector("input");
    const draft = state.ackDrafts.get(key);
    input.value = draft.comment;
    input.disabled = form.querySelector("button").disabled = !!draft.busy;
    input.oninput = () => { draft.comment = input.value; };
    form.querySelector(".cancel").onclick = (ev) => { ev.stopPropagation(); state.ackDrafts.delete(key); renderEvents(); };
    form.onclick = (ev) => ev.stopPropagation();
    form.onsubmit = (ev) => { ev.preventDefault(); acknowledge(entry, input.value.trim()); };
    ack.append(form);
    if (draft.busy) {
      const s = document.createElement("span");
      s.className = "muted";
      s.textContent = draft.busy;
      ack.append(s);
    }
  } else if (e.severity >= 1 && e.phase !== 2) {  // warnings and alarms (not their end)
    const button = document.createElement("button");
    button.className = "ghost ack-button";
    button.textContent = "Acknowledge";
    button.onclick = (ev) => {
      ev.stopPropagation();
      state.ackDrafts.set(key, { comment: "" });
      renderEvents();
      const input = $("event-list").querySelector(`.event[data-event="${CSS.escape(key)}"] .ack-comment`);
      if (input) input.focus();
    };
    ack.append(button);
  }
  li.onclick = () => playEvent(e);
  li.onkeydown = (ev) => { if (ev.key === "Enter" && ev.target === li) playEvent(e); };
  return li;
}

// EVENT_ACK; CMS stores a new event within seconds, so a NOT_FOUND is asked again a few times.
async function acknowledge(entry, comment) {
  const e = entry.event;
  const key = eventKey(e);
  const draft = state.ackDrafts.get(key) || { comment };
  state.ackDrafts.set(key, draft);
  draft.comment = comment;
  draft.busy = "Acknowledging…";
  renderEvents();
  const link = state.link;
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await link.eventAck({ node_id: e.node_id, seq: e.seq, device_id: e.device_id, comment });
      state.ackDrafts.delete(key);
      remember(e, { acked_by: r.acked_by, acked_at: r.acked_at, comment });
      renderEvents();
      notice(`Event ${e.type} of ${e.device_id} acknowledged.`, "ok");
      return;
    } catch (err) {
      if (err.codeName === "NOT_FOUND" && attempt < 8 && state.link === link) {
        draft.busy = "Waiting for the event to be stored…";
        renderEvents();
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      draft.busy = "";
      if (err.codeName === "CONFLICT") {
        state.ackDrafts.delete(key);
        notice("Someone acknowledged this event already.", "ok");
        refreshEvent(e);
      } else if (err.codeName === "NOT_FOUND") {
        notice("The event is not stored yet. Try again in a few seconds.");
      } else if (err.codeName === "FORBIDDEN") {
        notice("You may not acknowledge the events of this camera.");
      } else {
        notice(`The event was not acknowledged: ${explain(err)}`);
      }
      renderEvents();
      return;
    }
  }
}

async function refreshEvent(e) {
  try {
    const { events } = await state.link.eventQuery({ device_id: e.device_id, type: e.type, from_time: e.node_time, to_time: e.node_time + 1, limit: 10 });
    for (const entry of events) remember(entry.event, entry);
  } catch (err) { /* the list stays as it was */ }
  renderEvents();
}

// A click on an event plays its camera back from the event's time in the selected tile.
function playEvent(e) {
  if (!state.devices.has(e.device_id)) { notice("This camera is not in your list."); return; }
  const tile = state.tiles[state.selected];
  if (!tile) return;
  const span = state.view.span;
  state.view.end = Math.min(Date.now() + span * 0.05, e.node_time + span / 2);
  $("play-pause").disabled = false;
  $("speed").disabled = false;
  $("play-pause").textContent = "Pause";
  watch(e.device_id, { at: e.node_time, tile });
  drawCursor(e.node_time);
  if (window.innerWidth < 900) $("grid").scrollIntoView({ behavior: "smooth", block: "start" });
}

// -- TV walls: the selected camera onto a tile of a wall or decoder on any node ---------

async function sendToWall(ev) {
  ev.preventDefault();
  const device = current();
  const wall = $("wall-id").value.trim();
  const tile = Number($("wall-tile").value) || 1;
  const out = $("wall-result");
  delete out.dataset.version;
  delete out.dataset.error;
  if (!device) { out.textContent = "Select a camera first."; return; }
  if (!wall) { out.textContent = "Name the wall."; return; }
  out.textContent = "Sending…";
  try {
    const s = await state.link.wallAssign({ wall, tile: tile - 1, device });
    out.textContent = `${s.wall_id} (${s.node_id}): tile ${tile} shows ${device}`;
    out.dataset.version = String(s.version);
  } catch (e) {
    out.textContent = e.codeName === "FORBIDDEN" ? "You may not drive this wall, or it may not show this camera."
      : e.codeName === "WALL_OFFLINE" ? "This wall is not signed in on any node."
      : e.codeName === "INVALID_ARGUMENT" ? `The wall has no tile ${tile}.` : explain(e);
    out.dataset.error = e.codeName || "ERROR";
  }
}

// A tour: the cameras of the grid, in their order, in turn on the tile; or no tour.
async function tourOnWall(ev, stop = false) {
  if (ev) ev.preventDefault();
  const wall = $("wall-id").value.trim();
  const tile = Number($("wall-tile").value) || 1;
  const dwell = Math.min(3600, Math.max(1, Number($("wall-dwell").value) || 10));
  const devices = stop ? [] : [...new Set(state.tiles.map((t) => t.device).filter(Boolean))];
  const out = $("wall-result");
  delete out.dataset.version;
  delete out.dataset.error;
  if (!wall) { out.textContent = "Name the wall."; return; }
  if (!stop && !devices.length) { out.textContent = "Put cameras in the grid first."; return; }
  out.textContent = stop ? "Stopping…" : "Sending…";
  try {
    const s = await state.link.wallTour({ wall, tile: tile - 1, devices, dwell: stop ? 0 : dwell });
    out.textContent = stop ? `${s.wall_id} (${s.node_id}): tile ${tile}, tour stopped`
      : `${s.wall_id} (${s.node_id}): tile ${tile} tours ${devices.length} camera`
        + `${devices.length > 1 ? "s" : ""}, ${dwell} s each`;
    out.dataset.version = String(s.version);
  } catch (e) {
    out.textContent = e.codeName === "FORBIDDEN" ? "You may not drive this wall, or it may not show one of these cameras."
      : e.codeName === "WALL_OFFLINE" ? "This wall is not signed in on any node."
      : e.codeName === "INVALID_ARGUMENT" ? `The wall has no tile ${tile}.` : explain(e);
    out.dataset.error = e.codeName || "ERROR";
  }
}

// -- wiring ----------------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", login);
  $("logout").onclick = logout;
  $("events-jump").onclick = () => document.querySelector(".events").scrollIntoView({ behavior: "smooth", block: "start" });
  $("filter").oninput = renderDevices;
  for (const b of document.querySelectorAll(".layouts button")) b.onclick = () => setLayout(Number(b.dataset.n));
  for (const b of document.querySelectorAll(".pad [data-pan]")) {
    b.onclick = () => ptz(PTZ.RELATIVE, Number(b.dataset.pan) * 0.1, Number(b.dataset.tilt) * 0.1, 0);
  }
  $("ptz-stop").onclick = () => ptz(PTZ.STOP);
  for (const b of document.querySelectorAll(".zoom [data-zoom]")) b.onclick = () => ptz(PTZ.RELATIVE, 0, 0, Number(b.dataset.zoom) * 0.1);
  $("preset-form").addEventListener("submit", savePreset);
  $("wall-form").addEventListener("submit", sendToWall);
  $("wall-tour-form").addEventListener("submit", tourOnWall);
  $("wall-tour-stop").onclick = () => tourOnWall(null, true);
  $("zoom").onchange = () => {
    state.view.span = Number($("zoom").value);
    state.view.end = Date.now() + state.view.span * 0.05;  // now, near the right edge
    loadTimeline();
  };
  $("day-prev").onclick = () => { state.view.end -= state.view.span; loadTimeline(); };
  $("day-next").onclick = () => { state.view.end = Math.min(Date.now() + 600000, state.view.end + state.view.span); loadTimeline(); };
  $("go-live").onclick = () => {
    const d = current();
    $("speed").value = "1";
    if (d) watch(d);
    $("play-pause").disabled = true;
    $("speed").disabled = true;
  };
  $("play-pause").onclick = () => {
    const tile = state.tiles[state.selected];
    if (!tile || !tile.player || tile.mode !== "playback") return;
    if ($("play-pause").textContent === "Pause") tile.player.pause();
    else tile.player.play();
  };
  $("speed").onchange = () => {
    const tile = state.tiles[state.selected];
    if (tile && tile.player) tile.player.setSpeed(Number($("speed").value));
  };
  $("export").onclick = exportRange;
  timelineEvents();
  $("login-node").textContent = `Node at ${location.host}`;
  document.body.dataset.state = "login";
}

wire();
