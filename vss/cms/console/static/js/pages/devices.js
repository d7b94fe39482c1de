// Devices: agent PUs and real RTSP cameras (by URL; the credentials are sent once and
// never shown back), edited, moved to another home node, enabled or disabled, removed.

import {all, call, get} from '../api.js';
import {badge, confirmDialog, dataTable, dot, field, formDialog, h, panel} from '../ui.js';

const KINDS = [['ipc', 'IP camera'], ['dvs', 'Encoder (DVS)'], ['dvr', 'Recorder (DVR)']];

// rtsp://host/path + user + password -> rtsp://user:password@host/path
export function cameraUrl(url, user, password) {
  if (!url) return url;
  if (!user && !password) return url;
  const m = /^(rtsps?:\/\/)(?:[^@/]*@)?(.*)$/i.exec(url.trim());
  if (!m) return url;
  return `${m[1]}${encodeURIComponent(user || '')}:${encodeURIComponent(password || '')}@${m[2]}`;
}

function nodeOptions(nodes, auto) {
  return [...(auto ? [['', 'Automatic (least loaded node)']] : []),
          ...nodes.map((n) => [n.node_id, `${n.node_id}${n.state === 'up' ? '' : ' (down)'}`])];
}

function sourceFields(device) {
  const hasUrl = device && device.source_url;
  return [
    field({label: 'RTSP URL', name: 'source_url', full: true, value: hasUrl ? device.source_url : '',
           placeholder: 'rtsp://192.0.2.10:554/stream1',
           hint: device ? 'Shown with its credentials masked. Leave it as it is to keep them.'
             : 'The camera\u2019s stream address, without the credentials.'}),
    field({label: 'Camera user name', name: 'camera_user', autocomplete: 'off',
           hint: device ? 'Only to set new credentials.' : null}),
    field({label: 'Camera password', name: 'camera_password', type: 'password', autocomplete: 'new-password'}),
  ];
}

async function addDevice(ctx, nodes) {
  const kindChoice = h('fieldset', {class: 'field full'},
    h('legend', {}, 'What to add'),
    h('div', {class: 'segmented', role: 'radiogroup'},
      h('label', {}, h('input', {type: 'radio', name: 'what', value: 'camera', checked: true}), 'RTSP camera'),
      h('label', {}, h('input', {type: 'radio', name: 'what', value: 'agent'}), 'vss-pu agent')));
  const cameraBlock = h('div', {class: 'form full', id: 'camera-fields'}, sourceFields(null));
  const agentBlock = h('div', {class: 'form full', id: 'agent-fields', hidden: true},
    field({label: 'Device secret', name: 'secret', type: 'password', full: true, autocomplete: 'new-password',
           hint: 'What the vss-pu agent logs in with (at least 8 characters). It is kept only as a verifier.'}));
  kindChoice.addEventListener('change', (e) => {
    const agent = e.target.value === 'agent';
    agentBlock.hidden = !agent;
    cameraBlock.hidden = agent;
  });
  const result = await formDialog({
    title: 'Add a device', submitLabel: 'Add device',
    fields: [
      kindChoice,
      field({label: 'Device ID', name: 'device_id', required: true, placeholder: 'cam-entrance',
             hint: 'Letters, digits, . _ : - ; cannot be changed later.'}),
      field({label: 'Name', name: 'name', placeholder: 'Entrance'}),
      field({label: 'Kind', name: 'kind', type: 'select', options: KINDS, value: 'ipc'}),
      field({label: 'Channels', name: 'channels', type: 'number', value: '1', min: 1, max: 65535}),
      field({label: 'Home node', name: 'home_node', type: 'select', options: nodeOptions(nodes, true), full: true}),
      cameraBlock, agentBlock],
    async submit(v) {
      const body = {device_id: v.device_id.trim(), name: v.name.trim() || undefined, kind: v.kind,
                    channels: Number(v.channels) || 1, home_node: v.home_node || undefined};
      if (v.what === 'agent') body.secret = v.secret;
      else body.source_url = cameraUrl(v.source_url.trim(), v.camera_user, v.camera_password);
      const {data, seq} = await call('POST', '/devices', body);
      return {data, seq};
    },
  });
  if (result) {
    ctx.changed(`Device ${result.data.device_id} added`, result.seq);
    ctx.reload();
  }
}

