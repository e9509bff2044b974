// Building the page without ever reading data as HTML, and showing times and numbers in the
// viewer's own locale.
//
// Everything the API returns goes into the page through `h` (text nodes and attributes), never
// through innerHTML, so a device named "<img onerror=…>" shows as that text.

/** An element: `h('a', {href: '#/runs', class: 'x'}, 'text', child, [more])`. */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') element.className = value;
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      element.addEventListener(key.slice(2), value);
    } else if (value === true) element.setAttribute(key, '');
    else element.setAttribute(key, String(value));
  }
  append(element, children);
  return element;
}

/** Appends text and nodes; `null`, `undefined` and `false` are skipped. */
export function append(element, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const exactFormat = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'medium'});
const clockFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3,
});
const relativeFormat = new Intl.RelativeTimeFormat(undefined, {numeric: 'auto'});
const numberFormat = new Intl.NumberFormat();
const kwhFormat = new Intl.NumberFormat(undefined, {minimumFractionDigits: 3, maximumFractionDigits: 3});

/** A timestamp of the API as the viewer's locale writes a date and time. */
export function exact(iso) {
  return exactFormat.format(new Date(iso));
}

/** A timestamp as a clock time with milliseconds (log lines). */
export function clock(iso) {
  return clockFormat.format(new Date(iso));
}

export function number(value) {
  return numberFormat.format(value);
}

/** Watt-hours as kWh with Wh precision, as Lago receives them. */
export function kwh(wh) {
  return wh === null || wh === undefined ? '—' : `${kwhFormat.format(wh / 1000)} kWh`;
}

const UNITS = [
  ['year', 365 * 24 * 3600], ['month', 30 * 24 * 3600], ['week', 7 * 24 * 3600],
  ['day', 24 * 3600], ['hour', 3600], ['minute', 60], ['second', 1],
];

/** "14 minutes ago", "in 3 hours", "now". */
export function relative(iso, now = Date.now()) {
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  if (Math.abs(seconds) < 10) return relativeFormat.format(0, 'second');
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === 'second') {
      return relativeFormat.format(Math.trunc(seconds / size), unit);
    }
  }
  return '';
}

