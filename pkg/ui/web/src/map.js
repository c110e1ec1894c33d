import cytoscape from 'cytoscape';
import { get } from './api.js';
import { h, clear, num, bytes, bytesCell, numCell, protoName } from './dom.js';
import { flowTable } from './flowtable.js';

const kinds = {
  workload: { shape: 'round-rectangle', color: '#2b6cb0', label: 'workload' },
  pod: { shape: 'ellipse', color: '#4299e1', label: 'pod' },
  service: { shape: 'hexagon', color: '#2f855a', label: 'Service' },
  external: { shape: 'diamond', color: '#718096', label: 'external' },
};

const style = [
  {
    selector: 'node',
    style: {
      label: 'data(label)', shape: 'data(shape)', 'background-color': 'data(color)',
      width: 34, height: 34, 'font-size': 12, 'text-valign': 'bottom', 'text-margin-y': 4,
      'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
    },
  },
  {
    selector: 'edge',
    style: {
      width: 'data(width)', 'line-color': 'data(color)', 'target-arrow-color': 'data(color)',
      'target-arrow-shape': 'triangle', 'curve-style': 'bezier', 'arrow-scale': 0.9,
      label: 'data(label)', 'font-size': 10, 'text-wrap': 'wrap', 'text-rotation': 'autorotate',
      'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
    },
  },
  { selector: ':selected', style: { 'overlay-color': '#d69e2e', 'overlay-opacity': 0.35, 'overlay-padding': 6 } },
];

// edgeLabel is what the canvas shows on an edge: what it carries, and its
// error counts when it has any.
function edgeLabel(e) {
  const parts = [`${e.appProtocol || protoName(e.protocol).toLowerCase()}:${e.port}`, `${num(e.connections)} conn`];
  if (e.requests) parts.push(`${num(e.requests)} req`);
  else parts.push(bytes(e.bytes + e.reverseBytes));
  const errs = [];
  if (e.http5xx) errs.push(`${num(e.http5xx)} 5xx`);
  if (e.http4xx) errs.push(`${num(e.http4xx)} 4xx`);
  if (e.dnsErrors) errs.push(`${num(e.dnsErrors)} DNS errors`);
  return parts.join(' · ') + (errs.length ? '\n' + errs.join(' · ') : '');
}

function hasErrors(e) {
  return e.http5xx > 0 || e.http4xx > 0 || e.dnsErrors > 0;
}

