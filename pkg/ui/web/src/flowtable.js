import { h, num, bytesCell, protoName, endReason, time, who, endpoint } from './dom.js';

// A row is one stored record; its counters are what that record adds
// (the deltas the map sums). A connection exported several times has
// several rows; its detail shows the totals.
const deltaNote = 'what this row adds (delta counters); the flow detail has the totals';

// Columns the API sorts by, with their header labels; the others are not
// sortable.
const columns = [
  { label: 'Start', sort: 'time' },
  { label: 'End' },
  { label: 'Source', sort: 'source' },
  { label: 'Destination', sort: 'destination' },
  { label: 'Service' },
  { label: 'Proto' },
  { label: 'App' },
  { label: 'Correlation' },
  { label: 'End reason' },
  { label: 'Bytes →', sort: 'bytes', num: true, title: deltaNote },
  { label: 'Bytes ←', sort: 'reverseBytes', num: true, title: deltaNote },
  { label: 'Packets →/←', sort: 'packets', num: true, title: deltaNote },
];

// flowTable renders /api/flows rows. opts.sort/opts.order mark the sorted
// column; opts.onSort(column) makes headers clickable; opts.href(row) is
// the detail link of a row.
export function flowTable(rows, opts) {
  const head = h('tr', null, columns.map((c) => {
    const sorted = opts.sort && c.sort === opts.sort;
    const arrow = sorted ? (opts.order === 'asc' ? ' ▲' : ' ▼') : '';
    const attrs = { class: (c.num ? 'num ' : '') + (c.sort && opts.onSort ? 'sortable' : ''), dataset: c.sort ? { sort: c.sort } : {}, title: c.title };
    if (sorted) attrs['aria-sort'] = opts.order === 'asc' ? 'ascending' : 'descending';
    if (c.sort && opts.onSort) attrs.onclick = () => opts.onSort(c.sort);
    return h('th', attrs, c.label + arrow);
  }));
  const body = h('tbody', null, rows.map((r) => {
    const href = opts.href(r);
    return h('tr', { class: 'flow-row', dataset: { key: r.key, source: endpoint(r.sourceIP, r.sourcePort), destination: endpoint(r.destinationIP, r.destinationPort), bytes: String(r.bytes), reverseBytes: String(r.reverseBytes), app: r.appProtocol || '' }, onclick: (e) => { if (!e.target.closest('a')) location.hash = href; } },
      h('td', null, h('a', { href }, r.flowStartSeconds ? time(r.flowStartSeconds) : 'unknown')),
      h('td', null, time(r.flowEndSeconds)),
      h('td', { class: 'src' }, who(r.sourcePodNamespace, r.sourcePodName, r.sourceWorkload, r.sourceIP, r.sourcePort)),
      h('td', { class: 'dst' }, who(r.destinationPodNamespace, r.destinationPodName, r.destinationWorkload, r.destinationIP, r.destinationPort)),
      h('td', null, r.destinationService || '-'),
      h('td', null, protoName(r.protocol)),
      h('td', null, r.appProtocol || '-'),
      h('td', null, r.correlation || '-'),
      h('td', null, endReason(r.flowEndReason)),
      bytesCell(r.bytes),
      bytesCell(r.reverseBytes),
      h('td', { class: 'num', dataset: { value: String(r.packets) } }, `${num(r.packets)} / ${num(r.reversePackets)}`),
    );
  }));
  return h('table', { class: 'flows' }, h('thead', null, head), body);
}
