/**
 * Server pings on the uni stream: with a 1 s ping interval the stream
 * reports ping 1, skips the empty ping pushes, and the stale-stream
 * watchdog (ping interval + maxPingDelayMs) does not fire while they keep
 * coming.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ApiClient, connectionToken, consumeUniStream } from "@spinwire/sdk";
import { API_KEY, SECRET, type Server, startServer } from "./harness.js";

describe("uni stream pings", () => {
  let server: Server;

  before(async () => {
    server = await startServer({ client: { ping_interval: "1s", pong_timeout: "500ms" } });
  });
  after(async () => {
    await server?.stop();
  });

  it("pings keep the stream alive and never surface as events", async () => {
    const api = new ApiClient({ baseUrl: server.apiUrl, apiKey: API_KEY });
    const token = await connectionToken(SECRET, "pinged", { ttlSeconds: 300 });
    const stream = consumeUniStream({
      baseUrl: server.uniUrl,
      token,
      subs: ["chat:ping"],
      maxPingDelayMs: 700,
      signal: AbortSignal.timeout(15_000),
    });
    const types: string[] = [];
    let connectedAt = 0;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "connect") {
        assert.equal(event.ping, 1);
        connectedAt = Date.now();
        // Publish only after several ping intervals: without pings the watchdog (1.7 s) would end the stream first.
        setTimeout(() => void api.publish("chat:ping", "after pings"), 3_500);
      }
      if (event.type === "publication") {
        assert.equal(event.data, "after pings");
        assert.ok(Date.now() - connectedAt >= 3_000);
        break;
      }
    }
    assert.deepEqual(types.filter((t) => t !== "join" && t !== "leave"), ["connect", "publication"]);
  });
});
