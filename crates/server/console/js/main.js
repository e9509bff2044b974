// The console's shell: sign-in, the page menu, the router (`#/page/id?filters`), notices and
// the live event stream that every page follows.
//
// The token lives in this tab's sessionStorage only: it is gone when the tab closes, never
// sent as a cookie and never put in a URL.

import {Api} from './api.js';
import {append, failure, field, h, prose, tick} from './dom.js';
import * as billing from './billing.js';
import * as conflicts from './conflicts.js';
import * as devices from './devices.js';
import * as runs from './runs.js';
import * as sync from './sync.js';

const TOKEN_KEY = 'ferry.console.token';
const ROLES = ['viewer', 'operator', 'admin'];

/** The pages, in menu order; `shows` says whether the signed-in token may see one. */
const PAGES = [
  {name: 'sync', title: 'Sync', module: sync, shows: (me) => me.jobs.length > 0},
  {name: 'runs', title: 'Runs', module: runs, shows: (me) => me.jobs.length > 0},
  {name: 'devices', title: 'Devices', module: devices, shows: () => true},
  {name: 'conflicts', title: 'Conflicts', module: conflicts, shows: () => true},
  {name: 'billing', title: 'Billing', module: billing, shows: (me) => me.billing},
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const session = document.getElementById('session');
const live = document.getElementById('live');
const notices = document.getElementById('notices');

let current = null;
let stream = null;

/** Shows a notice: what an action did, or why it failed. */
function notify(text, kind = 'ok') {
  const close = h('button', {type: 'button', class: 'link', 'aria-label': 'Dismiss'}, '×');
  const notice = h('div', {class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status'},
    h('span', {}, prose(text)), close);
  close.addEventListener('click', () => notice.remove());
  notices.append(notice);
  setTimeout(() => notice.remove(), kind === 'error' ? 20_000 : 8_000);
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  stream?.close();
  stream = null;
  current?.dispose?.();
  current = null;
  nav.hidden = true;
  session.hidden = true;
  showSignIn(reason);
}

function showSignIn(reason) {
  document.title = 'Sign in · Ferry console';
  const input = h('input', {type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true});
  const button = h('button', {type: 'submit'}, 'Sign in');
  const problem = h('div');
  const form = h('form', {class: 'sign-in', 'aria-labelledby': 'sign-in-title'},
    h('h1', {id: 'sign-in-title'}, 'Sign in'),
    reason ? h('p', {class: 'alert', role: 'alert'}, reason) : null,
    field('Operator token', input,
      'A viewer, operator or admin token. `ferry serve` prints the admin token on its first start; ' +
      '`ferry token create --role viewer` makes more. The token is kept in this tab only, and forgotten when it closes.'),
    problem,
    h('div', {class: 'actions'}, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    button.disabled = true;
    try {
      await signIn(input.value.trim());
    } catch (error) {
      if (error.status === 403) {
        error.message = 'This token cannot open the console: it is a device token, not an operator token.';
        error.hint = 'Use a viewer, operator or admin token (`ferry token create --role viewer`).';
      } else if (error.status === 401) {
        error.message = 'The server does not know this token (or it was revoked or has expired).';
      }
      problem.replaceChildren(failure(error));
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

async function signIn(token) {
  const api = new Api(token, () => signOut('Your session ended: the server no longer accepts this token. Sign in again.'));
  const me = await api.get('/api/admin/whoami');
  sessionStorage.setItem(TOKEN_KEY, token);
  start(api, me);
}

function start(api, me) {
  const pages = PAGES.filter((page) => page.shows(me));
  nav.replaceChildren(h('ul', {}, pages.map((page) =>
    h('li', {}, h('a', {href: `#/${page.name}`, dataset: {page: page.name}}, page.title)))));
  nav.hidden = false;
  document.getElementById('who').replaceChildren(
    h('span', {class: 'muted'}, 'Tenant '), me.tenant, ' · ', h('span', {class: `role role-${me.role}`}, me.role));
  session.hidden = false;
  document.getElementById('sign-out').onclick = () => signOut();

  const ctx = {
    api,
    me,
    notify,
    /** Whether the token's role is at least `role`. */
    can: (role) => ROLES.indexOf(me.role) >= ROLES.indexOf(role),
    navigate: (hash) => {
      location.hash = hash;
    },
  };

  const route = () => {
    const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
    const [name, ...rest] = path.split('/').filter(Boolean);
    const page = pages.find((p) => p.name === name);
    if (!page) {
      location.replace(`#/${pages[0].name}`);
      return;
    }
    current?.dispose?.();
    main.replaceChildren();
    for (const link of nav.querySelectorAll('a')) {
      if (link.dataset.page === page.name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${page.title} · Ferry console`;
    try {
      current = page.module.render(ctx, main, {rest, params: new URLSearchParams(query ?? '')});
    } catch (error) {
      current = null;
      append(main, failure({message: `The page could not be shown: ${error.message}`, hint: 'Reload the page.'}));
    }
  };
  window.onhashchange = route;
  route();

  stream = api.follow({
    onEvent: (name, data) => current?.onEvent?.(name, data),
    onOpen: () => current?.refresh?.(),
    onStatus: (status) => {
      live.textContent = status === 'live' ? 'Live' : 'Reconnecting…';
      live.className = `live live-${status}`;
      live.title = status === 'live'
        ? 'Changes appear here as they happen.'
        : 'The live connection broke; the console reconnects by itself and then reads everything again.';
    },
  });
}

setInterval(tick, 1000);

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  signIn(saved).catch((error) => {
    if (error.status === 401 || error.status === 403) signOut('Your saved session is no longer valid. Sign in again.');
    else {
      showSignIn();
      main.prepend(failure(error, () => location.reload()));
    }
  });
} else {
  showSignIn();
}
