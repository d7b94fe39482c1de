// Recording settings of a device's channel, with a weekly schedule editor: the same
// settings and slots as `vss-admin record-settings` (days mon..sun, HH:MM in UTC, in
// half-hour steps here). Saving reaches the device's home node by passive sync.

import {all, call, get} from '../api.js';
import {field, h, panel, showError, clearErrors, values} from '../ui.js';

const DAYS = [['mon', 'Monday'], ['tue', 'Tuesday'], ['wed', 'Wednesday'], ['thu', 'Thursday'],
              ['fri', 'Friday'], ['sat', 'Saturday'], ['sun', 'Sunday']];
const STEP = 30; // minutes per cell
const CELLS = (24 * 60) / STEP;
const hhmm = (m) => `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
const minutes = (t) => { const [a, b] = t.split(':').map(Number); return a * 60 + b; };

// slots [{day, start, end}] <-> a 7 x 48 grid of booleans
export function toGrid(slots) {
  const grid = DAYS.map(() => new Array(CELLS).fill(false));
  for (const s of slots || []) {
    const d = DAYS.findIndex(([k]) => k === s.day);
    if (d < 0) continue;
    for (let c = Math.floor(minutes(s.start) / STEP); c < Math.ceil(minutes(s.end) / STEP); c += 1) grid[d][c] = true;
  }
  return grid;
}
export function toSlots(grid) {
  const slots = [];
  grid.forEach((cells, d) => {
    let start = null;
    for (let c = 0; c <= CELLS; c += 1) {
      const on = c < CELLS && cells[c];
      if (on && start === null) start = c;
      if (!on && start !== null) {
        slots.push({day: DAYS[d][0], start: hhmm(start * STEP), end: hhmm(c * STEP)});
        start = null;
      }
    }
  });
  return slots;
}

function weekEditor(slots, readOnly, onChange) {
  const grid = toGrid(slots);
  const el = h('div', {class: 'week', role: 'grid', 'aria-label': 'Weekly schedule (UTC): select the half hours to record',
                       id: 'week-grid'});
  el.append(h('span', {}), ...Array.from({length: 12}, (_, i) => h('span', {class: 'hours', 'aria-hidden': 'true'}, `${String(i * 2).padStart(2, '0')}:00`)));
  let painting = null;
  const buttons = [];
  DAYS.forEach(([key, name], d) => {
    el.append(h('span', {class: 'day', id: `day-${key}`}, name.slice(0, 3)));
    buttons[d] = [];
    for (let c = 0; c < CELLS; c += 1) {
      const b = h('button', {type: 'button', class: 'slot', 'aria-pressed': String(grid[d][c]),
                             'aria-label': `${name} ${hhmm(c * STEP)} to ${hhmm((c + 1) * STEP)}`,
                             dataset: {day: key, cell: String(c)}, disabled: readOnly});
      const set = (on) => {
        grid[d][c] = on;
        b.setAttribute('aria-pressed', String(on));
      };
      b.addEventListener('pointerdown', (e) => {
        if (readOnly) return;
        e.preventDefault();
        painting = !grid[d][c];
        set(painting);
        onChange();
      });
      b.addEventListener('pointerenter', () => {
        if (painting !== null && !readOnly) { set(painting); onChange(); }
      });
      b.addEventListener('keydown', (e) => {
        if (readOnly) return;
        if (e.key === ' ' || e.key === 'Enter') { e.preventDefault(); set(!grid[d][c]); onChange(); }
      });
      buttons[d][c] = b;
      el.append(b);
    }
  });
  window.addEventListener('pointerup', () => { painting = null; }, {once: false});
  el.setAll = (f) => {
    DAYS.forEach((_, d) => { for (let c = 0; c < CELLS; c += 1) { grid[d][c] = f(d, c); buttons[d][c].setAttribute('aria-pressed', String(grid[d][c])); } });
    onChange();
  };
  el.slots = () => toSlots(grid);
  return el;
}

function summary(slots) {
  if (!slots.length) return 'No slot selected.';
  const hours = slots.reduce((t, s) => t + (minutes(s.end) - minutes(s.start)), 0) / 60;
  return `${slots.length} slot${slots.length > 1 ? 's' : ''}, ${hours} hours a week.`;
}

async function editor(ctx, device, channel) {
  const s = await get(`/devices/${encodeURIComponent(device.device_id)}/record-settings/${channel}`);
  const ro = !ctx.canChange;
  const summaryEl = h('span', {class: 'week-summary', id: 'week-summary'});
  const week = weekEditor(s.schedule, ro, () => { summaryEl.textContent = summary(week.slots()); });
  summaryEl.textContent = summary(s.schedule);
  const opts = (xs) => xs.map((x) => [x, x[0].toUpperCase() + x.slice(1)]);
  const form = h('form', {class: 'form four', id: 'record-form', novalidate: true},
    field({label: 'Mode', name: 'mode', type: 'select', value: s.mode, disabled: ro,
           options: opts(['off', 'continuous', 'schedule', 'event', 'manual']),
           hint: 'Schedule: during the slots below.'}),
    field({label: 'Stream', name: 'stream', type: 'select', value: s.stream, disabled: ro, options: [['main', 'Main'], ['sub', 'Sub']]}),
    field({label: 'Segment length (seconds)', name: 'segment_seconds', type: 'number', value: String(s.segment_seconds), min: 1, max: 86400, readonly: ro}),
    field({label: 'Keep for (days)', name: 'retention_days', type: 'number', value: String(s.retention_days), min: 0, max: 36500, readonly: ro,
           hint: '0: the node\u2019s default.'}),
    field({label: 'Quota (MB)', name: 'quota_mb', type: 'number', value: String(s.quota_mb), min: 0, readonly: ro, hint: '0: no quota of its own.'}),
    field({label: 'Before an event (seconds)', name: 'pre_event_seconds', type: 'number', value: String(s.pre_event_seconds), min: 0, max: 3600, readonly: ro}),
    field({label: 'After an event (seconds)', name: 'post_event_seconds', type: 'number', value: String(s.post_event_seconds), min: 0, max: 3600, readonly: ro}),
    h('div', {class: 'field full'},
      h('span', {class: 'muted', id: 'schedule-label'}, 'Weekly schedule (UTC)'),
      ro ? null : h('div', {class: 'week-tools'},
        h('button', {type: 'button', class: 'ghost small', onclick: () => week.setAll(() => true)}, 'Every hour'),
        h('button', {type: 'button', class: 'ghost small', id: 'preset-business',
                     onclick: () => week.setAll((d, c) => d < 5 && c >= 16 && c < 36)}, 'Weekdays 08:00\u201318:00'),
        h('button', {type: 'button', class: 'ghost small', onclick: () => week.setAll((d, c) => c >= 36 || c < 14)}, 'Nights 18:00\u201307:00'),
        h('button', {type: 'button', class: 'ghost small', onclick: () => week.setAll(() => false)}, 'Clear'),
        summaryEl),
      h('div', {class: 'week-wrap'}, week),
      ro ? summaryEl : null,
      h('input', {type: 'hidden', name: 'schedule'}),
      h('p', {class: 'field-error', hidden: true})),
    ro ? null : h('div', {class: 'full'}, h('button', {type: 'submit', id: 'save-record'}, 'Save recording settings')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(form);
    const v = values(form);
    const body = {mode: v.mode, stream: v.stream, schedule: week.slots()};
    for (const k of ['segment_seconds', 'retention_days', 'quota_mb', 'pre_event_seconds', 'post_event_seconds']) body[k] = Number(v[k]);
    try {
      const {seq} = await call('PUT', `/devices/${encodeURIComponent(device.device_id)}/record-settings/${channel}`, body);
      ctx.changed(`Recording of ${device.device_id} channel ${channel} saved`, seq);
    } catch (err) {
      if (err.status === undefined) throw err;
      showError(form, err);
    }
  });
  const reported = s.reported && Object.keys(s.reported).length
    ? h('details', {class: 'panel-body'}, h('summary', {}, 'What the device reported'), h('pre', {class: 'mono'}, JSON.stringify(s.reported, null, 1)))
    : null;
  return [h('div', {class: 'panel-body'}, form), reported];
}

export default {
  title: 'Recording',
  async render(ctx) {
    const devices = await all('/devices');
    if (!devices.length) return panel('Recording settings', h('p', {class: 'empty'}, 'Add devices first.'));
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    const deviceSel = h('select', {id: 'record-device', name: 'device'},
      devices.map((d) => h('option', {value: d.device_id, selected: d.device_id === params.get('device')}, `${d.device_id} \u2014 ${d.name}`)));
    const channelSel = h('select', {id: 'record-channel', name: 'channel'});
    const holder = h('div');
    const pick = h('div', {class: 'toolbar'},
      h('div', {class: 'field'}, h('label', {for: 'record-device'}, 'Device'), deviceSel),
      h('div', {class: 'field'}, h('label', {for: 'record-channel'}, 'Channel'), channelSel));
    async function load() {
      const device = devices.find((d) => d.device_id === deviceSel.value);
      const keep = channelSel.value;
      channelSel.replaceChildren(...Array.from({length: device.channels}, (_, i) => h('option', {value: String(i)}, `Channel ${i}`)));
      if (keep && Number(keep) < device.channels) channelSel.value = keep;
      holder.replaceChildren(h('p', {class: 'muted panel-body'}, 'Loading\u2026'));
      holder.replaceChildren(...(await editor(ctx, device, Number(channelSel.value || 0))).filter(Boolean));
      document.body.dataset.recordLoaded = `${device.device_id}/${channelSel.value}`;
    }
    deviceSel.addEventListener('change', () => { channelSel.value = '0'; load(); });
    channelSel.addEventListener('change', load);
    await load();
    return panel('Recording settings', pick, holder);
  },
};
