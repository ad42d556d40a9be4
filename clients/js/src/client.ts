import { ClientError, RpcError } from "./errors.js";

/** The parts of a WebSocket the client uses (the browser's, Node 22's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState?: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The clock and timers the client runs on (a fake one in tests). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

/** Where remembered ports are kept (`localStorage` by default). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** An inclusive port range `[first, last]`, or a list of ports and ranges. */
export type Ports = [number, number] | Array<number | [number, number]>;

export interface DiscoverOptions {
  /** [`127.0.0.1`] */
  host?: string;
  /** Ports to scan, the last good one first [8766..=8800]. */
  ports?: Ports;
  /** [`ws`] */
  scheme?: "ws" | "wss";
  /** [`/`] */
  path?: string;
  /** The server name to accept (same as the top-level `name`). */
  name?: string;
  /** How long one port may take to open and answer `rpc.health` [2000 ms]. */
  probeTimeoutMs?: number;
  /** Ports probed at once [6]. */
  concurrency?: number;
}

export interface ClientOptions {
  /** The server's WebSocket URL. */
  url?: string;
  /** Several URLs, tried in turn. */
  urls?: string[];
  /** Scan a port range for the server instead of a fixed URL. */
  discover?: DiscoverOptions;
  /** Accept a server only when its `rpc.health` reports this name. */
  name?: string;
  /** Fall back to HTTP POST when the WebSocket cannot be opened [true]. */
  http?: boolean;
  /** Full-jitter backoff between attempts: a delay in [0, min(maxMs, minMs·2^n)] [1 s, 30 s]. */
  backoff?: { minMs?: number; maxMs?: number };
  /** Application-level liveness check [every 15 s, 10 s to answer]; `false` turns it off. */
  heartbeat?: { everyMs?: number; timeoutMs?: number } | false;
  /** Default deadline of a call, queueing included [10 s]. */
  requestTimeoutMs?: number;
  /** Deadline for a WebSocket to open and answer the identity check [10 s]. */
  connectTimeoutMs?: number;
  /** Bearer token: `?token=` on the WebSocket URL, `Authorization` over HTTP. */
  token?: string;
  /** The WebSocket constructor [globalThis.WebSocket]. */
  WebSocket?: WebSocketConstructor;
  /** The fetch function, for the HTTP fallback and refusal checks [globalThis.fetch]. */
  fetch?: typeof fetch;
  /** Where the last good port is remembered [localStorage where available]; null: nowhere. */
  storage?: StorageLike | null;
  /** Clock and timers [the global ones]. */
  timers?: Timers;
  /** Random numbers in [0, 1) for the jitter [Math.random]. */
  random?: () => number;
}

/** A topic's position: the server run (`epoch`) and the last sequence number seen in it. */
export interface Position {
  epoch: number;
  seq: number;
}

/** Per-call options. */
export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** Payload of the `state` event. */
export interface StateEvent {
  state: State;
  /** How calls travel while open: `ws`, or `http` after the fallback. */
  transport?: "ws" | "http";
  url?: string;
  /** Why the client stopped or lost its connection. */
  error?: Error;
}

/** Payload of `gap` (replay older than the server keeps) and `lagged` (dropped while slow). */
export interface MissedEvent {
  topic: string;
  subscription: string;
  from: number;
  to: number;
}

/**
 * Payload of `reset`: the topic's history was lost (the server restarted, or the broker that
 * shares it between servers lost it); sequence numbers start over in `epoch`.
 */
export interface ResetEvent {
  topic: string;
  epoch: number;
  previousEpoch: number;
}

/**
 * Payload of `stalled`: the server's broker is down, so values from `from` on are held up;
 * they arrive, or a `gap` says which will not, once it is back.
 */
export interface StalledEvent {
  topic: string;
  subscription: string;
  from: number;
}

export interface ClientEvents {
  state: StateEvent;
  gap: MissedEvent;
  lagged: MissedEvent;
  reset: ResetEvent;
  stalled: StalledEvent;
  error: Error;
}

/** What `rpc.health` says about the server. */
export interface ServerInfo {
  status?: string;
  name?: string;
  port?: number;
  pubsub?: {
    subscribe: string;
    unsubscribe: string;
    notification: string;
    lagged: string;
    gap: string;
    reset?: string;
    eth_style: boolean;
    epoch: number;
  };
}

