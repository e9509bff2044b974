// The Cloud Sync panel: a thin client of the agent's control API (/local/*).
//
// The status comes from GET /local/events; the cycle log (GET /local/log) and the devices
// (GET /local/devices) are read at start, whenever a cycle ends, and the devices once a
// minute. Relative times tick every second. Text reaches the page through textContent only.

import {
  count, drawPill, duration, exactTime, followStatus, nextStep, parseTime, pillView, relative,
  shortTime,
} from './status.js';

const $ = (id) => document.getElementById(id);

/** An element with text, class and attributes; children appended in order. */
function el(tag, { text, className, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  node.append(...children.filter(Boolean));
  return node;
}

/** A <time> that shows a relative time and the exact one on hover; re-drawn by the ticker. */
function timeElement(iso, { short = false, prefix = '' } = {}) {
  const node = el('time', { attrs: { datetime: iso, title: exactTime(iso) } });
  node.dataset.relative = short ? 'short' : 'long';
  node.dataset.prefix = prefix;
  node.textContent = prefix + relative(iso, Date.now(), { short });
  return node;
}

function tickTimes() {
  const now = Date.now();
  for (const node of document.querySelectorAll('time[data-relative]')) {
    const short = node.dataset.relative === 'short';
    node.textContent = node.dataset.prefix + relative(node.getAttribute('datetime'), now, { short });
  }
}

const DEVICES_EVERY_MS = 60_000;

const state = {
  status: null, // the newest LocalStatus, null before the first and while the agent is gone
  agentReachable: true,
  devicesReadAt: null,
};

// ---- status -------------------------------------------------------------------------------

function drawStatus() {
  const now = Date.now();
  const status = state.agentReachable ? state.status : null;
  drawPill($('pill'), pillView(status, now));
  $('sync-now').disabled = !state.agentReachable || $('sync-now').dataset.busy === 'true';

  const detail = $('status-detail');
  if (status && (status.state === 'error' || status.state === 'offline') && status.last_error) {
    detail.replaceChildren(
      el('span', { className: 'reason', text: status.last_error }),
      ' ',
      el('span', { className: 'next-step', text: nextStep(status.last_error, status.state) }),
    );
    detail.dataset.tone = 'bad';
    detail.hidden = false;
  } else {
    detail.hidden = true;
  }

  if (!status) {
    for (const id of ['pending', 'last-synced', 'next-sync']) $(id).textContent = '—';
    return;
  }
  $('pending').textContent = status.pending === 0
    ? 'None: everything is in the cloud'
    : `${count(status.pending, 'change', 'changes')} waiting`;
  $('pending').dataset.tone = status.pending === 0 ? '' : 'busy';

  const last = $('last-synced');
  if (status.last_synced_at) {
    // The pill says how long ago; this says when.
    last.replaceChildren(el('time', {
      text: shortTime(status.last_synced_at, now),
      attrs: { datetime: status.last_synced_at, title: exactTime(status.last_synced_at) },
    }));
  } else {
    last.textContent = 'Never';
  }

  const next = $('next-sync');
  if (status.state === 'syncing') {
    next.textContent = 'Syncing now';
  } else if (parseTime(status.next_auto_sync_at) !== null) {
    next.replaceChildren(timeElement(status.next_auto_sync_at));
  } else {
    next.textContent = 'Not scheduled';
  }
}

function onStatus(status) {
  const before = state.status;
  state.status = status;
  drawStatus();
  if (!before || before.state !== status.state) {
    $('announce').textContent = `Sync status: ${pillView(status, Date.now()).text}`;
  }
  // A cycle ended (or this is the first look): the log and the devices have news.
  const ended = before && before.state === 'syncing' && status.state !== 'syncing';
  if (!before || ended || before.last_synced_at !== status.last_synced_at) {
    readLog();
  }
  if (ended) readDevices();
}

function onConnection(connected) {
  const wasLost = !state.agentReachable;
  state.agentReachable = connected;
  $('agent-lost').hidden = connected;
  drawStatus();
  if (connected && wasLost) {
    readLog();
    readDevices();
  }
}

// ---- the cycle log ------------------------------------------------------------------------

const TRIGGERS = { schedule: 'Automatic', manual: 'Force sync', force_pull: 'Force pull' };

async function readLog() {
  let cycles;
  try {
    const response = await fetch('/local/log', { cache: 'no-store' });
    if (!response.ok) throw new Error(await errorMessage(response));
    cycles = (await response.json()).cycles;
  } catch (e) {
    showLogProblem(`The sync history could not be read: ${e.message}`);
    return;
  }
  drawLog(cycles);
}

function showLogProblem(text) {
  const empty = $('log-empty');
  empty.textContent = text;
  empty.hidden = false;
}

function drawLog(cycles) {
  const table = $('log');
  const empty = $('log-empty');
  if (cycles.length === 0) {
    const status = state.status;
    const seconds = status && parseTime(status.next_auto_sync_at) !== null
      ? Math.max(1, Math.ceil((parseTime(status.next_auto_sync_at) - Date.now()) / 1000))
      : 30;
    empty.textContent = status && status.state === 'syncing'
      ? 'No sync yet — the first cycle is running now.'
      : `No sync yet — the first cycle runs within ${seconds} s.`;
    empty.hidden = false;
    table.hidden = true;
    return;
  }
  empty.hidden = true;
  const now = Date.now();
  const rows = cycles.flatMap((cycle) => {
    const failed = !cycle.ok || cycle.rejected > 0;
    const cell = (label, text, className) => el('td', { text, className, attrs: { 'data-label': label } });
    const when = el('td', { attrs: { 'data-label': 'Time' } },
      el('time', {
        text: shortTime(cycle.started_at, now),
        attrs: { datetime: cycle.started_at, title: exactTime(cycle.started_at) },
      }));
    const offline = (cycle.error || '').startsWith('Offline:');
    const result = el('td', {
      className: 'result-cell',
      text: offline ? 'Offline' : failed ? (cycle.ok ? 'Rows rejected' : 'Failed') : 'OK',
      attrs: { 'data-label': 'Result' },
    });
    result.dataset.tone = failed ? 'bad' : 'ok';
    const row = el('tr', { className: 'cycle' },
      when,
      cell('Trigger', TRIGGERS[cycle.trigger] || cycle.trigger),
      cell('Duration', duration(cycle.duration_ms), 'num'),
      cell('Pushed', String(cycle.pushed), 'num'),
      cell('Pulled', String(cycle.pulled), 'num'),
      cell('Rejected', String(cycle.rejected), cycle.rejected > 0 ? 'num bad' : 'num'),
      cell('Conflicts', String(cycle.conflicts), 'num'),
      result);
    if (!cycle.error) return [row];
    // The error gets a row of its own, the table's full width, under its cycle.
    row.classList.add('has-error');
    const error = el('td', { className: 'error-text', text: cycle.error, attrs: { colspan: '8', 'data-label': 'Error' } });
    return [row, el('tr', { className: 'cycle-error' }, error)];
  });
  $('log-rows').replaceChildren(...rows);
  table.hidden = false;
}

// ---- devices ------------------------------------------------------------------------------

async function readDevices() {
  let response;
  try {
    response = await fetch('/local/devices', { cache: 'no-store' });
  } catch {
    showDevicesNote("Devices unavailable: this page cannot reach Ferry's sync agent.");
    return;
  }
  if (!response.ok) {
    const message = await errorMessage(response);
    const offline = response.status === 503;
    const since = state.devicesReadAt ? ` Showing the list as of ${shortTime(state.devicesReadAt, Date.now())}.` : '';
    showDevicesNote(offline
      ? `Devices unavailable while offline: the list comes from the cloud and shows again once this device is back online.${since}`
      : `${message}${since}`);
    return;
  }
  const { devices } = await response.json();
  state.devicesReadAt = new Date().toISOString();
  $('devices-note').hidden = true;
  drawDevices(devices);
}

function showDevicesNote(text) {
  const note = $('devices-note');
  note.textContent = text;
  note.hidden = false;
}

function drawDevices(devices) {
  const mine = devices.find((d) => d.this_device);
  if (mine) $('device-line').textContent = `This device: ${mine.name}`;
  const seenAt = (d) => parseTime(d.last_seen_at) ?? 0;
  const sorted = [...devices].sort((a, b) => (b.this_device - a.this_device) || (seenAt(b) - seenAt(a)));
  const items = sorted.map((device) => {
    const seen = device.last_seen_at
      ? timeElement(device.last_seen_at, { prefix: 'last seen ' })
      : el('span', { text: 'never seen' });
    const item = el('li', { className: 'device' },
      el('span', { className: 'device-name', text: device.name }),
      device.this_device ? el('span', { className: 'badge', text: 'This device' }) : null,
      device.revoked_at ? el('span', { className: 'badge bad', text: 'Removed' }) : null,
      el('span', { className: 'device-seen' }, ' · ', seen),
      device.pending > 0 && !device.this_device
        ? el('span', { className: 'device-pending', text: ` · ${count(device.pending, 'change', 'changes')} waiting` })
        : null);
    if (device.this_device) item.classList.add('this-device');
    item.dataset.deviceId = device.device_id;
    return item;
  });
  if (items.length === 0) {
    items.push(el('li', { className: 'empty', text: 'No devices are paired yet.' }));
  }
  $('devices').replaceChildren(...items);
}

// ---- actions ------------------------------------------------------------------------------

/** The contract's error message of a failed answer, or its status. */
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // Not the contract's body; the status says enough.
  }
  return `The agent answered ${response.status}.`;
}

