// A browser client of lameduck's resumable topics: one plain ES module, no
// build step. Served by `lameduck serve` (and by any app that mounts
// `lameduck_topics::http::Topics`) at `/topics.js`.
//
//   import { Topic } from "/topics.js";
//   const chat = new Topic("chat", {
//     onMessage: (m) => show(m.data, m.pos),
//     onReset: (r) => reload(), // the resume was not recovered
//   });
//   await chat.publish("hello"); // resolves with its position once stored
//
// What it promises, over the WebSocket protocol of `/topics/{name}/ws`:
// - it keeps the position of the last message and resumes after it on
//   every reconnect, so a message published while it was away still
//   arrives, once, in order; when the server says the resume was not
//   recovered, `onReset` is called (reload your state);
// - each `publish` gets an id within the server-issued session and is
//   resent after a reconnect until acknowledged: the server stores it once;
// - it reconnects with jittered exponential back-off (a drain's Close
//   brings it back quickly, spread so that a fleet sees no storm); a
//   server refusing new sessions for now (`--max-new-sessions`) closes
//   with 1013 and "retry after N", and it comes back after N seconds.

const DRAIN_CODES = new Set([1001, 1012]);
/** Try Again Later: the reason says when, in seconds, already spread. */
const TRY_AGAIN_LATER = 1013;

/** Splits "EPOCH-OFFSET" into its epoch and its offset (a BigInt). */
function parsePosition(pos) {
  const dash = pos.indexOf("-");
  return { epoch: pos.slice(0, dash), offset: BigInt(pos.slice(dash + 1)) };
}

export class Topic {
  /**
   * @param {string} name the topic, 1 to 128 of A-Z a-z 0-9 . _ -
   * @param {object} [options]
   * @param {string} [options.base] the service's URL (default: this page's origin)
   * @param {string} [options.since] a position to resume after (kept by the caller across page loads)
   * @param {(m: {pos: string, data: string|undefined, bytes: Uint8Array|undefined}) => void} [options.onMessage]
   * @param {(r: {from: string}) => void} [options.onReset]
   * @param {(s: {connected: boolean, attempt: number}) => void} [options.onState]
   * @param {number} [options.minDelay] first back-off, ms (default 200)
   * @param {number} [options.maxDelay] longest back-off, ms (default 10000)
   */
  constructor(name, options = {}) {
    this.name = name;
    this.base = options.base ?? globalThis.location.origin;
    this.position = options.since ?? null;
    this.onMessage = options.onMessage ?? (() => {});
    this.onReset = options.onReset ?? (() => {});
    this.onState = options.onState ?? (() => {});
    this.minDelay = options.minDelay ?? 200;
    this.maxDelay = options.maxDelay ?? 10000;
    this.session = null;
    this.pending = new Map(); // id -> { frame, resolve, reject }
    this.nextId = 1;
    this.attempt = 0;
    this.reconnects = 0;
    this.closed = false;
    this.ws = null;
    this.ready = false;
    this.#connect();
  }

  /**
   * Publishes `data` (a string, or bytes as a Uint8Array). Resolves with
   * the message's position once the server has stored it, however many
   * reconnects that takes.
   */
  publish(data) {
    const id = String(this.nextId++);
    const frame =
      typeof data === "string" ? { id, data } : { id, data_b64: toBase64(data) };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { frame, resolve, reject });
      if (this.ready) this.ws.send(JSON.stringify(frame));
    });
  }

  /** Stops for good; unacknowledged publishes are rejected. */
  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
    for (const { reject } of this.pending.values()) reject(new Error("closed"));
    this.pending.clear();
  }

  #connect() {
    const url = new URL(`/topics/${this.name}/ws`, this.base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.position) url.searchParams.set("since", this.position);
    if (this.session) url.searchParams.set("session", this.session);
    const ws = new WebSocket(url);
    this.ws = ws;
    this.ready = false;
    ws.onmessage = (e) => this.#frame(ws, JSON.parse(e.data));
    ws.onclose = (e) => this.#closed(ws, e.code, e.reason);
  }

  #frame(ws, f) {
    if (f.session !== undefined) {
      // The first frame: the session, and whether the resume was recovered.
      this.session = f.session;
      this.attempt = 0;
      this.ready = true;
      this.onState({ connected: true, attempt: 0 });
      if (f.recovered === false) {
        this.position = f.from;
        this.onReset({ from: f.from });
      } else if (this.position === null) {
        this.position = f.from;
      }
      // What was not acknowledged goes again, in order, under the same
      // session and ids: the server stores each once.
      for (const { frame } of this.pending.values()) ws.send(JSON.stringify(frame));
      return;
    }
    if (f.ack !== undefined) {
      const p = this.pending.get(f.ack);
      if (p) {
        this.pending.delete(f.ack);
        p.resolve(f.pos);
      }
      return;
    }
    if (f.pos !== undefined) {
      // Never the same message twice, even from a server that resent.
      if (this.position !== null) {
        const at = parsePosition(this.position);
        const next = parsePosition(f.pos);
        if (at.epoch === next.epoch && next.offset <= at.offset) return;
      }
      this.position = f.pos;
      const bytes = f.data_b64 !== undefined ? fromBase64(f.data_b64) : undefined;
      this.onMessage({ pos: f.pos, data: f.data, bytes });
    }
  }

  #closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ready = false;
    this.onState({ connected: false, attempt: this.attempt });
    if (this.closed) return;
    if (code === 1008 && reason === "unknown session") {
      // Forgotten (the idempotency window passed): a new session. What is
      // pending is resent under it and may be stored a second time.
      this.session = null;
    }
    if (code === 1008 && reason !== "unknown session") {
      // Refused by the server's rules (not allowed, a reused id): resending
      // would be refused again.
      for (const { reject } of this.pending.values()) reject(new Error(reason));
      this.pending.clear();
    }
    this.reconnects++;
    const later = code === TRY_AGAIN_LATER && /^retry after (\d+)$/.exec(reason);
    if (later) {
      this.attempt++;
      const wait = Number(later[1]) * 1000 + Math.random() * this.minDelay;
      setTimeout(() => this.#connect(), wait);
      return;
    }
    // Full jitter: a drained instance's clients come back spread out.
    const ceiling = DRAIN_CODES.has(code)
      ? this.minDelay * 5
      : Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    this.attempt++;
    setTimeout(() => this.#connect(), Math.random() * ceiling);
  }
}

function toBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
