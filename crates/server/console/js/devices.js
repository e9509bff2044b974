// The tenant's devices: when each was last seen, pushed and pulled, its pending rows and
// client version; admins revoke a device (after a confirmation).

import {badge, busy, confirmDialog, empty, enc, failure, h, number, table, when} from './dom.js';

export function render(ctx, root) {
  let devices = [];
  const problem = h('div');
  const note = h('div');
  const columns = [
    {label: 'Device', cell: (d) => [h('strong', {}, d.name), h('br'), h('code', {class: 'muted'}, d.device_id)]},
    {label: 'Last seen', cell: (d) => when(d.last_seen_at)},
    {label: 'Last push', cell: (d) => when(d.last_push_at)},
    {label: 'Last pull', cell: (d) => when(d.last_pull_at)},
    {label: 'Pending rows', class: 'num', cell: (d) => d.pending > 0 ? h('strong', {}, number(d.pending)) : '0'},
    {label: 'Client', cell: (d) => d.version ?? h('span', {class: 'muted'}, 'unknown')},
    {label: 'Status', cell: (d) => statusCell(ctx, d, revoke)},
  ];
  const list = table({caption: `Devices of tenant ${ctx.me.tenant}`, columns, rows: [], key: (d) => d.device_id});
  root.append(
    h('h1', {}, 'Devices'),
    h('p', {class: 'lead'}, 'Every request a device makes checks it in. Pending rows are the changes it still had to push when it last pushed.'),
    problem, list.element, note);

  const redraw = () => {
    list.fill(devices);
    list.element.hidden = devices.length === 0;
    note.replaceChildren(devices.length ? '' : empty(
      'No device has paired yet. Make a one-time code with `ferry pair-code`, then pair a device with ',
      '`ferry agent pair --server URL --code CODE --db app.sqlite --name "Till 1"`; it shows up here at once.'));
  };

  const refresh = async () => {
    try {
      devices = (await ctx.api.get('/api/admin/devices')).devices;
      problem.replaceChildren();
      redraw();
    } catch (error) {
      problem.replaceChildren(failure(error, refresh));
    }
  };

  async function revoke(device, button) {
    const confirmed = await confirmDialog({
      title: `Revoke ${device.name}?`,
      text: 'Its token stops working at once: the device can no longer push or pull until it is paired again with a new code. What it already synced stays.',
      confirm: 'Revoke device',
    });
    if (!confirmed) {
      button.focus();
      return;
    }
    await busy(button, async () => {
      try {
        await ctx.api.delete(`/api/admin/devices/${enc(device.device_id)}`);
        ctx.notify(`${device.name} was revoked. Pair it again with a new code to let it sync.`);
        await refresh();
      } catch (error) {
        ctx.notify(`${device.name} was not revoked: ${error.message} ${error.hint}`, 'error');
      }
    });
  }

  refresh();
  return {
    refresh,
    onEvent(name, data) {
      if (name !== 'device') return;
      const index = devices.findIndex((d) => d.device_id === data.device_id);
      if (index >= 0) devices[index] = data;
      else devices.push(data);
      if (devices.length === 1) redraw();
      list.put(data).classList.add('fresh');
    },
  };
}

function statusCell(ctx, device, revoke) {
  if (device.revoked_at) return [badge('revoked'), ' ', when(device.revoked_at)];
  const parts = [badge('active')];
  if (ctx.can('admin')) {
    const button = h('button', {type: 'button', class: 'danger-quiet small', 'aria-label': `Revoke ${device.name}`}, 'Revoke…');
    button.addEventListener('click', () => revoke(device, button));
    parts.push(h('br'), button);
  }
  return parts;
}
