// Grants as a matrix: users and groups (rows) x devices (columns); each cell shows the
// actions granted (View, PTZ, Config, Record) and opens an editor with an optional
// expiry (every node enforces it at that time).

import {all, call} from '../api.js';
import {dataTable, field, formDialog, fromLocalInput, h, localInput, panel, when} from '../ui.js';

const ACTIONS = [['view', 'V', 'View'], ['ptz', 'P', 'PTZ'], ['config', 'C', 'Config'], ['record', 'R', 'Record']];
const COLUMNS_PER_PAGE = 8;

function principalLabel(p) {
  const [kind, name] = [p.slice(0, p.indexOf(':')), p.slice(p.indexOf(':') + 1)];
  return h('span', {}, h('span', {class: 'kind'}, kind === 'group' ? 'group' : 'user'), name);
}

async function editCell(ctx, principal, device, grant) {
  const boxes = h('fieldset', {class: 'field full'}, h('legend', {}, 'Actions'),
    h('div', {class: 'kinds'}, ACTIONS.map(([key, , label]) => h('label', {class: 'check'},
      h('input', {type: 'checkbox', name: `a-${key}`, checked: !!grant && grant.actions.includes(key)}), label))),
    h('p', {class: 'field-error', hidden: true}));
  const result = await formDialog({
    title: `${principal} on ${device.device_id}`,
    intro: device.name && device.name !== device.device_id ? device.name : null,
    fields: [
      boxes,
      field({label: 'Until', name: 'expires', type: 'datetime-local', full: true, value: localInput(grant?.expires),
             hint: 'Optional: the grant stops applying at this time (your local time), on every node.'}),
    ],
    submitLabel: 'Save grant',
    async submit(v) {
      const actions = ACTIONS.map(([key]) => key).filter((key) => v[`a-${key}`]);
      if (!actions.length) {
        if (!grant) return {nothing: true};
        return {removed: true, ...(await call('DELETE', '/grants', undefined, {principal, device_id: device.device_id}))};
      }
      return call('PUT', '/grants', {principal, device_id: device.device_id, actions,
                                     expires: fromLocalInput(v.expires)});
    },
  });
  if (result && !result.nothing) {
    ctx.changed(result.removed ? `Grant of ${principal} on ${device.device_id} removed`
      : `${principal} granted ${result.data.actions.join(', ')} on ${device.device_id}`, result.seq);
    ctx.reload();
  }
}

function cell(ctx, principal, device, grant) {
  const now = Date.now();
  const expired = grant && grant.expires && new Date(grant.expires).getTime() <= now;
  const classes = ['cell', grant ? 'has' : '', grant?.expires ? 'expiring' : '', expired ? 'expired' : ''].join(' ');
  const granted = grant ? ACTIONS.filter(([k]) => grant.actions.includes(k)).map(([, , l]) => l) : [];
  const label = `${principal} on ${device.device_id}: ${granted.length ? granted.join(', ') : 'nothing'}`
    + (grant?.expires ? `${expired ? ', expired' : ', until'} ${when(grant.expires)}` : '');
  const content = [ACTIONS.map(([k, letter]) => h('span', {class: `a${grant && grant.actions.includes(k) ? ' on' : ''}`, 'aria-hidden': 'true'}, letter)),
    grant?.expires ? h('span', {class: 'clock', 'aria-hidden': 'true'}) : null];
  const attrs = {class: classes, 'aria-label': label, title: label,
                 dataset: {principal, device: device.device_id, actions: grant ? grant.actions.join(',') : ''}};
  if (!ctx.canChange) return h('span', {...attrs, role: 'img'}, content);
  return h('button', {...attrs, type: 'button', onclick: () => editCell(ctx, principal, device, grant)}, content);
}

