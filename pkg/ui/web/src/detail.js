import { get } from './api.js';
import { h, clear, num, bytes, protoName, endReason, flowType, time, endpoint } from './dom.js';

// Times in a record may arrive as Unix seconds (numbers or digit strings)
// or already formatted; show either.
function when(v) {
  if (typeof v === 'number' || /^\d+$/.test(String(v))) return time(Number(v));
  return v ? String(v) : '-';
}

function val(r, name) {
  return r && r[name] !== undefined && r[name] !== null ? r[name] : '';
}

function side(r, ns, pod, node) {
  if (!val(r, pod)) return '-';
  return `${val(r, ns) ? val(r, ns) + '/' : ''}${val(r, pod)}${val(r, node) ? ` on ${val(r, node)}` : ''}`;
}

// The counters both nodes report, as rows of the "both halves" table:
// label, the row's own column, and its FromSourceNode/FromDestinationNode
// stem (the Exporter columns are named differently).
const halves = [
  ['Exporter', null, (s) => (s === 'Source' ? 'sourceExporter' : 'destinationExporter'), false],
  ['Packets →', 'packetTotalCount', (s) => `packetTotalCountFrom${s}Node`, false],
  ['Bytes →', 'octetTotalCount', (s) => `octetTotalCountFrom${s}Node`, true],
  ['Packets ←', 'reversePacketTotalCount', (s) => `reversePacketTotalCountFrom${s}Node`, false],
  ['Bytes ←', 'reverseOctetTotalCount', (s) => `reverseOctetTotalCountFrom${s}Node`, true],
  ['Bytes → (delta)', 'octetDeltaCount', (s) => `octetDeltaCountFrom${s}Node`, true],
  ['Bytes ← (delta)', 'reverseOctetDeltaCount', (s) => `reverseOctetDeltaCountFrom${s}Node`, true],
  ['Throughput → (bit/s)', 'throughput', (s) => `throughputFrom${s}Node`, false],
  ['Throughput ← (bit/s)', 'reverseThroughput', (s) => `reverseThroughputFrom${s}Node`, false],
  ['Last report', 'flowEndSeconds', (s) => `flowEndSecondsFrom${s}Node`, 'time'],
];

function cell(v, kind) {
  if (kind === 'time') return h('td', null, when(v));
  if (v === '' || v === undefined) return h('td', null, '-');
  if (typeof v === 'number' || /^\d+$/.test(String(v))) {
    return h('td', { class: 'num', dataset: { value: String(v) }, title: kind ? bytes(Number(v)) : null }, num(v));
  }
  return h('td', null, String(v));
}

function statusClass(s) {
  if (s >= 500) return 'status-5xx';
  if (s >= 400) return 'status-4xx';
  return '';
}

