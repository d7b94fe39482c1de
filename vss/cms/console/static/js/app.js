// The operator console: sign-in, the sections (hash routes), and the follow-up of every
// change to the nodes: the API answers a change with its change-log sequence, and the
// console watches the nodes' applied sequences (GET /status) until every node that is up
// confirmed it (S506).

import {ApiError, call, get, poll, setCsrf, whenSessionLost} from './api.js';
import {h, toast, dot} from './ui.js';
import {pages} from './pages.js';

const $ = (id) => document.getElementById(id);
const state = {session: null, page: null, syncTimer: null, watching: []};

function setState(s) { document.body.dataset.state = s; }

// --- signing in and out

async function start() {
  whenSessionLost(() => { if (state.session) showLogin('Your session ended. Please sign in again.'); });
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', logout);
  $('menu-button').addEventListener('click', () => {
    const nav = $('nav');
    const open = !nav.classList.contains('open');
    nav.classList.toggle('open', open);
    $('menu-button').setAttribute('aria-expanded', String(open));
  });
  window.addEventListener('hashchange', route);
  try {
    signedIn(await get('/session'));
  } catch (e) {
    showLogin();
  }
}

function showLogin(message) {
  state.session = null;
  setCsrf('');
  $('shell').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  setState(message ? 'session-ended' : 'login');
  $('login-user').focus();
}

async function onLogin(e) {
  e.preventDefault();
  const button = $('login-button');
  const err = $('login-error');
  const user = $('login-user').value.trim();
  const password = $('login-password').value;
  err.hidden = true;
  if (!user || !password) {
    err.textContent = 'Enter your user name and password.';
    err.hidden = false;
    return;
  }
  button.disabled = true;
  try {
    const {data} = await call('POST', '/session', {username: user, password});
    $('login-password').value = '';
    signedIn(data);
  } catch (ex) {
    err.hidden = false;
    if (ex.status === 429) {
      const n = Number(ex.retryAfter) || 0;
      err.textContent = n ? `Too many failed attempts. Try again in ${n} second${n === 1 ? '' : 's'}.`
        : 'Too many failed attempts. Try again in a moment.';
      setState('login-throttled');
    } else if (ex.status === 401) {
      err.textContent = ex.message === 'this account is disabled'
        ? 'This account is disabled.' : 'Wrong user name or password.';
      setState('login-failed');
    } else {
      err.textContent = ex.message;
      setState('login-failed');
    }
    $('login-password').select();
  } finally {
    button.disabled = false;
  }
}

function signedIn(session) {
  state.session = session;
  setCsrf(session.csrf);
  document.body.dataset.role = session.role;
  $('who-name').textContent = session.username;
  $('who-role').textContent = session.role;
  $('login').hidden = true;
  $('shell').hidden = false;
  setState('ready');
  if (!location.hash || location.hash === '#/') location.hash = '#/dashboard';
  else route();
  watchSync();
}

async function logout() {
  try { await call('DELETE', '/session'); } catch (e) { /* ended anyway */ }
  showLogin();
  $('login-error').hidden = true;
  setState('login');
}

// --- sections

