/**
 * The gRPC-web transport both clients share: Connect's fetch-based
 * transport (browsers and Node 20+), binary protobuf framing, plus the
 * Centrifugo API-key header when a key is given.
 */
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

export interface TransportOptions {
  /** Origin (and optional path prefix) of the gRPC-web listener, e.g. "http://127.0.0.1:10000". */
  baseUrl: string;
  /** Sent as `authorization: apikey <key>` on every call. */
  apiKey?: string;
  /** Default deadline per call in milliseconds; none when absent. */
  timeoutMs?: number;
  /** fetch implementation override (e.g. to set credentials mode). */
  fetch?: typeof globalThis.fetch;
}

export function createTransport(options: TransportOptions): Transport {
  const interceptors: Interceptor[] = [];
  const { apiKey } = options;
  if (apiKey !== undefined && apiKey !== "") {
    interceptors.push((next) => (req) => {
      req.header.set("authorization", `apikey ${apiKey}`);
      return next(req);
    });
  }
  return createGrpcWebTransport({
    baseUrl: options.baseUrl,
    useBinaryFormat: true,
    interceptors,
    defaultTimeoutMs: options.timeoutMs,
    fetch: options.fetch,
  });
}
