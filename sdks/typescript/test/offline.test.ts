/**
 * Unit tests that need no server: version stamping, payload encoding,
 * request building, push-to-event conversion and JWT minting.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  Code,
  TransportError,
  VERSION,
  commandInit,
  consumeUniStream,
  connectionToken,
  decodeData,
  encodeData,
  historyRequest,
  isReconnectCode,
  pushToEvents,
  subscriptionToken,
} from "@spinwire/sdk";
import { PushSchema } from "@spinwire/sdk/gen/centrifugal/centrifuge/protocol/client_pb";

const packageJson = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  version: string;
};

describe("version", () => {
  it("package.json version equals the generated VERSION", () => {
    assert.equal(packageJson.version, VERSION);
  });
  it("VERSION equals sdks/VERSION", () => {
    const shared = readFileSync(new URL("../../../VERSION", import.meta.url), "utf8").trim();
    assert.equal(VERSION, shared);
  });
});

describe("payload encoding", () => {
  it("JSON-encodes values and passes bytes through", () => {
    assert.deepEqual(new TextDecoder().decode(encodeData({ a: [1, "x"] })), '{"a":[1,"x"]}');
    const raw = new Uint8Array([0xff, 0x00, 0x01]);
    assert.equal(encodeData(raw), raw);
  });
  it("decodes JSON and keeps non-JSON as bytes", () => {
    assert.deepEqual(decodeData(encodeData({ text: "hi" })), { text: "hi" });
    assert.equal(decodeData(encodeData("plain")), "plain");
    const binary = new Uint8Array([0xff, 0xfe]);
    assert.equal(decodeData(binary), binary);
    assert.equal(decodeData(new Uint8Array(0)), undefined);
  });
  it("rejects values JSON cannot encode", () => {
    assert.throws(() => encodeData(undefined as never), TypeError);
  });
});

describe("request building", () => {
  it("history defaults to all publications", () => {
    assert.equal(historyRequest({ channel: "c" }).limit, -1);
    assert.equal(historyRequest({ channel: "c", limit: 0 }).limit, 0);
  });
  it("batch commands map to the matching request field", () => {
    const cmd = commandInit({ publish: { channel: "c", data: { n: 1 } } });
    assert.equal(cmd.publish?.channel, "c");
    assert.equal(new TextDecoder().decode(cmd.publish?.data), '{"n":1}');
    const dis = commandInit({ disconnect: { user: "u", code: 4001, reason: "r" } });
    assert.deepEqual(dis.disconnect?.disconnect, { code: 4001, reason: "r" });
    assert.throws(() => commandInit({ bogus: {} } as never), TypeError);
  });
});

describe("push conversion", () => {
  it("skips pings and decodes publications", () => {
    assert.deepEqual(pushToEvents(create(PushSchema)), []);
    const [event] = pushToEvents(
      create(PushSchema, { channel: "chat:a", pub: { data: encodeData({ x: 1 }), offset: 7n } }),
    );
    assert.equal(event?.type, "publication");
    if (event?.type !== "publication") return;
    assert.deepEqual(event.data, { x: 1 });
    assert.equal(event.offset, 7n);
    assert.equal(event.channel, "chat:a");
  });
  it("emits recovered publications right after connect", () => {
    const events = pushToEvents(
      create(PushSchema, {
        connect: {
          client: "c1",
          subs: { "chat:a": { recoverable: true, offset: 2n, publications: [{ data: encodeData(1), offset: 2n }] } },
        },
      }),
    );
    assert.deepEqual(events.map((e) => e.type), ["connect", "publication"]);
  });
  it("marks disconnect codes terminal or reconnecting by range", () => {
    const [event] = pushToEvents(create(PushSchema, { disconnect: { code: 3500, reason: "invalid token" } }));
    assert.deepEqual(event, { type: "disconnect", code: 3500, reason: "invalid token", reconnect: false });
    assert.equal(isReconnectCode(4001), true);
    assert.equal(isReconnectCode(3005), true);
    assert.equal(isReconnectCode(4500), false);
  });
});

function verifyHs256(token: string, secret: string): Record<string, unknown> {
  const [header, payload, signature] = token.split(".");
  assert.ok(header && payload && signature, "three parts");
  const expected = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  assert.equal(signature, expected, "signature");
  assert.deepEqual(JSON.parse(Buffer.from(header, "base64url").toString()), { alg: "HS256", typ: "JWT" });
  return JSON.parse(Buffer.from(payload, "base64url").toString()) as Record<string, unknown>;
}

describe("tokens", () => {
  it("connection token carries the claims and a valid HS256 signature", async () => {
    const before = Math.floor(Date.now() / 1000);
    const token = await connectionToken("s3cret", "alice", {
      ttlSeconds: 60,
      info: { name: "Alice" },
      channels: ["chat:a"],
    });
    const claims = verifyHs256(token, "s3cret");
    assert.equal(claims.sub, "alice");
    assert.deepEqual(claims.info, { name: "Alice" });
    assert.deepEqual(claims.channels, ["chat:a"]);
    assert.ok((claims.exp as number) >= before + 60 && (claims.exp as number) <= before + 61);
    assert.equal("channel" in claims, false, "a connection token must not carry channel");
  });
  it("subscription token binds user and channel", async () => {
    const token = await subscriptionToken("s3cret", "bob", "$chat:secret", { exp: 2_000_000_000, client: "c1" });
    const claims = verifyHs256(token, "s3cret");
    assert.equal(claims.sub, "bob");
    assert.equal(claims.channel, "$chat:secret");
    assert.equal(claims.client, "c1");
    assert.equal(claims.exp, 2_000_000_000);
  });
  it("no exp claim unless asked for", async () => {
    const claims = verifyHs256(await connectionToken("k", "u"), "k");
    assert.equal("exp" in claims, false);
  });
  it("rejects an empty secret", async () => {
    await assert.rejects(connectionToken("", "u"), TypeError);
  });
});

/** A fetch that answers with one gRPC-web frame holding `push`, then keeps the body open forever. */
function silentServerFetch(push: Uint8Array): typeof fetch {
  return async (_input, init) => {
    const frame = new Uint8Array(5 + push.length);
    new DataView(frame.buffer).setUint32(1, push.length);
    frame.set(push, 5);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(frame);
        init?.signal?.addEventListener("abort", () => controller.error(init.signal?.reason));
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "application/grpc-web+proto" } });
  };
}

