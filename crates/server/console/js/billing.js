// Billing (StEvE → Lago): the sessions that need someone first (needs review, then parked,
// each with its reason), all sessions by state, one session with its events, and the tag
// mappings (add, edit, delete, CSV import). Operators settle reviews and edit mappings.

import {badge, busy, confirmDialog, empty, enc, exact, failure, field, h, kwh, number, prose, select, table, when} from './dom.js';

const STATES = ['active', 'billed', 'parked', 'needs_review', 'ignored'];
const PAGE = 50;

export function render(ctx, root, route) {
  if (route.rest[0] === 'sessions' && route.rest[1]) return sessionPage(ctx, root, route.rest[1]);
  return overview(ctx, root, route.params);
}

function overview(ctx, root, params) {
  const attention = h('section', {'aria-labelledby': 'attention'});
  const sessions = h('section', {'aria-labelledby': 'sessions'});
  const mappings = h('section', {'aria-labelledby': 'mappings'});
  root.append(
    h('h1', {}, 'Billing'),
    h('p', {class: 'lead'}, 'Finished charging sessions from StEvE become usage events in Lago, each session\'s energy exactly once.'),
    attention, sessions, mappings);
  const parts = [
    attentionSection(ctx, attention),
    sessionsSection(ctx, sessions, params),
    mappingsSection(ctx, mappings),
  ];
  const refresh = () => Promise.all(parts.map((part) => part.refresh()));
  refresh();
  return {
    refresh,
    onEvent(name, data) {
      // A billing run that finished changed sessions.
      if (name === 'run' && data.job === 'billing' && data.status !== 'running') {
        parts[0].refresh();
        parts[1].refresh();
      }
    },
  };
}

const sessionColumns = (ctx, reviewed) => [
  {label: 'Session', cell: (s) => h('a', {href: `#/billing/sessions/${enc(s.steve_transaction_id)}`}, `#${s.steve_transaction_id}`)},
  {label: 'Tag', cell: (s) => s.id_tag},
  {label: 'Charge box', cell: (s) => `${s.charge_box_id} / ${s.connector_id}`},
  {label: 'Stopped', cell: (s) => when(s.stopped_at, 'still charging')},
  {label: 'Energy', class: 'num', cell: (s) => energy(s)},
  {label: 'State', cell: (s) => badge(s.state, s.state.replace('_', ' '))},
  {label: 'Reason', cell: (s) => s.reason ?? ''},
  ...(reviewed && ctx.can('operator')
    ? [{label: 'Review', cell: (s) => s.state === 'needs_review' ? reviewButtons(ctx, s, reviewed) : ''}]
    : []),
];

function energy(session) {
  if (session.stop_wh == null || session.start_wh == null) return h('span', {class: 'muted'}, '—');
  return kwh(session.stop_wh - session.start_wh);
}

/** A meter value in Wh, or a dash where StEvE reported none. */
function meter(wh) {
  return wh == null ? h('span', {class: 'muted'}, 'none reported') : `${number(wh)} Wh`;
}

function attentionSection(ctx, section) {
  const problem = h('div');
  const body = h('div');
  section.append(h('h2', {id: 'attention'}, 'Needs attention'),
    h('p', {class: 'muted'}, 'Needs review: the numbers look wrong; an operator bills or ignores it. Parked: it cannot be billed yet (no mapping, no active subscription); every run tries again.'),
    problem, body);
  const refresh = async () => {
    try {
      const [review, parked] = await Promise.all(['needs_review', 'parked'].map((state) =>
        ctx.api.get(`/api/admin/billing/sessions?state=${state}&limit=200`)));
      const waiting = [...review.sessions, ...parked.sessions];
      problem.replaceChildren();
      if (waiting.length === 0) {
        body.replaceChildren(empty('Nothing waits: every finished session is billed, ignored or still charging.'));
        return;
      }
      const fresh = table({caption: 'Sessions that wait: needs review first, then parked', columns: sessionColumns(ctx, refresh), rows: waiting, stack: true});
      body.replaceChildren(fresh.element);
    } catch (error) {
      problem.replaceChildren(notRunning(error) ?? failure(error, refresh));
    }
  };
  return {refresh};
}

