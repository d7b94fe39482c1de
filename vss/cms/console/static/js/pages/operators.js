// Operators of this console: administrators change everything, auditors read. Their
// sessions end when they are disabled, removed, or given a new role or password.

import {call, get} from '../api.js';
import {ago, badge, confirmDialog, dataTable, field, formDialog, h, panel} from '../ui.js';

const ROLES = [['administrator', 'Administrator \u2014 every change'], ['auditor', 'Auditor \u2014 reads only']];

async function edit(ctx, op) {
  const result = await formDialog({
    title: op ? `Edit ${op.username}` : 'Add an operator', submitLabel: op ? 'Save' : 'Add operator',
    fields: [
      op ? null : field({label: 'User name', name: 'username', required: true}),
      field({label: 'Role', name: 'role', type: 'select', options: ROLES, value: op?.role || 'auditor'}),
      field({label: op ? 'New password' : 'Password', name: 'password', type: 'password', required: !op,
             autocomplete: 'new-password', full: true,
             hint: op ? 'Leave empty to keep it. A new one ends their sessions.' : 'At least 10 characters. Kept only as a slow verifier.'}),
      field({label: 'Enabled', name: 'enabled', type: 'checkbox', value: op ? op.enabled : true,
             hint: op ? 'Disabling ends their sessions at once.' : null})],
    submit(v) {
      if (!op) return call('POST', '/operators', {username: v.username.trim(), role: v.role, password: v.password, enabled: v.enabled});
      const body = {role: v.role, enabled: v.enabled, version: op.version};
      if (v.password) body.password = v.password;
      return call('PATCH', `/operators/${encodeURIComponent(op.username)}`, body);
    },
  });
  if (result) {
    ctx.changed(`Operator ${result.data.username} saved`, result.seq);
    if (op && op.username === ctx.session.username) location.reload();
    else ctx.reload();
  }
}

async function remove(ctx, op) {
  if (!await confirmDialog(`Remove ${op.username}?`, 'Their sessions end at once.')) return;
  const {seq} = await call('DELETE', `/operators/${encodeURIComponent(op.username)}`);
  ctx.changed(`Operator ${op.username} removed`, seq);
  ctx.reload();
}

export default {
  title: 'Operators',
  async render(ctx) {
    const {items} = await get('/operators');
    if (ctx.canChange) ctx.actions.append(h('button', {type: 'button', id: 'add-operator', onclick: () => edit(ctx, null)}, '+ Add operator'));
    const columns = [
      {key: 'username', label: 'Operator', render: (o) => h('strong', {}, o.username, o.username === ctx.session.username ? h('span', {class: 'muted'}, ' (you)') : '')},
      {key: 'role', label: 'Role', render: (o) => badge(o.role, o.role === 'administrator' ? 'info' : '')},
      {key: 'enabled', label: 'Status', render: (o) => (o.enabled ? badge('enabled', 'ok') : badge('disabled', 'bad'))},
      {key: 'sessions', label: 'Sessions', num: true},
      {key: 'last_login', label: 'Last login', value: (o) => o.last_login || '', render: (o) => ago(o.last_login)},
      {key: 'changed', label: 'Changed', render: (o) => ago(o.changed)},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions', render: (o) => h('div', {class: 'row-actions'},
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Edit ${o.username}`, onclick: () => edit(ctx, o)}, 'Edit'),
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Remove ${o.username}`, onclick: () => remove(ctx, o)}, 'Remove'))});
    }
    return panel(`${items.length} operator${items.length === 1 ? '' : 's'}`,
      dataTable({caption: 'Operators', id: 'operators-table', rows: items, columns}));
  },
};
