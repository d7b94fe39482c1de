// API tokens: the bearer secrets of scripts and vss-admin (shown once, when made;
// revoked at once).

import {call, get} from '../api.js';
import {ago, badge, confirmDialog, dataTable, field, formDialog, h, panel, secretDialog, when} from '../ui.js';

const EXPIRY = [['', 'Never'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days'],
                ['7776000', '90 days'], ['31536000', '1 year']];

async function create(ctx) {
  const result = await formDialog({
    title: 'Create an API token', submitLabel: 'Create token',
    fields: [
      field({label: 'Name', name: 'name', required: true, placeholder: 'backup-script',
             hint: 'Who or what uses it: it names the changes made with it in the audit log.'}),
      field({label: 'Expires after', name: 'expires_in', type: 'select', options: EXPIRY, value: '7776000'})],
    submit: (v) => call('POST', '/tokens', {name: v.name.trim(), expires_in: v.expires_in ? Number(v.expires_in) : undefined}),
  });
  if (!result) return;
  await secretDialog(`Token ${result.data.name}`, [['Token', result.data.token]],
    'Copy it now: it is shown only once. Scripts send it as "Authorization: Bearer <token>"; vss-admin reads it from VSS_ADMIN_TOKEN or --token-file.');
  ctx.changed(`API token ${result.data.name} created`, result.seq);
  ctx.reload();
}

async function revoke(ctx, t) {
  if (!await confirmDialog(`Revoke token ${t.name}?`, 'Scripts using it are refused from now on.', 'Revoke')) return;
  try {
    const {seq} = await call('DELETE', `/tokens/${t.id}`);
    ctx.changed(`API token ${t.name} revoked`, seq);
  } catch (e) {
    if (e.status !== 409) throw e;
    if (!await confirmDialog('It is the last valid token', `${e.message}.`, 'Revoke anyway')) return;
    const {seq} = await call('DELETE', `/tokens/${t.id}`, undefined, {force: 'true'});
    ctx.changed(`API token ${t.name} revoked`, seq);
  }
  ctx.reload();
}

export default {
  title: 'API tokens',
  async render(ctx) {
    const {items} = await get('/tokens');
    if (ctx.canChange) ctx.actions.append(h('button', {type: 'button', id: 'add-token', onclick: () => create(ctx)}, '+ Create token'));
    const kinds = {active: 'ok', expired: 'warn', revoked: 'bad'};
    const columns = [
      {key: 'id', label: 'ID', num: true},
      {key: 'name', label: 'Name', render: (t) => h('strong', {}, t.name)},
      {key: 'state', label: 'State', render: (t) => badge(t.state, kinds[t.state])},
      {key: 'created', label: 'Created', render: (t) => when(t.created)},
      {key: 'expires', label: 'Expires', render: (t) => (t.expires ? when(t.expires) : 'never')},
      {key: 'last_used', label: 'Last used', render: (t) => ago(t.last_used)},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions',
        render: (t) => (t.state === 'active' ? h('button', {type: 'button', class: 'ghost small', 'aria-label': `Revoke token ${t.name}`,
                                                           onclick: () => revoke(ctx, t)}, 'Revoke') : '')});
    }
    return panel(`${items.filter((t) => t.state === 'active').length} active token(s)`,
      dataTable({caption: 'API tokens', id: 'tokens-table', rows: items, columns, sortKey: 'id', sortDir: -1}));
  },
};
