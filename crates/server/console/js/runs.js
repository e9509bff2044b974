// Run history with filters and paging, and one run's detail: log lines, counts, errors and,
// for a billing run, the events it settled.

import {badge, busy, clock, countsSummary, duration, empty, enc, exact, failure, field, h, kwh, number, select, table, when} from './dom.js';

const PAGE = 50;
/** The most runs the API returns at once: a live update reads at most this many again. */
const MOST = 500;
const STATUSES = ['running', 'succeeded', 'failed', 'partial', 'abandoned'];
const TRIGGERS = ['schedule', 'manual', 'catchup'];

export function render(ctx, root, route) {
  if (route.rest[0]) return detail(ctx, root, route.rest[0]);
  return list(ctx, root, route.params);
}

/**
 * The filters in the page's URL. `since` and `until` are the form's local times; `after` is
 * what `since` was called before the server filtered, still read so that old links work.
 */
function filtersOf(params) {
  return {
    job: params.get('job') ?? '',
    status: params.get('status') ?? '',
    trigger: params.get('trigger') ?? '',
    since: params.get('since') ?? params.get('after') ?? '',
    until: params.get('until') ?? '',
  };
}

/**
 * The API's query for the filters: the server filters, so "Show older runs" pages through
 * the runs that match, however old. A local time goes as the instant it names; text that is
 * no time goes as it is, and the server's answer says what is wrong with it.
 */
function apiQuery(filters) {
  const query = new URLSearchParams();
  for (const name of ['job', 'status', 'trigger']) {
    if (filters[name]) query.set(name, filters[name]);
  }
  for (const name of ['since', 'until']) {
    if (!filters[name]) continue;
    const at = new Date(filters[name]);
    query.set(name, Number.isNaN(at.getTime()) ? filters[name] : at.toISOString());
  }
  return query;
}

function list(ctx, root, params) {
  const filters = filtersOf(params);
  const filtered = Object.values(filters).some(Boolean);

  let loaded = [];
  let exhausted = false;
  let failed = false;

  const form = filterForm(ctx, filters);
  const status = h('p', {class: 'muted', role: 'status'});
  const more = h('button', {type: 'button', class: 'secondary'}, 'Show older runs');
  const problem = h('div');
  const runs = table({
    caption: 'Runs, newest first',
    key: (run) => run.id,
    columns: [
      {label: 'Run', cell: (run) => h('a', {href: `#/runs/${run.id}`}, `#${run.id}`)},
      {label: 'Job', cell: (run) => run.job},
      {label: 'Status', cell: (run) => badge(run.status)},
      {label: 'Trigger', cell: (run) => run.trigger},
      {label: 'Tier', cell: (run) => run.tier},
      {label: 'Started', cell: (run) => when(run.started_at)},
      {label: 'Duration', cell: (run) => run.status === 'running' ? h('span', {class: 'muted'}, 'running') : duration(run.duration_ms), class: 'num'},
      {label: 'Counts', cell: (run) => run.status === 'running' ? '' : countsSummary(run.counts)},
    ],
    rows: [],
  });
  const emptyNote = h('div');
  root.append(h('h1', {}, 'Runs'), form, problem, runs.element, emptyNote, h('div', {class: 'actions'}, more), status);

  const redraw = () => {
    runs.fill(loaded);
    runs.element.hidden = loaded.length === 0;
    // After a failure the alert says what happened; "no run" would not be known.
    emptyNote.replaceChildren(loaded.length > 0 || failed ? '' : filtered
      ? empty('No run matches these filters.')
      : empty('No run yet. A job runs on its schedule, or at once when someone presses Trigger Sync on the Sync page; its runs appear here as they start.'));
    more.hidden = exhausted || failed;
    const matching = filtered ? 'matching ' : '';
    status.textContent = !loaded.length ? ''
      : !exhausted ? `Showing the ${number(loaded.length)} most recent ${matching}runs.`
      : loaded.length === 1 ? `Showing the only ${matching}run.`
      : `Showing all ${number(loaded.length)} ${matching}runs.`;
  };

  // One request at a time, so that a live update and "Show older runs" never interleave:
  // each starts from the list the one before left.
  let queue = Promise.resolve();
  const serially = (task) => (queue = queue.then(task));

  /** Reads `limit` runs: the newest, or those older than run `before` (added below). */
  const load = async ({before = null, limit = PAGE} = {}, retry) => {
    problem.replaceChildren();
    const query = apiQuery(filters);
    query.set('limit', String(limit));
    if (before !== null) query.set('before', String(before));
    try {
      const answer = await ctx.api.get(`/api/admin/sync/runs?${query}`);
      loaded = before === null ? answer.runs : [...loaded, ...answer.runs];
      exhausted = answer.runs.length < limit;
      failed = false;
    } catch (error) {
      failed = true;
      problem.replaceChildren(failure(error, retry));
    }
    redraw();
  };

  const refresh = () => serially(() => load({}, refresh));
  const showOlder = () => serially(() => load({before: loaded.at(-1)?.id ?? null}, () => busy(more, showOlder)));
  more.addEventListener('click', () => busy(more, showOlder));
  refresh();

  return {
    refresh,
    onEvent(name, data) {
      if (name !== 'run') return;
      // The server decides whether the run matches: read what is shown again, as many runs.
      serially(async () => {
        await load({limit: Math.min(MOST, Math.max(PAGE, loaded.length))}, refresh);
        [...runs.body.rows].find((tr) => tr.dataset.key === String(data.id))?.classList.add('fresh');
      });
    },
  };
}

