/**
 * ApiClient against the real server over gRPC-web: results, ApiError codes,
 * TransportError on a wrong key.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ApiClient, ApiError, Code, TransportError, decodeData } from "@spinwire/sdk";
import { API_KEY, type Server, startServer } from "./harness.js";

describe("ApiClient over gRPC-web", () => {
  let server: Server;
  let api: ApiClient;

  before(async () => {
    server = await startServer();
    api = new ApiClient({ baseUrl: server.apiUrl, apiKey: API_KEY, timeoutMs: 5_000 });
  });
  after(async () => {
    await server?.stop();
  });

  it("publish then history returns the messages with offsets in order", async () => {
    const channel = "chat:history";
    const offsets: bigint[] = [];
    for (let i = 1; i <= 3; i++) {
      const result = await api.publish(channel, { n: i });
      offsets.push(result.offset);
      assert.notEqual(result.epoch, "", "history-enabled publish reports the epoch");
    }
    assert.deepEqual(offsets, [1n, 2n, 3n]);

    const history = await api.history(channel);
    assert.deepEqual(history.publications.map((p) => decodeData(p.data)), [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.deepEqual(history.publications.map((p) => p.offset), [1n, 2n, 3n]);
    assert.equal(history.offset, 3n);

    const newestFirst = await api.history(channel, { limit: 2, reverse: true });
    assert.deepEqual(newestFirst.publications.map((p) => p.offset), [3n, 2n]);

    const since = await api.history(channel, { since: { offset: 1n, epoch: history.epoch } });
    assert.deepEqual(since.publications.map((p) => p.offset), [2n, 3n]);

    await api.historyRemove(channel);
    const emptied = await api.history(channel);
    assert.equal(emptied.publications.length, 0);
    assert.equal(emptied.offset, 3n, "history_remove keeps the stream position");
  });

  it("binary payloads round-trip as bytes", async () => {
    const bytes = new Uint8Array([0xde, 0xad, 0xbe, 0xef]);
    await api.publish("chat:binary", bytes);
    const history = await api.history("chat:binary");
    assert.deepEqual(history.publications[0]?.data, bytes);
  });

  it("unknown namespace raises ApiError 102", async () => {
    await assert.rejects(api.publish("nope:x", { a: 1 }), (err: unknown) => {
      assert.ok(err instanceof ApiError, `expected ApiError, got ${String(err)}`);
      assert.equal(err.code, 102);
      assert.equal(err.serverMessage, "unknown channel");
      return true;
    });
  });

  it("history on a namespace without history raises ApiError 108", async () => {
    await assert.rejects(api.history("nohistory"), (err: unknown) => err instanceof ApiError && err.code === 108);
  });

  it("wrong API key raises TransportError unauthenticated", async () => {
    const wrong = new ApiClient({ baseUrl: server.apiUrl, apiKey: "not-the-key" });
    await assert.rejects(wrong.info(), (err: unknown) => {
      assert.ok(err instanceof TransportError, `expected TransportError, got ${String(err)}`);
      assert.equal(err.code, Code.Unauthenticated);
      return true;
    });
  });

  it("unreachable server raises TransportError", async () => {
    const closed = new ApiClient({ baseUrl: "http://127.0.0.1:9", apiKey: API_KEY, timeoutMs: 2_000 });
    await assert.rejects(closed.info(), (err: unknown) => err instanceof TransportError);
  });

  it("broadcast reports per-channel results", async () => {
    const result = await api.broadcast(["chat:b1", "chat:b2", "nope:b3"], { hello: true });
    assert.equal(result.responses.length, 3);
    assert.equal(result.responses[0]?.error, undefined);
    assert.equal(result.responses[1]?.result?.offset, 1n);
    assert.equal(result.responses[2]?.error?.code, 102);
  });

  it("info, channels, presence and presence stats answer", async () => {
    const info = await api.info();
    assert.equal(info.nodes.length, 1);
    assert.notEqual(info.nodes[0]?.version, "");
    const channels = await api.channels({ pattern: "chat:*" });
    assert.equal(typeof channels.channels, "object");
    const presence = await api.presence("chat:empty");
    assert.deepEqual(Object.keys(presence.presence), []);
    const stats = await api.presenceStats("chat:empty");
    assert.equal(stats.numClients, 0);
    assert.equal(stats.numUsers, 0);
  });

  it("connection-level calls succeed for a user with no connections", async () => {
    await api.subscribe("nobody", "chat:x");
    await api.unsubscribe("nobody", "chat:x");
    await api.refresh("nobody", { expireAt: Math.floor(Date.now() / 1000) + 60 });
    await api.disconnect("nobody", { code: 4001, reason: "test" });
  });

  it("batch returns one reply per command, errors inline", async () => {
    const replies = await api.batch([
      { publish: { channel: "chat:batch", data: "one" } },
      { publish: { channel: "nope:batch", data: "two" } },
      { history: { channel: "chat:batch" } },
    ]);
    assert.equal(replies.length, 3);
    assert.equal(replies[0]?.publish?.offset, 1n);
    assert.equal(replies[1]?.error?.code, 102);
    assert.deepEqual(replies[2]?.history?.publications.map((p) => decodeData(p.data)), ["one"]);
  });
});
