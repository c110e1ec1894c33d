import { get } from './api.js';
import { h, clear, num } from './dom.js';
import { flowTable } from './flowtable.js';

const pageSize = 50;

// Filters of the explorer's form, as /api/flows names them.
const textFilters = [
  { name: 'pod', label: 'Pod', placeholder: 'pod name' },
  { name: 'service', label: 'Service', placeholder: 'namespace/name' },
  { name: 'q', label: 'Text', placeholder: 'URL, host, SNI, DNS name' },
];
const choices = {
  protocol: { label: 'Protocol', options: [['', 'any'], ['6', 'TCP'], ['17', 'UDP'], ['132', 'SCTP'], ['1', 'ICMP'], ['58', 'ICMPv6']] },
  appProtocol: { label: 'App protocol', options: [['', 'any'], ['http', 'http'], ['dns', 'dns'], ['tls', 'tls']] },
  correlation: { label: 'Correlation', options: [['', 'any'], ['correlated', 'correlated'], ['not-required', 'not-required'], ['unmatched', 'unmatched']] },
};

// renderFlows is the flow explorer: a filter form, a table sorted and
// paged by the server, and the node/edge the map handed over as removable
// filters.
export async function renderFlows(root, params, ctx) {
  const sort = params.get('sort') || 'time';
  const order = params.get('order') || 'desc';
  const offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
  const query = {
    from: ctx.range.from, to: ctx.range.to, namespace: params.get('ns'),
    pod: params.get('pod'), service: params.get('service'), protocol: params.get('protocol'),
    appProtocol: params.get('appProtocol'), correlation: params.get('correlation'), q: params.get('q'),
    node: params.get('node'), edge: params.get('edge'), sort, order, limit: pageSize, offset,
  };
  const res = await get('flows', query);
  if (ctx.stale()) return;
  ctx.noteNamespaces(res.rows.flatMap((r) => [r.sourcePodNamespace, r.destinationPodNamespace]));

  const form = h('form', { id: 'flow-filters', class: 'filters', autocomplete: 'off' },
    textFilters.map((f) => h('label', null, f.label, h('input', { name: f.name, type: 'search', value: params.get(f.name) || '', placeholder: f.placeholder, maxlength: f.name === 'q' ? 256 : null }))),
    Object.entries(choices).map(([name, c]) => h('label', null, c.label,
      h('select', { name }, c.options.map(([v, t]) => h('option', { value: v, selected: (params.get(name) || '') === v }, t))))),
    h('button', { type: 'submit' }, 'Apply'),
    h('button', { type: 'button', onclick: () => ctx.update(Object.fromEntries([...textFilters.map((f) => f.name), ...Object.keys(choices), 'node', 'edge', 'offset'].map((k) => [k, '']))) }, 'Clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    const next = { offset: '' };
    for (const [k, v] of fd.entries()) next[k] = String(v).trim();
    ctx.update(next);
  });

  const chips = ['node', 'edge'].filter((k) => params.get(k)).map((k) =>
    h('span', { class: 'chip', dataset: { filter: k } }, `${k}: ${params.get(k)} `, h('button', { type: 'button', title: 'remove', onclick: () => ctx.update({ [k]: '', offset: '' }) }, '×')));

  const first = res.total ? offset + 1 : 0;
  const last = offset + res.rows.length;
  const pager = h('div', { class: 'pager', id: 'pager', dataset: { total: String(res.total), offset: String(offset) } },
    h('button', { type: 'button', id: 'prev', disabled: offset === 0, onclick: () => ctx.update({ offset: String(Math.max(0, offset - pageSize)) }) }, '‹ Previous'),
    h('span', null, `${num(first)}–${num(last)} of ${num(res.total)} flows`),
    h('button', { type: 'button', id: 'next', disabled: last >= res.total, onclick: () => ctx.update({ offset: String(offset + pageSize) }) }, 'Next ›'));

  const onSort = (col) => ctx.update({ sort: col, order: col === sort && order === 'desc' ? 'asc' : 'desc', offset: '' });
  clear(root).append(h('section', { id: 'explorer', dataset: { ready: '1' } },
    form, chips.length ? h('div', { class: 'chips' }, chips) : null, pager,
    res.rows.length ? flowTable(res.rows, { sort, order, onSort, href: (r) => ctx.link('flow', { key: r.key }) }) : h('p', { class: 'empty' }, 'No flows match.')));
}
