// Nodes: the registry of VSS nodes (a node registers itself when it connects; an
// operator may add one ahead, change its addresses or remove it).

import {all, call, get} from '../api.js';
import {ago, confirmDialog, dataTable, dot, field, formDialog, h, panel} from '../ui.js';

async function editNode(ctx, node) {
  const result = await formDialog({
    title: node ? `Edit ${node.node_id}` : 'Add a node',
    submitLabel: node ? 'Save' : 'Add node',
    intro: 'A node registers itself and its addresses when it connects; add one here to plan ahead.',
    fields: [
      field({label: 'Node ID', name: 'node_id', required: true, value: node?.node_id, readonly: !!node}),
      field({label: 'Capacity', name: 'capacity', type: 'number', value: String(node?.capacity ?? 0), min: 0,
             hint: '0: no limit.'}),
      field({label: 'Signalling endpoint', name: 'signalling', value: node?.signalling, placeholder: 'tcp:192.0.2.20:7102', full: true}),
      field({label: 'Media base URL', name: 'media', value: node?.media, placeholder: 'rtsp://192.0.2.20:7103', full: true}),
    ],
    submit: (v) => call('POST', '/nodes', {node_id: v.node_id.trim(), signalling: v.signalling.trim(),
                                           media: v.media.trim(), capacity: Number(v.capacity) || 0}),
  });
  if (result) {
    ctx.changed(`Node ${result.data.node_id} saved`, result.seq);
    ctx.reload();
  }
}

async function removeNode(ctx, node) {
  if (!await confirmDialog(`Remove ${node.node_id}?`,
    node.devices ? `${node.devices} device(s) are homed on it: they will have no home node until moved.`
      : 'No device is homed on it.')) return;
  const {seq} = await call('DELETE', `/nodes/${encodeURIComponent(node.node_id)}`, undefined, {force: node.devices ? 'true' : undefined});
  ctx.changed(`Node ${node.node_id} removed`, seq);
  ctx.reload();
}

export default {
  title: 'Nodes',
  async render(ctx) {
    const [nodes, status] = await Promise.all([all('/nodes'), get('/status')]);
    const live = new Map(status.nodes.map((n) => [n.node_id, n]));
    const rows = nodes.map((n) => ({...n, ...(live.get(n.node_id) || {}), devices: live.get(n.node_id)?.devices ?? 0}));
    if (ctx.canChange) ctx.actions.append(h('button', {type: 'button', id: 'add-node', onclick: () => editNode(ctx, null)}, '+ Add node'));
    const columns = [
      {key: 'node_id', label: 'Node', render: (n) => h('strong', {}, n.node_id)},
      {key: 'state', label: 'State', render: (n) => dot(n.state === 'up' ? 'ok' : 'bad', n.state)},
      {key: 'signalling', label: 'Signalling', render: (n) => h('code', {}, n.signalling || '\u2014')},
      {key: 'media', label: 'Media', render: (n) => h('code', {}, n.media || '\u2014')},
      {key: 'capacity', label: 'Capacity', num: true},
      {key: 'devices', label: 'Devices', num: true},
      {key: 'applied_seq', label: 'Applied', num: true, render: (n) => `#${n.applied_seq}`},
      {key: 'last_seen', label: 'Last heartbeat', render: (n) => (n.last_seen ? ago(new Date(n.last_seen).toISOString()) : 'never')},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions', render: (n) => h('div', {class: 'row-actions'},
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Edit ${n.node_id}`, onclick: () => editNode(ctx, n)}, 'Edit'),
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Remove ${n.node_id}`, onclick: () => removeNode(ctx, n)}, 'Remove'))});
    }
    // MDP's view: each streaming server of each node that is up, the one a new stream goes to marked
    const servers = rows.flatMap((n) => (n.servers || []).map((s) => ({...s, node_id: n.node_id, key: `${n.node_id}/${s.ss_id}`})));
    const serverColumns = [
      {key: 'node_id', label: 'Node'},
      {key: 'ss_id', label: 'Streaming server', render: (s) => h('strong', {}, s.ss_id)},
      {key: 'state', label: 'State', render: (s) => dot(s.state === 'up' ? 'ok' : 'bad', s.state)},
      {key: 'media', label: 'Media', render: (s) => h('code', {}, s.media || '\u2014')},
      {key: 'streams', label: 'Streams', num: true},
      {key: 'viewers', label: 'Viewers', num: true},
      {key: 'bandwidth_kbps', label: 'Mb/s out', num: true, render: (s) => (s.bandwidth_kbps / 1000).toFixed(1)},
      {key: 'cpu_permille', label: 'CPU', num: true, render: (s) => `${Math.round(s.cpu_permille / 10)} %`},
      {key: 'chosen', label: 'MDP\u2019s choice', render: (s) => (s.chosen ? 'next stream' : '')},
    ];
    return h('div', {},
      panel(`${nodes.length} node${nodes.length === 1 ? '' : 's'} \u00b7 change log at #${status.head_seq}`,
        dataTable({caption: 'Nodes', id: 'nodes-table', rows, columns, rowAttrs: (n) => ({dataset: {node: n.node_id}}),
                   empty: 'No node yet.'})),
      panel('Streaming servers (MDP)',
        dataTable({caption: 'Streaming servers', id: 'servers-table', rows: servers, columns: serverColumns,
                   rowAttrs: (s) => ({dataset: {server: s.key}}), empty: 'No streaming server reported yet.'})));
  },
};
