// Stream credentials: long-lived, revocable credentials of a user for a device, for
// players that cannot log in (VLC, an NVR). The secret is shown once.

import {all, call} from '../api.js';
import {badge, confirmDialog, dataTable, field, formDialog, h, panel, secretDialog, when} from '../ui.js';

const EXPIRY = [['', 'Never'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days'], ['31536000', '1 year']];

async function create(ctx, users, devices) {
  const result = await formDialog({
    title: 'Make a stream credential', submitLabel: 'Make credential',
    intro: 'The user must be enabled and allowed to view the device; the credential stops working as soon as that is no longer so.',
    fields: [
      field({label: 'User', name: 'user', type: 'select', required: true, options: users.map((u) => [u.username, u.username])}),
      field({label: 'Device', name: 'device_id', type: 'select', required: true,
             options: devices.map((d) => [d.device_id, `${d.device_id} \u2014 ${d.name}`])}),
      field({label: 'Label', name: 'name', placeholder: 'VLC in the guard room'}),
      field({label: 'Expires after', name: 'expires_in', type: 'select', options: EXPIRY})],
    submit: (v) => call('POST', '/stream-credentials', {user: v.user, device_id: v.device_id, name: v.name.trim(),
                                                        expires_in: v.expires_in ? Number(v.expires_in) : undefined}),
  });
  if (!result) return;
  const c = result.data;
  await secretDialog(`Stream credential ${c.id}`,
    [...(c.url ? [['Stream URL', c.url]] : []), ['Digest user name', c.digest_user], ['Digest password', c.secret]],
    'Copy it now: the secret is shown only once. Any node serves the URL.');
  ctx.changed(`Stream credential ${c.id} made`, result.seq);
  ctx.reload();
}

async function revoke(ctx, c) {
  if (!await confirmDialog(`Revoke ${c.id}?`, 'Players using it stop within a second, on every node.', 'Revoke')) return;
  const {seq} = await call('DELETE', `/stream-credentials/${encodeURIComponent(c.id)}`);
  ctx.changed(`Stream credential ${c.id} revoked`, seq);
  ctx.reload();
}

export default {
  title: 'Stream credentials',
  async render(ctx) {
    const [creds, users, devices] = await Promise.all([all('/stream-credentials'), all('/users'), all('/devices')]);
    if (ctx.canChange) {
      ctx.actions.append(h('button', {type: 'button', id: 'add-credential', disabled: !users.length || !devices.length,
                                      onclick: () => create(ctx, users, devices)}, '+ Make credential'));
    }
    const kinds = {active: 'ok', expired: 'warn', revoked: 'bad'};
    const columns = [
      {key: 'id', label: 'ID', render: (c) => h('code', {}, c.id)},
      {key: 'user', label: 'User'},
      {key: 'device_id', label: 'Device'},
      {key: 'name', label: 'Label'},
      {key: 'state', label: 'State', render: (c) => badge(c.state, kinds[c.state])},
      {key: 'created', label: 'Created', render: (c) => when(c.created)},
      {key: 'expires', label: 'Expires', render: (c) => (c.expires ? when(c.expires) : 'never')},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions',
        render: (c) => (c.state === 'active' ? h('button', {type: 'button', class: 'ghost small', 'aria-label': `Revoke ${c.id}`,
                                                           onclick: () => revoke(ctx, c)}, 'Revoke') : '')});
    }
    return panel(`${creds.length} stream credential${creds.length === 1 ? '' : 's'}`,
      dataTable({caption: 'Stream credentials', id: 'credentials-table', rows: creds, columns,
                 empty: 'No stream credential yet.'}));
  },
};
