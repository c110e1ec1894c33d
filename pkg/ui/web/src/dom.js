// Small DOM and formatting helpers shared by the views.

// h builds an element: attrs are set as attributes except on* (listeners),
// "class" and "dataset" (an object); children are nodes, strings or arrays
// (null and undefined are skipped).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// Exact integers with thousands separators: counts are the product, so the
// exact value is always shown (bytes also get a short form next to it).
export function num(n) {
  return Number(n || 0).toLocaleString('en-US');
}

export function bytes(n) {
  n = Number(n || 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

// A byte count cell: the short form, the exact count in the title and in
// data-value.
export function bytesCell(n, attrs) {
  return h('td', { class: 'num', title: `${num(n)} bytes`, dataset: { value: String(n || 0) }, ...(attrs || {}) }, bytes(n));
}

export function numCell(n, attrs) {
  return h('td', { class: 'num', dataset: { value: String(n || 0) }, ...(attrs || {}) }, num(n));
}

const protoNames = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
export function protoName(p) {
  return protoNames[p] || `proto ${p}`;
}

const endReasons = { 1: 'idle', 2: 'active', 3: 'end-of-flow', 4: 'forced', 5: 'lack-of-resources' };
export function endReason(r) {
  return endReasons[r] || `reason-${r}`;
}

const flowTypes = { 1: 'intra-node', 2: 'inter-node', 3: 'to-external', 4: 'from-external' };
export function flowType(t) {
  return flowTypes[t] || 'unknown';
}

// Times are Unix seconds; shown in the browser's zone, to the second.
export function time(s) {
  if (!s) return '-';
  const d = new Date(Number(s) * 1000);
  const p = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function endpoint(ip, port) {
  return ip && ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

// Who an end of a flow row is: namespace/pod (workload), else the address.
export function who(ns, pod, workload, ip, port) {
  const addr = endpoint(ip, port);
  if (!pod) return addr;
  return `${ns ? ns + '/' : ''}${pod}${workload ? ` (${workload})` : ''} ${addr}`;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}