/** The billing API answers 404 on a server that keeps no ledger. */
function notRunning(error) {
  if (error.status !== 404) return null;
  return h('div', {class: 'alert'}, h('p', {}, error.message),
    h('p', {}, prose('Start the server with `--billing` (and StEvE\'s and Lago\'s URLs and keys) to bill charging sessions.')));
}

function reviewButtons(ctx, session, done) {
  const act = (action, label) => {
    const button = h('button', {type: 'button', class: action === 'bill' ? 'small' : 'secondary small',
      'aria-label': `${label} session ${session.steve_transaction_id}`}, label);
    button.addEventListener('click', () => busy(button, async () => {
      try {
        await ctx.api.post(`/api/admin/billing/sessions/${enc(session.steve_transaction_id)}/review`, {action});
        ctx.notify(action === 'bill'
          ? `Session #${session.steve_transaction_id} will be billed: a trigger for the billing job was stored.`
          : `Session #${session.steve_transaction_id} is ignored; it will not be billed.`);
        await done();
      } catch (error) {
        ctx.notify(`Session #${session.steve_transaction_id} was not settled: ${error.message} ${error.hint}`, 'error');
      }
    }));
    return button;
  };
  return h('div', {class: 'actions tight'}, act('bill', 'Bill'), act('ignore', 'Ignore'));
}

function sessionsSection(ctx, section, params) {
  const state = select('state', [['', 'Any state'], ...STATES.map((s) => [s, s.replace('_', ' ')])], params.get('state') ?? '');
  const tag = h('input', {type: 'text', name: 'id_tag', value: params.get('tag') ?? '', autocomplete: 'off'});
  const form = h('form', {class: 'filters', 'aria-label': 'Filter sessions'},
    field('State', state), field('Tag', tag),
    h('div', {class: 'actions'}, h('button', {type: 'submit'}, 'Show')));
  const problem = h('div');
  const body = h('div');
  const more = h('button', {type: 'button', class: 'secondary'}, 'Show older sessions');
  section.append(h('h2', {id: 'sessions'}, 'Sessions'), form, problem, body, h('div', {class: 'actions'}, more));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (state.value) query.set('state', state.value);
    if (tag.value.trim()) query.set('tag', tag.value.trim());
    ctx.navigate(`#/billing?${query}`);
  });
  let loaded = [];
  const list = table({caption: 'Sessions, newest first', columns: sessionColumns(ctx, null), rows: [], stack: true});
  const load = async (before) => {
    const query = new URLSearchParams({limit: String(PAGE)});
    if (params.get('state')) query.set('state', params.get('state'));
    if (params.get('tag')) query.set('id_tag', params.get('tag'));
    if (before) query.set('before', String(before));
    try {
      const answer = await ctx.api.get(`/api/admin/billing/sessions?${query}`);
      loaded = before ? [...loaded, ...answer.sessions] : answer.sessions;
      more.hidden = answer.sessions.length < PAGE;
      problem.replaceChildren();
      list.fill(loaded);
      body.replaceChildren(loaded.length ? list.element : empty(
        params.get('state') || params.get('tag')
          ? 'No session matches. Sessions appear once a billing run has read them from StEvE.'
          : 'No session yet. The billing job reads finished sessions from StEvE on every run; Trigger Sync on the Sync page runs it now.'));
    } catch (error) {
      more.hidden = true;
      problem.replaceChildren(notRunning(error) ?? failure(error, () => load(before)));
    }
  };
  more.addEventListener('click', () => busy(more, () => load(loaded[loaded.length - 1]?.steve_transaction_id)));
  return {refresh: () => load(null)};
}

