// The audit log: every change (API, vss-admin, console; refusals too), every console
// login, and every live view, playback and export started on a node. Newest first,
// filtered on the server, paged; a row opens what changed (before and after, secrets
// masked). Nothing here can change an entry: the API has no such route.

import {get} from '../api.js';
import {field, fromLocalInput, h, panel, showError, when} from '../ui.js';

const KINDS = [['change', 'Changes'], ['login', 'Logins'], ['logout', 'Logouts'], ['live', 'Live views'],
               ['playback', 'Playbacks'], ['export', 'Exports'], ['lost', 'Lost reports']];
const PAGE = 50;

function result(e) {
  if (!e.status) return h('span', {class: 'muted'}, '\u2014');
  return h('span', {class: e.status < 400 ? 'status-ok' : 'status-bad'}, e.status < 400 ? `ok ${e.status}` : `refused ${e.status}`);
}

function who(e) {
  const [kind, ...rest] = e.actor.split(':');
  return h('span', {}, h('span', {class: 'muted'}, `${kind} `), rest.join(':'));
}

function item(x) {
  if (x && typeof x === 'object') {
    if ('day' in x && 'start' in x && 'end' in x) return `${x.day} ${x.start}\u2013${x.end}`;
    return JSON.stringify(x);
  }
  return x;
}

function flat(value, prefix = '', out = {}) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flat(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = Array.isArray(value) ? value.map(item).join(', ') : value;
  }
  return out;
}

function detail(e) {
  const d = e.detail || {};
  const parts = [];
  if (e.kind === 'change' && (d.before || d.after)) {
    const before = flat(d.before || {});
    const after = flat(d.after || {});
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    parts.push(h('table', {class: 'diff'},
      h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Field'), h('th', {scope: 'col'}, 'Before'), h('th', {scope: 'col'}, 'After'))),
      h('tbody', {}, keys.map((k) => {
        const changed = String(before[k]) !== String(after[k]);
        return h('tr', {}, h('th', {scope: 'row'}, k),
          h('td', {class: changed ? 'changed' : ''}, before[k] === undefined ? '\u2014' : String(before[k])),
          h('td', {class: changed ? 'changed' : ''}, after[k] === undefined ? '\u2014' : String(after[k])));
      }))));
  }
  const rest = {...d};
  delete rest.before;
  delete rest.after;
  if (Object.keys(rest).length) {
    parts.push(h('table', {class: 'diff'}, h('tbody', {}, Object.entries(flat(rest)).map(([k, v]) =>
      h('tr', {}, h('th', {scope: 'row'}, k), h('td', {}, String(v))))))) ;
  }
  return parts.length ? parts : h('p', {class: 'muted'}, 'Nothing more.');
}

