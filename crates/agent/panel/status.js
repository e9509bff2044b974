// What the Cloud Sync panel and the header pill share: following the agent's status
// (GET /local/events) and saying it in words. Times are in the viewer's locale (Intl).
// Nothing here builds HTML from text: callers put words into the page with textContent.

const narrow = new Intl.RelativeTimeFormat(undefined, { numeric: 'always', style: 'narrow' });
const long = new Intl.RelativeTimeFormat(undefined, { numeric: 'always', style: 'long' });
const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit',
});

const UNITS = [['day', 86400], ['hour', 3600], ['minute', 60], ['second', 1]];

/** Milliseconds since the epoch of an RFC 3339 time, or null. */
export function parseTime(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

/**
 * A time relative to `now` in its largest whole unit: "14 minutes ago", "in 23 seconds";
 * `short` gives the compact form the pill uses ("12s ago", "3h ago").
 */
export function relative(iso, now, { short = false } = {}) {
  const ms = parseTime(iso);
  if (ms === null) return '';
  const seconds = Math.round((ms - now) / 1000);
  if (seconds <= 0 && seconds > -5) return 'just now';
  const format = short ? narrow : long;
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === 'second') {
      return format.format(Math.trunc(seconds / size), unit);
    }
  }
  return '';
}

/** The exact time, date included, for a tooltip. */
export function exactTime(iso) {
  const ms = parseTime(iso);
  return ms === null ? '' : exactFormat.format(ms);
}

/** A compact time for a list: the time of day today, the day and time before today. */
export function shortTime(iso, now) {
  const ms = parseTime(iso);
  if (ms === null) return '';
  const sameDay = new Date(ms).toDateString() === new Date(now).toDateString();
  return sameDay ? timeFormat.format(ms) : dayTimeFormat.format(ms);
}

/** A duration in milliseconds as people read it: "240 ms", "1.4 s", "2 min 5 s". */
export function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** A count with its noun: "1 row", "3 rows". */
export function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * The pill for a status (null: the agent cannot be reached): `tone` is ok, busy, bad or
 * unknown; `text` what the pill says; `title` the longer tooltip.
 */
export function pillView(status, now) {
  if (!status) {
    return {
      tone: 'unknown',
      text: 'Sync agent not running',
      title: "This page cannot reach Ferry's sync agent on this device.",
    };
  }
  const last = status.last_synced_at;
  const lastExact = last ? `Last sync: ${exactTime(last)}` : 'Never synced';
  switch (status.state) {
    case 'synced':
      return { tone: 'ok', text: last ? `Synced ${relative(last, now, { short: true })}` : 'Synced', title: lastExact };
    case 'syncing':
      return { tone: 'busy', text: 'Syncing…', title: lastExact };
    case 'offline':
      return {
        tone: 'bad',
        text: `Offline · ${last ? `last sync ${relative(last, now, { short: true })}` : 'never synced'}`,
        title: [lastExact, status.last_error].filter(Boolean).join('\n'),
      };
    case 'error':
      return {
        tone: 'bad',
        text: `Sync error · ${shortReason(status.last_error)}`,
        title: [status.last_error, lastExact].filter(Boolean).join('\n'),
      };
    default:
      return { tone: 'unknown', text: String(status.state), title: '' };
  }
}

/**
 * The reason of an error state in a few words, for the pill ("1 row rejected"); the panel
 * shows the whole sentence.
 */
export function shortReason(error) {
  const text = error || '';
  const rejected = /rejected (\d+) row/i.exec(text);
  if (rejected) {
    const n = Number(rejected[1]);
    return `${count(n, 'row', 'rows')} rejected`;
  }
  if (/schema hash/i.test(text)) return 'schema mismatch';
  if (/refused the device's token/i.test(text)) return 'device not authorized';
  if (!text) return 'the last sync failed';
  // The first clause of the sentence.
  return text.split(/[.;(]/)[0].trim() || text;
}

/** Draws a pill view into a `.pill` element (its `.pill-text` child holds the words). */
export function drawPill(element, view) {
  element.dataset.tone = view.tone;
  element.querySelector('.pill-text').textContent = view.text;
  element.title = view.title;
}

/**
 * What to do about a cycle's error or an error state, in one sentence, or '' when the error
 * already says it.
 */
export function nextStep(error, state) {
  const text = error || '';
  if (state === 'offline' || text.startsWith('Offline:')) {
    return 'Changes are kept on this device and sent once the cloud can be reached again; '
      + 'syncing retries by itself. If this lasts, check the network connection.';
  }
  if (/rejected/i.test(text)) {
    return 'The rejected rows stay on this device and are sent again with every sync. '
      + 'Correct them in the app (the reason is above), or show this message to your administrator.';
  }
  if (/pair it again|revoked|token/i.test(text)) {
    return 'This device is no longer allowed to sync: ask your administrator for a pairing code '
      + 'and pair the device again.';
  }
  if (/schema/i.test(text)) {
    return "The app's tables and the cloud's differ: update the app (or ask your administrator "
      + 'to update the server) so both declare the same tables.';
  }
  if (state === 'error' || text) {
    return 'Press “Force sync now” to try again; if it keeps failing, show this message to your administrator.';
  }
  return '';
}

/**
 * Follows GET /local/events: `onStatus(status)` for every status the agent sends, and
 * `onConnection(connected)` when contact with the agent is lost or back. The browser
 * reconnects by itself; a stream the browser gave up on is opened again.
 */
export function followStatus({ onStatus, onConnection }) {
  let connected = null;
  const tell = (now) => {
    if (now !== connected) {
      connected = now;
      onConnection?.(now);
    }
  };
  const open = () => {
    const source = new EventSource('/local/events');
    source.addEventListener('status', (event) => {
      tell(true);
      try {
        onStatus(JSON.parse(event.data));
      } catch (e) {
        console.error('An unreadable status event', e);
      }
    });
    source.addEventListener('error', () => {
      tell(false);
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(open, 3000);
      }
    });
  };
  open();
}
