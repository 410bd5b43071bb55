/**
 * Test harness: runs the real Spinwire binary on free loopback ports with
 * gRPC API, uni_grpc and gRPC-web enabled, and tears it down afterwards.
 *
 * The binary comes from $SPINWIRE_BIN (default /work/main/target/debug/spinwire).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const SECRET = "test-hmac-secret-for-spinwire-ts";
export const API_KEY = "test-grpc-api-key";

export const BINARY = process.env.SPINWIRE_BIN ?? "/work/main/target/debug/spinwire";

export interface Server {
  /** gRPC-web base URL of the server API listener. */
  apiUrl: string;
  /** gRPC-web base URL of the uni_grpc listener. */
  uniUrl: string;
  httpPort: number;
  grpcPort: number;
  uniPort: number;
  /** Everything the server printed so far (capped). */
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s; throws if the server panicked. */
  stop(): Promise<void>;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const CHAT_NAMESPACE = {
  name: "chat",
  allow_subscribe_for_client: true,
  allow_publish_for_subscriber: true,
  presence: true,
  allow_presence_for_subscriber: true,
  join_leave: true,
  history_size: 100,
  history_ttl: "300s",
  allow_history_for_subscriber: true,
  force_recovery: true,
};

/** A config for the given ports, with `overrides` merged in (objects deep, everything else replaced). */
export function baseConfig(ports: { http: number; grpc: number; uni: number }, overrides: Record<string, Json> = {}) {
  const config: Record<string, Json> = {
    log: { level: "info" },
    health: { enabled: true },
    http_server: { address: "127.0.0.1", port: ports.http },
    client: { token: { hmac_secret_key: SECRET } },
    http_api: { key: "test-http-api-key" },
    grpc_api: { enabled: true, address: "127.0.0.1", port: ports.grpc, key: API_KEY },
    uni_grpc: { enabled: true, address: "127.0.0.1", port: ports.uni },
    grpc_web: { enabled: true, allowed_origins: ["*"] },
    channel: { namespaces: [CHAT_NAMESPACE] },
  };
  return merge(config, overrides);
}

function merge(base: Record<string, Json>, extra: Record<string, Json>): Record<string, Json> {
  const out: Record<string, Json> = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const current = out[key];
    out[key] = isObject(current) && isObject(value) ? merge(current, value) : value;
  }
  return out;
}

function isObject(v: Json | undefined): v is { [key: string]: Json } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` + (lastError ? `: ${String(lastError)}` : ""));
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Health answers 200 and both gRPC listeners accept connections. */
async function ready(ports: { http: number; grpc: number; uni: number }): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${ports.http}/health`);
    await res.arrayBuffer();
    if (res.status !== 200) return false;
  } catch {
    return false;
  }
  return (await tcpOpen(ports.grpc)) && (await tcpOpen(ports.uni));
}

const OUTPUT_CAP = 256 * 1024;

export async function startServer(overrides: Record<string, Json> = {}): Promise<Server> {
  if (!existsSync(BINARY)) {
    throw new Error(`Spinwire binary not found at ${BINARY}; build it or set SPINWIRE_BIN`);
  }
  const ports = { http: await freePort(), grpc: await freePort(), uni: await freePort() };
  const dir = mkdtempSync(join(tmpdir(), "spinwire-ts-"));
  const configPath = join(dir, "config.json");
  writeFileSync(configPath, JSON.stringify(baseConfig(ports, overrides), null, 2));

  const child: ChildProcess = spawn(BINARY, ["--config", configPath], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  let panicked = false;
  let exited = false;
  const onData = (chunk: Buffer) => {
    const text = chunk.toString("utf8");
    if (text.includes("panicked")) panicked = true;
    output = (output + text).slice(-OUTPUT_CAP);
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", onData);
  const exitedPromise = new Promise<void>((resolve) =>
    child.once("exit", () => {
      exited = true;
      resolve();
    }),
  );

  const stop = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exitedPromise;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
    if (panicked) throw new Error(`the server panicked:\n${output}`);
  };

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) throw new Error(`the server exited during startup:\n${output}`);
    if (await ready(ports)) break;
    if (Date.now() > deadline) {
      await stop().catch(() => undefined);
      throw new Error(`the server did not become ready within 15 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    apiUrl: `http://127.0.0.1:${ports.grpc}`,
    uniUrl: `http://127.0.0.1:${ports.uni}`,
    httpPort: ports.http,
    grpcPort: ports.grpc,
    uniPort: ports.uni,
    output: () => output,
    stop,
  };
}
