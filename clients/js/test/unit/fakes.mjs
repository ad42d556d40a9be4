// A virtual clock and an in-memory WebSocket world for unit tests: no sockets, no real time.

/** Lets pending promise callbacks run. */
export const settle = () => new Promise((r) => setImmediate(r));

export class FakeClock {
  time = 0;
  #timers = [];
  #seq = 0;
  timers = {
    setTimeout: (fn, ms) => {
      const t = { at: this.time + Math.max(0, ms), fn, id: ++this.#seq };
      this.#timers.push(t);
      return t;
    },
    clearTimeout: (t) => {
      const i = this.#timers.indexOf(t);
      if (i >= 0) this.#timers.splice(i, 1);
    },
    now: () => this.time,
  };

  /** Runs every timer due within `ms`, in order, letting promises settle between them. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await settle();
      const due = this.#timers
        .filter((t) => t.at <= end)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#timers.splice(this.#timers.indexOf(due), 1);
      this.time = due.at;
      due.fn();
    }
    this.time = end;
    await settle();
  }
}

/**
 * Sockets the client opens. `world.behave(url)` says what the server at a URL does:
 * "refuse" (closes before open), "hang" (never opens) or "open"; `world.onMessage(msg, sock)`
 * answers (returns a reply object, an array of them, or undefined).
 */
export class World {
  sockets = [];
  behave = () => "open";
  health = { status: "ok", name: "wsrpc", port: 1 };
  onMessage = () => undefined;
  silent = false;

  get WebSocket() {
    const world = this;
    return class FakeWebSocket {
      readyState = 0;
      onopen = null;
      onmessage = null;
      onclose = null;
      onerror = null;
      sent = [];
      constructor(url) {
        this.url = url;
        world.sockets.push(this);
        const how = world.behave(url);
        queueMicrotask(() => {
          if (how === "refuse") {
            this.readyState = 3;
            this.onerror?.({});
            this.onclose?.({ code: 1006, reason: "" });
          } else if (how === "open") {
            this.readyState = 1;
            this.onopen?.({});
          }
        });
      }
      send(text) {
        if (this.readyState !== 1) return;
        const msg = JSON.parse(text);
        this.sent.push(msg);
        if (world.silent) return;
        const reply =
          msg.method === "rpc.health" && !Array.isArray(msg)
            ? { jsonrpc: "2.0", id: msg.id, result: world.health }
            : world.onMessage(msg, this);
        if (reply !== undefined) queueMicrotask(() => this.push(reply));
      }
      /** The server sends `obj`. */
      push(obj) {
        if (this.readyState === 1)
          this.onmessage?.({ data: JSON.stringify(obj) });
      }
      /** The server drops the connection. */
      drop(code = 1006) {
        if (this.readyState > 1) return;
        this.readyState = 3;
        this.onclose?.({ code, reason: "" });
      }
      close() {
        this.readyState = 3;
      }
    };
  }

  /** Requests (not health checks) sent on socket `i`. */
  calls(i) {
    return this.sockets[i].sent.filter((m) => m.method !== "rpc.health");
  }
}