export default {
  title: 'Grants',
  async render(ctx) {
    const [users, devices, grants] = await Promise.all([all('/users'), all('/devices'), all('/grants')]);
    const wanted = new URLSearchParams(location.hash.split('?')[1] || '').get('principal');
    const byKey = new Map(grants.map((g) => [`${g.principal}|${g.device_id}`, g]));
    const groups = new Set();
    for (const u of users) for (const g of u.groups) groups.add(g);
    for (const g of grants) if (g.principal.startsWith('group:')) groups.add(g.principal.slice(6));
    const principals = [...[...groups].sort().map((g) => `group:${g}`), ...users.map((u) => `user:${u.username}`)];

    const who = h('input', {type: 'search', id: 'grant-principal-filter', 'aria-label': 'Filter users and groups',
                            placeholder: 'Filter users and groups', value: wanted || ''});
    const what = h('input', {type: 'search', id: 'grant-device-filter', 'aria-label': 'Filter devices',
                             placeholder: 'Filter devices'});
    const onlyGranted = h('label', {class: 'check'}, h('input', {type: 'checkbox', id: 'grant-only'}), 'Only rows with grants');
    let columnPage = 0;
    const matrixHolder = h('div');

    function draw() {
      const q = who.value.trim().toLowerCase();
      const dq = what.value.trim().toLowerCase();
      const cols = devices.filter((d) => !dq || `${d.device_id} ${d.name}`.toLowerCase().includes(dq));
      const pages = Math.max(1, Math.ceil(cols.length / COLUMNS_PER_PAGE));
      columnPage = Math.min(columnPage, pages - 1);
      const shown = cols.slice(columnPage * COLUMNS_PER_PAGE, (columnPage + 1) * COLUMNS_PER_PAGE);
      let rows = principals.filter((p) => !q || p.toLowerCase().includes(q));
      if (onlyGranted.querySelector('input').checked) rows = rows.filter((p) => cols.some((d) => byKey.has(`${p}|${d.device_id}`)));
      const table = h('table', {class: 'matrix', id: 'grants-matrix'},
        h('caption', {class: 'sr-only'}, 'Grants of users and groups on devices'),
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'User or group'),
          shown.map((d) => h('th', {scope: 'col', dataset: {device: d.device_id}}, d.device_id,
                              h('span', {class: 'sub'}, d.name !== d.device_id ? d.name : ''))))),
        h('tbody', {}, rows.length && shown.length ? rows.map((p) => h('tr', {dataset: {principal: p}},
          h('th', {scope: 'row'}, principalLabel(p)),
          shown.map((d) => h('td', {}, cell(ctx, p, d, byKey.get(`${p}|${d.device_id}`))))))
          : h('tr', {}, h('td', {class: 'empty', colspan: shown.length + 1},
                          !devices.length ? 'Add devices first.' : !principals.length ? 'Add users first.' : 'Nothing matches.'))));
      const pager = h('div', {class: 'pager'},
        h('span', {}, `Devices ${cols.length ? columnPage * COLUMNS_PER_PAGE + 1 : 0}\u2013${columnPage * COLUMNS_PER_PAGE + shown.length} of ${cols.length}`),
        h('span', {class: 'spacer'}),
        h('button', {type: 'button', class: 'ghost', disabled: columnPage === 0, onclick: () => { columnPage -= 1; draw(); }}, 'Previous devices'),
        h('button', {type: 'button', class: 'ghost', disabled: columnPage >= pages - 1, onclick: () => { columnPage += 1; draw(); }}, 'Next devices'));
      matrixHolder.replaceChildren(h('div', {class: 'matrix-wrap'}, table), pager);
    }
    for (const el of [who, what]) el.addEventListener('input', () => { columnPage = 0; draw(); });
    onlyGranted.addEventListener('change', draw);
    draw();

    const legend = h('div', {class: 'legend panel-body'},
      ACTIONS.map(([, letter, label]) => h('span', {}, h('strong', {}, letter), ` ${label}`)),
      h('span', {}, h('span', {class: 'clock', 'aria-hidden': 'true'}), ' has an expiry'),
      ctx.canChange ? h('span', {}, 'Select a cell to change it.') : null);
    const list = dataTable({caption: 'Every grant', id: 'grants-list', rows: grants, pageSize: 15,
      columns: [
        {key: 'principal', label: 'User or group'},
        {key: 'device_id', label: 'Device'},
        {key: 'actions', label: 'Actions', value: (g) => g.actions.join(', ')},
        {key: 'expires', label: 'Until', value: (g) => g.expires || '',
         render: (g) => (g.expires ? h('span', {class: g.expired ? 'status-bad' : ''}, `${when(g.expires)}${g.expired ? ' (expired)' : ''}`) : h('span', {class: 'muted'}, 'no expiry'))},
      ], empty: 'No grant yet.'});
    return h('div', {},
      panel('Matrix', h('div', {class: 'toolbar'}, who, what, onlyGranted), legend, matrixHolder),
      panel(`${grants.length} grant${grants.length === 1 ? '' : 's'}`, list));
  },
};
