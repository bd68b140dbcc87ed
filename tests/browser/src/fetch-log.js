// Records every fetch() the page makes: URL, method, options, the exact body string and the
// HTTP status as the page saw it. DevTools reports keepalive fetches as aborted even when they
// succeed, so the statuses are read here, inside the page. Imported before the SDK.

export const requests = [];
let inflight = 0;

const originalFetch = window.fetch.bind(window);

function urlOf(input) {
  if (typeof input === 'string') return input;
  if (input instanceof URL) return input.href;
  return input.url;
}

window.fetch = async function loggedFetch(input, init = {}) {
  const entry = {
    url: new URL(urlOf(input), location.href).href,
    method: (init.method || 'GET').toUpperCase(),
    mode: init.mode ?? null,
    credentials: init.credentials ?? null,
    keepalive: Boolean(init.keepalive),
    body: typeof init.body === 'string' ? init.body : null,
    started_at: Date.now(),
    ended_at: null,
    status: null,
    ok: null,
    error: null,
  };
  requests.push(entry);
  inflight += 1;
  try {
    const response = await originalFetch(input, init);
    entry.status = response.status;
    entry.ok = response.ok;
    return response;
  } catch (error) {
    entry.error = String(error);
    throw error;
  } finally {
    entry.ended_at = Date.now();
    inflight -= 1;
  }
};

export function inflightCount() {
  return inflight;
}