async function route() {
  if (!state.session) return;
  const name = (location.hash.replace(/^#\//, '').split('?')[0]) || 'dashboard';
  const page = pages[name] || pages.dashboard;
  for (const a of document.querySelectorAll('.nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  $('nav').classList.remove('open');
  $('menu-button').setAttribute('aria-expanded', 'false');
  document.body.dataset.page = name;
  document.body.dataset.loaded = '';
  $('page-title').textContent = page.title;
  document.title = `${page.title} \u00b7 vss console`;
  const actions = $('page-actions');
  const body = $('page');
  actions.replaceChildren();
  body.replaceChildren(h('p', {class: 'muted'}, 'Loading\u2026'));
  state.page = name;
  const ctx = {
    canChange: !!state.session.can_change,
    session: state.session,
    actions,
    changed,
    reload: () => route(),
    current: () => state.page === name,
  };
  try {
    const content = await page.render(ctx);
    if (state.page !== name) return;
    body.replaceChildren(content);
    document.body.dataset.loaded = name;
    // chosen from the menu: a screen reader lands on the new page's heading
    if (document.activeElement && document.activeElement.closest('#nav')) {
      $('page-title').focus({preventScroll: true});
    }
  } catch (e) {
    if (state.page !== name) return;
    body.replaceChildren(h('div', {class: 'alert', role: 'alert'},
      e instanceof ApiError ? e.message : `This page failed: ${e}`));
    if (!(e instanceof ApiError)) throw e;
  }
}

// --- every change, followed to the nodes (S501-S506)

// Called by the pages after a change: shows it saved, then which nodes confirmed it.
function changed(what, seq) {
  document.body.dataset.lastChange = String(seq || 0);
  if (!seq) {
    toast(what, 'Saved.', 'ok');
    return;
  }
  const el = toast(what, 'Saved. Waiting for the nodes to apply it\u2026', '', 0);
  el.dataset.seq = String(seq);
  state.watching.push({seq, el, since: Date.now()});
  document.body.dataset.syncState = 'waiting';
  pollSync();
}

function watchSync() {
  clearInterval(state.syncTimer);
  state.syncTimer = setInterval(pollSync, 5000);
  pollSync();
}

let polling = false;
async function pollSync() {
  if (!state.session || polling) return;
  polling = true;
  try {
    const status = await poll('/status');
    showSyncState(status);
    const up = status.nodes.filter((n) => n.state === 'up');
    const down = status.nodes.filter((n) => n.state !== 'up');
    for (const w of state.watching.slice()) {
      const confirmed = up.filter((n) => n.applied_seq >= w.seq);
      const waiting = up.filter((n) => n.applied_seq < w.seq);
      const text = w.el.querySelector('.text');
      const chips = w.el.querySelector('.nodes') || w.el.appendChild(h('div', {class: 'nodes'}));
      chips.replaceChildren(...up.map((n) => h('span', {class: 'chip', dataset: {node: n.node_id}},
        n.applied_seq >= w.seq ? '\u2713 ' : '\u2026 ', n.node_id)),
        ...down.map((n) => h('span', {class: 'chip'}, `\u23fb ${n.node_id} (down)`)));
      if (!waiting.length) {
        w.el.classList.add('ok');
        const downText = down.length
          ? ` ${down.map((n) => n.node_id).join(', ')} ${down.length === 1 ? 'is' : 'are'} down and will catch up on reconnection.`
          : '';
        text.textContent = up.length
          ? `Applied on ${up.length === 1 ? 'the node up' : `all ${up.length} nodes up`}.${downText}`
          : 'Saved. No node is up: each catches up when it connects.';
        w.el.dataset.confirmed = confirmed.map((n) => n.node_id).join(',');
        document.body.dataset.confirmed = `${w.seq}:${w.el.dataset.confirmed}`;
        state.watching.splice(state.watching.indexOf(w), 1);
        setTimeout(() => w.el.remove(), 5000);
      } else {
        text.textContent = `Saved. Applied on ${confirmed.length} of ${up.length} nodes\u2026`;
      }
    }
    document.body.dataset.syncState = state.watching.length ? 'waiting' : 'confirmed';
    if (state.watching.length) setTimeout(pollSync, 400);
  } catch (e) {
    // the status will come with the next poll
  } finally {
    polling = false;
  }
}

function showSyncState(status) {
  const el = $('sync-state');
  const up = status.nodes.filter((n) => n.state === 'up');
  const lagging = up.filter((n) => n.applied_seq < status.head_seq);
  let kind = 'ok';
  let label = `${up.length}/${status.nodes.length} nodes up \u00b7 in sync`;
  if (!status.nodes.length) { kind = ''; label = 'no node registered'; }
  else if (up.length < status.nodes.length) { kind = 'warn'; label = `${up.length}/${status.nodes.length} nodes up`; }
  if (lagging.length) { kind = 'warn'; label += ` \u00b7 ${lagging.length} syncing`; }
  el.replaceChildren(dot(kind, h('span', {class: 'label'}, label)));
  el.title = label;
}

start();
