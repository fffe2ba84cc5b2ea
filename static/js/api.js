// HTTP helpers for the optim API (docs/api.md): JSON calls with typed errors, and an SSE reader for POST streams.

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && typeof body.message === 'string' && body.message) || `request failed (HTTP ${status})`;
    super(message);
    this.status = status;
    this.code = (body && body.error) || 'http_error';
    this.body = body || {};
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { error: 'http_error', message: `${response.status} ${response.statusText || 'error'}` };
  }
  return new ApiError(response.status, body);
}

export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: { Accept: 'application/json' }, signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: 'network_error', message: 'the server cannot be reached; is optim still running?' });
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

// Send a file as the raw request body (PUT /api/target); answers JSON like api().
export async function apiUpload(method, path, file, { signal } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method, body: file, signal,
      headers: { Accept: 'application/json', 'Content-Type': 'application/octet-stream' },
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: 'network_error', message: 'the server cannot be reached; is optim still running?' });
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export function withModel(path, model, extra = {}) {
  const params = new URLSearchParams({ model, ...extra });
  return `${path}?${params}`;
}

// POST a JSON body and yield server-sent events as {event, data}. EventSource cannot POST, so this reads
// the body with fetch + ReadableStream and parses the text/event-stream framing itself.
export async function* postEventStream(path, body, { signal } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: 'network_error', message: 'the server cannot be reached; is optim still running?' });
  }
  if (!response.ok) throw await errorFrom(response);
  const type = response.headers.get('Content-Type') || '';
  if (!type.includes('text/event-stream')) {
    // A server may answer a cached request in one piece: treat it as the final event.
    yield { event: 'done', data: await response.json() };
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const parsed = parseEvent(block);
      if (parsed) yield parsed;
    }
  }
  const tail = parseEvent(buffer);
  if (tail) yield tail;
}

function parseEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return null;
  const text = data.join('\n');
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: { text } };
  }
}
