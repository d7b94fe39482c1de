// Users (the CU accounts of the nodes) and their groups. A grant to group:<name> applies
// to every member.

import {all, call} from '../api.js';
import {badge, confirmDialog, dataTable, field, formDialog, h, panel} from '../ui.js';

const groupList = (text) => [...new Set(text.split(',').map((g) => g.trim()).filter(Boolean))].sort();

async function addUser(ctx) {
  const result = await formDialog({
    title: 'Add a user', submitLabel: 'Add user',
    fields: [
      field({label: 'User name', name: 'username', required: true, autocomplete: 'off',
             hint: 'What the user signs in to a node with.'}),
      field({label: 'Password', name: 'password', type: 'password', required: true, autocomplete: 'new-password',
             hint: 'At least 8 characters. Kept only as a verifier.'}),
      field({label: 'Groups', name: 'groups', full: true, placeholder: 'operators, night-shift',
             hint: 'Comma-separated.'}),
      field({label: 'Enabled', name: 'enabled', type: 'checkbox', value: true})],
    submit: (v) => call('POST', '/users', {username: v.username.trim(), password: v.password,
                                           groups: groupList(v.groups), enabled: v.enabled}),
  });
  if (result) {
    ctx.changed(`User ${result.data.username} added`, result.seq);
    ctx.reload();
  }
}

async function editUser(ctx, user) {
  const result = await formDialog({
    title: `Edit ${user.username}`,
    fields: [
      field({label: 'Groups', name: 'groups', full: true, value: user.groups.join(', '), hint: 'Comma-separated.'}),
      field({label: 'New password', name: 'password', type: 'password', autocomplete: 'new-password',
             hint: 'Leave empty to keep the current one.'}),
      field({label: 'Enabled', name: 'enabled', type: 'checkbox', value: user.enabled,
             hint: 'Disabling a user ends their sessions on every node at once.'})],
    submit(v) {
      const body = {groups: groupList(v.groups), enabled: v.enabled, version: user.version};
      if (v.password) body.password = v.password;
      return call('PATCH', `/users/${encodeURIComponent(user.username)}`, body);
    },
  });
  if (result) {
    ctx.changed(`User ${user.username} saved`, result.seq);
    ctx.reload();
  }
}

async function removeUser(ctx, user) {
  if (!await confirmDialog(`Remove ${user.username}?`, 'Their grants and stream credentials go with them.')) return;
  const {seq} = await call('DELETE', `/users/${encodeURIComponent(user.username)}`);
  ctx.changed(`User ${user.username} removed`, seq);
  ctx.reload();
}

export default {
  title: 'Users & groups',
  async render(ctx) {
    const [users, grants] = await Promise.all([all('/users'), all('/grants')]);
    if (ctx.canChange) {
      ctx.actions.append(h('button', {type: 'button', id: 'add-user', onclick: () => addUser(ctx)}, '+ Add user'));
    }
    const grantCount = (principal) => grants.filter((g) => g.principal === principal).length;
    const search = h('input', {type: 'search', 'aria-label': 'Search users', placeholder: 'Search by name or group'});
    const columns = [
      {key: 'username', label: 'User', render: (u) => h('strong', {}, u.username)},
      {key: 'groups', label: 'Groups', value: (u) => u.groups.join(','),
       render: (u) => (u.groups.length ? u.groups.map((g) => h('span', {class: 'chip'}, g)) : h('span', {class: 'muted'}, 'none'))},
      {key: 'enabled', label: 'Status', value: (u) => (u.enabled ? 0 : 1),
       render: (u) => (u.enabled ? badge('enabled', 'ok') : badge('disabled', 'bad'))},
      {key: 'grants', label: 'Own grants', num: true, value: (u) => grantCount(`user:${u.username}`)},
      {key: 'version', label: 'Version', num: true},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions', render: (u) => h('div', {class: 'row-actions'},
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Edit ${u.username}`, onclick: () => editUser(ctx, u)}, 'Edit'),
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Remove ${u.username}`, onclick: () => removeUser(ctx, u)}, 'Remove'))});
    }
    const table = dataTable({caption: 'Users', id: 'users-table', rows: users, columns,
                             rowAttrs: (u) => ({dataset: {user: u.username}}), empty: 'No user yet.'});
    search.addEventListener('input', () => {
      const q = search.value.trim().toLowerCase();
      table.update(users.filter((u) => !q || `${u.username} ${u.groups.join(' ')}`.toLowerCase().includes(q)));
    });
    const groups = new Map();
    for (const u of users) for (const g of u.groups) groups.set(g, [...(groups.get(g) || []), u.username]);
    for (const g of grants) {
      if (g.principal.startsWith('group:') && !groups.has(g.principal.slice(6))) groups.set(g.principal.slice(6), []);
    }
    const groupRows = [...groups.entries()].map(([name, members]) => ({name, members, grants: grantCount(`group:${name}`)}));
    const groupTable = dataTable({caption: 'Groups', id: 'groups-table', rows: groupRows, pageSize: 10,
      empty: 'No group yet: give users groups, then grant cameras to a whole group.',
      columns: [
        {key: 'name', label: 'Group', render: (g) => h('strong', {}, g.name)},
        {key: 'members', label: 'Members', value: (g) => g.members.length, wrap: true,
         render: (g) => (g.members.length ? g.members.join(', ') : h('span', {class: 'muted'}, 'nobody'))},
        {key: 'grants', label: 'Grants', num: true},
        {key: 'open', label: '', sortable: false, render: (g) => h('a', {href: `#/grants?principal=group:${g.name}`}, 'Grants')},
      ]});
    return h('div', {class: 'columns'},
      panel(`${users.length} user${users.length === 1 ? '' : 's'}`, h('div', {class: 'toolbar'}, search), table),
      panel(`${groupRows.length} group${groupRows.length === 1 ? '' : 's'}`, groupTable));
  },
};