// renderMap draws /api/map for the window: the graph on the left; on the
// right the selected node or edge and every node and edge as a table (the
// exact counts, and a way to select without the canvas); below, the
// selection's flows.
export async function renderMap(root, params, ctx) {
  const data = await get('map', { from: ctx.range.from, to: ctx.range.to, namespace: params.get('ns') });
  if (ctx.stale()) return;
  ctx.noteNamespaces(data.nodes.map((n) => n.namespace));
  const nodes = new Map(data.nodes.map((n) => [n.id, n]));
  const edges = new Map(data.edges.map((e) => [e.id, e]));

  const cyEl = h('div', { id: 'cy', dataset: { nodes: String(nodes.size), edges: String(edges.size) } });
  const selEl = h('section', { id: 'selection' });
  const flowsEl = h('section', { id: 'sel-flows' });
  const nodeRows = new Map();
  const edgeRows = new Map();
  const nodeTable = h('table', { id: 'map-nodes', class: 'compact' },
    h('thead', null, h('tr', null, h('th', null, 'Node'), h('th', null, 'Kind'), h('th', null, 'Namespace'))),
    h('tbody', null, data.nodes.map((n) => {
      const tr = h('tr', { class: 'map-node', tabindex: 0, dataset: { id: n.id, kind: n.kind, label: n.label }, onclick: () => select(n.id), onkeydown: enter(() => select(n.id)) },
        h('td', null, h('span', { class: `dot ${n.kind}` }), n.label), h('td', null, kinds[n.kind] ? kinds[n.kind].label : n.kind), h('td', null, n.namespace || '-'));
      nodeRows.set(n.id, tr);
      return tr;
    })));
  const label = (id) => (nodes.get(id) ? nodes.get(id).label : id);
  const edgeTable = h('table', { id: 'map-edges', class: 'compact' },
    h('thead', null, h('tr', null, ['Edge', 'Conn', 'Bytes →', 'Bytes ←', 'Req', '4xx', '5xx', 'DNS err'].map((t, i) => h('th', { class: i ? 'num' : '' }, t)))),
    h('tbody', null, data.edges.map((e) => {
      const tr = h('tr', {
        class: 'map-edge' + (hasErrors(e) ? ' errors' : ''),
        dataset: {
          id: e.id, source: e.source, target: e.target, sourceLabel: label(e.source), targetLabel: label(e.target),
          port: String(e.port), protocol: String(e.protocol), appProtocol: e.appProtocol || '',
          bytes: String(e.bytes), reverseBytes: String(e.reverseBytes), packets: String(e.packets), reversePackets: String(e.reversePackets),
          connections: String(e.connections), requests: String(e.requests), http4xx: String(e.http4xx), http5xx: String(e.http5xx), dnsErrors: String(e.dnsErrors),
        },
        tabindex: 0,
        onclick: () => select(e.id),
        onkeydown: enter(() => select(e.id)),
      },
      h('td', null, `${label(e.source)} → ${label(e.target)} `, h('span', { class: 'muted' }, `${e.appProtocol || protoName(e.protocol)}:${e.port}`)),
      numCell(e.connections), bytesCell(e.bytes), bytesCell(e.reverseBytes), numCell(e.requests), numCell(e.http4xx), numCell(e.http5xx), numCell(e.dnsErrors));
      edgeRows.set(e.id, tr);
      return tr;
    })));

  // The rollup widens the window to whole minutes: say what the numbers
  // cover.
  const rollup = data.rollup ? `per-minute rollup, ${hm(data.from)}–${hm(data.to)}` : 'raw rows';
  const side = h('aside', { id: 'side' }, selEl,
    h('h3', null, `Nodes (${nodes.size})`), nodeTable,
    h('h3', null, `Edges (${edges.size})`), edgeTable);
  const truncated = data.truncated ? h('p', { id: 'truncated', class: 'warning' }, `Only the ${num(edges.size)} busiest edges are shown; narrow the window or filter by namespace.`) : null;
  clear(root).append(truncated || '', h('div', { class: 'map-layout' }, h('div', { class: 'map-pane' }, cyEl, legend(`counted from the ${rollup}`)), side), flowsEl);

  if (!nodes.size) {
    cyEl.append(h('p', { class: 'empty' }, 'No flows in this window.'));
    return;
  }
  const cy = cytoscape({
    container: cyEl,
    elements: [
      ...data.nodes.map((n) => ({ data: { id: n.id, label: n.label, shape: (kinds[n.kind] || kinds.external).shape, color: (kinds[n.kind] || kinds.external).color } })),
      ...data.edges.map((e) => ({
        data: {
          id: e.id, source: e.source, target: e.target, label: edgeLabel(e),
          width: Math.min(9, 1.5 + Math.log10(1 + e.bytes + e.reverseBytes) / 1.5),
          color: hasErrors(e) ? '#c53030' : '#4a5568',
        },
      })),
    ],
    style,
    // Left to right: a breadth-first layering (clients, Services,
    // backends) turned on its side, which leaves room for edge labels.
    // The bounding box is the canvas turned too, so that the levels spread
    // over its width.
    layout: {
      name: 'breadthfirst', directed: true, padding: 40, spacingFactor: 1,
      boundingBox: { x1: 0, y1: 0, w: cyEl.clientHeight || 560, h: cyEl.clientWidth || 900 },
      transform: (_n, p) => ({ x: p.y, y: p.x }),
    },
    minZoom: 0.2,
    maxZoom: 2.5,
  });
  ctx.onLeave(() => cy.destroy());

  // Where each node and edge midpoint is drawn, relative to the canvas,
  // on its table row: lets a script (the browser test) click the canvas
  // itself, and keeps following pans, zooms and drags.
  let queued = false;
  const place = () => {
    queued = false;
    if (cy.destroyed()) return;
    cy.nodes().forEach((n) => {
      const tr = nodeRows.get(n.id());
      const p = n.renderedPosition();
      if (tr) { tr.dataset.cx = p.x.toFixed(1); tr.dataset.cy = p.y.toFixed(1); }
    });
    cy.edges().forEach((e) => {
      const tr = edgeRows.get(e.id());
      const p = e.renderedMidpoint();
      if (tr) { tr.dataset.cx = p.x.toFixed(1); tr.dataset.cy = p.y.toFixed(1); }
    });
    cyEl.dataset.placed = '1';
  };
  const queue = () => { if (!queued) { queued = true; requestAnimationFrame(place); } };
  cy.on('layoutstop pan zoom resize', queue);
  cy.on('position', 'node', queue);
  queue();

  // The latest selection: a slower answer for an earlier one is dropped.
  let selection = 0;

  function select(id) {
    selection++;
    delete flowsEl.dataset.ready;
    cy.elements().unselect();
    for (const tr of [...nodeRows.values(), ...edgeRows.values()]) tr.classList.remove('selected');
    ctx.replaceParam('sel', id || '');
    clear(selEl);
    clear(flowsEl);
    if (!id || (!nodes.has(id) && !edges.has(id))) return;
    cy.getElementById(id).select();
    const row = nodeRows.get(id) || edgeRows.get(id);
    row.classList.add('selected');
    if (edges.has(id)) showEdge(edges.get(id));
    else showNode(nodes.get(id));
  }

  function showEdge(e) {
    selEl.append(h('h2', null, `${label(e.source)} → ${label(e.target)}`),
      h('dl', { class: 'facts', dataset: { edge: e.id } },
        fact('Port', `${protoName(e.protocol)} ${e.port}`),
        fact('App protocol', e.appProtocol || '-', 'appProtocol'),
        fact('Connections', num(e.connections), 'connections', e.connections),
        fact('Bytes →', `${num(e.bytes)} (${bytes(e.bytes)})`, 'bytes', e.bytes),
        fact('Bytes ←', `${num(e.reverseBytes)} (${bytes(e.reverseBytes)})`, 'reverseBytes', e.reverseBytes),
        fact('Packets → / ←', `${num(e.packets)} / ${num(e.reversePackets)}`, 'packets', e.packets),
        fact('Requests', num(e.requests), 'requests', e.requests),
        fact('HTTP 4xx', num(e.http4xx), 'http4xx', e.http4xx),
        fact('HTTP 5xx', num(e.http5xx), 'http5xx', e.http5xx),
        fact('DNS errors', num(e.dnsErrors), 'dnsErrors', e.dnsErrors)));
    listFlows({ edge: e.id }, `Flows on ${label(e.source)} → ${label(e.target)} ${protoName(e.protocol)} ${e.port}`);
  }

  function showNode(n) {
    const out = data.edges.filter((e) => e.source === n.id);
    const inc = data.edges.filter((e) => e.target === n.id);
    const sum = (es, f) => es.reduce((s, e) => s + e[f], 0);
    selEl.append(h('h2', null, n.label),
      h('dl', { class: 'facts', dataset: { node: n.id } },
        fact('Kind', kinds[n.kind] ? kinds[n.kind].label : n.kind),
        fact('Namespace', n.namespace || '-'),
        fact('Name', n.name),
        fact('Outgoing', `${out.length} edges, ${num(sum(out, 'connections'))} connections, ${bytes(sum(out, 'bytes'))} sent`),
        fact('Incoming', `${inc.length} edges, ${num(sum(inc, 'connections'))} connections, ${bytes(sum(inc, 'bytes'))} received`)));
    listFlows({ node: n.id }, `Flows of ${n.label}`);
  }

  async function listFlows(filter, title) {
    const q = { from: ctx.range.from, to: ctx.range.to, ...filter, sort: 'time', order: 'desc', limit: 50 };
    const mine = selection;
    const res = await ctx.guard(get('flows', q));
    if (!res || ctx.stale() || mine !== selection) return;
    const more = ctx.link('flows', filter);
    clear(flowsEl).append(
      h('h2', null, title, ' ', h('span', { class: 'muted' }, `(${num(res.total)} flows)`)),
      h('p', null, h('a', { href: more }, 'Open in the flow explorer')),
      res.rows.length ? flowTable(res.rows, { href: (r) => ctx.link('flow', { key: r.key }) }) : h('p', { class: 'empty' }, 'No flows.'));
    flowsEl.dataset.total = String(res.total);
    flowsEl.dataset.ready = filter.edge || filter.node;
  }

  cy.on('tap', 'node', (ev) => select(ev.target.id()));
  cy.on('tap', 'edge', (ev) => select(ev.target.id()));
  cy.on('tap', (ev) => { if (ev.target === cy) select(''); });
  select(params.get('sel'));
}

function fact(term, value, field, raw) {
  return [h('dt', null, term), h('dd', field ? { dataset: { field, value: String(raw !== undefined ? raw : value) } } : null, value)];
}

function legend(source) {
  return h('div', { class: 'legend' }, Object.entries(kinds).map(([k, v]) => h('span', null, h('span', { class: `dot ${k}` }), v.label)),
    h('span', null, h('span', { class: 'line errors' }), 'edge with errors'),
    h('span', { id: 'map-source', class: 'muted source' }, source));
}

function hm(s) {
  const d = new Date(s * 1000);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

// enter makes a clickable row work from the keyboard too.
function enter(f) {
  return (ev) => { if (ev.key === 'Enter') f(); };
}