// renderFlow is one connection: what it is, both nodes' counters side by
// side, its L7 details, every row stored for it and every column of the
// latest one.
export async function renderFlow(root, params, ctx) {
  const key = params.get('key');
  if (!key) throw new Error('no flow key in the address');
  const d = await get('flow', { key });
  if (ctx.stale()) return;
  const recs = d.records || [];
  if (!recs.length) {
    clear(root).append(h('p', { class: 'empty' }, 'No rows for this flow.'));
    return;
  }
  const r = recs[recs.length - 1];
  const proto = Number(val(r, 'protocolIdentifier'));
  const svc = val(r, 'destinationServiceIP')
    ? `${endpoint(val(r, 'destinationServiceIP'), val(r, 'destinationServicePort'))}${val(r, 'destinationServicePortName') ? ` (${val(r, 'destinationServicePortName')})` : ''}`
    : '-';
  const title = `${endpoint(val(r, 'sourceIP'), val(r, 'sourceTransportPort'))} → ${endpoint(val(r, 'destinationIP'), val(r, 'destinationTransportPort'))} ${protoName(proto)}`;

  const http = d.http || [];
  // One DNS transaction per record that carried one.
  const dns = (Array.isArray(d.dns) ? d.dns : [d.dns]).filter((x) => x && x.queryName);
  const tls = d.tls && (d.tls.serverName || d.tls.version || d.tls.ja3 || d.tls.ja4) ? d.tls : null;
  // The table's own column order when the server sends it.
  const columns = Array.isArray(d.columns) && d.columns.length ? d.columns : Object.keys(r).sort();

  clear(root).append(h('section', { id: 'flow-detail', dataset: { key, ready: '1' } },
    h('p', null, h('a', { href: ctx.link('flows', {}), onclick: (e) => { if (history.length > 1) { e.preventDefault(); history.back(); } } }, '‹ Back')),
    h('h2', null, title),
    h('dl', { class: 'facts wide' },
      fact('Source', side(r, 'sourcePodNamespace', 'sourcePodName', 'sourceNodeName')),
      fact('Destination', side(r, 'destinationPodNamespace', 'destinationPodName', 'destinationNodeName')),
      fact('Service', svc),
      fact('App protocol', val(r, 'appProtocolName') || '-', 'appProtocol'),
      fact('Start', when(val(r, 'flowStartSeconds')), 'flowStartSeconds', val(r, 'flowStartSeconds')),
      fact('End', when(val(r, 'flowEndSeconds')), 'flowEndSeconds', val(r, 'flowEndSeconds')),
      fact('End reason', endReason(Number(val(r, 'flowEndReason'))), 'flowEndReason'),
      fact('TCP state', val(r, 'tcpState') || '-'),
      fact('Flow type', flowType(Number(val(r, 'flowType')))),
      fact('Correlation', val(r, 'correlation') || '-', 'correlation'),
      fact('Aggregator', val(r, 'aggregator') || '-')),

    h('h3', null, 'Both halves'),
    h('table', { id: 'halves', class: 'compact' },
      h('thead', null, h('tr', null, h('th', null, ''), h('th', { class: 'num' }, 'Row (merged)'), h('th', { class: 'num' }, 'From source node'), h('th', { class: 'num' }, 'From destination node'))),
      h('tbody', null, halves.map(([label, own, stem, kind]) => h('tr', { dataset: { counter: own || 'exporter' } },
        h('th', null, label), own ? cell(val(r, own), kind) : h('td', null, ''), cell(val(r, stem('Source')), kind), cell(val(r, stem('Destination')), kind))))),

    h('h3', null, `HTTP transactions (${http.length})`),
    d.badHttpVals ? h('p', { class: 'warning' }, `${num(d.badHttpVals)} stored httpVals could not be read.`) : null,
    http.length
      ? h('table', { id: 'http', class: 'compact' },
        h('thead', null, h('tr', null, ['Id', 'Method', 'Host', 'URL', 'Protocol', 'Status', 'Content type', 'Length', 'User agent', 'Row'].map((t) => h('th', null, t)))),
        h('tbody', null, http.map((t, i) => h('tr', { class: 'http-tx ' + statusClass(t.status), dataset: { id: String(t.id !== undefined ? t.id : i + 1), method: t.method || '', url: t.url || '', status: String(t.status || 0), hostname: t.hostname || '' } },
          h('td', null, String(t.id !== undefined ? t.id : i + 1)), h('td', null, t.method || '-'), h('td', null, t.hostname || '-'), h('td', { class: 'url' }, t.url || '-'),
          h('td', null, t.protocol || '-'), h('td', { class: 'num' }, t.status ? String(t.status) : 'no response'), h('td', null, t.contentType || '-'),
          h('td', { class: 'num' }, t.length !== undefined ? num(t.length) : '-'), h('td', null, t.userAgent || '-'), h('td', null, when(t.flowEndSeconds))))))
      : h('p', { class: 'muted' }, 'None (not HTTP, or neither end opted into L7 export).'),

    dns.length ? [h('h3', null, `DNS (${dns.length})`), h('table', { id: 'dns', class: 'compact' },
      h('thead', null, h('tr', null, ['Query', 'Type', 'Response code', 'Answers', 'Row'].map((t) => h('th', null, t)))),
      h('tbody', null, dns.map((x) => h('tr', { class: 'dns-tx' + (x.responseCode && x.responseCode !== 'NOERROR' ? ' status-5xx' : ''), dataset: { queryName: x.queryName, responseCode: x.responseCode || '' } },
        h('td', null, x.queryName), h('td', null, x.queryType || '-'), h('td', null, x.responseCode || '-'),
        h('td', null, (x.answers || []).filter(Boolean).join(', ') || '-'), h('td', null, when(x.flowEndSeconds))))))] : null,
    tls ? [h('h3', null, 'TLS'), h('dl', { id: 'tls', class: 'facts' },
      fact('Server name (SNI)', tls.serverName || '-', 'serverName'), fact('Version', tls.version || '-', 'version'),
      tls.ja3 ? fact('JA3', tls.ja3) : null, tls.ja3s ? fact('JA3S', tls.ja3s) : null, tls.ja4 ? fact('JA4', tls.ja4) : null)] : null,

    h('h3', null, `Rows stored for this connection (${recs.length})`),
    d.truncated ? h('p', { class: 'warning' }, `Only the first ${num(recs.length)} rows are shown.`) : null,
    h('table', { id: 'records', class: 'compact' },
      h('thead', null, h('tr', null, ['#', 'End', 'End reason', 'Bytes →', 'Bytes ←', 'Packets → / ←', 'Correlation', 'Inserted', 'Batch'].map((t) => h('th', null, t)))),
      h('tbody', null, recs.map((x, i) => h('tr', null,
        h('td', null, String(i + 1)), h('td', null, when(val(x, 'flowEndSeconds'))), h('td', null, endReason(Number(val(x, 'flowEndReason')))),
        cell(val(x, 'octetTotalCount'), true), cell(val(x, 'reverseOctetTotalCount'), true),
        h('td', { class: 'num' }, `${num(val(x, 'packetTotalCount'))} / ${num(val(x, 'reversePacketTotalCount'))}`),
        h('td', null, val(x, 'correlation') || '-'), h('td', null, when(val(x, 'timeInserted'))), h('td', null, String(val(x, 'batchId'))))))),

    h('details', null, h('summary', null, 'Every column of the latest row'),
      h('table', { class: 'compact columns' }, h('tbody', null, columns.filter((k) => k in r).map((k) => h('tr', null, h('th', null, k), h('td', null, String(r[k])))))))));
}

function fact(term, value, field, raw) {
  const data = raw === undefined ? { field } : { field, value: String(raw) };
  return [h('dt', null, term), h('dd', field ? { dataset: data } : null, value)];
}
