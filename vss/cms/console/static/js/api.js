// The admin API as the console uses it: JSON over fetch with the session cookie (sent by
// the browser, HttpOnly: this page never sees it) and the session's CSRF token on every
// change. Errors come back as ApiError with the field the API named.

const BASE = '/api/v1';

export class ApiError extends Error {
  constructor(status, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.field = field || null;
    this.retryAfter = retryAfter || null;
  }
}

let csrf = '';
let onSessionLost = () => {};

export function setCsrf(token) { csrf = token || ''; }
export function whenSessionLost(f) { onSessionLost = f; }

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// One request: {data, seq} (seq: the change-log sequence of a change, to follow to the
// nodes), or throws ApiError.
export async function call(method, path, body, params, {background = false} = {}) {
  const headers = {Accept: 'application/json'};
  // the page's own polling: not activity (the session's idle time still runs out)
  if (background) headers['X-Vss-Background'] = '1';
  const init = {method, headers, credentials: 'same-origin', cache: 'no-store'};
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
  let response;
  try {
    response = await fetch(BASE + path + query(params), init);
  } catch (e) {
    throw new ApiError(0, 'The central platform cannot be reached. Check that it runs, then try again.');
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || `HTTP ${response.status}`;
    const err = new ApiError(response.status, message, data && data.field,
                             response.headers.get('Retry-After'));
    if (response.status === 401 && path !== '/session') onSessionLost(message);
    throw err;
  }
  const seq = Number(response.headers.get('X-Vss-Change-Seq')) || 0;
  return {data, seq};
}

export const get = async (path, params) => (await call('GET', path, undefined, params)).data;
export const poll = async (path, params) => (await call('GET', path, undefined, params,
                                                       {background: true})).data;

// Every item of a paged list (follows next_cursor), up to `max`.
export async function all(path, params = {}, max = 20000) {
  const items = [];
  let cursor = '';
  do {
    const page = await get(path, {...params, cursor, limit: 1000});
    items.push(...page.items);
    cursor = page.next_cursor || '';
  } while (cursor && items.length < max);
  return items;
}