function mappingsSection(ctx, section) {
  const problem = h('div');
  const body = h('div');
  section.append(h('h2', {id: 'mappings'}, 'Tag mappings'),
    h('p', {class: 'muted'}, 'An OCPP tag bills to a Lago customer and, when named, one of its subscriptions (otherwise the one active when the session stopped). A tag without a mapping uses its nearest mapped parent tag\'s.'),
    problem, body);
  let editor = null;
  if (ctx.can('operator')) {
    editor = mappingEditor(ctx, () => refresh());
    section.append(editor.element, csvImport(ctx, () => refresh()));
  }
  const columns = [
    {label: 'Tag', cell: (m) => h('code', {}, m.id_tag)},
    {label: 'Customer', cell: (m) => m.external_customer_id},
    {label: 'Subscription', cell: (m) => m.external_subscription_id ?? h('span', {class: 'muted'}, 'active at the stop')},
    {label: 'Updated', cell: (m) => when(m.updated_at)},
    ...(ctx.can('operator') ? [{label: 'Actions', cell: (m) => mappingActions(ctx, m, editor, () => refresh())}] : []),
  ];
  const list = table({caption: 'Mappings by tag', columns, rows: [], key: (m) => m.id_tag, stack: true});
  const refresh = async () => {
    try {
      const {mappings} = await ctx.api.get('/api/admin/billing/mappings');
      problem.replaceChildren();
      list.fill(mappings);
      body.replaceChildren(mappings.length ? list.element
        : empty('No mapping yet: every session is parked until its tag (or a parent tag) is mapped to a customer.'));
    } catch (error) {
      problem.replaceChildren(notRunning(error) ?? failure(error, refresh));
    }
  };
  return {refresh};
}

function mappingActions(ctx, mapping, editor, done) {
  const edit = h('button', {type: 'button', class: 'secondary small', 'aria-label': `Edit mapping ${mapping.id_tag}`}, 'Edit');
  edit.addEventListener('click', () => editor.edit(mapping));
  const remove = h('button', {type: 'button', class: 'danger-quiet small', 'aria-label': `Delete mapping ${mapping.id_tag}`}, 'Delete…');
  remove.addEventListener('click', async () => {
    const confirmed = await confirmDialog({
      title: `Delete the mapping of ${mapping.id_tag}?`,
      text: 'Sessions of this tag that are not billed yet are parked until it is mapped again (or a parent tag is). Sessions already billed stay billed.',
      confirm: 'Delete mapping',
    });
    if (!confirmed) {
      remove.focus();
      return;
    }
    await busy(remove, async () => {
      try {
        await ctx.api.delete(`/api/admin/billing/mappings/${enc(mapping.id_tag)}`);
        ctx.notify(`The mapping of ${mapping.id_tag} was deleted.`);
        await done();
      } catch (error) {
        ctx.notify(`The mapping was not deleted: ${error.message} ${error.hint}`, 'error');
      }
    });
  });
  return h('div', {class: 'actions tight'}, edit, remove);
}

/** The add/edit form: a new tag, or an existing one's customer and subscription. */
function mappingEditor(ctx, done) {
  const tag = h('input', {type: 'text', name: 'id_tag', required: true, maxlength: '255', autocomplete: 'off'});
  const customer = h('input', {type: 'text', name: 'external_customer_id', required: true, maxlength: '255', autocomplete: 'off'});
  const subscription = h('input', {type: 'text', name: 'external_subscription_id', maxlength: '255', autocomplete: 'off'});
  const title = h('h3', {id: 'mapping-form'}, 'Add a mapping');
  const save = h('button', {type: 'submit'}, 'Save mapping');
  const cancel = h('button', {type: 'button', class: 'secondary', hidden: true}, 'Cancel');
  const form = h('form', {class: 'filters mapping', 'aria-labelledby': 'mapping-form'},
    field('Tag', tag), field('Customer', customer), field('Subscription', subscription, 'Optional.'),
    h('div', {class: 'actions'}, save, cancel));
  const reset = () => {
    form.reset();
    tag.readOnly = false;
    title.textContent = 'Add a mapping';
    cancel.hidden = true;
  };
  cancel.addEventListener('click', reset);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(save, async () => {
      const id = tag.value.trim();
      try {
        await ctx.api.put(`/api/admin/billing/mappings/${enc(id)}`, {
          external_customer_id: customer.value.trim(),
          external_subscription_id: subscription.value.trim() || null,
        });
        ctx.notify(`${id} now bills to ${customer.value.trim()}${subscription.value.trim() ? ` (${subscription.value.trim()})` : ''}.`);
        reset();
        await done();
      } catch (error) {
        ctx.notify(`The mapping was not saved: ${error.message} ${error.hint}`, 'error');
      }
    });
  });
  return {
    element: h('div', {class: 'card'}, title, form),
    edit(mapping) {
      tag.value = mapping.id_tag;
      tag.readOnly = true;
      customer.value = mapping.external_customer_id;
      subscription.value = mapping.external_subscription_id ?? '';
      title.textContent = `Edit the mapping of ${mapping.id_tag}`;
      cancel.hidden = false;
      customer.focus();
    },
  };
}