function showResult(element, tone, ...parts) {
  element.dataset.tone = tone;
  element.replaceChildren(...parts);
}

/**
 * What a cycle report says, as a result line. A failure the status box above already explains
 * (the same error) is not told twice.
 */
function describeReport(report, what) {
  const counts = `pushed ${report.pushed}, pulled ${report.pulled}, rejected ${report.rejected}, `
    + `conflicts ${report.conflicts}`;
  if (report.ok && report.rejected === 0) {
    return ['ok', el('strong', { text: `${what} finished in ${duration(report.duration_ms)}: ` }), `${counts}.`];
  }
  const heading = el('strong', { text: `${what} ${report.ok ? 'finished with problems' : 'failed'}: ` });
  const status = state.status;
  if (status && report.error && status.last_error === report.error && !$('status-detail').hidden) {
    return ['bad', heading, `${counts}. The reason, and what to do, are above.`];
  }
  return [
    'bad',
    heading,
    `${counts}. `,
    el('span', { className: 'reason', text: report.error || '' }),
    ' ',
    el('span', { className: 'next-step', text: nextStep(report.error, report.ok ? 'error' : '') }),
  ];
}

/**
 * POSTs an action and shows its cycle report (or why there is none) in `result`; `what` names
 * the action in the result ("Sync"), `busy` while it runs ("Syncing…").
 */
