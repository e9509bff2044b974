// The sync dashboard: per job, its tier and pin, when it runs next, its last run, pending
// triggers and whether a worker listens; Trigger Sync, pin and unpin for operators.

import {badge, busy, countdown, countsSummary, duration, empty, enc, failure, field, h, number, select, when} from './dom.js';

const TIERS = [['active', 'active'], ['idle', 'idle'], ['dormant', 'dormant']];

export function render(ctx, root) {
  const cards = new Map();
  const grid = h('div', {class: 'cards'});
  root.append(
    h('h1', {}, 'Sync jobs'),
    h('p', {class: 'lead'},
      'Each job runs on its own cadence: every 15 minutes while active, hourly when idle, weekly when dormant. ',
      'A trigger runs it now and makes it active.'),
    grid);

  const load = async (job) => {
    try {
      cards.get(job).show(await ctx.api.get(`/api/admin/sync/state?job=${enc(job)}`));
    } catch (error) {
      cards.get(job).fail(error);
    }
  };
  for (const job of ctx.me.jobs) {
    const card = jobCard(ctx, job, () => load(job));
    cards.set(job, card);
    grid.append(card.element);
  }
  if (ctx.me.jobs.length === 0) grid.append(empty('This server runs no sync jobs.'));

  const refresh = () => Promise.all(ctx.me.jobs.map(load));
  refresh();

  return {
    refresh,
    onEvent(name, data) {
      const card = cards.get(data.job);
      if (!card) return;
      if (name === 'state') card.show(data);
      if (name === 'run' && card.state && (card.state.last_run?.id ?? 0) <= data.id) {
        card.show({...card.state, last_run: data, in_flight: data.status === 'running'});
      }
    },
  };
}

/**
 * One job's card. Only its facts are redrawn when the state changes; its buttons and the pin
 * form stay, so a live update never takes the keyboard focus away or clears what is typed.
 */
function jobCard(ctx, job, reload) {
  const facts = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const problem = h('div');
  const card = {
    state: null,
    element: h('section', {class: 'card', 'aria-labelledby': `job-${job}`},
      h('h2', {id: `job-${job}`}, job), facts, problem),
    show(state) {
      card.state = state;
      problem.replaceChildren();
      facts.replaceChildren(describe(state));
      card.onState?.(state);
    },
    fail(error) {
      problem.replaceChildren(failure(error, reload));
    },
  };
  if (ctx.can('operator')) card.element.append(actions(ctx, job, card, reload));
  return card;
}

function describe(state) {
  const pinned = state.pinned_until
    ? h('span', {}, ' pinned until ', when(state.pinned_until))
    : null;
  const rows = [
    ['Tier', [badge(state.tier), pinned, h('span', {class: 'muted'}, ` · every ${every(state.interval_seconds)}`)]],
    ['Next run', state.in_flight ? h('strong', {}, 'running now') : countdown(state.next_run_at)],
    ['Last run', lastRun(state.last_run)],
    ['Pending triggers', state.pending_triggers === 0
      ? h('span', {class: 'muted'}, 'none')
      : h('strong', {}, number(state.pending_triggers))],
    ['Worker', listener(state.listener)],
  ];
  return h('dl', {class: 'facts'}, rows.flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]));
}

function every(seconds) {
  if (seconds % 86400 === 0) return seconds === 86400 ? 'day' : `${seconds / 86400} days`;
  if (seconds % 3600 === 0) return seconds === 3600 ? 'hour' : `${seconds / 3600} hours`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

function lastRun(run) {
  if (!run) return h('span', {class: 'muted'}, 'no run yet');
  return h('span', {class: 'last-run'},
    h('a', {href: `#/runs/${run.id}`}, `#${run.id}`), ' ', badge(run.status),
    h('span', {class: 'muted'}, ` ${run.trigger}, started `), when(run.started_at),
    run.duration_ms !== null ? h('span', {class: 'muted'}, `, took ${duration(run.duration_ms)}`) : null,
    h('br'), countsSummary(run.counts));
}

function listener(state) {
  if (state.connected) {
    return h('span', {class: 'ok'}, 'listening for triggers', h('span', {class: 'muted'}, ' · last ping ', when(state.last_ping_at)));
  }
  return h('span', {class: 'warn'}, 'no worker is listening: triggers wait until one starts',
    state.last_ping_at ? h('span', {class: 'muted'}, ' · last heard ', when(state.last_ping_at)) : null);
}

function actions(ctx, job, card, reload) {
  const trigger = h('button', {type: 'button'}, 'Trigger Sync');
  trigger.addEventListener('click', () => busy(trigger, async () => {
    try {
      const answer = await ctx.api.post('/api/admin/sync/trigger', {job});
      const listening = card.state?.listener.connected
        ? 'A worker is listening: the run starts within seconds and shows up here.'
        : 'No worker is listening right now: the run starts as soon as one does (ferry serve, or ferry worker).';
      ctx.notify(`Trigger #${answer.trigger_id} for ${answer.job} was stored. ${listening}`);
    } catch (error) {
      ctx.notify(`The trigger was not stored: ${error.message} ${error.hint}`, 'error');
    }
  }));

  const tier = select('tier', TIERS, 'active');
  const hours = h('input', {type: 'number', name: 'hours', min: '0.25', max: '8784', step: '0.25', value: '4', required: true, inputmode: 'decimal'});
  const pin = h('button', {type: 'submit', class: 'secondary'}, 'Pin');
  const form = h('form', {class: 'inline', 'aria-label': `Pin ${job}`},
    field('Pin at tier', tier), field('for hours', hours), pin);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(pin, async () => {
      try {
        await ctx.api.post('/api/admin/sync/pin', {job, tier: tier.value, hours: Number(hours.value)});
        ctx.notify(`${job} is pinned at ${tier.value} for ${hours.value} hours.`);
        reload();
      } catch (error) {
        ctx.notify(`The pin was not saved: ${error.message} ${error.hint}`, 'error');
      }
    });
  });

  const unpin = h('button', {type: 'button', class: 'secondary', hidden: true}, 'Unpin');
  unpin.addEventListener('click', () => busy(unpin, async () => {
    try {
      await ctx.api.delete(`/api/admin/sync/pin?job=${enc(job)}`);
      ctx.notify(`${job} is no longer pinned; its own tier applies again.`);
      reload();
    } catch (error) {
      ctx.notify(`The pin was not removed: ${error.message} ${error.hint}`, 'error');
    }
  }));
  card.onState = (state) => {
    unpin.hidden = !state.pinned_until;
  };
  return h('div', {class: 'card-actions'}, h('div', {class: 'actions'}, trigger, unpin), form);
}
