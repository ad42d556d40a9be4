/** A JSON-RPC error answered by the server: `code`, `message` and `data` as sent. */
export class RpcError extends Error {
  /** The JSON-RPC error code (-32601 method not found, -32005 limit exceeded, …). */
  readonly code: number;
  /** The error's `data`, if any. */
  readonly data: unknown;
  /** For -32005: how long to wait before trying again (`data.retry_after_ms`). */
  readonly retryAfterMs: number | undefined;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.data = data;
    const retry = (data as { retry_after_ms?: unknown } | null | undefined)
      ?.retry_after_ms;
    this.retryAfterMs = typeof retry === "number" ? retry : undefined;
  }
}

/**
 * Why the client itself failed a call or stopped:
 * - `disconnected`: the connection dropped while the call was in flight (it is never re-sent:
 *   it may have run);
 * - `timeout`, `aborted`: the call's own deadline or `AbortSignal`;
 * - `closed`: `close()` was called, or the client stopped after a refusal;
 * - `forbidden` (HTTP 403, the page's origin is not allowed) and `unauthorized` (401, bad or
 *   missing token): the server refused; the client stops reconnecting;
 * - `unavailable`: subscriptions while only HTTP reaches the server;
 * - `identity`: the server at the URL is not the one named in the options.
 */
export type ClientErrorKind =
  | "disconnected"
  | "timeout"
  | "aborted"
  | "closed"
  | "forbidden"
  | "unauthorized"
  | "unavailable"
  | "identity";

/** A failure of the client rather than an answer of the server; see {@link ClientErrorKind}. */
export class ClientError extends Error {
  readonly kind: ClientErrorKind;
  /** The HTTP status that said why, for `forbidden` and `unauthorized`. */
  readonly status: number | undefined;

  constructor(kind: ClientErrorKind, message: string, status?: number) {
    super(message);
    this.name = "ClientError";
    this.kind = kind;
    this.status = status;
  }
}
