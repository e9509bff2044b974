// The JSON API, as the console calls it: every request carries the operator token as
// `Authorization: Bearer`, never a cookie, so no other site can make the browser act with it.
//
// The live event stream (`GET /api/admin/events`) is read with fetch and a stream reader
// rather than EventSource, which cannot send an Authorization header: the token stays out of
// URLs, and so out of logs and the browser's history.

/** A failed call: the API's error code and message, and what the person can do next. */
export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
    this.hint = hintFor(status);
  }
}

function hintFor(status) {
  if (status === 0) {
    return 'Check that the Ferry server is running and that this computer can reach it, then try again.';
  }
  switch (status) {
    case 401:
      return 'Sign in again with a valid operator token (an admin can make one with `ferry token create`).';
    case 403:
      return 'Your token does not allow this. Ask an admin for a token with the role it needs (`ferry token create --role operator`).';
    case 409:
    case 400:
    case 422:
      return 'Correct what the message names, then try again.';
    case 429:
      return 'Wait a minute, then try again.';
    case 503:
      return 'The server cannot reach its store, or is busy; it recovers on its own. Try again in a few seconds.';
    default:
      if (status >= 500) {
        return 'The server logged what went wrong. Try again; if it keeps failing, tell whoever runs the server.';
      }
      return '';
  }
}

export class Api {
  /** `onUnauthorized` is told when the server stops accepting the token. */
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  get(path) {
    return this.request('GET', path);
  }

  post(path, json) {
    return this.request('POST', path, {json});
  }

  put(path, json) {
    return this.request('PUT', path, {json});
  }

  delete(path) {
    return this.request('DELETE', path);
  }

  /** Sends a request; resolves to the JSON body (null when empty), or throws ApiError. */
  async request(method, path, {json, text, contentType} = {}) {
    const headers = {Authorization: `Bearer ${this.token}`, Accept: 'application/json'};
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (text !== undefined) {
      headers['Content-Type'] = contentType;
      body = text;
    }
    let response;
    try {
      response = await fetch(path, {method, headers, body, cache: 'no-store', credentials: 'omit'});
    } catch {
      throw new ApiError(0, 'network', 'The server could not be reached.');
    }
    const raw = await response.text();
    let parsed = null;
    try {
      parsed = raw ? JSON.parse(raw) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok) {
      const error = parsed?.error ?? {};
      const failure = new ApiError(response.status, error.code ?? 'unknown',
        error.message ?? `The server answered ${response.status} ${response.statusText}.`,
        error.details ?? {});
      if (response.status === 401) this.onUnauthorized?.(failure);
      throw failure;
    }
    return parsed;
  }

  /**
   * Follows `GET /api/admin/events` until `close()`: each event goes to `onEvent(name, data)`;
   * `onOpen()` is called whenever the stream (re)opens, when the page should read everything
   * again (events may have been missed meanwhile); `onStatus('live'|'reconnecting')` tells
   * how the stream is. A broken stream is opened again after 1, 2, 4 … 15 s.
   */
  follow({onEvent, onOpen, onStatus}) {
    let stopped = false;
    let controller = null;
    const run = async () => {
      let pause = 1000;
      while (!stopped) {
        controller = new AbortController();
        try {
          const response = await fetch('/api/admin/events', {
            headers: {Authorization: `Bearer ${this.token}`, Accept: 'text/event-stream'},
            signal: controller.signal,
            cache: 'no-store',
            credentials: 'omit',
          });
          if (response.status === 401) {
            this.onUnauthorized?.(new ApiError(401, 'unauthorized', 'The server no longer accepts this token.'));
            return;
          }
          if (response.ok && response.body) {
            onStatus('live');
            pause = 1000;
            onOpen();
            await readEvents(response.body, onEvent);
          }
        } catch {
          // A broken connection or an abort; decided below.
        }
        if (stopped) return;
        onStatus('reconnecting');
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, 15_000);
      }
    };
    run();
    return {
      close() {
        stopped = true;
        controller?.abort();
      },
    };
  }
}

/** Reads Server-Sent Events from `body` until it ends; comment lines keep it open only. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line === '' || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const key = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (key === 'event') name = text;
        else if (key === 'data') data.push(text);
      }
      if (data.length === 0) continue;
      let parsed;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch {
        continue;
      }
      onEvent(name, parsed);
    }
  }
}