async function act(path, button, result, what, busy) {
  button.dataset.busy = 'true';
  button.disabled = true;
  const label = button.textContent;
  button.textContent = busy;
  showResult(result, 'busy', busy);
  try {
    const response = await fetch(path, { method: 'POST' });
    if (response.ok) {
      const [tone, ...parts] = describeReport(await response.json(), what);
      showResult(result, tone, ...parts);
    } else {
      showResult(result, 'bad', `${what} could not start: ${await errorMessage(response)}`);
    }
  } catch {
    showResult(result, 'bad',
      `${what} could not start: Ferry's sync agent did not answer. Check that it is running on this device, then try again.`);
  } finally {
    button.dataset.busy = 'false';
    button.textContent = label;
    button.disabled = !state.agentReachable;
    readLog();
    readDevices();
  }
}

function askForcePull() {
  const dialog = $('confirm-pull');
  const pending = state.status ? state.status.pending : 0;
  let text = 'Every change on this device has been sent, so nothing unsent is overwritten.';
  if (pending === 1) {
    text = '1 change on this device has not been sent yet. If the cloud also has its row, the '
      + "change is overwritten (and kept in this device's conflict record).";
  } else if (pending > 1) {
    text = `${pending} changes on this device have not been sent yet. Those to rows the cloud `
      + "also has are overwritten (and kept in this device's conflict record).";
  }
  $('confirm-pending').textContent = text;
  if (typeof dialog.showModal === 'function') {
    dialog.showModal();
  } else if (window.confirm('Force pull from cloud? This device\'s rows are replaced by the cloud\'s.')) {
    forcePull();
  }
}

function forcePull() {
  act('/local/pull', $('force-pull'), $('pull-result'), 'Force pull', 'Pulling from the cloud…');
}

function start() {
  $('sync-now').addEventListener('click', () => {
    act('/local/sync', $('sync-now'), $('sync-result'), 'Sync', 'Syncing…');
  });
  $('force-pull').addEventListener('click', askForcePull);
  $('confirm-cancel').addEventListener('click', () => $('confirm-pull').close('cancel'));
  $('confirm-ok').addEventListener('click', () => $('confirm-pull').close('pull'));
  $('confirm-pull').addEventListener('close', () => {
    if ($('confirm-pull').returnValue === 'pull') forcePull();
    $('confirm-pull').returnValue = '';
  });

  followStatus({ onStatus, onConnection });
  readDevices();
  setInterval(() => {
    tickTimes();
    drawPill($('pill'), pillView(state.agentReachable ? state.status : null, Date.now()));
  }, 1000);
  setInterval(() => {
    if (state.agentReachable) readDevices();
  }, DEVICES_EVERY_MS);
}

start();