function csvImport(ctx, done) {
  const file = h('input', {type: 'file', name: 'csv', accept: '.csv,text/csv', required: true});
  const upload = h('button', {type: 'submit', class: 'secondary'}, 'Import');
  const form = h('form', {class: 'filters', 'aria-labelledby': 'csv-title'},
    field('CSV file', file, 'Rows of tag,customer[,subscription]; a header row is allowed. All rows are saved, or none.'),
    h('div', {class: 'actions'}, upload));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    busy(upload, async () => {
      try {
        const text = await chosen.text();
        const answer = await ctx.api.request('POST', '/api/admin/billing/mappings', {text, contentType: 'text/csv'});
        ctx.notify(`Imported ${number(answer.imported)} mappings from ${chosen.name}.`);
        form.reset();
        await done();
      } catch (error) {
        ctx.notify(`Nothing was imported: ${error.message} ${error.hint}`, 'error');
      }
    });
  });
  return h('div', {class: 'card'}, h('h3', {id: 'csv-title'}, 'Import mappings'), form);
}

function sessionPage(ctx, root, id) {
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  root.append(h('p', {}, h('a', {href: '#/billing'}, '← Billing')), body);
  const refresh = async () => {
    try {
      const session = await ctx.api.get(`/api/admin/billing/sessions/${enc(id)}`);
      body.replaceChildren(...sessionDetail(ctx, session, refresh));
    } catch (error) {
      body.replaceChildren(h('h1', {}, `Session ${id}`), failure(error, refresh));
    }
  };
  refresh();
  return {
    refresh,
    onEvent(name, data) {
      if (name === 'run' && data.job === 'billing' && data.status !== 'running') refresh();
    },
  };
}

function sessionDetail(ctx, session, refresh) {
  const facts = [
    ['State', [badge(session.state, session.state.replace('_', ' ')), session.reason ? ` ${session.reason}` : '']],
    ['Tag', session.id_tag],
    ['Charge box', `${session.charge_box_id}, connector ${session.connector_id}`],
    ['Started', session.started_at ? h('time', {datetime: session.started_at}, exact(session.started_at)) : '—'],
    ['Stopped', session.stopped_at ? h('time', {datetime: session.stopped_at}, exact(session.stopped_at)) : 'still charging'],
    ['Meter', [meter(session.start_wh), ' → ', session.stopped_at ? meter(session.stop_wh) : '…', ' (', energy(session), ')']],
    ['Billed', kwh(session.billed_wh)],
  ];
  const parts = [
    h('h1', {}, `Session #${session.steve_transaction_id}`),
    h('dl', {class: 'facts wide'}, facts.flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, value)])),
  ];
  if (session.state === 'needs_review' && ctx.can('operator')) {
    parts.push(h('div', {class: 'card'}, h('h2', {}, 'Review'),
      h('p', {}, 'Bill it as the numbers stand, or ignore it so it is never billed.'),
      reviewButtons(ctx, session, refresh)));
  }
  parts.push(h('h2', {}, 'Events'));
  const events = session.events ?? [];
  parts.push(events.length
    ? table({
      caption: 'Usage events sent (or to be sent) to Lago',
      columns: [
        {label: 'Transaction', cell: (e) => h('code', {}, e.transaction_id)},
        {label: 'Subscription', cell: (e) => e.external_subscription_id},
        {label: 'Energy', class: 'num', cell: (e) => kwh(e.wh)},
        {label: 'Status', cell: (e) => badge(e.status)},
        {label: 'Run', cell: (e) => e.run_id ? h('a', {href: `#/runs/${e.run_id}`}, `#${e.run_id}`) : '—'},
        {label: 'Error', cell: (e) => e.error ?? ''},
      ],
      rows: events,
    }).element
    : empty(session.state === 'billed' ? 'No event.' : 'No event yet: one is made when the session is billed.'));
  return parts;
}
