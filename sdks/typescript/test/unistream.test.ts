/**
 * The uni stream over gRPC-web against the real server: connect first,
 * publications, server-side subscribe/unsubscribe, API disconnect ending the
 * stream, and connection tokens accepted or refused.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  ApiClient,
  type UniEvent,
  type UniStreamOptions,
  connectionToken,
  consumeUniStream,
} from "@spinwire/sdk";
import { API_KEY, SECRET, type Server, startServer, waitFor } from "./harness.js";

/** Reads events one by one with a per-read deadline, so a hang fails the test instead of stalling it. */
class Reader {
  private readonly iterator: AsyncIterator<UniEvent>;
  constructor(options: UniStreamOptions) {
    this.iterator = consumeUniStream(options)[Symbol.asyncIterator]();
  }

  async next(timeoutMs = 5_000): Promise<UniEvent | undefined> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no event within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const result = await Promise.race([this.iterator.next(), timeout]);
      return result.done ? undefined : result.value;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The next event of `type`, skipping join/leave noise from our own subscriptions. */
  async nextOf<T extends UniEvent["type"]>(type: T): Promise<Extract<UniEvent, { type: T }>> {
    for (;;) {
      const event = await this.next();
      assert.ok(event, `stream ended while waiting for ${type}`);
      if (event.type === type) return event as Extract<UniEvent, { type: T }>;
      assert.ok(event.type === "join" || event.type === "leave", `expected ${type}, got ${event.type}`);
    }
  }

  async close(): Promise<void> {
    await this.iterator.return?.();
  }
}

describe("uni stream over gRPC-web", () => {
  let server: Server;
  let api: ApiClient;

  before(async () => {
    server = await startServer();
    api = new ApiClient({ baseUrl: server.apiUrl, apiKey: API_KEY, timeoutMs: 5_000 });
  });
  after(async () => {
    await server?.stop();
  });

  it("connect first, then a publication, then API disconnect 4001 ends the stream", async () => {
    const token = await connectionToken(SECRET, "alice", { ttlSeconds: 300 });
    const reader = new Reader({ baseUrl: server.uniUrl, token, subs: ["chat:uni"] });
    try {
      const connect = await reader.next();
      assert.equal(connect?.type, "connect", "first event is connect");
      if (connect?.type !== "connect") return;
      assert.notEqual(connect.client, "", "client id is set");
      assert.ok("chat:uni" in connect.subs, "the requested channel is subscribed");

      const published = await api.publish("chat:uni", { text: "hello" });
      const pub = await reader.nextOf("publication");
      assert.equal(pub.channel, "chat:uni");
      assert.deepEqual(pub.data, { text: "hello" });
      assert.equal(pub.offset, published.offset);

      await api.disconnect("alice", { code: 4001, reason: "test" });
      const disconnect = await reader.nextOf("disconnect");
      assert.equal(disconnect.code, 4001);
      assert.equal(disconnect.reason, "test");
      assert.equal(disconnect.reconnect, true);
      assert.equal(await reader.next(), undefined, "the stream ends after disconnect");
    } finally {
      await reader.close();
    }
  });

  it("a minted connection token connects as that user", async () => {
    const token = await connectionToken(SECRET, "carol", { ttlSeconds: 300, info: { name: "Carol" } });
    const reader = new Reader({ baseUrl: server.uniUrl, token, subs: ["chat:presence"] });
    try {
      const connect = await reader.next();
      assert.equal(connect?.type, "connect");
      if (connect?.type !== "connect") return;
      const presence = await waitFor("carol in presence", async () => {
        const result = await api.presence("chat:presence");
        return Object.keys(result.presence).length > 0 ? result.presence : undefined;
      });
      const entry = presence[connect.client];
      assert.ok(entry, "presence is keyed by the stream's client id");
      assert.equal(entry.user, "carol");
      assert.deepEqual(JSON.parse(new TextDecoder().decode(entry.connInfo)), { name: "Carol" });
    } finally {
      await reader.close();
    }
    await waitFor("carol to leave presence after close", async () => {
      const result = await api.presence("chat:presence");
      return Object.keys(result.presence).length === 0 ? true : undefined;
    });
  });

  it("server-side subscribe and unsubscribe reach the stream", async () => {
    const token = await connectionToken(SECRET, "dave", { ttlSeconds: 300 });
    const reader = new Reader({ baseUrl: server.uniUrl, token });
    try {
      assert.equal((await reader.next())?.type, "connect");
      await api.subscribe("dave", "chat:server-side", { data: { welcome: 1 } });
      const sub = await reader.nextOf("subscribe");
      assert.equal(sub.channel, "chat:server-side");
      assert.deepEqual(sub.data, { welcome: 1 });

      await api.publish("chat:server-side", [1, 2, 3]);
      assert.deepEqual((await reader.nextOf("publication")).data, [1, 2, 3]);

      await api.unsubscribe("dave", "chat:server-side");
      const unsub = await reader.nextOf("unsubscribe");
      assert.equal(unsub.channel, "chat:server-side");
      assert.equal(unsub.code, 2000);
    } finally {
      await reader.close();
    }
  });

  it("recovers publications missed since a position", async () => {
    const channel = "chat:recover";
    const first = await api.publish(channel, "m1");
    await api.publish(channel, "m2");
    await api.publish(channel, "m3");
    const token = await connectionToken(SECRET, "erin", { ttlSeconds: 300 });
    const reader = new Reader({
      baseUrl: server.uniUrl,
      token,
      subs: { [channel]: { recover: true, epoch: first.epoch, offset: first.offset } },
    });
    try {
      const connect = await reader.next();
      assert.equal(connect?.type, "connect");
      if (connect?.type !== "connect") return;
      assert.equal(connect.subs[channel]?.recovered, true);
      const recovered = [await reader.nextOf("publication"), await reader.nextOf("publication")];
      assert.deepEqual(recovered.map((p) => [p.data, p.offset]), [["m2", 2n], ["m3", 3n]]);
    } finally {
      await reader.close();
    }
  });

  it("aborting the signal ends the iteration quietly", async () => {
    const token = await connectionToken(SECRET, "frank", { ttlSeconds: 300 });
    const controller = new AbortController();
    const reader = new Reader({ baseUrl: server.uniUrl, token, signal: controller.signal });
    assert.equal((await reader.next())?.type, "connect");
    const pending = reader.next();
    controller.abort();
    assert.equal(await pending, undefined);
  });

  it("an expired connection token ends the stream with disconnect 3005", async () => {
    const token = await connectionToken(SECRET, "gina", { exp: Math.floor(Date.now() / 1000) - 60 });
    const reader = new Reader({ baseUrl: server.uniUrl, token });
    try {
      const event = await reader.next();
      assert.deepEqual(
        event && { type: event.type, code: (event as { code?: number }).code },
        { type: "disconnect", code: 3005 },
      );
      assert.equal(await reader.next(), undefined);
    } finally {
      await reader.close();
    }
  });

  it("a token signed with another secret ends the stream with disconnect 3500", async () => {
    const token = await connectionToken("some-other-secret", "hank", { ttlSeconds: 300 });
    const reader = new Reader({ baseUrl: server.uniUrl, token });
    try {
      const event = await reader.next();
      assert.equal(event?.type, "disconnect");
      if (event?.type !== "disconnect") return;
      assert.equal(event.code, 3500);
      assert.equal(event.reconnect, false);
      assert.equal(await reader.next(), undefined);
    } finally {
      await reader.close();
    }
  });
});
