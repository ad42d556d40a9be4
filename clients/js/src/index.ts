export { createClient, expandPorts } from "./client.js";
export type {
  BatchEntry,
  CallOptions,
  Client,
  ClientEvents,
  ClientOptions,
  DiscoverOptions,
  MessageMeta,
  MissedEvent,
  Ports,
  Position,
  ResetEvent,
  ServerInfo,
  State,
  StateEvent,
  StorageLike,
  SubscribeOptions,
  Subscription,
  Timers,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { ClientError, RpcError } from "./errors.js";
export type { ClientErrorKind } from "./errors.js";
export {
  announceProvider,
  ProviderRpcError,
  toEip1193,
  toProviderError,
} from "./eip1193.js";
export type { Eip1193Provider, ProviderInfo } from "./eip1193.js";