export interface MessageMeta {
  topic: string;
  seq: number | undefined;
  epoch: number | undefined;
}

export interface Subscription {
  readonly topic: string;
  /** The server's subscription id on the current connection. */
  readonly id: string | undefined;
  /** Where the stream stands; pass it as `since` to resume in a later client. */
  readonly position: Position | undefined;
  unsubscribe(): Promise<boolean>;
}

export type BatchEntry = { result: unknown } | { error: RpcError };

export interface SubscribeOptions {
  /** Resume from here (a `position` kept from an earlier client). */
  since?: Position;
  timeoutMs?: number;
  /**
   * A filter for the server's subscription handler (`eth_subscribe("logs", filter)`), sent
   * with every (re)subscription. Subscriptions to one topic share the server's subscription
   * only when their filters are the same JSON.
   */
  filter?: unknown;
}

export interface Client {
  readonly state: State;
  readonly transport: "ws" | "http" | undefined;
  /** The URL of the server in use. */
  readonly url: string | undefined;
  /** The server's `rpc.health` answer from the identity check. */
  readonly server: ServerInfo | undefined;
  request<T = unknown>(
    method: string,
    params?: unknown,
    options?: CallOptions,
  ): Promise<T>;
  notify(method: string, params?: unknown): Promise<void>;
  batch(
    calls: Array<{ method: string; params?: unknown }>,
    options?: CallOptions,
  ): Promise<BatchEntry[]>;
  subscribe<T = unknown>(
    topic: string,
    onMessage: (value: T, meta: MessageMeta) => void,
    options?: SubscribeOptions,
  ): Promise<Subscription>;
  on<K extends keyof ClientEvents>(
    event: K,
    fn: (payload: ClientEvents[K]) => void,
  ): () => void;
  off<K extends keyof ClientEvents>(
    event: K,
    fn: (payload: ClientEvents[K]) => void,
  ): void;
  close(): void;
}

interface Call {
  ids: number[];
  body: unknown;
  resolve(value: unknown): void;
  reject(error: Error): void;
  /** Response objects gathered for a batch. */
  batch?: unknown[];
  sent?: boolean;
  done?: () => void;
}

interface Topic {
  topic: string;
  /** The topic and the filter's JSON: subscriptions with the same key share one. */
  key: string;
  filter?: unknown;
  id?: string;
  epoch?: number;
  seq?: number;
  active?: boolean;
  /** Delay before a renewal refused for now is asked again; doubles. */
  retryMs?: number;
  listeners: Set<(value: never, meta: MessageMeta) => void>;
  waiters: Array<[() => void, (e: Error) => void]>;
}

type Found =
  | { ws: WebSocketLike; url: string; health: ServerInfo | undefined }
  | { refused: ClientError }
  | { reachable: string }
  | { wrong: string }
  | undefined;

interface Outcome {
  ws?: WebSocketLike;
  health?: ServerInfo;
  url: string;
}

const g = globalThis as unknown as {
  WebSocket?: WebSocketConstructor;
  fetch?: typeof fetch;
  localStorage?: StorageLike;
  addEventListener?: (t: string, f: () => void) => void;
  removeEventListener?: (t: string, f: () => void) => void;
  document?: {
    visibilityState?: string;
    addEventListener(t: string, f: () => void): void;
    removeEventListener(t: string, f: () => void): void;
  };
};

const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

const HEALTH = '{"jsonrpc":"2.0","id":0,"method":"rpc.health"}';

/** Ports of a {@link Ports} spec, in order, each once. */
export function expandPorts(ports: Ports): number[] {
  const list: Array<number | [number, number]> =
    ports.length === 2 && ports.every((p) => typeof p === "number")
      ? [ports as [number, number]]
      : ports;
  const out: number[] = [];
  for (const p of list) {
    const [a, b] = typeof p === "number" ? [p, p] : p;
    for (let port = a; port <= b; port++)
      if (!out.includes(port)) out.push(port);
  }
  return out;
}

