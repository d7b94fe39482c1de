// Building blocks of the console's pages: elements, sortable paged tables, dialogs,
// labelled form fields with their errors next to them, and toasts.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'checked' || k === 'value' || k === 'selected' || k === 'disabled') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

let uid = 0;
export const nextId = (prefix = 'f') => `${prefix}-${++uid}`;

// --- times

const stamp = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit'});
const thisYear = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23'});
export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return (d.getFullYear() === new Date().getFullYear() ? thisYear : stamp).format(d);
}
export function ago(iso) {
  if (!iso) return 'never';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
// <input type=datetime-local> value (local time) <-> ISO UTC
export function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? value : d.toISOString().replace('.000Z', 'Z');
}

// --- tables

// columns: [{key, label, value(row) for sorting, render(row) -> node|text, num, wrap}]
export function dataTable({columns, rows, pageSize = 25, caption, empty = 'Nothing here yet.',
                           sortKey, sortDir = 1, rowAttrs, id}) {
  let sort = sortKey || columns[0].key;
  let dir = sortDir;
  let page = 0;
  const col = (key) => columns.find((c) => c.key === key);
  const valueOf = (c, r) => (c.value ? c.value(r) : r[c.key]);
  const table = h('table', {class: 'data', id});
  if (caption) table.append(h('caption', {class: 'sr-only'}, caption));
  const headRow = h('tr');
  table.append(h('thead', {}, headRow), h('tbody'));
  const pager = h('div', {class: 'pager'});
  const wrap = h('div', {class: 'table-block'}, h('div', {class: 'table-wrap'}, table), pager);

  function sorted() {
    const c = col(sort);
    if (!c || c.sortable === false) return rows.slice();
    return rows.slice().sort((a, b) => {
      const x = valueOf(c, a); const y = valueOf(c, b);
      if (x === y) return 0;
      if (x === undefined || x === null || x === '') return 1;
      if (y === undefined || y === null || y === '') return -1;
      return (typeof x === 'number' && typeof y === 'number' ? x - y
        : String(x).localeCompare(String(y), undefined, {numeric: true})) * dir;
    });
  }

  function render() {
    headRow.replaceChildren(...columns.map((c) => {
      const th = h('th', {scope: 'col', class: c.num ? 'num' : ''});
      if (c.sortable === false) { th.append(c.label); return th; }
      if (c.key === sort) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      th.append(h('button', {type: 'button', onclick: () => {
        if (sort === c.key) dir = -dir; else { sort = c.key; dir = 1; }
        page = 0; render();
      }}, c.label, h('span', {class: 'arrow', 'aria-hidden': 'true'},
                   c.key === sort ? (dir > 0 ? '\u25b2' : '\u25bc') : '\u21c5')));
      return th;
    }));
    const all = sorted();
    const pages = Math.max(1, Math.ceil(all.length / pageSize));
    page = Math.min(page, pages - 1);
    const slice = all.slice(page * pageSize, (page + 1) * pageSize);
    const body = table.tBodies[0];
    if (!slice.length) {
      body.replaceChildren(h('tr', {}, h('td', {colspan: columns.length, class: 'empty'}, empty)));
    } else {
      body.replaceChildren(...slice.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {},
        columns.map((c) => h('td', {class: [c.num ? 'num' : '', c.wrap ? 'wrap' : '', c.class || ''].join(' ').trim() || null},
                             c.render ? c.render(r) : (valueOf(c, r) ?? ''))))));
    }
    const from = all.length ? page * pageSize + 1 : 0;
    pager.replaceChildren(
      h('span', {}, `${from}\u2013${page * pageSize + slice.length} of ${all.length}`),
      h('span', {class: 'spacer'}),
      h('button', {type: 'button', class: 'ghost', disabled: page === 0, 'aria-label': 'Previous page',
                   onclick: () => { page -= 1; render(); }}, 'Previous'),
      h('span', {}, `Page ${page + 1} of ${pages}`),
      h('button', {type: 'button', class: 'ghost', disabled: page >= pages - 1, 'aria-label': 'Next page',
                   onclick: () => { page += 1; render(); }}, 'Next'));
    pager.hidden = pages === 1;  // one page: nothing to page through
  }

  render();
  wrap.update = (newRows) => { rows = newRows; render(); };
  return wrap;
}

// --- forms

// A labelled field: {label, name, type, value, hint, required, options: [[value, text]],
// placeholder, autocomplete, min, max, full, readonly}
export function field(spec) {
  const id = nextId(spec.name || 'f');
  const hintId = spec.hint ? `${id}-hint` : null;
  const errId = `${id}-error`;
  const describedby = [hintId, errId].filter(Boolean).join(' ');
  let control;
  const common = {id, name: spec.name, required: spec.required, 'aria-describedby': describedby,
                  disabled: spec.disabled, readonly: spec.readonly};
  if (spec.type === 'select') {
    control = h('select', common, (spec.options || []).map(([v, t]) =>
      h('option', {value: v, selected: String(v) === String(spec.value ?? '')}, t)));
  } else if (spec.type === 'checkbox') {
    const box = h('input', {...common, type: 'checkbox', checked: !!spec.value});
    const wrapper = h('div', {class: `field${spec.full ? ' full' : ''}`},
      h('label', {class: 'check', for: id}, box, spec.label),
      spec.hint ? h('p', {class: 'hint', id: hintId}, spec.hint) : null,
      h('p', {class: 'field-error', id: errId, hidden: true}));
    return wrapper;
  } else {
    control = h('input', {...common, type: spec.type || 'text', value: spec.value ?? '',
                          placeholder: spec.placeholder, autocomplete: spec.autocomplete || 'off',
                          min: spec.min, max: spec.max, step: spec.step,
                          spellcheck: spec.type === 'text' || !spec.type ? 'false' : null});
  }
  return h('div', {class: `field${spec.full ? ' full' : ''}`},
    h('label', {for: id}, spec.label, spec.required ? h('span', {'aria-hidden': 'true'}, ' *') : null),
    control,
    spec.hint ? h('p', {class: 'hint', id: hintId}, spec.hint) : null,
    h('p', {class: 'field-error', id: errId, hidden: true}));
}

