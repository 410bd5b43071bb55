/**
 * Plain-object inputs of the server API methods and their conversion to
 * the generated request messages.
 *
 * The inputs use camelCase names of the proto fields, take payloads as
 * {@link DataInput} (JSON-encoded unless already bytes), and take offsets and
 * unix times as `number | bigint`. The single-call methods of ApiClient and
 * `batch` share these converters so both encode identically.
 */
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import type {
  BroadcastRequestSchema,
  ChannelsRequestSchema,
  CommandSchema,
  DisconnectRequestSchema,
  HistoryRequestSchema,
  PublishRequestSchema,
  RefreshRequestSchema,
  SubscribeOptionOverrideSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from "./gen/centrifugal/centrifugo/api/api_pb.js";
import { type DataInput, encodeData, encodeOptionalData } from "./data.js";

/** Per-call transport options. */
export interface CallOptions {
  /** Aborting cancels the call (it then fails with a TransportError, code canceled). */
  signal?: AbortSignal;
  /** Deadline for this call; overrides the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** A position in a channel's history stream. */
export interface StreamPositionInput {
  offset: number | bigint;
  epoch: string;
}

export interface PublishOptions {
  /** Do not store the publication in history. */
  skipHistory?: boolean;
  tags?: Record<string, string>;
  /** Repeated publishes with the same key inside the server's dedupe window are no-ops. */
  idempotencyKey?: string;
  /** Ask for delta delivery to delta-negotiated subscribers. */
  delta?: boolean;
}

export interface PublishInput extends PublishOptions {
  channel: string;
  data: DataInput;
}

export interface BroadcastInput extends PublishOptions {
  channels: string[];
  data: DataInput;
}

/** Namespace options to force on or off for one server-side subscription. */
export interface SubscribeOverride {
  presence?: boolean;
  joinLeave?: boolean;
  forceRecovery?: boolean;
  forcePositioning?: boolean;
  forcePushJoinLeave?: boolean;
}

export interface SubscribeOptions {
  /** Only this client id of the user. */
  client?: string;
  /** Only this session of the user. */
  session?: string;
  /** Subscription expiry, unix seconds. */
  expireAt?: number | bigint;
  /** Channel info, shown as `chanInfo` in presence/join/leave. */
  info?: DataInput;
  /** Sent to the client in the subscribe push. */
  data?: DataInput;
  /** Recover missed publications from this position. */
  recoverSince?: StreamPositionInput;
  override?: SubscribeOverride;
}

export interface SubscribeInput extends SubscribeOptions {
  user: string;
  channel: string;
}

export interface UnsubscribeOptions {
  client?: string;
  session?: string;
}

export interface UnsubscribeInput extends UnsubscribeOptions {
  user: string;
  channel: string;
}

export interface DisconnectOptions {
  /** Disconnect code; the server's default is 3503 "force disconnect". 4000–4499 make clients reconnect. */
  code?: number;
  reason?: string;
  client?: string;
  session?: string;
  /** Client ids to keep connected. */
  whitelist?: string[];
}

export interface DisconnectInput extends DisconnectOptions {
  user: string;
}

export interface RefreshOptions {
  client?: string;
  session?: string;
  /** Expire the connection now (clients get disconnect 3005). */
  expired?: boolean;
  /** New connection expiry, unix seconds. */
  expireAt?: number | bigint;
  /** New connection info. */
  info?: DataInput;
}

export interface RefreshInput extends RefreshOptions {
  user: string;
}

export interface HistoryOptions {
  /**
   * How many publications to return. Defaults to -1 (all that are stored);
   * 0 returns only the stream position (epoch/offset).
   */
  limit?: number;
  /** Only publications after this position. */
  since?: StreamPositionInput;
  /** Newest first. */
  reverse?: boolean;
}

export interface HistoryInput extends HistoryOptions {
  channel: string;
}

export interface ChannelInput {
  channel: string;
}

export interface ChannelsInput {
  /** Glob pattern; empty or absent matches every channel. */
  pattern?: string;
}

/** One entry of a batch: exactly one method name as the key. */
export type BatchCommand =
  | { publish: PublishInput }
  | { broadcast: BroadcastInput }
  | { subscribe: SubscribeInput }
  | { unsubscribe: UnsubscribeInput }
  | { disconnect: DisconnectInput }
  | { presence: ChannelInput }
  | { presenceStats: ChannelInput }
  | { history: HistoryInput }
  | { historyRemove: ChannelInput }
  | { info: Record<string, never> }
  | { refresh: RefreshInput }
  | { channels: ChannelsInput };

type Init<S extends DescMessage> = MessageInitShape<S>;

function position(p: StreamPositionInput | undefined) {
  return p === undefined ? undefined : { offset: BigInt(p.offset), epoch: p.epoch };
}

function optionalBigInt(v: number | bigint | undefined): bigint {
  return v === undefined ? 0n : BigInt(v);
}

function boolValue(v: boolean | undefined) {
  return v === undefined ? undefined : { value: v };
}

export function publishRequest(i: PublishInput): Init<typeof PublishRequestSchema> {
  return {
    channel: i.channel,
    data: encodeData(i.data),
    skipHistory: i.skipHistory ?? false,
    tags: i.tags ?? {},
    idempotencyKey: i.idempotencyKey ?? "",
    delta: i.delta ?? false,
  };
}

export function broadcastRequest(i: BroadcastInput): Init<typeof BroadcastRequestSchema> {
  return {
    channels: i.channels,
    data: encodeData(i.data),
    skipHistory: i.skipHistory ?? false,
    tags: i.tags ?? {},
    idempotencyKey: i.idempotencyKey ?? "",
    delta: i.delta ?? false,
  };
}

function overrideInit(o: SubscribeOverride | undefined): Init<typeof SubscribeOptionOverrideSchema> | undefined {
  if (o === undefined) return undefined;
  return {
    presence: boolValue(o.presence),
    joinLeave: boolValue(o.joinLeave),
    forceRecovery: boolValue(o.forceRecovery),
    forcePositioning: boolValue(o.forcePositioning),
    forcePushJoinLeave: boolValue(o.forcePushJoinLeave),
  };
}

export function subscribeRequest(i: SubscribeInput): Init<typeof SubscribeRequestSchema> {
  return {
    user: i.user,
    channel: i.channel,
    client: i.client ?? "",
    session: i.session ?? "",
    expireAt: optionalBigInt(i.expireAt),
    info: encodeOptionalData(i.info),
    data: encodeOptionalData(i.data),
    recoverSince: position(i.recoverSince),
    override: overrideInit(i.override),
  };
}

export function unsubscribeRequest(i: UnsubscribeInput): Init<typeof UnsubscribeRequestSchema> {
  return { user: i.user, channel: i.channel, client: i.client ?? "", session: i.session ?? "" };
}

export function disconnectRequest(i: DisconnectInput): Init<typeof DisconnectRequestSchema> {
  return {
    user: i.user,
    client: i.client ?? "",
    session: i.session ?? "",
    whitelist: i.whitelist ?? [],
    // Without a code the server applies its default (3503 force disconnect).
    disconnect: i.code === undefined ? undefined : { code: i.code, reason: i.reason ?? "" },
  };
}

export function refreshRequest(i: RefreshInput): Init<typeof RefreshRequestSchema> {
  return {
    user: i.user,
    client: i.client ?? "",
    session: i.session ?? "",
    expired: i.expired ?? false,
    expireAt: optionalBigInt(i.expireAt),
    info: encodeOptionalData(i.info),
  };
}

export function historyRequest(i: HistoryInput): Init<typeof HistoryRequestSchema> {
  return {
    channel: i.channel,
    limit: i.limit ?? -1,
    since: position(i.since),
    reverse: i.reverse ?? false,
  };
}

export function channelsRequest(i: ChannelsInput): Init<typeof ChannelsRequestSchema> {
  return { pattern: i.pattern ?? "" };
}

export function commandInit(c: BatchCommand): Init<typeof CommandSchema> {
  if ("publish" in c) return { publish: publishRequest(c.publish) };
  if ("broadcast" in c) return { broadcast: broadcastRequest(c.broadcast) };
  if ("subscribe" in c) return { subscribe: subscribeRequest(c.subscribe) };
  if ("unsubscribe" in c) return { unsubscribe: unsubscribeRequest(c.unsubscribe) };
  if ("disconnect" in c) return { disconnect: disconnectRequest(c.disconnect) };
  if ("presence" in c) return { presence: { channel: c.presence.channel } };
  if ("presenceStats" in c) return { presenceStats: { channel: c.presenceStats.channel } };
  if ("history" in c) return { history: historyRequest(c.history) };
  if ("historyRemove" in c) return { historyRemove: { channel: c.historyRemove.channel } };
  if ("info" in c) return { info: {} };
  if ("refresh" in c) return { refresh: refreshRequest(c.refresh) };
  if ("channels" in c) return { channels: channelsRequest(c.channels) };
  throw new TypeError(`unknown batch command: ${Object.keys(c as object).join(", ")}`);
}
