// The backend's JSON API (docs: notes in pkg/ui; contract ui-api.md).

export class APIError extends Error {}

// get fetches api/<path>?<params>; relative, so the UI works behind a
// path prefix. Empty parameters are left out.
export async function get(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  let res;
  try {
    res = await fetch(`api/${path}?${q}`, { headers: { Accept: 'application/json' } });
  } catch (e) {
    throw new APIError(`cannot reach the flowlens UI server: ${e.message}`);
  }
  let body;
  try {
    body = await res.json();
  } catch (e) {
    throw new APIError(`${path}: HTTP ${res.status}, not JSON`);
  }
  if (!res.ok) throw new APIError(`${path}: ${body && body.error ? body.error : 'HTTP ' + res.status}`);
  return body;
}
