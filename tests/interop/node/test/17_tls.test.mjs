// Scenario 17: TLS on the HTTP server (spec §2.1; `http_server.tls`). The external port speaks
// HTTPS/WSS with a certificate from `spinwire gencert` (given as file paths), while
// `tls_external` keeps the internal port (API, health) plain. npm `centrifuge` connects over
// wss:// trusting that certificate, JSON and Protobuf; a client that does not trust it is
// refused; plaintext and stalled handshakes on the TLS port affect nobody else.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

import {
  startServer, tracked, connToken, api, uid, freePort, WebSocket, PROTOCOLS,
  connectClient, subscribeAndWait, waitForEvent, withTimeout,
} from '../harness.mjs';
import { generateCertificate } from '../browser.mjs';

describe('TLS: HTTPS and WSS on the external port', () => {
  let server;
  let cert;

  before(async () => {
    cert = generateCertificate();
    server = await startServer({
      http_server: {
        internal_port: await freePort(),
        tls_external: true,
        tls: { enabled: true, cert_pem: cert.certPath, key_pem: cert.keyPath },
      },
    });
  });

  after(async () => {
    if (server) await server.stop();
  });

  const wssUrl = () => `wss://localhost:${server.port}/connection/websocket`;

  /** `ws` trusting only the test certificate. */
  class TrustingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca: cert.certPem });
    }
  }

  for (const proto of PROTOCOLS) {
    test(`${proto.name}: npm centrifuge over wss:// subscribes and receives an API publication`, tracked(() => server, async () => {
      const client = new proto.Centrifuge(wssUrl(), {
        websocket: TrustingWebSocket,
        token: connToken(server, uid('tls_')),
        timeout: 5000,
      });
      client.on('error', () => {});
      try {
        const connected = await connectClient(client);
        assert.equal(connected.transport, 'websocket');
        const channel = uid('news:tls_');
        const sub = client.newSubscription(channel);
        await subscribeAndWait(sub);
        const received = waitForEvent(sub, 'publication');
        await api(server, 'publish', { channel, data: { over: 'tls', proto: proto.name } });
        const publication = await received;
        assert.deepEqual(proto.decode(publication.data), { over: 'tls', proto: proto.name });
      } finally {
        client.disconnect();
      }
    }));
  }

  test('a client that does not trust the certificate is refused', tracked(() => server, async () => {
    const ws = new WebSocket(wssUrl()); // system trust store only
    const outcome = await withTimeout(new Promise(resolve => {
      ws.on('open', () => resolve('open'));
      ws.on('error', e => resolve(e.code || String(e)));
    }), 5000, 'untrusted wss connection outcome');
    assert.equal(outcome, 'DEPTH_ZERO_SELF_SIGNED_CERT');
  }));

  test('plaintext and a stalled handshake on the TLS port do not affect other clients', tracked(() => server, async () => {
    // A client that opens TCP and never speaks TLS.
    const stalled = tcpConnect(server.port, '127.0.0.1');
    await new Promise(r => stalled.once('connect', r));
    // A client speaking plain HTTP to the TLS port gets no HTTP answer.
    const plain = tcpConnect(server.port, '127.0.0.1');
    plain.write('GET /connection/websocket HTTP/1.1\r\nHost: x\r\n\r\n');
    const answer = await withTimeout(new Promise(resolve => {
      let text = '';
      plain.on('data', d => { text += d.toString('latin1'); });
      plain.on('close', () => resolve(text));
      plain.on('error', () => resolve(text));
    }), 5000, 'plaintext connection closed by the server');
    assert.ok(!answer.startsWith('HTTP/1.1 '), `no HTTP response over plaintext: ${JSON.stringify(answer)}`);

    // Meanwhile a TLS client completes its handshake and negotiates HTTP/2 or HTTP/1.1.
    const secure = tlsConnect({ port: server.port, host: '127.0.0.1', servername: 'localhost', ca: cert.certPem, ALPNProtocols: ['h2', 'http/1.1'] });
    await withTimeout(new Promise((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    }), 5000, 'TLS handshake next to a stalled one');
    assert.equal(secure.alpnProtocol, 'h2');
    secure.destroy();
    // The stalled client is dropped once the 10 s handshake limit passes.
    const stalledFor = Date.now();
    await withTimeout(new Promise(resolve => {
      if (stalled.destroyed || stalled.readableEnded) return resolve();
      stalled.on('close', resolve);
      stalled.on('end', resolve);
      stalled.resume();
    }), 15000, 'the server to drop a client that never starts TLS');
    assert.ok(Date.now() - stalledFor < 15000);
    await server.assertAlive('after plaintext and stalled TLS clients');
  }));
});
