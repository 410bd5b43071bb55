// Scenario 34: `connect_code_to_http_response` on `uni_sse` and `uni_http_stream`. With it, the
// connect runs before the response starts: a good one streams as usual; one refused with a
// mapped code gets the mapped status (the body defaulting to the disconnect reason or error
// message); an unmapped refusal gets 500.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, tracked, connToken, nowSec, signJwt } from '../harness.mjs';

const TRANSFORMS = [
  { code: 3500, to: { status_code: 401 } },
  { code: 109, to: { status_code: 403, body: 'token expired, refresh it' } },
];

describe('connect_code_to_http_response', () => {
  let server;
  before(async () => {
    const mapping = { enabled: true, transforms: TRANSFORMS };
    server = await startServer({
      uni_sse: { enabled: true, connect_code_to_http_response: mapping },
      uni_http_stream: { enabled: true, connect_code_to_http_response: mapping },
    });
  });
  after(async () => { if (server) await server.stop(); });

  const base = () => `http://127.0.0.1:${server.port}`;
  const transports = {
    uni_sse: connect => fetch(`${base()}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify(connect))}`),
    uni_http_stream: connect => fetch(`${base()}/connection/uni_http_stream`, {
      method: 'POST', body: JSON.stringify(connect), headers: { 'content-type': 'application/json' },
    }),
  };

  for (const [name, open] of Object.entries(transports)) {
    test(`${name}: refused connects get the mapped status, good ones stream`, tracked(() => server, async () => {
      const invalid = await open({ token: 'not-a-jwt' });
      assert.equal(invalid.status, 401);
      assert.equal(await invalid.text(), 'invalid token');

      const expiredToken = signJwt({ sub: 'u', exp: nowSec() - 60 }, server.secret);
      const expired = await open({ token: expiredToken });
      assert.equal(expired.status, 403);
      assert.equal(await expired.text(), 'token expired, refresh it');

      const unmapped = await open({}); // no token, anonymous connections off: 3501
      assert.equal(unmapped.status, 500);
      assert.equal(await unmapped.text(), 'Internal Server Error');

      const controller = new AbortController();
      const good = await open({ token: connToken(server, 'fine') }, controller);
      assert.equal(good.status, 200);
      const reader = good.body.getReader();
      let text = '';
      while (!text.includes('"connect"')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      assert.match(text, /"connect"/);
      await reader.cancel();
    }));
  }
});
