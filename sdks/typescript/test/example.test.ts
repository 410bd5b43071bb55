/** The README's example runs as documented against a real server. */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { API_KEY, SECRET, type Server, startServer } from "./harness.js";

const run = promisify(execFile);
const EXAMPLE = fileURLToPath(new URL("../../examples/publish.mjs", import.meta.url));

describe("examples/publish.mjs", () => {
  let server: Server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
  });

  it("publishes, receives the message on the uni stream and reads history", async () => {
    const { stdout } = await run(process.execPath, [EXAMPLE], {
      timeout: 20_000,
      env: {
        ...process.env,
        SPINWIRE_API_URL: server.apiUrl,
        SPINWIRE_UNI_URL: server.uniUrl,
        SPINWIRE_API_KEY: API_KEY,
        SPINWIRE_SECRET: SECRET,
      },
    });
    assert.match(stdout, /connected as client \S+/);
    assert.match(stdout, /published at offset 1/);
    assert.match(stdout, /received on chat:demo: \{ text: 'hello from the TypeScript SDK' \}/);
    assert.match(stdout, /history of chat:demo: \[ \{ text: 'hello from the TypeScript SDK' \} \]/);
    assert.match(stdout, /api error 102: unknown channel/);
  });
});
