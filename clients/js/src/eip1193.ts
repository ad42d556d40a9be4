import type { Client, Subscription } from "./client.js";
import { ClientError, RpcError } from "./errors.js";

/** An EIP-1193 error: 4001 user rejected, 4100 unauthorized, 4200 unsupported method,
 * 4900 disconnected, 4901 chain disconnected, or a JSON-RPC code passed through. */
export class ProviderRpcError extends Error {
  readonly code: number;
  readonly data: unknown;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = "ProviderRpcError";
    this.code = code;
    this.data = data;
  }
}

/** EIP-6963 provider info: `rdns` like `org.example.wallet`, `icon` a data URI. */
export interface ProviderInfo {
  name: string;
  icon: string;
  rdns: string;
  uuid?: string;
}

export interface Eip1193Provider {
  request(args: {
    method: string;
    params?: unknown[] | object;
  }): Promise<unknown>;
  on(event: string, listener: (...args: unknown[]) => void): Eip1193Provider;
  removeListener(
    event: string,
    listener: (...args: unknown[]) => void,
  ): Eip1193Provider;
  /** Whether the provider can reach the wallet now. */
  isConnected(): boolean;
}

/** Maps client and server errors to EIP-1193 codes. */
export function toProviderError(e: unknown): ProviderRpcError {
  if (e instanceof ProviderRpcError) return e;
  if (e instanceof RpcError)
    return e.code === -32601
      ? new ProviderRpcError(
          4200,
          "The Provider does not support the requested method.",
          e.data,
        )
      : new ProviderRpcError(e.code, e.message, e.data);
  if (e instanceof ClientError) {
    const code =
      e.kind === "forbidden" || e.kind === "unauthorized"
        ? 4100
        : e.kind === "disconnected" || e.kind === "closed"
          ? 4900
          : e.kind === "unavailable"
            ? 4200
            : -32603;
    return new ProviderRpcError(code, e.message, {
      kind: e.kind,
      status: e.status,
    });
  }
  return new ProviderRpcError(-32603, String((e as Error)?.message ?? e));
}

/**
 * Announces `provider` to dApps per EIP-6963 (`eip6963:announceProvider`, again on every
 * `eip6963:requestProvider`). Returns a function that stops answering requests.
 */
export function announceProvider(
  provider: Eip1193Provider,
  info: ProviderInfo,
): () => void {
  const w = globalThis as unknown as Window;
  const detail = Object.freeze({
    info: Object.freeze({ ...info, uuid: info.uuid ?? crypto.randomUUID() }),
    provider,
  });
  const announce = () =>
    w.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail }));
  announce();
  w.addEventListener("eip6963:requestProvider", announce);
  return () => w.removeEventListener("eip6963:requestProvider", announce);
}

/**
 * An EIP-1193 provider over `client`: `request`, `on`/`removeListener`, and the events
 * `connect` ({ chainId }), `disconnect` (ProviderRpcError 4900), `chainChanged`,
 * `accountsChanged` (from the wallet's `chainChanged`/`accountsChanged` topics and from the
 * answers of `eth_chainId`/`eth_accounts`) and `message` ({ type: 'eth_subscription',
 * data: { subscription, result } }) for `eth_subscribe`. With `announce`, it is also announced
 * per EIP-6963.
 */
export function toEip1193(
  client: Client,
  options: { announce?: ProviderInfo } = {},
): Eip1193Provider {
  const listeners = new Map<string, Set<(...args: unknown[]) => void>>();
  const subs = new Map<string, Subscription>();
  let chainId: string | undefined;
  let accounts: string[] | undefined;
  let connected = false;
  let watching = false;
  let nextSub = 0;

  const emit = (event: string, arg: unknown) =>
    listeners.get(event)?.forEach((fn) => {
      try {
        fn(arg);
      } catch {
        // A dApp's listener failing must not stop the others.
      }
    });

  // `pushed`: the wallet announced it, so it is news even if nothing was known before.
  const setChain = (id: unknown, pushed?: boolean) => {
    if (typeof id !== "string" || id === chainId) return;
    const known = chainId !== undefined;
    chainId = id;
    if (known || pushed) emit("chainChanged", id);
  };
  const setAccounts = (list: unknown, pushed?: boolean) => {
    if (!Array.isArray(list) || (accounts && list.join() === accounts.join()))
      return;
    const known = accounts !== undefined;
    accounts = list as string[];
    if (known || pushed) emit("accountsChanged", list);
  };

  const onOpen = async () => {
    if (client.transport === "ws" && !watching) {
      watching = true;
      await Promise.all([
        client.subscribe("chainChanged", (v) => setChain(v, true)),
        client.subscribe("accountsChanged", (v) => setAccounts(v, true)),
      ]).catch(() => (watching = false));
    }
    try {
      const id = await client.request("eth_chainId");
      if (!connected && client.state === "open") {
        connected = true;
        setChain(id);
        emit("connect", { chainId: id });
      } else setChain(id);
    } catch {
      // The next open tries again.
    }
  };

  client.on("state", ({ state }) => {
    if (state === "open") void onOpen();
    else if (connected) {
      connected = false;
      emit(
        "disconnect",
        new ProviderRpcError(
          4900,
          "The Provider is disconnected from all chains.",
        ),
      );
    }
  });
  if (client.state === "open") void onOpen();

  const provider: Eip1193Provider = {
    async request({ method, params }) {
      try {
        const list = Array.isArray(params)
          ? params
          : params === undefined
            ? []
            : [params];
        if (method === "eth_subscribe") {
          const id = `0x${(++nextSub).toString(16)}`;
          const sub = await client.subscribe(
            String(list[0]),
            (result) =>
              emit("message", {
                type: "eth_subscription",
                data: { subscription: id, result },
              }),
            // eth_subscribe("logs", {address, topics}): the server filters.
            { filter: list[1] ?? undefined },
          );
          subs.set(id, sub);
          return id;
        }
        if (method === "eth_unsubscribe") {
          const sub = subs.get(String(list[0]));
          subs.delete(String(list[0]));
          return sub ? await sub.unsubscribe() : false;
        }
        const result = await client.request(method, params);
        if (method === "eth_chainId") setChain(result);
        if (method === "eth_accounts" || method === "eth_requestAccounts")
          setAccounts(result);
        return result;
      } catch (e) {
        throw toProviderError(e);
      }
    },
    on(event, fn) {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event)!.add(fn);
      return provider;
    },
    removeListener(event, fn) {
      listeners.get(event)?.delete(fn);
      return provider;
    },
    isConnected: () => connected,
  };
  if (options.announce) announceProvider(provider, options.announce);
  return provider;
}
