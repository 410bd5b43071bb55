/**
 * @spinwire/sdk — Spinwire (Centrifugo v6 compatible) over gRPC-web, for
 * browsers and Node 20+.
 *
 * - {@link ApiClient}: the server API.
 * - {@link consumeUniStream} / {@link UniStream}: a unidirectional
 *   real-time stream as an async iterator of typed events.
 * - {@link connectionToken} / {@link subscriptionToken}: HS256 JWTs.
 */
export { ApiClient, type ApiClientOptions } from "./api.js";
export * from "./requests.js";
export { UniStream, consumeUniStream, type UniStreamOptions, type UniSubscription } from "./unistream.js";
export * from "./events.js";
export {
  connectionToken,
  subscriptionToken,
  signHs256,
  type ConnectionTokenOptions,
  type SubscriptionTokenOptions,
  type TokenOptions,
  type TokenSubscription,
} from "./tokens.js";
export { type DataInput, type JsonValue, encodeData, decodeData } from "./data.js";
export { SpinwireError, ApiError, TransportError, Code, codeName } from "./errors.js";
export { VERSION } from "./version.js";
