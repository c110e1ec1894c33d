// flowlens UI: a service map, a flow explorer and a flow's detail, over the
// JSON API of `flowlens ui`. The state is the address's fragment,
// #/<view>?<params>, so every view is a link that can be shared or
// reloaded.
import { renderMap } from './map.js';
import { renderFlows } from './flows.js';
import { renderFlow } from './detail.js';
import { h, clear } from './dom.js';

const windows = { '5m': 300, '15m': 900, '1h': 3600, '3h': 3 * 3600, '6h': 6 * 3600, '12h': 12 * 3600, '24h': 86400 };
const views = { map: renderMap, flows: renderFlows, flow: renderFlow };
// Parameters every view keeps: the time window and the namespace.
const globals = ['win', 'from', 'to', 'ns'];

const $ = (id) => document.getElementById(id);
const knownNamespaces = new Set();
let generation = 0;
let leave = [];

function parse() {
  const raw = location.hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const view = (i < 0 ? raw : raw.slice(0, i)) || 'map';
  return { view: views[view] ? view : 'map', params: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1)) };
}

function href(view, params) {
  const q = params.toString();
  return `#/${view}${q ? '?' + q : ''}`;
}

// link keeps the global parameters of the current address and adds extra.
function link(view, extra) {
  const cur = parse().params;
  const p = new URLSearchParams();
  for (const k of globals) if (cur.get(k)) p.set(k, cur.get(k));
  for (const [k, v] of Object.entries(extra || {})) if (v !== '' && v !== undefined && v !== null) p.set(k, v);
  return href(view, p);
}

// update changes parameters of the current view (navigates, re-renders).
function update(changes) {
  const { view, params } = parse();
  for (const [k, v] of Object.entries(changes)) {
    if (v === '' || v === undefined || v === null) params.delete(k);
    else params.set(k, v);
  }
  location.hash = href(view, params);
}

// replaceParam records a parameter without re-rendering or a history entry
// (the map's selection).
function replaceParam(k, v) {
  const { view, params } = parse();
  if (v) params.set(k, v);
  else params.delete(k);
  history.replaceState(null, '', href(view, params));
}

// range resolves the window to Unix seconds; a relative one ends now.
function range(params) {
  const win = params.get('win') || '1h';
  if (win === 'custom') {
    const from = parseInt(params.get('from') || '', 10);
    const to = parseInt(params.get('to') || '', 10);
    if (!(from > 0) || !(to > from)) throw new Error('custom range: "from" must be before "to"');
    return { from, to };
  }
  const to = Math.floor(Date.now() / 1000);
  return { from: to - (windows[win] || windows['1h']), to };
}

function localInput(s) {
  const d = new Date(s * 1000 - new Date(s * 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}

function fromLocalInput(v) {
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? Math.floor(t / 1000) : NaN;
}

function noteNamespaces(list) {
  let added = false;
  for (const ns of list) {
    if (ns && !knownNamespaces.has(ns)) { knownNamespaces.add(ns); added = true; }
  }
  if (added) syncControls(parse().params);
}

function syncControls(params) {
  const win = params.get('win') || '1h';
  $('win').value = win;
  $('custom-range').hidden = win !== 'custom';
  if (win === 'custom') {
    if (params.get('from')) $('from').value = localInput(Number(params.get('from')));
    if (params.get('to')) $('to').value = localInput(Number(params.get('to')));
  }
  const ns = params.get('ns') || '';
  const names = [...new Set([...knownNamespaces, ...(ns ? [ns] : [])])].sort();
  const sel = clear($('ns'));
  sel.append(h('option', { value: '' }, 'all'), ...names.map((n) => h('option', { value: n }, n)));
  sel.value = ns;
}

function showError(msg) {
  const el = $('error');
  el.textContent = msg;
  el.hidden = !msg;
}

async function route() {
  const gen = ++generation;
  // The address this render is for, on the view once it is ready: a
  // script (the browser test) waits for its own navigation's render.
  const hash = location.hash;
  for (const f of leave) f();
  leave = [];
  const { view, params } = parse();
  syncControls(params);
  for (const v of Object.keys(views)) {
    const tab = $(`tab-${v}`);
    if (tab) tab.classList.toggle('active', v === view || (v === 'flows' && view === 'flow'));
  }
  $('tab-map').href = link('map', {});
  $('tab-flows').href = link('flows', {});
  showError('');
  const root = $('view');
  root.dataset.view = view;
  root.dataset.state = 'loading';
  delete root.dataset.hash;
  const stale = () => gen !== generation;
  const ctx = {
    range: null, stale, link, update, replaceParam, noteNamespaces,
    onLeave: (f) => leave.push(f),
    // guard shows a failed request of a view's own as the error banner.
    guard: (p) => p.catch((e) => { if (!stale()) showError(e.message); return null; }),
  };
  try {
    ctx.range = range(params);
    await views[view](root, params, ctx);
    if (!stale()) {
      root.dataset.hash = hash;
      root.dataset.state = 'ready';
    }
  } catch (e) {
    if (stale()) return;
    root.dataset.state = 'error';
    showError(e.message);
  }
}

$('window-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const win = $('win').value;
  const changes = { win, ns: $('ns').value, offset: '' };
  if (win === 'custom') {
    const from = fromLocalInput($('from').value);
    const to = fromLocalInput($('to').value);
    if (!(from > 0) || !(to > from)) {
      showError('custom range: choose a "from" before "to"');
      return;
    }
    Object.assign(changes, { from: String(from), to: String(to) });
  } else {
    Object.assign(changes, { from: '', to: '' });
  }
  const before = location.hash;
  update(changes);
  if (location.hash === before) route(); // same address: refresh
});
$('win').addEventListener('change', () => {
  const custom = $('win').value === 'custom';
  $('custom-range').hidden = !custom;
  if (custom && !$('from').value) {
    const now = Math.floor(Date.now() / 1000);
    $('from').value = localInput(now - 3600);
    $('to').value = localInput(now);
  }
  if (!custom) $('window-form').requestSubmit();
});
$('ns').addEventListener('change', () => $('window-form').requestSubmit());
window.addEventListener('hashchange', route);
route();