function filterForm(ctx, filters) {
  const job = select('job', [['', 'All jobs'], ...ctx.me.jobs.map((j) => [j, j])], filters.job);
  const status = select('status', [['', 'Any status'], ...STATUSES.map((s) => [s, s])], filters.status);
  const trigger = select('trigger', [['', 'Any trigger'], ...TRIGGERS.map((t) => [t, t])], filters.trigger);
  const since = h('input', {type: 'datetime-local', name: 'since', value: filters.since});
  const until = h('input', {type: 'datetime-local', name: 'until', value: filters.until});
  const form = h('form', {class: 'filters', 'aria-label': 'Filter runs'},
    field('Job', job), field('Status', status), field('Trigger', trigger),
    field('Started after', since), field('Started before', until),
    h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Filter'),
      h('a', {href: '#/runs', class: 'button secondary'}, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, control] of [['job', job], ['status', status], ['trigger', trigger], ['since', since], ['until', until]]) {
      if (control.value) query.set(name, control.value);
    }
    ctx.navigate(`#/runs?${query}`);
  });
  return form;
}

function detail(ctx, root, id) {
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  root.append(h('p', {}, h('a', {href: '#/runs'}, '← All runs')), body);

  const refresh = async () => {
    try {
      const run = await ctx.api.get(`/api/admin/sync/runs/${enc(id)}`);
      body.replaceChildren(...runDetail(run));
    } catch (error) {
      body.replaceChildren(h('h1', {}, `Run ${id}`), failure(error, refresh));
    }
  };
  refresh();
  return {
    refresh,
    onEvent(name, data) {
      if (name === 'run' && String(data.id) === String(id)) refresh();
    },
  };
}

function runDetail(run) {
  const facts = [
    ['Status', badge(run.status)],
    ['Trigger', run.trigger],
    ['Tier', run.tier],
    ['Started', [h('time', {datetime: run.started_at}, exact(run.started_at)), ' (', when(run.started_at), ')']],
    ['Finished', run.finished_at ? h('time', {datetime: run.finished_at}, exact(run.finished_at)) : h('span', {class: 'muted'}, 'still running')],
    ['Duration', duration(run.duration_ms)],
  ];
  const counts = Object.entries(run.counts ?? {});
  const parts = [
    h('h1', {}, `Run #${run.id} · ${run.job}`),
    h('dl', {class: 'facts wide'}, facts.flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, value)])),
    h('h2', {}, 'Counts'),
    counts.length
      ? h('dl', {class: 'facts'}, counts.flatMap(([name, value]) => [h('dt', {}, name.replaceAll('_', ' ')), h('dd', {class: 'num'}, number(value))]))
      : empty(run.status === 'running' ? 'Counts are recorded when the run finishes.' : 'This run recorded no counts.'),
    h('h2', {}, 'Errors'),
    run.errors.length
      ? h('ul', {class: 'errors'}, run.errors.map((error) => h('li', {}, error)))
      : empty('No errors.'),
    h('h2', {}, 'Log'),
  ];
  const log = run.log ?? [];
  parts.push(log.length
    ? table({
      caption: `${number(log.length)} log lines`,
      columns: [
        {label: 'Time', cell: (line) => h('time', {datetime: line.at, title: exact(line.at)}, clock(line.at))},
        {label: 'Level', cell: (line) => badge(line.level)},
        {label: 'Message', cell: (line) => h('span', {class: 'message'}, line.message)},
      ],
      rows: log,
    }).element
    : empty('The run wrote no log lines (yet).'));
  if (run.events) {
    parts.push(h('h2', {}, 'Billing events'));
    parts.push(run.events.length
      ? table({
        caption: 'Events this run delivered or had refused',
        columns: [
          {label: 'Transaction', cell: (e) => h('code', {}, e.transaction_id)},
          {label: 'Subscription', cell: (e) => e.external_subscription_id},
          {label: 'Energy', cell: (e) => kwh(e.wh), class: 'num'},
          {label: 'Status', cell: (e) => badge(e.status)},
          {label: 'Stopped', cell: (e) => when(e.timestamp)},
          {label: 'Error', cell: (e) => e.error ?? ''},
        ],
        rows: run.events,
      }).element
      : empty('This run settled no billing event.'));
  }
  return parts;
}
