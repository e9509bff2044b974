// Run history with filters and paging, and one run's detail: log lines, counts, errors and,
// for a billing run, the events it settled.

import {badge, busy, clock, countsSummary, duration, empty, enc, exact, failure, field, h, kwh, number, select, table, when} from './dom.js';

const PAGE = 50;
/** Pages read at most for one "show more" while filters leave few runs. */
const MOST_PAGES = 10;
const STATUSES = ['running', 'succeeded', 'failed', 'partial', 'abandoned'];
const TRIGGERS = ['schedule', 'manual', 'catchup'];

export function render(ctx, root, route) {
  if (route.rest[0]) return detail(ctx, root, route.rest[0]);
  return list(ctx, root, route.params);
}

function list(ctx, root, params) {
  const filters = {
    job: params.get('job') ?? '',
    status: params.get('status') ?? '',
    trigger: params.get('trigger') ?? '',
    after: params.get('after') ?? '',
  };
  const afterMs = filters.after ? new Date(filters.after).getTime() : null;
  const matches = (run) =>
    (!filters.job || run.job === filters.job) &&
    (!filters.status || run.status === filters.status) &&
    (!filters.trigger || run.trigger === filters.trigger) &&
    (afterMs === null || new Date(run.started_at).getTime() >= afterMs);

  let loaded = [];
  let oldest = null;
  let exhausted = false;

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
    const shown = loaded.filter(matches);
    runs.fill(shown);
    runs.element.hidden = shown.length === 0;
    const filtered = filters.job || filters.status || filters.trigger || filters.after;
    emptyNote.replaceChildren(shown.length > 0 ? '' : filtered
      ? empty(`No run among the ${number(loaded.length)} most recent matches these filters.`,
        exhausted ? '' : ' Show older runs to look further back.')
      : empty('No run yet. A job runs on its schedule, or at once when someone presses Trigger Sync on the Sync page; its runs appear here as they start.'));
    more.hidden = exhausted;
    status.textContent = loaded.length
      ? `Showing ${number(shown.length)} of the ${number(loaded.length)} most recent runs${exhausted ? ' (all of them)' : ''}.`
      : '';
  };

  const fetchPage = async () => {
    const query = new URLSearchParams({limit: String(PAGE)});
    if (filters.job) query.set('job', filters.job);
    if (oldest !== null) query.set('before', String(oldest));
    const answer = await ctx.api.get(`/api/admin/sync/runs?${query}`);
    loaded.push(...answer.runs.filter((run) => !loaded.some((r) => r.id === run.id)));
    if (answer.runs.length) oldest = answer.runs[answer.runs.length - 1].id;
    const last = answer.runs[answer.runs.length - 1];
    exhausted = answer.runs.length < PAGE ||
      (afterMs !== null && last && new Date(last.started_at).getTime() < afterMs);
  };

  // Reads pages until a page's worth of runs matches, or there are no more.
  const showMore = async () => {
    problem.replaceChildren();
    const wanted = loaded.filter(matches).length + PAGE;
    try {
      for (let n = 0; n < MOST_PAGES && !exhausted && loaded.filter(matches).length < wanted; n++) {
        await fetchPage();
      }
    } catch (error) {
      problem.replaceChildren(failure(error, () => busy(more, showMore)));
    }
    redraw();
  };

  const refresh = async () => {
    loaded = [];
    oldest = null;
    exhausted = false;
    await showMore();
  };
  more.addEventListener('click', () => busy(more, showMore));
  refresh();

  return {
    refresh,
    onEvent(name, data) {
      if (name !== 'run') return;
      const index = loaded.findIndex((run) => run.id === data.id);
      if (index >= 0) loaded[index] = data;
      else loaded.unshift(data);
      loaded.sort((a, b) => b.id - a.id);
      redraw();
      [...runs.body.rows].find((tr) => tr.dataset.key === String(data.id))?.classList.add('fresh');
    },
  };
}

function filterForm(ctx, filters) {
  const job = select('job', [['', 'All jobs'], ...ctx.me.jobs.map((j) => [j, j])], filters.job);
  const status = select('status', [['', 'Any status'], ...STATUSES.map((s) => [s, s])], filters.status);
  const trigger = select('trigger', [['', 'Any trigger'], ...TRIGGERS.map((t) => [t, t])], filters.trigger);
  const after = h('input', {type: 'datetime-local', name: 'after', value: filters.after});
  const form = h('form', {class: 'filters', 'aria-label': 'Filter runs'},
    field('Job', job), field('Status', status), field('Trigger', trigger), field('Started after', after),
    h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Filter'),
      h('a', {href: '#/runs', class: 'button secondary'}, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, control] of [['job', job], ['status', status], ['trigger', trigger], ['after', after]]) {
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