export function clearErrors(form) {
  for (const p of form.querySelectorAll('.field-error')) { p.hidden = true; p.textContent = ''; }
  for (const c of form.querySelectorAll('[aria-invalid]')) c.removeAttribute('aria-invalid');
  const alert = form.querySelector('.form-alert');
  if (alert) alert.remove();
}

// Show an ApiError next to the field it names (or at the top of the form).
export function showError(form, err, fieldMap = {}) {
  clearErrors(form);
  const name = fieldMap[err.field] || err.field;
  const control = name ? form.querySelector(`[name="${CSS.escape(name)}"]`) : null;
  if (control) {
    control.setAttribute('aria-invalid', 'true');
    const p = control.closest('.field').querySelector('.field-error');
    // "device_id 'x' is not valid" next to the device ID field: "'x' is not valid"
    const text = err.message.startsWith(`${err.field} `) ? err.message.slice(err.field.length + 1) : err.message;
    p.textContent = capital(text);
    p.hidden = false;
    control.focus();
    return;
  }
  form.prepend(h('div', {class: 'alert form-alert', role: 'alert'}, capital(err.message)));
}

export const capital = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

export function values(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === 'checkbox') out[el.name] = el.checked;
    else if (el.type === 'radio') { if (el.checked) out[el.name] = el.value; }
    else out[el.name] = el.value;
  }
  return out;
}

// --- dialogs

// A modal dialog with a form: submit(values, form) may throw an ApiError (shown next to
// its field); resolves with what submit returned, or null when cancelled.
export function formDialog({title, fields, submitLabel = 'Save', danger = false, intro, submit,
                            extra}) {
  return new Promise((resolve) => {
    const form = h('form', {class: 'form', novalidate: true}, intro ? h('p', {class: 'full muted'}, intro) : null,
                   fields, extra || null);
    const dialog = modal(title, form, [
      h('button', {type: 'button', class: 'ghost', onclick: () => close(null)}, 'Cancel'),
      h('button', {type: 'submit', form: form.id = nextId('form'), class: danger ? 'danger' : ''}, submitLabel),
    ]);
    let done = false;
    function close(result) {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      resolve(result);
    }
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); close(null); });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors(form);
      const button = dialog.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        close(await submit(values(form), form));
      } catch (err) {
        if (err && err.status !== undefined) showError(form, err);
        else throw err;
      } finally {
        button.disabled = false;
      }
    });
    dialog.showModal();
    const first = form.querySelector('input:not([type=hidden]):not([readonly]), select, textarea');
    if (first) first.focus();
  });
}

export function modal(title, content, buttons) {
  const titleId = nextId('dialog-title');
  const dialog = h('dialog', {class: 'modal', 'aria-labelledby': titleId},
    h('header', {}, h('h2', {id: titleId}, title)),
    h('div', {class: 'body'}, content),
    h('footer', {}, buttons));
  document.body.append(dialog);
  return dialog;
}

export function confirmDialog(title, text, label = 'Remove') {
  return formDialog({title, fields: [h('p', {class: 'full'}, text)], submitLabel: label, danger: true,
                     submit: async () => true}).then((r) => !!r);
}

// Shows a secret once (a new token or stream credential) with a copy button.
export function secretDialog(title, rows, note) {
  return new Promise((resolve) => {
    const content = h('div', {}, h('p', {class: 'muted'}, note),
      rows.map(([label, value]) => h('div', {class: 'field'},
        h('span', {class: 'muted'}, label),
        h('div', {class: 'secret-box'}, h('span', {class: 'mono', dataset: {secret: label}}, value)),
        h('div', {}, h('button', {type: 'button', class: 'ghost small', onclick: (e) => {
          navigator.clipboard?.writeText(value);
          e.target.textContent = 'Copied';
        }}, 'Copy')))));
    const dialog = modal(title, content, [
      h('button', {type: 'button', onclick: () => { dialog.close(); dialog.remove(); resolve(); }},
        'I have kept it')]);
    dialog.addEventListener('cancel', (e) => e.preventDefault());
    dialog.showModal();
  });
}

// --- toasts

export function toast(title, text, kind = '', ms = 6000) {
  const el = h('div', {class: `toast ${kind}`}, h('div', {class: 'title'}, title),
               text ? h('div', {class: 'text'}, text) : null);
  const box = document.getElementById('toasts');
  box.append(el);
  const done = [...box.children].filter((t) => t.classList.contains('ok') && t !== el);
  while (box.children.length > 3 && done.length) done.shift().remove();
  if (ms) setTimeout(() => el.remove(), ms);
  return el;
}

export function badge(text, kind = '') {
  return h('span', {class: `badge ${kind}`}, text);
}

export function dot(kind, label) {
  return h('span', {class: 'state'}, h('span', {class: `dot ${kind}`, 'aria-hidden': 'true'}), ' ', label);
}

export function panel(title, ...content) {
  return h('section', {class: 'panel', 'aria-label': typeof title === 'string' ? title : null},
           h('h2', {}, title), ...content);
}