export default {
  title: 'Audit log',
  async render(ctx) {
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    const kinds = h('fieldset', {class: 'field'}, h('legend', {}, 'What'),
      h('div', {class: 'kinds'}, KINDS.map(([k, label]) => h('label', {class: 'check'},
        h('input', {type: 'checkbox', name: 'kind', value: k, checked: (params.get('kind') || '').split(',').includes(k)}), label))));
    const form = h('form', {class: 'filters', id: 'audit-filters', role: 'search'},
      kinds,
      field({label: 'Who', name: 'actor', placeholder: 'operator:ann, token:, user:bob', value: params.get('actor') || ''}),
      field({label: 'About', name: 'target', placeholder: 'device:cam-1', value: params.get('target') || ''}),
      field({label: 'Text', name: 'q', placeholder: 'anything', value: params.get('q') || ''}),
      field({label: 'From', name: 'since', type: 'datetime-local'}),
      field({label: 'Until', name: 'until', type: 'datetime-local'}),
      h('button', {type: 'submit'}, 'Filter'));
    const holder = h('div');
    const pager = h('div', {class: 'pager'});
    let cursors = [''];
    let page = 0;
    let items = [];
    let sort = {key: 'id', dir: -1};
    const open = new Set();

    function filters() {
      const f = new FormData(form);
      return {kind: f.getAll('kind').join(','), actor: f.get('actor').trim(), target: f.get('target').trim(),
              q: f.get('q').trim(), since: fromLocalInput(f.get('since')), until: fromLocalInput(f.get('until'))};
    }

    const columns = [
      {key: 'id', label: 'Time', render: (e) => h('span', {title: e.at}, when(e.at))},
      {key: 'kind', label: 'What', render: (e) => h('span', {class: `kind kind-${e.kind}`}, e.kind)},
      {key: 'actor', label: 'Who', render: who},
      {key: 'action', label: 'Action', wrap: true, render: (e) => h('code', {}, e.action)},
      {key: 'target', label: 'About', wrap: true, render: (e) => e.target},
      {key: 'source', label: 'From', render: (e) => (e.node_id ? `${e.source} via ${e.node_id}` : e.source)},
      {key: 'status', label: 'Result', render: result},
    ];

    function draw() {
      const rows = items.slice().sort((a, b) => {
        const x = a[sort.key]; const y = b[sort.key];
        return (typeof x === 'number' ? x - y : String(x).localeCompare(String(y))) * sort.dir;
      });
      const head = h('tr', {}, columns.map((c) => h('th', {scope: 'col', 'aria-sort': sort.key === c.key ? (sort.dir > 0 ? 'ascending' : 'descending') : null},
        h('button', {type: 'button', onclick: () => { sort = {key: c.key, dir: sort.key === c.key ? -sort.dir : 1}; draw(); }},
          c.label, h('span', {class: 'arrow', 'aria-hidden': 'true'}, sort.key === c.key ? (sort.dir > 0 ? '\u25b2' : '\u25bc') : '\u21c5')))),
        h('th', {scope: 'col'}, h('span', {class: 'sr-only'}, 'Details')));
      const body = h('tbody');
      if (!rows.length) body.append(h('tr', {}, h('td', {colspan: columns.length + 1, class: 'empty'}, 'No entry matches.')));
      for (const e of rows) {
        const shown = open.has(e.id);
        body.append(h('tr', {dataset: {id: String(e.id), kind: e.kind, actor: e.actor, target: e.target, action: e.action}},
          columns.map((c) => h('td', {class: c.wrap ? 'wrap' : null}, c.render(e))),
          h('td', {class: 'actions'}, h('button', {type: 'button', class: 'ghost small', 'aria-expanded': String(shown),
            'aria-controls': `audit-detail-${e.id}`, onclick: () => { if (shown) open.delete(e.id); else open.add(e.id); draw(); }},
          shown ? 'Hide' : 'Details'))));
        if (shown) body.append(h('tr', {class: 'detail-row', id: `audit-detail-${e.id}`}, h('td', {colspan: columns.length + 1}, detail(e))));
      }
      holder.replaceChildren(h('div', {class: 'table-wrap'}, h('table', {class: 'data', id: 'audit-table'},
        h('caption', {class: 'sr-only'}, 'Audit entries, newest first'), h('thead', {}, head), body)));
      pager.replaceChildren(
        h('span', {}, items.length ? `${items.length} entries on this page` : ''),
        h('span', {class: 'spacer'}),
        h('button', {type: 'button', class: 'ghost', disabled: page === 0, onclick: () => { page -= 1; load(); }}, 'Newer'),
        h('span', {}, `Page ${page + 1}`),
        h('button', {type: 'button', class: 'ghost', disabled: !cursors[page + 1], onclick: () => { page += 1; load(); }}, 'Older'));
    }

    async function load() {
      const f = filters();
      const data = await get('/audit', {...f, cursor: cursors[page], limit: PAGE});
      items = data.items;
      cursors[page + 1] = data.next_cursor || '';
      draw();
      document.body.dataset.auditLoaded = String(Date.now());
    }

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      cursors = [''];
      page = 0;
      try {
        await load();
      } catch (err) {
        if (err.status === undefined) throw err;
        showError(form, err);
      }
    });
    await load();
    return panel('Entries', form, holder, pager);
  },
};
