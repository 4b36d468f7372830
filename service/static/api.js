// The API client: the optional bearer token, JSON requests, and Server-Sent Events read with fetch().
// EventSource cannot send an Authorization header, so streams are read from a fetch() body instead.

const TOKEN_KEY = "medagent_token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  // The cookie lets plain <img src> and download links carry the token too (they cannot send headers).
  document.cookie = `${TOKEN_KEY}=${encodeURIComponent(value)}; SameSite=Strict; path=/`;
}

// Asks for a token (once per 401) through the page's dialog; resolves when the user has given one.
let asking = null;
export function askToken() {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token");
  asking = new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener("close", done);
      asking = null;
      if (input.value) setToken(input.value.trim());
      input.value = "";
      resolve();
    };
    dialog.addEventListener("close", done);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

// fetch() with the token; a 401 asks for a token and tries once more.
export async function request(path, options = {}, retried = false) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401 && !retried) {
    await askToken();
    return request(path, options, true);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function postJSON(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return response.json();
}

export async function postForm(path, form) {
  return (await request(path, { method: "POST", body: form })).json();
}

// Reads an SSE response body, calling onEvent({id, event, data}) with data parsed as JSON.
async function readEvents(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let current = { id: null, event: "message", data: [] };
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (current.data.length) {
            let data;
            try {
              data = JSON.parse(current.data.join("\n"));
            } catch {
              data = { text: current.data.join("\n") };
            }
            onEvent({ id: current.id, event: current.event, data });
          }
          current = { id: null, event: "message", data: [] };
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const key = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (key === "data") current.data.push(value);
          else if (key === "id") current.id = value;
          else if (key === "event") current.event = value;
        }
      }
      if (signal && signal.aborted) return;
    }
  } finally {
    reader.releaseLock();
  }
}

// A job's event stream, to its `end` event. A dropped connection is resumed with Last-Event-ID, so no event is
// shown twice and none is lost. Returns the `end` data.
export async function followJob(jobId, onEvent, signal) {
  let last = null;
  let ended = null;
  let failures = 0;
  while (!ended && !(signal && signal.aborted)) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (last) extra["Last-Event-ID"] = last;
      const response = await request(`/api/jobs/${encodeURIComponent(jobId)}/events`, { headers: extra, signal });
      await readEvents(response, (ev) => {
        if (ev.id) last = ev.id;
        failures = 0;
        if (ev.event === "end") ended = ev.data;
        onEvent(ev);
      }, signal);
      if (!ended) {
        // The stream closed without `end` (a finished job whose events were all sent before): ask the job.
        const job = await getJSON(`/api/jobs/${encodeURIComponent(jobId)}`);
        if (["done", "failed", "cancelled"].includes(job.status)) ended = { status: job.status, reason: job.reason };
        else await new Promise((r) => setTimeout(r, 1000)); // closed early (a proxy, a restart): resume, gently
      }
    } catch (err) {
      if (err.name === "AbortError" || err instanceof ApiError) throw err;
      failures += 1;
      if (failures > 20) throw err;
      await new Promise((r) => setTimeout(r, Math.min(500 * failures, 5000)));
    }
  }
  return ended;
}

// A consultation turn: POST (JSON or multipart) whose response is the turn's SSE stream. A turn is not
// re-sent when its stream drops (that would repeat it); the caller reloads the session instead.
export async function streamTurn(path, body, onEvent) {
  const options = { method: "POST", headers: { Accept: "text/event-stream" }, body };
  if (typeof body === "string") options.headers["Content-Type"] = "application/json";
  const response = await request(path, options);
  let ended = null;
  await readEvents(response, (ev) => {
    if (ev.event === "end") ended = ev.data;
    onEvent(ev);
  });
  return ended;
}
