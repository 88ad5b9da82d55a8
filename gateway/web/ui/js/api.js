// Talking to the gateway's public REST API and its SSE streams. With auth on, the token lives in
// sessionStorage and goes in the Authorization header of every call, streams included: they are
// read with fetch, not EventSource, so the token never appears in a URL (or in a server log).

const TOKEN_KEY = "agent-gateway-token";
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Called with the error of every 401, so the page can ask for a token once.
export function onUnauthorized(listener) {
  listeners.add(listener);
}

function headers(extra = {}) {
  const out = { ...extra };
  if (token()) out.Authorization = `Bearer ${token()}`;
  return out;
}

function url(path, query) {
  const target = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(key, value);
  }
  return target;
}

async function fail(response) {
  let detail = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    /* not JSON */
  }
  const error = new ApiError(response.status, detail);
  if (response.status === 401) for (const listener of listeners) listener(error);
  throw error;
}

export async function api(path, { method = "GET", body, query } = {}) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  if (!response.ok) await fail(response);
  return response.status === 204 ? null : response.json();
}

// Follow an SSE stream: `onEvent({id, event, data})` for each frame. After a dropped connection
// it reconnects with Last-Event-ID (so nothing is lost or repeated), backing off up to 5 s.
// Ends when the server closes the stream normally (`endless` streams reconnect then too).
// `onOpen(again)` runs on each connection; `again` is true for every one after the first.
export function follow(path, { onEvent, onEnd, onError, onOpen, after = 0, endless = false }) {
  const controller = new AbortController();
  let last = after;
  let failures = 0;
  let opened = 0;

  async function once() {
    const response = await fetch(url(path), {
      headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(last) }),
      signal: controller.signal,
    });
    if (!response.ok) await fail(response);
    failures = 0;
    opened += 1;
    if (onOpen) onOpen(opened > 1);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = parse(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!frame) continue;
        if (frame.id !== undefined) last = Number(frame.id);
        onEvent(frame);
      }
    }
  }

  (async () => {
    for (;;) {
      try {
        await once();
        if (!endless) break;
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError) {
          if (onError) onError(error);
          return;
        }
        failures += 1;
      }
      if (controller.signal.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * 2 ** failures)));
    }
    if (onEnd && !controller.signal.aborted) onEnd();
  })();
  return { close: () => controller.abort() };
}

function parse(text) {
  const frame = {};
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (field === "data") data.push(value);
    else if (field === "id" || field === "event") frame[field] = value;
  }
  if (!data.length) return null;
  try {
    frame.data = JSON.parse(data.join("\n"));
  } catch {
    frame.data = data.join("\n");
  }
  return frame;
}

// Services by name (the discovery endpoint), cached for the page's life.
let servicesPromise = null;
export function services(refresh = false) {
  if (refresh || !servicesPromise) {
    servicesPromise = api("/control_plane/services").catch((error) => {
      servicesPromise = null;
      throw error;
    });
  }
  return servicesPromise;
}

export function tasksOf(items) {
  return Array.isArray(items) ? items : items.items || [];
}