async function editDevice(ctx, device, nodes) {
  const result = await formDialog({
    title: `Edit ${device.device_id}`,
    fields: [
      field({label: 'Name', name: 'name', value: device.name, required: true}),
      field({label: 'Channels', name: 'channels', type: 'number', value: String(device.channels), min: 1, max: 65535}),
      field({label: 'Home node', name: 'home_node', type: 'select', value: device.home_node,
             options: nodeOptions(nodes, false).concat(device.home_node ? [] : [['', '(none)']]),
             hint: 'Moving a device sends its agent to the new node.'}),
      field({label: 'Enabled', name: 'enabled', type: 'checkbox', value: device.enabled,
             hint: 'A disabled device may not log in and is not pulled.'}),
      ...(device.source_url ? sourceFields(device) : [
        field({label: 'New device secret', name: 'secret', type: 'password', full: true, autocomplete: 'new-password',
               hint: device.secret_set ? 'A secret is set. Fill this in only to replace it.' : 'No secret is set.'})]),
    ],
    async submit(v) {
      const body = {name: v.name, channels: Number(v.channels), enabled: v.enabled, version: device.version};
      if (v.home_node && v.home_node !== device.home_node) body.home_node = v.home_node;
      if (device.source_url) {
        const url = v.source_url.trim();
        if (v.camera_user || v.camera_password) body.source_url = cameraUrl(url.replace(/\/\/[^@/]*@/, '//'), v.camera_user, v.camera_password);
        else if (url !== device.source_url) body.source_url = url;
      } else if (v.secret) {
        body.secret = v.secret;
      }
      return call('PATCH', `/devices/${encodeURIComponent(device.device_id)}`, body);
    },
  });
  if (result) {
    ctx.changed(`Device ${device.device_id} saved`, result.seq);
    ctx.reload();
  }
}

async function toggle(ctx, device) {
  const {seq} = await call('PATCH', `/devices/${encodeURIComponent(device.device_id)}`,
                           {enabled: !device.enabled, version: device.version});
  ctx.changed(`Device ${device.device_id} ${device.enabled ? 'disabled' : 'enabled'}`, seq);
  ctx.reload();
}

async function remove(ctx, device) {
  if (!await confirmDialog(`Remove ${device.device_id}?`,
    'Its grants, stream credentials and recording settings go with it. Recordings already made stay on the nodes.')) return;
  const {seq} = await call('DELETE', `/devices/${encodeURIComponent(device.device_id)}`);
  ctx.changed(`Device ${device.device_id} removed`, seq);
  ctx.reload();
}

export default {
  title: 'Devices',
  async render(ctx) {
    const [devices, nodes, status] = await Promise.all([all('/devices'), all('/nodes'), get('/status')]);
    const online = new Set(status.online || []);
    if (ctx.canChange) {
      ctx.actions.append(h('button', {type: 'button', id: 'add-device', onclick: () => addDevice(ctx, nodes)},
                           '+ Add device'));
    }
    const search = h('input', {type: 'search', id: 'device-search', 'aria-label': 'Search devices',
                               placeholder: 'Search by ID, name or node'});
    const homeFilter = h('select', {id: 'device-node-filter', 'aria-label': 'Home node'},
      h('option', {value: ''}, 'All nodes'), nodes.map((n) => h('option', {value: n.node_id}, n.node_id)),
      h('option', {value: '-'}, 'No home node'));
    const columns = [
      {key: 'device_id', label: 'Device', render: (d) => h('div', {}, h('strong', {}, d.device_id),
        h('div', {class: 'sub'}, d.name))},
      {key: 'status', label: 'Status', value: (d) => (!d.enabled ? 2 : online.has(d.device_id) ? 0 : 1),
       render: (d) => (!d.enabled ? dot('', 'disabled') : online.has(d.device_id) ? dot('ok', 'online') : dot('bad', 'offline'))},
      {key: 'kind', label: 'Kind', render: (d) => (d.source_url ? 'RTSP camera' : `${d.kind.toUpperCase()} agent`)},
      {key: 'channels', label: 'Channels', num: true},
      {key: 'home_node', label: 'Home node', render: (d) => d.home_node || h('span', {class: 'muted'}, 'none')},
      {key: 'source_url', label: 'Source', render: (d) => (d.source_url ? h('code', {}, d.source_url)
        : d.secret_set ? badge('secret set', 'ok') : badge('no secret', 'warn'))},
    ];
    if (ctx.canChange) {
      columns.push({key: 'actions', label: 'Actions', sortable: false, class: 'actions', render: (d) => h('div', {class: 'row-actions'},
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Edit ${d.device_id}`,
                     onclick: () => editDevice(ctx, d, nodes)}, 'Edit'),
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `${d.enabled ? 'Disable' : 'Enable'} ${d.device_id}`,
                     onclick: () => toggle(ctx, d)}, d.enabled ? 'Disable' : 'Enable'),
        h('button', {type: 'button', class: 'ghost small', 'aria-label': `Remove ${d.device_id}`,
                     onclick: () => remove(ctx, d)}, 'Remove'))});
    }
    const table = dataTable({caption: 'Devices', id: 'devices-table', rows: devices, columns,
                             rowAttrs: (d) => ({dataset: {device: d.device_id}}),
                             empty: ctx.canChange ? 'No device yet: add a camera or an agent.' : 'No device yet.'});
    function filter() {
      const q = search.value.trim().toLowerCase();
      const home = homeFilter.value;
      table.update(devices.filter((d) => (!q || `${d.device_id} ${d.name} ${d.home_node}`.toLowerCase().includes(q))
        && (!home || (home === '-' ? !d.home_node : d.home_node === home))));
    }
    search.addEventListener('input', filter);
    homeFilter.addEventListener('change', filter);
    return panel(`${devices.length} device${devices.length === 1 ? '' : 's'}`,
      h('div', {class: 'toolbar'}, search, homeFilter), table);
  },
};
