/**
 * ApiClient: the Centrifugo server API (`centrifugal.centrifugo.api.CentrifugoApi`)
 * over gRPC-web.
 *
 * One typed method per OSS API method. A response whose `error` is set
 * becomes an {@link ApiError} carrying the Centrifugo code; a failed call
 * becomes a {@link TransportError} carrying the gRPC status. Results are the
 * generated messages (offsets are `bigint`, payloads `Uint8Array`; use
 * {@link decodeData} for JSON payloads).
 */
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import {
  type BroadcastResult,
  BroadcastResultSchema,
  CentrifugoApi,
  type ChannelsResult,
  ChannelsResultSchema,
  type Error as ApiErrorMessage,
  type HistoryResult,
  HistoryResultSchema,
  type InfoResult,
  InfoResultSchema,
  type PresenceResult,
  PresenceResultSchema,
  type PresenceStatsResult,
  PresenceStatsResultSchema,
  type PublishResult,
  PublishResultSchema,
  type Reply,
} from "./gen/centrifugal/centrifugo/api/api_pb.js";
import type { DataInput } from "./data.js";
import { ApiError, TransportError } from "./errors.js";
import {
  type BatchCommand,
  type CallOptions,
  type ChannelsInput,
  type DisconnectOptions,
  type HistoryOptions,
  type PublishOptions,
  type RefreshOptions,
  type SubscribeOptions,
  type UnsubscribeOptions,
  broadcastRequest,
  channelsRequest,
  commandInit,
  disconnectRequest,
  historyRequest,
  publishRequest,
  refreshRequest,
  subscribeRequest,
  unsubscribeRequest,
} from "./requests.js";
import { createTransport } from "./transport.js";

export interface ApiClientOptions {
  /** Base URL of the `grpc_api` listener with `grpc_web` enabled, e.g. "http://127.0.0.1:10000". */
  baseUrl: string;
  /** `grpc_api.key`; sent as `authorization: apikey <key>`. */
  apiKey?: string;
  /** Default deadline per call in milliseconds (default 10 000; 0 disables). */
  timeoutMs?: number;
  /** fetch override, e.g. to add credentials or a proxy agent. */
  fetch?: typeof globalThis.fetch;
}

interface Envelope<R> {
  error?: ApiErrorMessage;
  result?: R;
}

export class ApiClient {
  private readonly client: Client<typeof CentrifugoApi>;

  constructor(options: ApiClientOptions) {
    const timeoutMs = options.timeoutMs ?? 10_000;
    this.client = createClient(
      CentrifugoApi,
      createTransport({
        baseUrl: options.baseUrl,
        apiKey: options.apiKey,
        timeoutMs: timeoutMs > 0 ? timeoutMs : undefined,
        fetch: options.fetch,
      }),
    );
  }

  /** Publishes `data` into `channel`; the result holds the new offset/epoch when history is on. */
  publish(channel: string, data: DataInput, options: PublishOptions & CallOptions = {}): Promise<PublishResult> {
    return unwrap(
      this.client.publish(publishRequest({ channel, data, ...options }), callOpts(options)),
      PublishResultSchema,
    );
  }

  /**
   * Publishes the same `data` into several channels. Per-channel failures
   * do not throw: check `result.responses[i].error`.
   */
  broadcast(channels: string[], data: DataInput, options: PublishOptions & CallOptions = {}): Promise<BroadcastResult> {
    return unwrap(
      this.client.broadcast(broadcastRequest({ channels, data, ...options }), callOpts(options)),
      BroadcastResultSchema,
    );
  }

  /** Subscribes the user's connections to `channel` server-side. */
  async subscribe(user: string, channel: string, options: SubscribeOptions & CallOptions = {}): Promise<void> {
    await unwrapVoid(this.client.subscribe(subscribeRequest({ user, channel, ...options }), callOpts(options)));
  }

