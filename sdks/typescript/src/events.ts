/**
 * Typed events of a unidirectional stream and their conversion from the
 * generated `Push` message. Payloads are decoded with {@link decodeData}
 * (JSON when possible); the raw bytes stay available as `rawData`.
 */
import { create } from "@bufbuild/protobuf";
import {
  type ClientInfo as ClientInfoMessage,
  ClientInfoSchema,
  type Publication,
  type Push,
  type SubscribeResult,
} from "./gen/centrifugal/centrifuge/protocol/client_pb.js";
import { decodeData } from "./data.js";

/** Who published, joined or left. */
export interface ClientInfo {
  user: string;
  client: string;
  /** Connection info from the token / connect proxy (decoded). */
  connInfo: unknown;
  /** Channel info from the subscription (decoded). */
  chanInfo: unknown;
}

/** State of one server-side subscription as reported by the connect push. */
export interface SubscriptionState {
  recoverable: boolean;
  positioned: boolean;
  /** Stream epoch and the offset of its newest publication; keep them to recover after a reconnect. */
  epoch: string;
  offset: bigint;
  /** A recovery was asked for … */
  wasRecovering: boolean;
  /** … and every missed publication was delivered. */
  recovered: boolean;
  expires: boolean;
  ttl: number;
  data: unknown;
}

export interface ConnectEvent {
  type: "connect";
  /** Client id the server assigned. */
  client: string;
  /** Server version string. */
  version: string;
  session: string;
  node: string;
  data: unknown;
  /** Server-side subscriptions keyed by channel. */
  subs: Record<string, SubscriptionState>;
  expires: boolean;
  ttl: number;
  /** Seconds between server pings; 0 when the server does not ping. */
  ping: number;
}

export interface PublicationEvent {
  type: "publication";
  channel: string;
  /** Payload decoded from JSON, or the raw bytes when it is not JSON. */
  data: unknown;
  rawData: Uint8Array;
  /** Position in the channel stream; 0 when the channel keeps no history. */
  offset: bigint;
  tags: Record<string, string>;
  /** Publisher, for client-side publishes only. */
  info?: ClientInfo;
}

export interface JoinEvent {
  type: "join";
  channel: string;
  info: ClientInfo;
}

export interface LeaveEvent {
  type: "leave";
  channel: string;
  info: ClientInfo;
}

/** The server subscribed this connection to a channel (server API `subscribe`). */
export interface SubscribeEvent {
  type: "subscribe";
  channel: string;
  recoverable: boolean;
  positioned: boolean;
  epoch: string;
  offset: bigint;
  data: unknown;
}

/** The server unsubscribed this connection from a channel. */
export interface UnsubscribeEvent {
  type: "unsubscribe";
  channel: string;
  code: number;
  reason: string;
}

/** An asynchronous message addressed to this connection. */
export interface AsyncMessageEvent {
  type: "message";
  data: unknown;
  rawData: Uint8Array;
}

/** The server refreshed the connection's expiry. */
export interface RefreshEvent {
  type: "refresh";
  expires: boolean;
  ttl: number;
}

/** Last event of a stream. */
export interface DisconnectEvent {
  type: "disconnect";
  code: number;
  reason: string;
  /** Whether the code advises reconnecting (everything but 3500–3999 and 4500–4999). */
  reconnect: boolean;
}

export type UniEvent =
  | ConnectEvent
  | PublicationEvent
  | JoinEvent
  | LeaveEvent
  | SubscribeEvent
  | UnsubscribeEvent
  | AsyncMessageEvent
  | RefreshEvent
  | DisconnectEvent;

/** Centrifugo's rule: 3500–3999 and 4500–4999 are terminal, everything else reconnects. */
export function isReconnectCode(code: number): boolean {
  return !((code >= 3500 && code < 4000) || (code >= 4500 && code < 5000));
}

function clientInfo(info: ClientInfoMessage): ClientInfo {
  return {
    user: info.user,
    client: info.client,
    connInfo: decodeData(info.connInfo),
    chanInfo: decodeData(info.chanInfo),
  };
}

function publication(channel: string, pub: Publication): PublicationEvent {
  const event: PublicationEvent = {
    type: "publication",
    channel,
    data: decodeData(pub.data),
    rawData: pub.data,
    offset: pub.offset,
    tags: pub.tags,
  };
  if (pub.info !== undefined) event.info = clientInfo(pub.info);
  return event;
}

function subscriptionState(r: SubscribeResult): SubscriptionState {
  return {
    recoverable: r.recoverable,
    positioned: r.positioned,
    epoch: r.epoch,
    offset: r.offset,
    wasRecovering: r.wasRecovering,
    recovered: r.recovered,
    expires: r.expires,
    ttl: r.ttl,
    data: decodeData(r.data),
  };
}

/**
 * The events one push stands for, in delivery order: none for a ping, the
 * connect event followed by the publications recovered for its
 * subscriptions, or exactly one event otherwise.
 */
export function pushToEvents(push: Push): UniEvent[] {
  const channel = push.channel;
  if (push.pub) return [publication(channel, push.pub)];
  if (push.join) return [{ type: "join", channel, info: clientInfo(push.join.info ?? create(ClientInfoSchema)) }];
  if (push.leave) return [{ type: "leave", channel, info: clientInfo(push.leave.info ?? create(ClientInfoSchema)) }];
  if (push.connect) {
    const c = push.connect;
    const subs: Record<string, SubscriptionState> = {};
    const recovered: UniEvent[] = [];
    for (const [ch, result] of Object.entries(c.subs)) {
      subs[ch] = subscriptionState(result);
      for (const pub of result.publications) recovered.push(publication(ch, pub));
    }
    const connect: ConnectEvent = {
      type: "connect",
      client: c.client,
      version: c.version,
      session: c.session,
      node: c.node,
      data: decodeData(c.data),
      subs,
      expires: c.expires,
      ttl: c.ttl,
      ping: c.ping,
    };
    return [connect, ...recovered];
  }
  if (push.disconnect) {
    const { code, reason } = push.disconnect;
    return [{ type: "disconnect", code, reason, reconnect: isReconnectCode(code) }];
  }
  if (push.subscribe) {
    const s = push.subscribe;
    return [{
      type: "subscribe",
      channel,
      recoverable: s.recoverable,
      positioned: s.positioned,
      epoch: s.epoch,
      offset: s.offset,
      data: decodeData(s.data),
    }];
  }
  if (push.unsubscribe) {
    return [{ type: "unsubscribe", channel, code: push.unsubscribe.code, reason: push.unsubscribe.reason }];
  }
  if (push.message) {
    return [{ type: "message", data: decodeData(push.message.data), rawData: push.message.data }];
  }
  if (push.refresh) return [{ type: "refresh", expires: push.refresh.expires, ttl: push.refresh.ttl }];
  // An empty push is the server's ping; anything else we do not know yet is skipped too.
  return [];
}

