import { RpcError } from "./errors.js";
/** The parts of a WebSocket the client uses (the browser's, Node 22's, or the `ws` package's). */
export interface WebSocketLike {
    readonly readyState?: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code?: number;
        reason?: string;
    }) => void) | null;
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
    backoff?: {
        minMs?: number;
        maxMs?: number;
    };
    /** Application-level liveness check [every 15 s, 10 s to answer]; `false` turns it off. */
    heartbeat?: {
        everyMs?: number;
        timeoutMs?: number;
    } | false;
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
export type BatchEntry = {
    result: unknown;
} | {
    error: RpcError;
};
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
    request<T = unknown>(method: string, params?: unknown, options?: CallOptions): Promise<T>;
    notify(method: string, params?: unknown): Promise<void>;
    batch(calls: Array<{
        method: string;
        params?: unknown;
    }>, options?: CallOptions): Promise<BatchEntry[]>;
    subscribe<T = unknown>(topic: string, onMessage: (value: T, meta: MessageMeta) => void, options?: SubscribeOptions): Promise<Subscription>;
    on<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): () => void;
    off<K extends keyof ClientEvents>(event: K, fn: (payload: ClientEvents[K]) => void): void;
    close(): void;
}
/** Ports of a {@link Ports} spec, in order, each once. */
export declare function expandPorts(ports: Ports): number[];
/** Creates a client and starts connecting. See {@link ClientOptions} for every option. */
export declare function createClient(options?: ClientOptions): Client;
