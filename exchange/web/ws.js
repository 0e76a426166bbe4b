// One WebSocket to the gateway's /ws: requests matched to answers by id, pushes checked for
// `conn_seq` continuity (+1 per push from 1) and handed on, heartbeats watched, and reconnection
// with exponential backoff and jitter. After each (re)connect `onOpen` runs (log on, subscribe);
// the caller resubscribes everything there.

const BACKOFF_MS_MIN = 500;
const BACKOFF_MS_MAX = 10_000;
const SILENCE_MS_MAX = 3_500; // heartbeats come every second: this much silence means a dead link
const REQUEST_TIMEOUT_MS = 10_000;
const CONNECT_MS_MAX = 10_000; // a socket still not open after this long is given up

export class FeedError extends Error {
  constructor(method, status, error) {
    super(`${method}: ${error?.msg ?? "failed"}`);
    this.status = status;
    this.code = error?.code ?? "ERROR";
    this.body = error;
  }
}

export class Feed {
  /**
   * handlers: onPush(msg), onHeartbeat(msg), onOpen() -> Promise (log on, subscribe),
   * onState(state, detail) with state "connecting" | "syncing" | "live" | "reconnecting".
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.state = "connecting";
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, method, timer}
    this.connSeq = 0;
    this.attempt = 0;
    this.lastRxMs = 0;
    this.lastHeartbeatMs = 0;
    this.reconnectTimer = null;
    this.stats = { connects: 0, reconnects: 0, connSeqGaps: 0, silences: 0 };
  }

  start() {
    this._connect();
    this._watchdog = setInterval(() => this._watch(), 500);
  }

  /** Send a request; resolve to its result or reject with a FeedError. */
  request(method, params = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new FeedError(method, 0, { code: "OFFLINE", msg: "not connected" }));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FeedError(method, 0, { code: "TIMEOUT", msg: "no answer" }));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, method, timer });
      ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Close the socket and reconnect (also what a conn_seq gap or a silence does). */
  drop(reason) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    try {
      ws.close(4000, reason.slice(0, 100));
    } catch {
      // already closing
    }
    this._scheduleReconnect(reason);
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.handlers.onState?.(state, detail);
  }

  _connect() {
    this.reconnectTimer = null;
    this._setState("connecting", { attempt: this.attempt });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.connSeq = 0;
    this.connectStartedMs = performance.now();
    ws.onopen = async () => {
      if (ws !== this.ws) return;
      this.stats.connects++;
      this.lastRxMs = performance.now();
      this._setState("syncing");
      try {
        await this.handlers.onOpen();
      } catch (error) {
        if (ws === this.ws) this.drop(`setup failed: ${error.message}`);
        return;
      }
      if (ws !== this.ws) return;
      this.attempt = 0;
      this._setState("live");
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastRxMs = performance.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        this.drop("a frame that is not JSON");
        return;
      }
      if ("channel" in msg) this._push(msg);
      else this._answer(msg);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this._scheduleReconnect(`closed (${event.code}${event.reason ? " " + event.reason : ""})`);
    };
  }

  _push(msg) {
    if (msg.conn_seq !== this.connSeq + 1) {
      this.stats.connSeqGaps++;
      this.drop(`conn_seq gap: expected ${this.connSeq + 1}, got ${msg.conn_seq}`);
      return;
    }
    this.connSeq = msg.conn_seq;
    if (msg.channel === "heartbeat") {
      this.lastHeartbeatMs = performance.now();
      this.handlers.onHeartbeat?.(msg);
      return;
    }
    this.handlers.onPush(msg);
  }

  _answer(msg) {
    const waiting = this.pending.get(msg.id);
    if (!waiting) return; // an answer after its timeout, or to a request without an id
    this.pending.delete(msg.id);
    clearTimeout(waiting.timer);
    if (msg.status === 200) waiting.resolve(msg.result);
    else waiting.reject(new FeedError(waiting.method, msg.status, msg.error));
  }

  _scheduleReconnect(reason) {
    for (const [, waiting] of this.pending) {
      clearTimeout(waiting.timer);
      waiting.reject(new FeedError(waiting.method, 0, { code: "DISCONNECTED", msg: reason }));
    }
    this.pending.clear();
    if (this.reconnectTimer !== null) return;
    const base = Math.min(BACKOFF_MS_MAX, BACKOFF_MS_MIN * 2 ** this.attempt);
    const delayMs = Math.round(base * (0.75 + Math.random() * 0.5));
    this.attempt++;
    this.stats.reconnects++;
    this._setState("reconnecting", { reason, delayMs });
    this.reconnectTimer = setTimeout(() => this._connect(), delayMs);
  }

  _watch() {
    const ws = this.ws;
    if (ws?.readyState === WebSocket.CONNECTING) {
      if (performance.now() - this.connectStartedMs > CONNECT_MS_MAX) this.drop("connect timed out");
      return;
    }
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (performance.now() - this.lastRxMs > SILENCE_MS_MAX) {
      this.stats.silences++;
      this.drop(`no heartbeat for ${SILENCE_MS_MAX / 1000} s`);
    }
  }
}
