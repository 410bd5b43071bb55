/**
 * UniStream: consumes `centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume`
 * (the `uni_grpc` transport) over gRPC-web as an async iterator of typed
 * events.
 *
 * The stream is pull-based: the next push is read from the HTTP body only
 * when the consumer asks for the next event, so nothing queues up in memory
 * beyond what the transport buffers. It ends after the disconnect event,
 * when the caller aborts `signal` or calls `close()`, or when the server
 * ends the call; it throws a {@link TransportError} when the call fails or
 * the server stops pinging.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { ConnectRequestSchema } from "./gen/centrifugal/centrifuge/protocol/client_pb.js";
import { CentrifugoUniStream } from "./gen/centrifugal/centrifugo/unistream/unistream_pb.js";
import { type DataInput, encodeOptionalData } from "./data.js";
import { TransportError } from "./errors.js";
import { type UniEvent, pushToEvents } from "./events.js";
import { createTransport } from "./transport.js";
import { VERSION } from "./version.js";

/** Where to resume a channel from when (re)connecting. */
export interface UniSubscription {
  /** Ask the server to deliver publications missed since `epoch`/`offset`. */
  recover?: boolean;
  epoch?: string;
  offset?: number | bigint;
}

export interface UniStreamOptions {
  /** Base URL of the `uni_grpc` listener with `grpc_web` enabled, e.g. "http://127.0.0.1:11000". */
  baseUrl: string;
  /** Connection JWT (see `connectionToken`). */
  token?: string;
  /**
   * Channels to subscribe to (allowed only where the namespace lets the user
   * subscribe without a token), optionally with a recovery position each.
   */
  subs?: string[] | Record<string, UniSubscription>;
  /** Connect data, forwarded to a connect proxy. */
  data?: DataInput;
  /** Emulated request headers, forwarded to proxies. */
  headers?: Record<string, string>;
  /** SDK name/version reported to the server; default "spinwire-js" and this package's version. */
  name?: string;
  version?: string;
  /** Aborting ends the iteration quietly. */
  signal?: AbortSignal;
  /**
   * How long past the server's ping interval to wait for any push before
   * giving up on the stream (TransportError, code deadline_exceeded).
   * Default 10 000 ms; 0 disables the check.
   */
  maxPingDelayMs?: number;
  fetch?: typeof globalThis.fetch;
}

export class UniStream implements AsyncIterable<UniEvent> {
  private readonly options: UniStreamOptions;
  private readonly controller = new AbortController();
  private started = false;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  /** Set when we abort the call ourselves because the server went silent. */
  private staleError: ConnectError | undefined;

  constructor(options: UniStreamOptions) {
    this.options = options;
  }

  /** Ends the stream; a pending or later `next()` finishes without an error. */
  close(): void {
    this.controller.abort();
  }

  [Symbol.asyncIterator](): AsyncIterator<UniEvent> {
    if (this.started) {
      throw new Error("a UniStream can be iterated once; create a new one to reconnect");
    }
    this.started = true;
    return this.run();
  }

  private async *run(): AsyncGenerator<UniEvent, void, undefined> {
    const { signal } = this.options;
    if (signal?.aborted) return;
    const onAbort = () => this.controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const client = createClient(
      CentrifugoUniStream,
      createTransport({ baseUrl: this.options.baseUrl, fetch: this.options.fetch }),
    );
    let pingMs = 0;
    try {
      const pushes = client.consume(connectRequest(this.options), { signal: this.controller.signal });
      for await (const push of pushes) {
        this.disarm();
        for (const event of pushToEvents(push)) {
          if (event.type === "connect") pingMs = event.ping * 1000;
          yield event;
          if (event.type === "disconnect") return;
        }
        // Armed only while waiting on the server, so a slow consumer never trips it.
        this.arm(pingMs);
      }
    } catch (err) {
      if (this.staleError !== undefined) throw new TransportError(this.staleError);
      if (this.controller.signal.aborted) return;
      throw TransportError.from(err);
    } finally {
      this.disarm();
      signal?.removeEventListener("abort", onAbort);
      // Releases the HTTP response when the consumer stops early.
      this.controller.abort();
    }
  }

  private arm(pingMs: number): void {
    const extra = this.options.maxPingDelayMs ?? 10_000;
    if (pingMs <= 0 || extra <= 0) return;
    const limit = pingMs + extra;
    this.watchdog = setTimeout(() => {
      this.staleError = new ConnectError(`no push from the server within ${limit} ms`, Code.DeadlineExceeded);
      this.controller.abort();
    }, limit);
  }

  private disarm(): void {
    if (this.watchdog !== undefined) clearTimeout(this.watchdog);
    this.watchdog = undefined;
  }
}

/** Starts consuming a uni stream; iterate the result with `for await`. */
export function consumeUniStream(options: UniStreamOptions): UniStream {
  return new UniStream(options);
}

function connectRequest(o: UniStreamOptions): MessageInitShape<typeof ConnectRequestSchema> {
  const subs: Record<string, UniSubscription> = Array.isArray(o.subs)
    ? Object.fromEntries(o.subs.map((ch) => [ch, {}]))
    : (o.subs ?? {});
  return {
    token: o.token ?? "",
    data: encodeOptionalData(o.data),
    // The server reads the map keys as the wanted channels.
    subs: Object.fromEntries(
      Object.entries(subs).map(([channel, s]) => [
        channel,
        {
          channel,
          recover: s.recover ?? false,
          epoch: s.epoch ?? "",
          offset: BigInt(s.offset ?? 0),
        },
      ]),
    ),
    name: o.name ?? "spinwire-js",
    version: o.version ?? VERSION,
    headers: o.headers ?? {},
  };
}
