/**
 * CORS of the gRPC-web listeners with a specific allowed origin: preflights
 * and real calls from that origin get Access-Control-Allow-Origin, others
 * do not. Plain fetch, as a browser would send it.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type Server, startServer } from "./harness.js";

const ALLOWED = "http://allowed.example";
const DISALLOWED = "http://evil.example";

describe("gRPC-web CORS", () => {
  let server: Server;

  before(async () => {
    server = await startServer({ grpc_web: { enabled: true, allowed_origins: [ALLOWED] } });
  });
  after(async () => {
    await server?.stop();
  });

  function preflight(baseUrl: string, path: string, origin: string): Promise<Response> {
    return fetch(`${baseUrl}/${path}`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
      },
    });
  }

  const endpoints = [
    ["server API", () => server.apiUrl, "centrifugal.centrifugo.api.CentrifugoApi/Publish"],
    ["uni stream", () => server.uniUrl, "centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume"],
  ] as const;

  for (const [name, baseUrl, path] of endpoints) {
    it(`${name}: preflight from the allowed origin is allowed`, async () => {
      const res = await preflight(baseUrl(), path, ALLOWED);
      await res.arrayBuffer();
      assert.ok(res.status >= 200 && res.status < 300, `status ${res.status}`);
      assert.equal(res.headers.get("access-control-allow-origin"), ALLOWED);
      const allowedHeaders = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase();
      for (const header of ["authorization", "content-type", "x-grpc-web"]) {
        assert.ok(allowedHeaders === "*" || allowedHeaders.includes(header), `allow-headers lists ${header}: ${allowedHeaders}`);
      }
    });

    it(`${name}: preflight from another origin gets no allow-origin`, async () => {
      const res = await preflight(baseUrl(), path, DISALLOWED);
      await res.arrayBuffer();
      assert.equal(res.headers.get("access-control-allow-origin"), null);
    });
  }

  it("a gRPC-web response to the allowed origin exposes grpc-status", async () => {
    // An empty InfoRequest frame: flag 0, length 0.
    const res = await fetch(`${server.apiUrl}/centrifugal.centrifugo.api.CentrifugoApi/Info`, {
      method: "POST",
      headers: { origin: ALLOWED, "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: new Uint8Array([0, 0, 0, 0, 0]),
    });
    await res.arrayBuffer();
    assert.equal(res.headers.get("access-control-allow-origin"), ALLOWED);
    const exposed = (res.headers.get("access-control-expose-headers") ?? "").toLowerCase();
    assert.ok(exposed.includes("grpc-status"), `expose-headers lists grpc-status: ${exposed}`);
  });
});
