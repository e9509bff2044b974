// The conflict log: overwritten versions, found by table and key, the winning and the losing
// version side by side. It follows the devices' events: a push may have logged a conflict.

import {busy, empty, exact, failure, field, h, when} from './dom.js';

export function render(ctx, root, route) {
  const params = route.params;
  const tableInput = h('input', {type: 'text', name: 'table', list: 'synced-tables', value: params.get('table') ?? '', autocomplete: 'off'});
  const keyInput = h('input', {type: 'text', name: 'pk', value: params.get('pk') ?? '', autocomplete: 'off', spellcheck: 'false'});
  const tables = h('datalist', {id: 'synced-tables'});
  const search = h('button', {type: 'submit'}, 'Search');
  const form = h('form', {class: 'filters', 'aria-label': 'Search the conflict log'},
    field('Table', tableInput, 'Empty: every table.'),
    field('Key', keyInput, 'The row\'s key: a bare value (p1), or JSON for a composite key ({"id": "p1"}). Needs a table.'),
    tables,
    h('div', {class: 'actions'}, search, h('a', {href: '#/conflicts', class: 'button secondary'}, 'Clear')));
  const results = h('div', {class: 'conflicts', 'aria-live': 'polite'});
  root.append(
    h('h1', {}, 'Conflicts'),
    h('p', {class: 'lead'},
      'When two devices change the same row, the later version wins (last write wins) and the server keeps the one it overwrote here, newest first.'),
    form, results);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (tableInput.value.trim()) query.set('table', tableInput.value.trim());
    if (keyInput.value.trim()) query.set('pk', keyInput.value.trim());
    ctx.navigate(`#/conflicts?${query}`);
  });

  // The synced tables, as suggestions.
  ctx.api.get('/api/sync/schema').then((schema) => {
    const names = [...schema.ddl.matchAll(/CREATE TABLE\s+(?:IF NOT EXISTS\s+)?["`]?([A-Za-z_][\w]*)/gi)].map((m) => m[1]);
    tables.replaceChildren(...names.map((name) => h('option', {value: name})));
  }).catch(() => {});

  const refresh = () => busy(search, async () => {
    const query = new URLSearchParams({limit: '200'});
    if (params.get('table')) query.set('table', params.get('table'));
    if (params.get('pk')) query.set('pk', params.get('pk'));
    try {
      const [{conflicts}, {devices}] = await Promise.all([
        ctx.api.get(`/api/admin/conflicts?${query}`),
        ctx.api.get('/api/admin/devices'),
      ]);
      const names = new Map(devices.map((d) => [d.device_id, d.name]));
      const scope = params.get('pk') ? ' for this row' : params.get('table') ? ' in this table' : '';
      results.replaceChildren(...(conflicts.length
        ? [h('p', {class: 'muted'}, `${conflicts.length} conflict${conflicts.length === 1 ? '' : 's'}${scope}, newest first.`),
          ...conflicts.map((conflict) => conflictCard(conflict, names))]
        : [empty(`No conflict recorded${scope}. One is recorded whenever a push meets a newer version of the same row from another device, or overwrites one.`)]));
    } catch (error) {
      results.replaceChildren(failure(error, refresh));
    }
  });
  refresh();
  // A device that pushed may have logged a conflict: look again, at most once a second.
  let pending = null;
  const onEvent = (name) => {
    if (name !== 'device' || pending) return;
    pending = setTimeout(() => { pending = null; refresh(); }, 1000);
  };
  return {refresh, onEvent};
}

function conflictCard(conflict, names) {
  const device = (id) => {
    if (!id) return h('span', {class: 'muted'}, 'unknown');
    return names.has(id) ? [names.get(id), ' ', h('code', {class: 'muted'}, id)] : h('code', {}, id);
  };
  const side = (title, version, deviceId, extra) => h('div', {class: `side side-${title.toLowerCase()}`},
    h('h3', {}, title),
    h('dl', {class: 'facts'},
      h('dt', {}, 'Version'), h('dd', {}, h('code', {}, version)),
      h('dt', {}, 'Device'), h('dd', {}, device(deviceId)),
      h('dt', {}, 'Written'), h('dd', {}, writtenAt(version))),
    extra);
  const values = (row, other) => h('dl', {class: 'facts data'}, Object.entries(row).flatMap(([column, value]) => {
    // A column whose value differs from the other side's is marked, so the difference shows.
    const differs = other && JSON.stringify(other[column]) !== JSON.stringify(value);
    return [h('dt', {}, column), h('dd', differs ? {class: 'differs', title: 'Differs from the other version'} : {}, h('code', {}, JSON.stringify(value)))];
  }));
  const loserData = conflict.loser_deleted
    ? h('p', {}, h('strong', {}, 'A deletion'), ' (a tombstone).')
    : conflict.loser_data ? values(conflict.loser_data, conflict.winner_data) : null;
  const winnerData = conflict.winner_data
    ? [values(conflict.winner_data, conflict.loser_deleted ? null : conflict.loser_data),
      h('p', {class: 'muted'}, 'The version the server kept; every device gets it when it pulls.')]
    : h('p', {class: 'muted'}, 'The version the server kept. Its values are not shown: a newer write has replaced it since, or it deleted the row.');
  return h('article', {class: 'card conflict'},
    h('h2', {}, conflict.table, ' ', h('code', {}, JSON.stringify(conflict.pk))),
    h('p', {class: 'muted'}, 'Recorded ', when(conflict.recorded_at)),
    h('div', {class: 'sides'},
      side('Winner', conflict.winner_version, conflict.winner_device, winnerData),
      side('Loser', conflict.loser_version, conflict.loser_device, loserData)));
}

/** A version begins with the time its device wrote it. */
function writtenAt(version) {
  const at = version.slice(0, 24);
  return Number.isNaN(new Date(at).getTime()) ? '' : h('time', {datetime: at}, exact(at));
}
