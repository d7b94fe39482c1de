// Dashboard: nodes up and their load (heartbeats, MDP), devices online per node, how far
// each node is behind the change log, and the latest changes.

import {get, poll} from '../api.js';
import {ago, dataTable, dot, h, panel, when} from '../ui.js';

function tile(label, value, note, id) {
  return h('div', {class: 'tile-kpi', id},
    h('div', {class: 'label'}, label), h('div', {class: 'value'}, value),
    note ? h('div', {class: 'note'}, note) : null);
}

function nodeRows(status) {
  return status.nodes.map((n) => ({...n, lag: n.state === 'up' ? Math.max(0, status.head_seq - n.applied_seq) : null}));
}

export default {
  title: 'Dashboard',
  async render(ctx) {
    const [status, recent] = await Promise.all([
      get('/status'),
      get('/audit', {kind: 'change', limit: 8}).catch(() => ({items: []}))]);
    const root = h('div');

    function draw(status, recent) {
      const up = status.nodes.filter((n) => n.state === 'up').length;
      const behind = status.nodes.filter((n) => n.state === 'up' && n.applied_seq < status.head_seq).length;
      const tiles = h('div', {class: 'grid-tiles'},
        tile('Nodes up', [String(up), h('small', {}, ` / ${status.nodes.length}`)],
             up === status.nodes.length ? 'every node is connected' : `${status.nodes.length - up} down`, 'kpi-nodes'),
        tile('Devices online', [String(status.devices_online), h('small', {}, ` / ${status.devices}`)],
             `${status.devices_unassigned} without a home node`, 'kpi-devices'),
        tile('Change log', [`#${status.head_seq}`],
             behind ? `${behind} node(s) applying changes` : 'every node up has applied it', 'kpi-sync'),
        tile('Relayed requests', [String(status.routed ?? 0)], `${status.sync_changes ?? 0} changes from devices`));
      const nodes = dataTable({
        caption: 'Nodes', id: 'dashboard-nodes', rows: nodeRows(status), pageSize: 10,
        empty: 'No node has registered yet. Start one with twistd vss-node.',
        rowAttrs: (n) => ({dataset: {node: n.node_id}}),
        columns: [
          {key: 'node_id', label: 'Node', render: (n) => h('strong', {}, n.node_id)},
          {key: 'state', label: 'State', render: (n) => dot(n.state === 'up' ? 'ok' : 'bad', n.state)},
          {key: 'devices', label: 'Devices', num: true},
          {key: 'devices_online', label: 'Online', num: true},
          {key: 'cus', label: 'Clients', num: true, value: (n) => n.load?.cus ?? null},
          {key: 'streams', label: 'Streams', num: true, value: (n) => n.load?.streams ?? null},
          {key: 'cpu', label: 'CPU', num: true, value: (n) => (n.load?.cpu_permille ?? null),
           render: (n) => (n.load?.cpu_permille !== undefined ? `${(n.load.cpu_permille / 10).toFixed(1)} %` : '')},
          {key: 'bw', label: 'Bandwidth', num: true, value: (n) => n.load?.bandwidth_kbps ?? null,
           render: (n) => (n.load?.bandwidth_kbps !== undefined ? `${(n.load.bandwidth_kbps / 1000).toFixed(1)} Mbit/s` : '')},
          {key: 'lag', label: 'Sync lag', num: true,
           render: (n) => (n.lag === null ? '\u2014' : n.lag === 0 ? h('span', {class: 'status-ok'}, 'in sync')
             : `${n.lag} change${n.lag > 1 ? 's' : ''}`)},
          {key: 'last_seen', label: 'Last heartbeat', value: (n) => n.last_seen || 0,
           render: (n) => (n.last_seen ? ago(new Date(n.last_seen).toISOString()) : 'never')},
        ]});
      const changes = recent.items.length
        ? h('ul', {class: 'recent'}, recent.items.map((e) => h('li', {},
          h('div', {}, h('strong', {}, e.action), ' ', h('span', {class: 'muted'}, e.target)),
          h('div', {class: 'sub muted'}, `${e.actor} \u00b7 ${when(e.at)}`,
            e.status >= 400 ? h('span', {class: 'status-bad'}, ` \u00b7 refused (${e.status})`) : ''))))
        : h('p', {class: 'empty'}, 'No change yet.');
      root.replaceChildren(tiles, panel('Nodes', nodes),
        panel([h('span', {}, 'Recent changes'), h('span', {class: 'spacer'}),
               h('a', {href: '#/audit'}, 'Audit log')], h('div', {class: 'panel-body'}, changes)));
    }

    draw(status, recent);
    const timer = setInterval(async () => {
      if (!ctx.current() || !document.body.contains(root)) { clearInterval(timer); return; }
      try {
        draw(await poll('/status'), await poll('/audit', {kind: 'change', limit: 8}));
      } catch (e) { /* next time */ }
    }, 5000);
    return root;
  },
};