describe("uni stream watchdog", () => {
  it("fails with deadline_exceeded when the server stops pinging", async () => {
    const connect = toBinary(PushSchema, create(PushSchema, { connect: { client: "c1", ping: 1 } }));
    const stream = consumeUniStream({
      baseUrl: "http://127.0.0.1:1",
      maxPingDelayMs: 200,
      fetch: silentServerFetch(connect),
    });
    const iterator = stream[Symbol.asyncIterator]();
    const first = await iterator.next();
    assert.equal(first.value?.type, "connect");
    const started = Date.now();
    await assert.rejects(iterator.next(), (err: unknown) => {
      assert.ok(err instanceof TransportError, String(err));
      assert.equal(err.code, Code.DeadlineExceeded);
      return true;
    });
    assert.ok(Date.now() - started >= 1_100, "waits the ping interval plus the allowed delay");
  });

  it("close() ends a stream waiting on a silent server without an error", async () => {
    const connect = toBinary(PushSchema, create(PushSchema, { connect: { client: "c1", ping: 0 } }));
    const stream = consumeUniStream({ baseUrl: "http://127.0.0.1:1", fetch: silentServerFetch(connect) });
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value?.type, "connect");
    const pending = iterator.next();
    stream.close();
    assert.deepEqual(await pending, { done: true, value: undefined });
    assert.throws(() => stream[Symbol.asyncIterator](), /iterated once/);
  });
});