/** Creates a client and starts connecting. See {@link ClientOptions} for every option. */
export function createClient(options: ClientOptions = {}): Client {
  const T = options.timers ?? realTimers;
  const random = options.random ?? Math.random;
  const WS = options.WebSocket ?? g.WebSocket;
  const fetchFn = options.fetch ?? g.fetch?.bind(globalThis);
  const minMs = options.backoff?.minMs ?? 1000;
  const maxMs = options.backoff?.maxMs ?? 30000;
  const beat =
    options.heartbeat === false
      ? undefined
      : { everyMs: 15000, timeoutMs: 10000, ...options.heartbeat };
  const callTimeout = options.requestTimeoutMs ?? 10000;
  const openTimeout = options.connectTimeoutMs ?? 10000;
  const disc = options.discover;
  const name = options.name ?? disc?.name;
  const useHttp = options.http !== false;
  const token = options.token;
  let storage: StorageLike | undefined;
  try {
    storage =
      options.storage === null
        ? undefined
        : (options.storage ?? g.localStorage);
  } catch {
    // Reading localStorage throws in sandboxed frames.
  }
  const host = disc?.host ?? "127.0.0.1";
  const storeKey = `wsrpc-client:port:${host}:${name ?? ""}`;
  const fixed = options.urls ?? (options.url ? [options.url] : undefined);
  if (!fixed && !disc)
    throw new TypeError("createClient: give url, urls or discover");
  for (const u of fixed ?? []) new URL(u);
  if (!WS && !(useHttp && fetchFn))
    throw new TypeError("createClient: no WebSocket");

  let state: State = "connecting";
  let transport: "ws" | "http" | undefined;
  let ws: WebSocketLike | undefined;
  let url: string | undefined;
  let server: ServerInfo | undefined;
  let attempt = 0;
  let generation = 0;
  let retryTimer: unknown;
  let beatTimer: unknown;
  let lastHeard = 0;
  let nextId = 1;
  let stopError: Error | undefined;
  const queue: Call[] = [];
  const inflight = new Map<number, Call>();
  const topics = new Map<string, Topic>();
  const byId = new Map<string, Topic>();
  const handlers: { [K in keyof ClientEvents]?: Set<(p: never) => void> } = {};

  const emit = <K extends keyof ClientEvents>(
    ev: K,
    payload: ClientEvents[K],
  ) => {
    handlers[ev]?.forEach((fn) => {
      try {
        (fn as (p: ClientEvents[K]) => void)(payload);
      } catch (e) {
        if (ev !== "error") emit("error", e as Error);
      }
    });
  };

  let shown = "";
  const setState = (next: State, error?: Error) => {
    state = next;
    // Repeated failures while reconnecting are one state, not one event each.
    const key = next + transport;
    if (key === shown && !error) return;
    shown = key;
    emit("state", { state, transport, url, error });
  };

  const withToken = (u: string) =>
    token
      ? `${u}${u.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`
      : u;
  const httpOf = (u: string) => u.replace(/^ws/, "http");

  const identified = (h: unknown, strict: boolean): boolean => {
    const info = h as ServerInfo | undefined;
    if (info && typeof info === "object" && typeof info.name === "string")
      return !name || info.name === name;
    // A server that is not wsrpc (no rpc.health) is fine at a URL the caller gave, unnamed.
    return !strict && !name;
  };

  // ---- opening ---------------------------------------------------------------------------

  /** Opens a WebSocket to `u` and checks who answers `rpc.health`. */
  const openWs = (u: string, ms: number, strict: boolean) =>
    new Promise<Outcome | "failed" | "timeout" | "identity">((resolve) => {
      let sock: WebSocketLike;
      try {
        sock = new WS!(withToken(u));
      } catch {
        return resolve("failed");
      }
      let settled = false;
      const finish = (r: Outcome | "failed" | "timeout" | "identity") => {
        if (settled) return;
        settled = true;
        T.clearTimeout(timer);
        if (typeof r === "string") {
          sock.onopen = sock.onmessage = sock.onclose = null;
          try {
            sock.close();
          } catch {
            // Closing a socket that never opened may throw in some implementations.
          }
        }
        resolve(r);
      };
      const timer = T.setTimeout(() => finish("timeout"), ms);
      sock.onerror = () => {};
      sock.onclose = () => finish("failed");
      sock.onopen = () => sock.send(HEALTH);
      sock.onmessage = (ev) => {
        let m: { id?: unknown; result?: ServerInfo } | undefined;
        try {
          m = JSON.parse(String(ev.data));
        } catch {
          // Not JSON: not a JSON-RPC server.
        }
        if (m && typeof m === "object" && "method" in m) return;
        if (m?.id !== 0) return finish("failed");
        if (!identified(m.result, strict))
          return finish(m.result?.name === undefined ? "failed" : "identity");
        finish({ ws: sock, url: u, health: m.result });
      };
    });

  /** One JSON-RPC exchange over HTTP POST; the parsed body, or undefined for no body. */
  const post = async (u: string, body: string, signal?: AbortSignal) => {
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
    };
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetchFn!(httpOf(u), {
      method: "POST",
      headers,
      body,
      signal,
    });
    if (r.status === 401 || r.status === 403) throw refusal(r.status, u);
    const text = await r.text();
    if (!r.ok)
      throw new ClientError("disconnected", `HTTP ${r.status} from ${u}`);
    return text ? JSON.parse(text) : undefined;
  };

  const refusal = (status: number, u: string) =>
    status === 403
      ? new ClientError(
          "forbidden",
          `${u} refused this page's origin (403)`,
          status,
        )
      : new ClientError("unauthorized", `${u} refused the token (401)`, status);

  const timeoutSignal = (ms: number) => {
    const c = new AbortController();
    T.setTimeout(() => c.abort(), ms);
    return c.signal;
  };

  /** Tries `u`: a WebSocket, and after a failed open, a GET of the same URL that says why. */
  const tryUrl = async (
    u: string,
    ms: number,
    strict: boolean,
  ): Promise<Found> => {
    const r = await openWs(u, ms, strict);
    if (typeof r !== "string") return r as Found;
    if (r === "identity") return { wrong: u };
    // A refused upgrade looks like any failure to a page; the GET of the same URL answers
    // readably: 403/401 refused, anything else means HTTP reaches the server.
    if (r === "timeout" || !fetchFn) return undefined;
    try {
      const res = await fetchFn(httpOf(withToken(u)), {
        cache: "no-store",
        signal: timeoutSignal(ms),
      });
      return res.status === 401 || res.status === 403
        ? { refused: refusal(res.status, u) }
        : { reachable: u };
    } catch {
      return undefined;
    }
  };

  const candidates = (): string[] => {
    if (fixed) return fixed;
    const ports = expandPorts(disc!.ports ?? [8766, 8800]);
    let last: number | undefined;
    try {
      last = Number(storage?.getItem(storeKey)) || undefined;
    } catch {
      // Storage may refuse access.
    }
    if (last && ports.includes(last))
      (ports.splice(ports.indexOf(last), 1), ports.unshift(last));
    const base = `${disc!.scheme ?? "ws"}://${host.includes(":") ? `[${host}]` : host}`;
    return ports.map((p) => `${base}:${p}${disc!.path ?? "/"}`);
  };

  /** Tries the candidates (in turn for URLs, `concurrency` at once when scanning). */
  const scan = (urls: string[]) =>
    new Promise<{
      found?: Outcome;
      refused?: ClientError;
      reachable: string[];
      wrong?: string;
    }>((resolve) => {
      const strict = !!disc;
      const ms = disc ? (disc.probeTimeoutMs ?? 2000) : openTimeout;
      let next = 0;
      let running = 0;
      let found: Outcome | undefined;
      let refused: ClientError | undefined;
      let wrong: string | undefined;
      const reachable: string[] = [];
      const pump = () => {
        if (found) return;
        if (next >= urls.length && running === 0)
          return resolve({ refused, reachable, wrong });
        // The last good port goes alone first: usually it is the one.
        const width = fixed || next === 0 ? 1 : (disc!.concurrency ?? 6);
        while (running < width && next < urls.length) {
          running++;
          tryUrl(urls[next++], ms, strict).then((r) => {
            running--;
            if (r && "ws" in r) {
              if (found) r.ws.close();
              else resolve({ found: (found = r), reachable });
            } else if (r && "refused" in r) refused ??= r.refused;
            else if (r && "wrong" in r) wrong ??= r.wrong;
            else if (r) reachable.push(r.reachable);
            pump();
          });
        }
      };
      pump();
    });

  const connect = async () => {
    retryTimer = undefined;
    const gen = ++generation;
    const { found, refused, reachable, wrong } = await scan(candidates());
    if (gen !== generation || state === "closed") return found?.ws?.close();
    if (found?.ws) return openedWs(found.ws, found.url, found.health);
    if (refused) return stop(refused);
    // At a URL the caller gave, another server's name is worth saying (while scanning, it is
    // what the check is for).
    if (wrong && fixed)
      emit(
        "error",
        new ClientError("identity", `${wrong} is not the server named ${name}`),
      );
    if (useHttp && transport !== "http") {
      for (const u of reachable) {
        try {
          const m = await post(u, HEALTH, timeoutSignal(openTimeout));
          if (gen !== generation) return;
          if (m?.id === 0 && identified(m.result, !!disc))
            return openedHttp(u, m.result);
        } catch (e) {
          if (e instanceof ClientError && e.status) return stop(e);
        }
      }
    }
    if (state !== "open") setState(state);
    retry();
  };

  const retry = () => {
    const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt++, 30));
    retryTimer = T.setTimeout(connect, random() * cap);
  };

  const wake = () => {
    if (
      retryTimer !== undefined &&
      state !== "closed" &&
      !(g.document?.visibilityState === "hidden")
    ) {
      T.clearTimeout(retryTimer);
      void connect();
    }
  };

  const openedWs = (
    sock: WebSocketLike,
    u: string,
    health: ServerInfo | undefined,
  ) => {
    // Closed while the answer was on its way here.
    if ((sock.readyState ?? 1) > 1) return retry();
    ws = sock;
    url = u;
    server = health;
    transport = "ws";
    attempt = 0;
    lastHeard = T.now();
    if (disc) {
      try {
        storage?.setItem(storeKey, String(new URL(u).port));
      } catch {
        // Storage may be full or refused.
      }
    }
    sock.onmessage = (ev) => onMessage(sock, ev.data);
    sock.onclose = (ev) =>
      lost(sock, ev.code ? `closed ${ev.code} ${ev.reason ?? ""}` : undefined);
    setState("open");
    if (beat) beatTimer = T.setTimeout(() => heartbeat(sock), beat.everyMs);
    for (const t of topics.values()) sendSubscribe(t);
    flush();
  };

  const openedHttp = (u: string, health: ServerInfo | undefined) => {
    url = u;
    server = health;
    transport = "http";
    setState("open");
    const e = new ClientError(
      "unavailable",
      "subscriptions need a WebSocket; only HTTP is up",
    );
    for (const t of topics.values())
      t.waiters.splice(0).forEach(([, rej]) => rej(e));
    flush();
    // Keep trying the WebSocket, which subscriptions need.
    retry();
  };

  /** The connection is gone: calls in flight fail (never re-sent), then reconnect. */
  const lost = (sock: WebSocketLike | undefined, why?: string) => {
    if (sock !== ws || state === "closed") return;
    if (sock) {
      sock.onmessage = sock.onclose = null;
      try {
        sock.close(4000, why ?? "");
      } catch {
        // Already closing.
      }
    }
    ws = undefined;
    transport = undefined;
    T.clearTimeout(beatTimer);
    failInflight(
      new ClientError(
        "disconnected",
        `connection lost${why ? `: ${why}` : ""}`,
      ),
    );
    for (const t of topics.values()) t.active = false;
    byId.clear();
    setState(
      "reconnecting",
      why ? new ClientError("disconnected", why) : undefined,
    );
    if (retryTimer === undefined) retry();
  };

  const failInflight = (e: Error) => {
    for (const c of new Set(inflight.values())) settle(c, undefined, e);
  };

  const stop = (e: Error) => {
    stopError = e;
    generation++;
    T.clearTimeout(retryTimer);
    retryTimer = undefined;
    T.clearTimeout(beatTimer);
    const sock = ws;
    ws = undefined;
    if (sock) {
      sock.onmessage = sock.onclose = null;
      sock.close(1000);
    }
    transport = undefined;
    failInflight(e);
    for (const c of queue.splice(0)) settle(c, undefined, e);
    for (const t of topics.values())
      t.waiters.splice(0).forEach(([, rej]) => rej(e));
    g.removeEventListener?.("online", wake);
    g.document?.removeEventListener("visibilitychange", wake);
    setState("closed", e);
    if (!(e instanceof ClientError && e.kind === "closed")) emit("error", e);
  };

  // ---- heartbeat ------------------------------------------------------------------------

  const heartbeat = (sock: WebSocketLike) => {
    if (sock !== ws || !beat) return;
    const sentAt = T.now();
    send("rpc.health", undefined, { timeoutMs: beat.timeoutMs }).catch(
      () => {},
    );
    // Any message after the ping proves the server alive; silence past the timeout does not.
    beatTimer = T.setTimeout(() => {
      if (sock !== ws) return;
      if (lastHeard < sentAt) return lost(sock, "heartbeat timeout");
      beatTimer = T.setTimeout(
        () => heartbeat(sock),
        beat.everyMs - beat.timeoutMs,
      );
    }, beat.timeoutMs);
  };

  // ---- calls -----------------------------------------------------------------------------

  const settle = (c: Call, value: unknown, error?: Error) => {
    if (!c.done) return;
    c.done();
    c.done = undefined;
    for (const id of c.ids) inflight.delete(id);
    const i = queue.indexOf(c);
    if (i >= 0) queue.splice(i, 1);
    if (error) c.reject(error);
    else c.resolve(value);
  };

  const transmit = (c: Call) => {
    c.sent = true;
    for (const id of c.ids) inflight.set(id, c);
    const body = JSON.stringify(c.body);
    if (transport === "ws") {
      ws!.send(body);
      // A notification is done once handed over.
      if (!c.ids.length) settle(c, undefined);
      return;
    }
    post(url!, body).then(
      (m) => (m === undefined ? settle(c, undefined) : onParsed(m)),
      (e) => {
        if (e instanceof ClientError && e.status) return stop(e);
        settle(
          c,
          undefined,
          new ClientError("disconnected", String(e?.message ?? e)),
        );
        if (transport === "http") lost(undefined);
      },
    );
  };

  const flush = () => {
    while (state === "open" && transport && queue.length)
      transmit(queue.shift()!);
  };

  const enqueue = (
    body: unknown,
    ids: number[],
    opts: CallOptions = {},
    batch?: boolean,
  ) =>
    new Promise<unknown>((resolve, reject) => {
      if (state === "closed")
        return reject(stopError ?? new ClientError("closed", "client closed"));
      const c: Call = {
        ids,
        body,
        resolve,
        reject,
        batch: batch ? [] : undefined,
      };
      const ms = opts.timeoutMs ?? callTimeout;
      const timer = T.setTimeout(
        () =>
          settle(
            c,
            undefined,
            new ClientError("timeout", `no answer in ${ms} ms`),
          ),
        ms,
      );
      const abort = () =>
        settle(c, undefined, new ClientError("aborted", "aborted"));
      if (opts.signal?.aborted) return abort();
      opts.signal?.addEventListener("abort", abort);
      c.done = () => {
        T.clearTimeout(timer);
        opts.signal?.removeEventListener("abort", abort);
      };
      queue.push(c);
      flush();
    });

  const send = (method: string, params: unknown, opts?: CallOptions) => {
    const id = nextId++;
    const body: Record<string, unknown> = { jsonrpc: "2.0", id, method };
    if (params !== undefined) body.params = params;
    return enqueue(body, [id], opts);
  };

  const onParsed = (m: unknown) => {
    if (Array.isArray(m)) {
      const c = inflight.get(m.find((r) => typeof r?.id === "number")?.id);
      if (!c?.batch) return;
      c.batch.push(...m);
      const byIdx = new Map(c.batch.map((r) => [(r as { id: number }).id, r]));
      if (c.ids.every((id) => byIdx.has(id)))
        settle(
          c,
          c.ids.map((id) => {
            const r = byIdx.get(id) as {
              result?: unknown;
              error?: RpcErrorBody;
            };
            return r.error ? { error: toError(r.error) } : { result: r.result };
          }),
        );
      return;
    }
    const r = m as {
      id?: unknown;
      method?: string;
      params?: Record<string, unknown>;
      result?: unknown;
      error?: RpcErrorBody;
    };
    if (r.method) return onNotification(r.method, r.params ?? {});
    const c = inflight.get(r.id as number);
    if (c?.batch && r.error) return settle(c, undefined, toError(r.error));
    if (!c) {
      if (r.error) emit("error", toError(r.error));
      return;
    }
    if (r.error) settle(c, undefined, toError(r.error));
    else settle(c, r.result);
  };

  const onMessage = (sock: WebSocketLike, data: unknown) => {
    if (sock !== ws) return;
    lastHeard = T.now();
    let m: unknown;
    try {
      m = JSON.parse(String(data));
    } catch {
      return emit("error", new Error("unparsable message from the server"));
    }
    onParsed(m);
  };

  // ---- subscriptions ------------------------------------------------------------------------

  const pubsub = () =>
    server?.pubsub ?? {
      subscribe: "subscribe",
      unsubscribe: "unsubscribe",
      notification: "subscription",
      lagged: "lagged",
      gap: "gap",
      reset: "reset",
      eth_style: false,
    };

  const onNotification = (method: string, p: Record<string, unknown>) => {
    const names = pubsub();
    const t = byId.get(p.subscription as string);
    if (!t) return;
    if (method === names.notification) {
      const seq = p.seq as number | undefined;
      // Replay after a resume may overlap what was delivered: drop by sequence number.
      if (typeof seq === "number") {
        if (t.seq !== undefined && seq <= t.seq) return;
        t.seq = seq;
      }
      const meta = { topic: t.topic, seq, epoch: t.epoch };
      for (const fn of t.listeners) fn(p.result as never, meta);
    } else if (method === (names.reset ?? "reset")) {
      const epoch = p.epoch as number;
      emit("reset", { topic: t.topic, epoch, previousEpoch: t.epoch! });
      t.epoch = epoch;
      t.seq = 0;
    } else if (method === names.lagged && p.missed_to === undefined) {
      emit("stalled", {
        topic: t.topic,
        subscription: t.id!,
        from: p.missed_from as number,
      });
    } else if (method === names.gap || method === names.lagged) {
      emit(method === names.gap ? "gap" : "lagged", {
        topic: t.topic,
        subscription: t.id!,
        from: p.missed_from as number,
        to: p.missed_to as number,
      });
    }
  };

  const sendSubscribe = (t: Topic) => {
    if (transport !== "ws") return;
    const names = pubsub();
    const since = { since: t.seq ?? null, epoch: t.epoch ?? null };
    const f = t.filter;
    // Ethereum style carries the resume keys in the filter object (or alone).
    const params = names.eth_style
      ? [
          t.topic,
          f === undefined
            ? since
            : f && typeof f === "object" && !Array.isArray(f)
              ? { ...f, ...since }
              : f,
        ]
      : { topic: t.topic, ...since, ...(f === undefined ? {} : { filter: f }) };
    const sock = ws;
    send(names.subscribe, params).then(
      (r) => {
        const res = (typeof r === "string" ? { subscription: r } : r) as {
          subscription: string;
          seq?: number;
          epoch?: number;
        };
        if (sock !== ws) return;
        if (topics.get(t.key) !== t) {
          // Given up while the answer was on its way: do not leave it subscribed.
          if (!topics.has(t.key))
            send(names.unsubscribe, [res.subscription]).catch(() => {});
          return;
        }
        if (
          res.epoch !== undefined &&
          t.epoch !== undefined &&
          res.epoch !== t.epoch
        ) {
          emit("reset", {
            topic: t.topic,
            epoch: res.epoch,
            previousEpoch: t.epoch,
          });
          t.seq = 0;
        }
        t.epoch = res.epoch ?? t.epoch;
        t.seq ??= res.seq;
        t.id = res.subscription;
        t.active = true;
        t.retryMs = undefined;
        byId.set(t.id, t);
        t.waiters.splice(0).forEach(([ok]) => ok());
      },
      (e: Error) => {
        if (e instanceof ClientError) return; // resubscribed on the next connection
        // A renewal refused for now (the server's broker is down, a limit): asked again
        // with a doubling delay, the subscription kept at its position.
        if (
          t.epoch !== undefined &&
          e instanceof RpcError &&
          (e.code === -32002 || e.code === -32005)
        ) {
          t.retryMs = Math.min((t.retryMs ?? 500) * 2, maxMs);
          T.setTimeout(() => {
            if (topics.get(t.key) === t && sock === ws) sendSubscribe(t);
          }, t.retryMs);
          return;
        }
        topics.delete(t.key);
        if (!t.waiters.length) emit("error", e);
        t.waiters.splice(0).forEach(([, rej]) => rej(e));
      },
    );
  };

  const subscribe = async <T>(
    topic: string,
    onMessage: (value: T, meta: MessageMeta) => void,
    opts: SubscribeOptions = {},
  ): Promise<Subscription> => {
    if (state === "closed")
      throw stopError ?? new ClientError("closed", "client closed");
    if (transport === "http")
      throw new ClientError(
        "unavailable",
        "subscriptions need a WebSocket; only HTTP is up",
      );
    const { filter } = opts;
    const key =
      filter === undefined ? topic : `${topic}\u0000${JSON.stringify(filter)}`;
    let t = topics.get(key);
    if (!t) {
      t = {
        topic,
        key,
        filter,
        listeners: new Set(),
        waiters: [],
        ...opts.since,
      };
      topics.set(key, t);
      sendSubscribe(t);
    }
    const fn = onMessage as (value: never, meta: MessageMeta) => void;
    t.listeners.add(fn);
    const own = t;
    if (!t.active) {
      await new Promise<void>((ok, fail) => {
        const ms = opts.timeoutMs ?? callTimeout;
        const timer = T.setTimeout(
          () => fail(new ClientError("timeout", `not subscribed in ${ms} ms`)),
          ms,
        );
        own.waiters.push([
          () => (T.clearTimeout(timer), ok()),
          (e) => (T.clearTimeout(timer), fail(e)),
        ]);
      }).catch((e) => {
        own.listeners.delete(fn);
        if (!own.listeners.size && !own.active) topics.delete(key);
        throw e;
      });
    }
    return {
      topic,
      get id() {
        return own.id;
      },
      get position() {
        return own.epoch === undefined
          ? undefined
          : { epoch: own.epoch, seq: own.seq ?? 0 };
      },
      unsubscribe: async () => {
        if (!own.listeners.delete(fn)) return false;
        if (own.listeners.size) return true;
        topics.delete(key);
        if (own.id) byId.delete(own.id);
        if (!own.active || transport !== "ws") return true;
        return (await send(pubsub().unsubscribe, [own.id])) === true;
      },
    };
  };

  // ---- lifecycle -------------------------------------------------------------------------

  g.addEventListener?.("online", wake);
  g.document?.addEventListener("visibilitychange", wake);
  void Promise.resolve().then(connect);

  return {
    get state() {
      return state;
    },
    get transport() {
      return transport;
    },
    get url() {
      return url;
    },
    get server() {
      return server;
    },
    request: (method, params, opts) => send(method, params, opts) as never,
    notify: (method, params) => {
      const body: Record<string, unknown> = { jsonrpc: "2.0", method };
      if (params !== undefined) body.params = params;
      // A notification has no answer: it is done once handed to the transport.
      return enqueue(body, [], {}).then(() => {});
    },
    batch: (calls, opts) => {
      const ids = calls.map(() => nextId++);
      const body = calls.map((c, i) =>
        c.params === undefined
          ? { jsonrpc: "2.0", id: ids[i], method: c.method }
          : { jsonrpc: "2.0", id: ids[i], method: c.method, params: c.params },
      );
      return enqueue(body, ids, opts, true) as Promise<BatchEntry[]>;
    },
    subscribe,
    on: (ev, fn) => {
      (handlers[ev] ??= new Set()).add(fn as (p: never) => void);
      return () => handlers[ev]?.delete(fn as (p: never) => void);
    },
    off: (ev, fn) => void handlers[ev]?.delete(fn as (p: never) => void),
    close: () => {
      if (state !== "closed") stop(new ClientError("closed", "client closed"));
    },
  };
}

interface RpcErrorBody {
  code: number;
  message: string;
  data?: unknown;
}

const toError = (e: RpcErrorBody) => new RpcError(e.code, e.message, e.data);
