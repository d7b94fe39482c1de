// The wall page (/wall): a screen of a TV wall, opened full screen, logged in as a wall
// CU (REGISTER kind TVWALL, docs/protocol.md 9.9). It describes its layout, shows on each
// tile what operators on any node assign (WALL_NOTIFY: the whole state, applied at once),
// reports the frames each tile showed every second (WALL_REPORT), and after a network cut
// or a node restart signs in again with backoff and describes itself with what it showed,
// so a node that lost the wall's state gets it back.

import { Link } from "./link.js";
import { Player } from "./player.js";
import { CU_TVWALL, PURPOSE } from "./wire.js";

const $ = (id) => document.getElementById(id);
const wsBase = () => `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;

const wall = {
  link: null,
  user: "",
  layout: 4,
  state: null,      // the last WallState
  tiles: [],        // index -> {el, key, device, player, session, frames, errors, last_error}
  connected: false,
  reconnects: 0,
  applied: [],      // {version, at}: when each state was applied (the tests read it)
};
window.vssWall = wall;
let password = "";  // kept in the page only, to sign in again after a cut
let reportTimer = null;

async function signIn(ev) {
  ev.preventDefault();
  wall.user = $("user").value.trim();
  password = $("password").value;
  wall.layout = Number($("layout").value) || 4;
  $("login-button").disabled = true;
  try {
    await connect();
  } catch (e) {
    $("login-error").textContent = e.codeName === "AUTH_FAILED" ? "Wrong account or password."
      : e.codeName === "FORBIDDEN" ? "This account may not be a wall." : (e.message || String(e));
    $("login-error").hidden = false;
    $("login-button").disabled = false;
    return;
  }
  $("login").hidden = true;
  $("wall").hidden = false;
  try { await document.documentElement.requestFullscreen(); } catch (e) { /* not allowed here */ }
}

async function connect() {
  const link = new Link(`${wsBase()}/ws/cu`, { kind: CU_TVWALL, onWall: apply, onClosed: lost });
  await link.open();
  await link.login(wall.user, password);
  wall.link = link;
  // the streams of the link before (its sessions, maybe a node that restarted) are gone:
  // every tile opens its stream again on this link
  for (const t of wall.tiles) { stop(t); t.key = ""; }
  const shown = wall.state ? wall.state.assignments : [];
  apply(await link.wallDescribe({ layout: wall.layout, assignments: shown }));
  wall.connected = true;
  banner("");
  clearInterval(reportTimer);
  reportTimer = setInterval(report, 1000);
}

function lost() {
  if (!wall.connected && wall.link === null) return;
  wall.connected = false;
  wall.link = null;
  clearInterval(reportTimer);
  banner("Connection to the node lost: reconnecting…");
  retry(1000);
}

function retry(delay) {
  setTimeout(async () => {
    wall.reconnects += 1;
    try {
      await connect();
    } catch (e) {
      if (wall.link) { try { wall.link.close(); } catch (x) { /* gone */ } }
      wall.link = null;
      retry(Math.min(delay * 2, 8000));
    }
  }, delay * (0.75 + Math.random() / 2));
}

function banner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

// -- the tiles ---------------------------------------------------------------------------

function apply(state) {
  if (wall.state && state.node_id === wall.state.node_id && state.version < wall.state.version) return;
  wall.state = state;
  wall.applied.push({ version: state.version, at: Date.now() });
  if (wall.applied.length > 200) wall.applied.shift();
  const box = $("tiles");
  while (wall.tiles.length > state.tiles.length) {
    const t = wall.tiles.pop();
    stop(t);
    t.el.remove();
  }
  state.tiles.forEach((geo, i) => {
    let t = wall.tiles[i];
    if (!t) {
      const el = document.createElement("div");
      el.className = "tile";
      el.innerHTML = '<video muted playsinline></video><span class="label"></span>'
        + '<span class="number"></span><span class="tour"></span><span class="status"></span>';
      box.appendChild(el);
      t = wall.tiles[i] = { el, key: "", device: "", player: null, session: null, frames: 0, errors: 0, last_error: "" };
    }
    Object.assign(t.el.style, { left: `${geo.x / 100}%`, top: `${geo.y / 100}%`,
                                width: `${geo.width / 100}%`, height: `${geo.height / 100}%` });
    t.el.querySelector(".number").textContent = String(i + 1);
  });
  const wanted = new Map(state.assignments.map((a) => [a.tile, a]));
  wall.tiles.forEach((t, i) => {
    const a = wanted.get(i);
    const key = a ? `${a.device_id}/${a.channel}/${a.stream}` : "";
    t.el.querySelector(".tour").textContent = a && a.tour.length
      ? `tour ${a.tour_index + 1}/${a.tour.length} · ${a.dwell} s` : "";
    if (key === t.key) return;
    stop(t);
    t.key = key;
    t.device = a ? a.device_id : "";
    t.el.dataset.device = t.device;
    t.el.querySelector(".label").textContent = t.device;
    if (a) show(t, a); else status(t, "empty", "");
  });
}

function status(t, s, text) {
  t.el.dataset.state = s;
  t.el.querySelector(".status").textContent = text ?? s;
}

function stop(t) {
  if (t.player) t.player.close();
  if (t.session && wall.link) wall.link.mediaClose(t.session).catch(() => {});
  t.player = null;
  t.session = null;
  t.frames = 0;
  t.errors = 0;
  t.last_error = "";
  t.el.dataset.frames = "0";
  t.opening = null;
}

async function show(t, a) {
  const opening = t.opening = {};
  status(t, "connecting", "connecting…");
  let media;
  try {
    media = await wall.link.mediaOpen({ device: a.device_id, channel: a.channel, stream: a.stream,
                                        purpose: PURPOSE.LIVE });
  } catch (e) {
    if (t.opening !== opening) return;
    t.errors += 1;
    t.last_error = e.codeName || e.message;
    status(t, "error", e.codeName === "FORBIDDEN" ? "not allowed on this wall" : t.last_error);
    return;
  }
  if (t.opening !== opening) { wall.link.mediaClose(media.session_id).catch(() => {}); return; }
  const url = new URL(media.url.replace(/^rtsp/, "http"));
  t.session = media.session_id;
  t.opens = (t.opens || 0) + 1;
  t.el.dataset.opens = String(t.opens);
  const player = t.player = new Player(t.el.querySelector("video"), {
    onStatus: (s, m) => {
      status(t, s, m || s);
      if ((s === "error" || s === "ended") && t.player === player) {
        t.errors += 1;
        t.last_error = m || s;
        // the tile still shows this device: open it again (after a node restart, a cut)
        setTimeout(() => {
          if (t.player === player && wall.link) { const key = t.key; stop(t); t.key = key; show(t, a); }
        }, 1000);
      }
    },
    onFrame: (f) => { t.frames = f.frames; t.el.dataset.frames = String(f.frames); },
  });
  t.player.open(`${wsBase()}/media${url.pathname}?token=${encodeURIComponent(url.searchParams.get("token"))}`,
                { live: true });
}

function report() {
  if (!wall.link || !wall.state) return;
  const tiles = wall.tiles.map((t, i) => ({ tile: i, device_id: t.device, frames: t.frames,
                                             errors: t.errors, last_error: t.last_error }))
    .filter((t) => t.device_id);
  if (tiles.length) wall.link.wallReport(tiles).catch(() => {});
}

$("login-form").addEventListener("submit", signIn);
$("login-node").textContent = `TV wall of the node at ${location.host}`;