/** A duration in milliseconds for people: "850 ms", "1.42 s", "3 min 5 s". */
export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${number(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toLocaleString(undefined, {maximumFractionDigits: 2})} s`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.round((ms % 60_000) / 1000);
  if (minutes < 60) return `${minutes} min ${seconds} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** The time left until `iso`, ticking: "in 4 min 32 s", "due now". */
export function until(iso, now = Date.now()) {
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  if (seconds <= 0) return 'due now';
  if (seconds < 60) return `in ${seconds} s`;
  if (seconds < 3600) return `in ${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  if (seconds < 24 * 3600) {
    return `in ${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }
  return relativeFormat.format(Math.round(seconds / 86400), 'day');
}

/**
 * A `<time>` that says how long ago (or how soon) `iso` is, ticking, with the exact time on
 * hover. `empty` is shown when there is no time.
 */
export function when(iso, empty = 'never') {
  if (!iso) return h('span', {class: 'muted'}, empty);
  return h('time', {datetime: iso, title: exact(iso), dataset: {relative: iso}}, relative(iso));
}

/** A `<time>` counting down to `iso`. */
export function countdown(iso, empty = 'not scheduled yet') {
  if (!iso) return h('span', {class: 'muted'}, empty);
  return h('time', {datetime: iso, title: exact(iso), dataset: {countdown: iso}}, until(iso));
}

/** Updates every ticking time on the page; main.js calls it every second. */
export function tick() {
  const now = Date.now();
  for (const time of document.querySelectorAll('time[data-relative]')) {
    const text = relative(time.dataset.relative, now);
    if (time.textContent !== text) time.textContent = text;
  }
  for (const time of document.querySelectorAll('time[data-countdown]')) {
    const text = until(time.dataset.countdown, now);
    if (time.textContent !== text) time.textContent = text;
  }
}

/** A run's counts in a line, those that are not zero: "events created 3 · transactions processed 5". */
export function countsSummary(counts) {
  const shown = Object.entries(counts ?? {}).filter(([, value]) => value !== 0);
  if (shown.length === 0) return h('span', {class: 'muted counts'}, 'nothing counted');
  return h('span', {class: 'counts'}, shown.map(([name, value]) =>
    h('span', {}, `${name.replaceAll('_', ' ')} ${number(value)}`)));
}

/** A status word as a coloured badge (`succeeded`, `failed`, `parked` …). */
export function badge(status, label = status) {
  return h('span', {class: `badge badge-${String(status).replace(/[^a-z_]/g, '')}`}, label);
}

/**
 * A table in a wrapper that scrolls sideways on narrow screens. `columns` are
 * `{label, cell: row => node|text, class?}`; `key` names each row, so `put` can redraw one row
 * (a live update) in place. Redrawing keeps the keyboard focus on the same control. A `stack`
 * table shows each row as a block of labelled lines on a narrow screen instead of scrolling
 * (for tables whose last columns hold actions).
 */
export function table({caption, columns, rows, key, stack = false}) {
  const body = h('tbody');
  const head = h('thead', {}, h('tr', {}, columns.map((c) => h('th', {scope: 'col', class: c.class}, c.label))));
  const draw = (row) => h('tr', {dataset: key ? {key: String(key(row))} : undefined},
    columns.map((c) => h('td', {class: c.class, dataset: {label: c.label}}, h('span', {}, c.cell(row)))));
  const fill = (list) => keepingFocus(body, () => body.replaceChildren(...list.map(draw)));
  const put = (row) => {
    const old = [...body.rows].find((tr) => tr.dataset.key === String(key(row)));
    const fresh = draw(row);
    keepingFocus(body, () => (old ? old.replaceWith(fresh) : body.append(fresh)));
    return fresh;
  };
  fill(rows);
  const element = h('div', {class: 'table-wrap'},
    h('table', {class: stack ? 'stack' : null}, caption ? h('caption', {}, caption) : null, head, body));
  return {element, fill, put, body};
}

/** Runs `redraw`, then puts the focus back on the control that had it (same row, same place). */
function keepingFocus(body, redraw) {
  const focused = document.activeElement;
  const row = focused && body.contains(focused) ? focused.closest('tr') : null;
  const key = row?.dataset.key;
  const index = row ? [...row.querySelectorAll('a, button, input, select')].indexOf(focused) : -1;
  redraw();
  if (key === undefined || index < 0) return;
  const again = [...body.rows].find((tr) => tr.dataset.key === key);
  again?.querySelectorAll('a, button, input, select')[index]?.focus();
}

/** Text in which `backquoted` parts (commands, flags) show as code; never parsed as HTML. */
export function prose(text) {
  if (typeof text !== 'string') return text;
  return text.split('`').map((part, i) => (i % 2 ? h('code', {}, part) : part));
}

/** A paragraph that says why a list is empty and what would fill it. */
export function empty(...text) {
  return h('p', {class: 'empty'}, text.map(prose));
}

/** An API failure with what to do next, and a button to try again when that may help. */
export function failure(error, retry) {
  const box = h('div', {class: 'alert', role: 'alert'},
    h('p', {}, h('strong', {}, error.message)),
    error.hint ? h('p', {}, prose(error.hint)) : null);
  if (retry) box.append(h('button', {type: 'button', class: 'secondary', onclick: retry}, 'Try again'));
  return box;
}

/** A labelled form field: `field('Tag', input)`. */
export function field(label, control, help) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  let helpNode = null;
  if (help) {
    helpNode = h('small', {id: `${id}-help`, class: 'help'}, prose(help));
    control.setAttribute('aria-describedby', helpNode.id);
  }
  return h('div', {class: 'field'}, h('label', {for: id}, label), control, helpNode);
}

/** A `<select>` of `[value, label]` pairs. */
export function select(name, options, value) {
  return h('select', {name},
    options.map(([v, label]) => h('option', {value: v, selected: v === value}, label)));
}

/**
 * Asks to confirm a destructive action in a modal dialog; resolves to true when confirmed.
 * Escape and "Cancel" cancel; the safe button has the focus first.
 */
export function confirmDialog({title, text, confirm}) {
  return new Promise((resolve) => {
    const cancelButton = h('button', {type: 'button', class: 'secondary', value: 'cancel'}, 'Cancel');
    const confirmButton = h('button', {type: 'button', class: 'danger', value: 'confirm'}, confirm);
    const dialog = h('dialog', {'aria-labelledby': 'dialog-title', class: 'confirm'},
      h('h2', {id: 'dialog-title'}, title),
      h('p', {}, text),
      h('div', {class: 'actions'}, cancelButton, confirmButton));
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancelButton.addEventListener('click', () => close(false));
    confirmButton.addEventListener('click', () => close(true));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancelButton.focus();
  });
}

/** Runs `action` with `button` disabled and marked busy meanwhile. */
export async function busy(button, action) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await action();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

/** Encodes a path segment or query value. */
export const enc = encodeURIComponent;
