import type { Client } from "./client.js";
/** An EIP-1193 error: 4001 user rejected, 4100 unauthorized, 4200 unsupported method,
 * 4900 disconnected, 4901 chain disconnected, or a JSON-RPC code passed through. */
export declare class ProviderRpcError extends Error {
    readonly code: number;
    readonly data: unknown;
    constructor(code: number, message: string, data?: unknown);
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
    removeListener(event: string, listener: (...args: unknown[]) => void): Eip1193Provider;
    /** Whether the provider can reach the wallet now. */
    isConnected(): boolean;
}
/** Maps client and server errors to EIP-1193 codes. */
export declare function toProviderError(e: unknown): ProviderRpcError;
/**
 * Announces `provider` to dApps per EIP-6963 (`eip6963:announceProvider`, again on every
 * `eip6963:requestProvider`). Returns a function that stops answering requests.
 */
export declare function announceProvider(provider: Eip1193Provider, info: ProviderInfo): () => void;
/**
 * An EIP-1193 provider over `client`: `request`, `on`/`removeListener`, and the events
 * `connect` ({ chainId }), `disconnect` (ProviderRpcError 4900), `chainChanged`,
 * `accountsChanged` (from the wallet's `chainChanged`/`accountsChanged` topics and from the
 * answers of `eth_chainId`/`eth_accounts`) and `message` ({ type: 'eth_subscription',
 * data: { subscription, result } }) for `eth_subscribe`. With `announce`, it is also announced
 * per EIP-6963.
 */
export declare function toEip1193(client: Client, options?: {
    announce?: ProviderInfo;
}): Eip1193Provider;