  /** Unsubscribes the user's connections from `channel` (clients get unsubscribe code 2000). */
  async unsubscribe(user: string, channel: string, options: UnsubscribeOptions & CallOptions = {}): Promise<void> {
    await unwrapVoid(this.client.unsubscribe(unsubscribeRequest({ user, channel, ...options }), callOpts(options)));
  }

  /** Disconnects the user's connections, with `code`/`reason` when given. */
  async disconnect(user: string, options: DisconnectOptions & CallOptions = {}): Promise<void> {
    await unwrapVoid(this.client.disconnect(disconnectRequest({ user, ...options }), callOpts(options)));
  }

  /** Updates expiry/info of the user's connections, or expires them now. */
  async refresh(user: string, options: RefreshOptions & CallOptions = {}): Promise<void> {
    await unwrapVoid(this.client.refresh(refreshRequest({ user, ...options }), callOpts(options)));
  }

  /** Who is in `channel`, keyed by client id. */
  presence(channel: string, options: CallOptions = {}): Promise<PresenceResult> {
    return unwrap(this.client.presence({ channel }, callOpts(options)), PresenceResultSchema);
  }

  presenceStats(channel: string, options: CallOptions = {}): Promise<PresenceStatsResult> {
    return unwrap(this.client.presenceStats({ channel }, callOpts(options)), PresenceStatsResultSchema);
  }

  /** Stored publications of `channel` (all of them unless `limit` is given) and the stream position. */
  history(channel: string, options: HistoryOptions & CallOptions = {}): Promise<HistoryResult> {
    return unwrap(this.client.history(historyRequest({ channel, ...options }), callOpts(options)), HistoryResultSchema);
  }

  /** Drops the stored publications of `channel`; its offset and epoch are kept. */
  async historyRemove(channel: string, options: CallOptions = {}): Promise<void> {
    await unwrapVoid(this.client.historyRemove({ channel }, callOpts(options)));
  }

  /** Active channels matching `pattern` (a glob; all when absent). */
  channels(options: ChannelsInput & CallOptions = {}): Promise<ChannelsResult> {
    return unwrap(this.client.channels(channelsRequest(options), callOpts(options)), ChannelsResultSchema);
  }

  /** One entry per cluster node: version, client/user/channel counts, uptime. */
  info(options: CallOptions = {}): Promise<InfoResult> {
    return unwrap(this.client.info({}, callOpts(options)), InfoResultSchema);
  }

  /**
   * Runs several commands in one call. Replies come back in command order;
   * a failed command does not throw, its reply has `error` set instead.
   */
  async batch(commands: BatchCommand[], options: { parallel?: boolean } & CallOptions = {}): Promise<Reply[]> {
    const request = { commands: commands.map(commandInit), parallel: options.parallel ?? false };
    try {
      const response = await this.client.batch(request, callOpts(options));
      return response.replies;
    } catch (err) {
      throw TransportError.from(err);
    }
  }
}

function callOpts(o: CallOptions): CallOptions {
  return { signal: o.signal, timeoutMs: o.timeoutMs };
}

async function unwrap<S extends DescMessage>(
  call: Promise<Envelope<MessageShape<S>>>,
  resultSchema: S,
): Promise<MessageShape<S>> {
  let response: Envelope<MessageShape<S>>;
  try {
    response = await call;
  } catch (err) {
    throw TransportError.from(err);
  }
  if (response.error !== undefined) {
    throw new ApiError(response.error.code, response.error.message);
  }
  // An empty result is omitted on the wire; hand back an all-defaults message.
  return response.result ?? create(resultSchema);
}

async function unwrapVoid(call: Promise<Envelope<unknown>>): Promise<void> {
  let response: Envelope<unknown>;
  try {
    response = await call;
  } catch (err) {
    throw TransportError.from(err);
  }
  if (response.error !== undefined) {
    throw new ApiError(response.error.code, response.error.message);
  }
}
