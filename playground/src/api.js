// The runtime server's HTTP API (docs: api20.md): JSON in and out, RFC 9457 problems thrown as ApiError.
// Writes carry the CSRF double-submit header: the value of the non-HttpOnly d365_csrf cookie set by /login.

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return decodeURIComponent(rest.join('='));
  }
  return '';
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-CSRF-Token'] = cookie('d365_csrf');
  const answer = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!answer.ok) throw new ApiError(answer.status, data);
  return data;
}

// Data-source answers are cached per connection, source and parameters: a form re-renders on every keystroke.
const cache = new Map();

export function dataSource(connection, source, params) {
  const key = JSON.stringify([connection, source, params]);
  if (!cache.has(key)) {
    const pending = api('POST', `/data-sources/${source}`, { connection, params }).then((answer) => answer.items);
    pending.catch(() => cache.delete(key)); // a failure is retried on the next render, not remembered
    cache.set(key, pending);
  }
  return cache.get(key);
}

export function forgetDataSources() {
  cache.clear();
}
